"""Enrolment challenges: fresh random nonces a client must sign into its enrolment proof.

Each nonce is single use (redeeming removes it) and short-lived (`lifetime_s`). The book is bounded:
at most `per_peer` outstanding nonces per network peer (host, without the port) and `total` overall; a
peer over its bound is refused, and when the whole book is full the oldest nonce is dropped first.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from mrff_secure.wire.signing import ENROL_NONCE_BYTES
from server.errors import Rejected

LIFETIME_S = 60.0
PER_PEER = 1024  # one host may run many logical clients that enrol at once
TOTAL = 16384


class TooManyChallenges(Rejected):
    """A peer holds as many outstanding challenges as it may."""


@dataclass(frozen=True)
class Challenge:
    peer: str
    client_id: int
    expires: float


def peer_host(peer: str) -> str:
    """gRPC's 'ipv4:127.0.0.1:53412' or 'ipv6:[::1]:53412' without the port (one bucket per host)."""
    if peer.startswith("ipv6:["):
        return peer.split("]", 1)[0] + "]"
    if peer.startswith("ipv4:"):
        return peer.rsplit(":", 1)[0]
    return peer


class ChallengeBook:
    def __init__(self, *, lifetime_s: float = LIFETIME_S, per_peer: int = PER_PEER, total: int = TOTAL) -> None:
        self.lifetime_s, self.per_peer, self.total = lifetime_s, per_peer, total
        self._lock = threading.Lock()
        self._open: OrderedDict[bytes, Challenge] = OrderedDict()  # oldest first
        self._per_peer: dict[str, int] = {}

    def _drop(self, nonce: bytes) -> Challenge:
        challenge = self._open.pop(nonce)
        left = self._per_peer[challenge.peer] - 1
        if left:
            self._per_peer[challenge.peer] = left
        else:
            del self._per_peer[challenge.peer]
        return challenge

    def _expire(self, now: float) -> None:
        while self._open:
            nonce, challenge = next(iter(self._open.items()))
            if challenge.expires > now:
                return
            self._drop(nonce)

    def issue(self, peer: str, client_id: int) -> bytes:
        """A fresh nonce for `client_id` asking from `peer` (TooManyChallenges over the peer's bound)."""
        host = peer_host(peer)
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            if self._per_peer.get(host, 0) >= self.per_peer:
                raise TooManyChallenges(
                    f"{self.per_peer} enrolment challenges of {host} are outstanding: answer them or wait "
                    f"{self.lifetime_s:.0f} s"
                )
            while len(self._open) >= self.total:
                self._drop(next(iter(self._open)))
            nonce = secrets.token_bytes(ENROL_NONCE_BYTES)
            self._open[nonce] = Challenge(host, client_id, now + self.lifetime_s)
            self._per_peer[host] = self._per_peer.get(host, 0) + 1
            return nonce

    def redeem(self, nonce: bytes, client_id: int) -> bool:
        """True once for a live nonce issued to `client_id`; the nonce is used up by any attempt."""
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            if nonce not in self._open:
                return False
            return self._drop(nonce).client_id == client_id

    def outstanding(self) -> int:
        with self._lock:
            return len(self._open)

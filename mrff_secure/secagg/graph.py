"""The SecAgg+ neighbour graph, derived from randomness revealed after the participants are fixed.

seed = SHA-256(domain | session context | digest of the participant set | every participant's
reveal, in participant order). Each client committed to its reveal in its key bundle, before the
participant set was fixed, so neither the server nor colluding clients can steer the graph by
choosing bundles or participants (W3 in SECURITY.md): a colluder can only withhold its
reveal, which aborts the session. The seed keys an AES-256-CTR keystream that draws a
pseudorandom ordering of the clients; on that ring each client is joined to the floor(k/2)
clients on either side (a Harary graph), plus the client opposite when k is odd. The graph is
symmetric; every client has exactly k neighbours, except that one client has k - 1 when k and n
are both odd, and n - 1 when k >= n - 1.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Iterable, Sequence

import numpy as np

from mrff_secure.errors import SecAggError
from mrff_secure.secagg.primitives import PROTOCOL_VERSION, keystream_random

_DOMAIN = b"mrff-secagg-graph"


def graph_seed(context: bytes, participant_digest: bytes, reveals: Sequence[bytes]) -> bytes:
    """The 32-byte public seed of the graph (see the module docstring)."""
    digest = hashlib.sha256(_DOMAIN + struct.pack(">BI", PROTOCOL_VERSION, len(reveals)) + context + participant_digest)
    digest.update(b"".join(reveals))  # the same hash as one update per reveal
    return digest.digest()


def _ring(seed: bytes, client_ids: Iterable[int]) -> np.ndarray:
    """ring_order as an int64 array (n,)."""
    ids = np.sort(np.fromiter(client_ids, dtype=np.int64))  # (n,)
    keys = np.frombuffer(keystream_random(seed)(8 * len(ids)), dtype="<u8")  # (n,)
    return ids[np.lexsort((ids, keys))]  # ties (2^-64) broken by id


def ring_order(seed: bytes, client_ids: Iterable[int]) -> list[int]:
    """The clients in a pseudorandom order drawn from the seed's keystream (64 random bits each)."""
    return [int(c) for c in _ring(seed, client_ids)]


def _neighbour_positions(position: int, n: int, k: int) -> set[int]:
    if k >= n - 1:
        return set(range(n)) - {position}
    half = k // 2
    result = {(position + step) % n for step in range(1, half + 1)}
    result |= {(position - step) % n for step in range(1, half + 1)}
    if k % 2 == 1:
        if n % 2 == 0:
            result.add((position + n // 2) % n)
        else:
            # Odd k and odd n: i ~ i + (n+1)/2 for i in [0, (n-3)/2]; position (n-1)/2 gets no extra edge.
            span = (n + 1) // 2
            if position + span < n:
                result.add(position + span)
            elif position - span >= 0:
                result.add(position - span)
    result.discard(position)
    return result


def neighbours_of(seed: bytes, client_ids: Iterable[int], k: int, client_id: int) -> tuple[int, ...]:
    """The sorted neighbours of one client (what a client computes for itself)."""
    ring = _ring(seed, client_ids)
    found = np.flatnonzero(ring == client_id)
    if not found.size:
        raise SecAggError(f"client {client_id} is not in the graph")
    return tuple(sorted(int(ring[p]) for p in _neighbour_positions(int(found[0]), len(ring), k)))


def neighbour_graph(seed: bytes, client_ids: Iterable[int], k: int) -> dict[int, tuple[int, ...]]:
    """Every client's sorted neighbours (what the server computes)."""
    ring = ring_order(seed, client_ids)
    n = len(ring)
    return {ring[i]: tuple(sorted(ring[p] for p in _neighbour_positions(i, n, k))) for i in range(n)}

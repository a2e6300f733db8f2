"""What every signature of a secure-aggregation session is bound to.

A session is one secure sum: one phase of one round of one run. Its context is
(run id, phase, round id, a fresh nonce chosen for the session, the digest of
the signed round body the session belongs to). Every key bundle signature,
commitment, the graph seed and every consistency signature covers the
context's bytes, so a bundle or signature made for another run, phase, round
or session cannot be replayed into this one (W11 in SECURITY.md): round ids
restart with every run, the nonce does not repeat. The round body's digest
(W21) binds each client's session to the round it accepted (model, participants,
DP and training parameters, everything the server signed): clients shown
different rounds by a lying server (model inconsistency, Pasquini et al. CCS
2022) hold different contexts, so none of their commitments open for each
other and the sum aborts.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass

from mrff_secure.checks import check_int
from mrff_secure.errors import ConfigError
from mrff_secure.secagg.primitives import PROTOCOL_VERSION

RUN_ID_BYTES = 16
NONCE_BYTES = 32
BODY_DIGEST_BYTES = 32
_DOMAIN = b"mrff-secagg-context"
_BODY_DOMAIN = b"mrff-round-body|"


@dataclass(frozen=True)
class SessionContext:
    """run_id: the run's 16-byte id; phase: which secure sum of the round (u8); round_id: the
    secure-aggregation round id (u64, the messages' header); nonce: 32 fresh bytes per session;
    round_body_digest: `round_body_digest` of the signed round body the session belongs to (32 bytes)."""

    run_id: bytes
    phase: int
    round_id: int
    nonce: bytes
    round_body_digest: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.run_id, bytes) or len(self.run_id) != RUN_ID_BYTES:
            raise ConfigError(f"run_id must be {RUN_ID_BYTES} bytes, got {self.run_id!r}")
        check_int("phase", self.phase, low=0, high=255)
        check_int("round_id (a u64)", self.round_id, low=0, high=2**64 - 1)
        if not isinstance(self.nonce, bytes) or len(self.nonce) != NONCE_BYTES:
            raise ConfigError(f"nonce must be {NONCE_BYTES} bytes, got {self.nonce!r}")
        if not isinstance(self.round_body_digest, bytes) or len(self.round_body_digest) != BODY_DIGEST_BYTES:
            raise ConfigError(f"round_body_digest must be {BODY_DIGEST_BYTES} bytes, got {self.round_body_digest!r}")

    @classmethod
    def fresh(cls, *, round_id: int, phase: int = 0, run_id: bytes | None = None) -> "SessionContext":
        """A context with a new random nonce and round-body digest (a session outside any announced round: the
        in-memory rounds), and a new random run id unless given."""
        return cls(
            run_id if run_id is not None else os.urandom(RUN_ID_BYTES),
            phase,
            round_id,
            os.urandom(NONCE_BYTES),
            os.urandom(BODY_DIGEST_BYTES),
        )

    def to_bytes(self) -> bytes:
        """domain | version (u8) | run id (16) | phase (u8) | round id (u64) | nonce (32) | round body digest (32),
        big-endian."""
        return (
            _DOMAIN
            + struct.pack(">B", PROTOCOL_VERSION)
            + self.run_id
            + struct.pack(">BQ", self.phase, self.round_id)
            + self.nonce
            + self.round_body_digest
        )


def run_context_id(run_id: str) -> bytes:
    """The 16-byte run id of a networked run's sessions: SHA-256 of the run's id string, truncated."""
    return hashlib.sha256(b"mrff-secagg-run|" + run_id.encode("utf-8")).digest()[:RUN_ID_BYTES]


def round_body_digest(encoded_body: bytes) -> bytes:
    """The 32-byte digest a session binds of the round it belongs to: SHA-256 of a domain label and the round body's
    deterministic encoding (every field the server signed for the round): the server of the body it signed and
    announced, each client of the body it verified and accepted (`body.SerializeToString(deterministic=True)`)."""
    return hashlib.sha256(_BODY_DOMAIN + bytes(encoded_body)).digest()

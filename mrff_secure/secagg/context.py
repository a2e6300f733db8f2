"""What every signature of a secure-aggregation session is bound to.

A session is one secure sum: one phase of one round of one run. Its context is
(run id, phase, round id, a fresh nonce chosen for the session). Every key
bundle, commitment and consistency signature covers the context's bytes, so a
bundle or signature made for another run, phase, round or session cannot be
replayed into this one (W11 in SECURITY.md): round ids restart with
every run, the nonce does not repeat.
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
_DOMAIN = b"mrff-secagg-context"


@dataclass(frozen=True)
class SessionContext:
    """run_id: the run's 16-byte id; phase: which secure sum of the round (u8); round_id: the
    secure-aggregation round id (u64, the messages' header); nonce: 32 fresh bytes per session."""

    run_id: bytes
    phase: int
    round_id: int
    nonce: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.run_id, bytes) or len(self.run_id) != RUN_ID_BYTES:
            raise ConfigError(f"run_id must be {RUN_ID_BYTES} bytes, got {self.run_id!r}")
        check_int("phase", self.phase, low=0, high=255)
        check_int("round_id (a u64)", self.round_id, low=0, high=2**64 - 1)
        if not isinstance(self.nonce, bytes) or len(self.nonce) != NONCE_BYTES:
            raise ConfigError(f"nonce must be {NONCE_BYTES} bytes, got {self.nonce!r}")

    @classmethod
    def fresh(cls, *, round_id: int, phase: int = 0, run_id: bytes | None = None) -> "SessionContext":
        """A context with a new random nonce (and a new random run id unless given)."""
        return cls(run_id if run_id is not None else os.urandom(RUN_ID_BYTES), phase, round_id, os.urandom(NONCE_BYTES))

    def to_bytes(self) -> bytes:
        """domain | version (u8) | run id (16) | phase (u8) | round id (u64) | nonce (32), big-endian."""
        return (
            _DOMAIN
            + struct.pack(">B", PROTOCOL_VERSION)
            + self.run_id
            + struct.pack(">BQ", self.phase, self.round_id)
            + self.nonce
        )


def run_context_id(run_id: str) -> bytes:
    """The 16-byte run id of a networked run's sessions: SHA-256 of the run's id string, truncated."""
    return hashlib.sha256(b"mrff-secagg-run|" + run_id.encode("utf-8")).digest()[:RUN_ID_BYTES]

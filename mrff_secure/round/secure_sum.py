"""The secure sum of a round's ring vectors, two ways that give the same bits.

Clients hand in integer vectors as residues mod 2^b (what `mrff_secure.dp.DistributedEncoder`
produces). The server may learn only their sum mod 2^b. Two backends:

- `InMemorySecAgg` runs the real secure-aggregation state machines
  (`mrff_secure.round.inmemory.run_round`: key agreement, Shamir shares, masks, unmasking) for
  every client in one process. Faithful, and slow: for tests and small rounds.
- `RingSum` adds the residues mod 2^b directly: the value the protocol provably outputs when no
  client drops out (the masks cancel exactly). For the large simulation.

Both refuse an input coordinate outside [-max_abs, max_abs] (as signed, centred values), where
max_abs = floor((2^(b-1) - 1) / (n 2^g)) lets n inputs sum without wrapping with g =
`secagg.config.guard_bits(d)` bits to spare (the headroom that gives the server's output range
check its power): the secure-aggregation layer sizes its modulus that way, so the fast path checks
the same rule.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from mrff_secure.errors import ConfigError
from mrff_secure.round.inmemory import run_round
from mrff_secure.secagg.config import SecAggConfig, max_abs_for
from mrff_secure.secagg.encoding import InputRangeError, from_ring

BACKENDS = ("fast", "inmemory")


class SecureSumSession(Protocol):
    """One secure sum: add clients' residues chunk by chunk, then read the ring sum once."""

    def add(self, client_ids: np.ndarray, residues: np.ndarray) -> None: ...

    def finish(self) -> np.ndarray: ...


def _check_chunk(client_ids: np.ndarray, residues: np.ndarray, dim: int, modulus_bits: int, max_abs: int) -> np.ndarray:
    """Validate a chunk (clients, dim) of residues; return them as uint64 in [0, 2^b)."""
    values = np.asarray(residues)
    if values.ndim != 2 or values.shape != (len(client_ids), dim):
        raise InputRangeError(f"residues have shape {values.shape}, expected ({len(client_ids)}, {dim})")
    if values.dtype.kind not in "iu":
        raise InputRangeError(f"residues must be integers, got dtype {values.dtype}")
    mask = np.uint64((1 << modulus_bits) - 1)
    ring = values.astype(np.uint64) & mask
    # the centred value r lies in [-max_abs, max_abs] iff (r + max_abs) mod 2^b <= 2 max_abs (one pass)
    if values.size and int(((ring + np.uint64(max_abs)) & mask).max()) > 2 * max_abs:
        signed = from_ring(ring, modulus_bits)  # centred representatives, (clients, dim)
        raise InputRangeError(
            f"input coordinate {int(np.abs(signed).max())} exceeds max_abs {max_abs} that the "
            f"{modulus_bits}-bit modulus was sized for"
        )
    return ring


class RingSum:
    """The fast path: the sum mod 2^b of the clients' (mask-free) residues, accumulated per chunk."""

    def __init__(self, *, num_clients: int, dim: int, modulus_bits: int) -> None:
        self.num_clients, self.dim, self.modulus_bits = num_clients, dim, modulus_bits
        self.max_abs = max_abs_for(num_clients, modulus_bits, vector_length=dim)
        self._total = np.zeros(dim, dtype=np.uint64)  # wraps mod 2^64, a multiple of 2^b
        self._seen: set[int] = set()

    def add(self, client_ids: np.ndarray, residues: np.ndarray) -> None:
        ids = [int(c) for c in client_ids]
        if self._seen.intersection(ids) or len(set(ids)) != len(ids):
            raise InputRangeError("a client contributed twice to one secure sum")
        ring = _check_chunk(np.asarray(ids), residues, self.dim, self.modulus_bits, self.max_abs)
        if len(self._seen) + len(ids) > self.num_clients:
            raise InputRangeError(f"more than the {self.num_clients} clients the modulus was sized for")
        self._seen.update(ids)
        self._total += ring.sum(axis=0, dtype=np.uint64)

    def partial(self) -> tuple[np.ndarray, np.ndarray]:
        """(client ids, running total mod 2^64) of the clients added here: one process's share of the sum."""
        return np.array(sorted(self._seen), dtype=np.int64), self._total.copy()

    def merge(self, client_ids: np.ndarray, total: np.ndarray) -> None:
        """Add another session's `partial()` (its clients' residues were range-checked when added there)."""
        ids = [int(c) for c in client_ids]
        if self._seen.intersection(ids) or len(set(ids)) != len(ids):
            raise InputRangeError("a client contributed twice to one secure sum")
        if len(self._seen) + len(ids) > self.num_clients:
            raise InputRangeError(f"more than the {self.num_clients} clients the modulus was sized for")
        total = np.asarray(total)
        if total.shape != (self.dim,) or total.dtype != np.uint64:
            raise InputRangeError(f"a partial sum must be ({self.dim},) uint64, got {total.dtype}{list(total.shape)}")
        self._seen.update(ids)
        self._total += total

    def finish(self) -> np.ndarray:
        """(dim,) int64 residues in [0, 2^b): the sum mod 2^b."""
        return (self._total & np.uint64((1 << self.modulus_bits) - 1)).astype(np.int64)


class InMemorySecAgg:
    """The faithful path: one full secure-aggregation round (`round.inmemory.run_round`) at `finish`."""

    def __init__(self, *, num_clients: int, dim: int, modulus_bits: int, round_id: int) -> None:
        if num_clients < 3:
            raise ConfigError(f"secure aggregation needs at least 3 clients, got {num_clients}")
        self.max_abs = max_abs_for(num_clients, modulus_bits, vector_length=dim)
        self.config = SecAggConfig(
            num_clients=num_clients, vector_length=dim, max_abs=self.max_abs, modulus_bits=modulus_bits
        )
        self.dim, self.modulus_bits, self.round_id = dim, modulus_bits, round_id
        self.num_clients = num_clients
        self._inputs: dict[int, np.ndarray] = {}

    def add(self, client_ids: np.ndarray, residues: np.ndarray) -> None:
        ring = _check_chunk(np.asarray(client_ids), residues, self.dim, self.modulus_bits, self.max_abs)
        signed = from_ring(ring, self.modulus_bits)  # the protocol takes signed integers
        for cid, row in zip(client_ids, signed):
            cid = int(cid)
            if cid in self._inputs:
                raise InputRangeError(f"client {cid} contributed twice to one secure sum")
            self._inputs[cid] = row.copy()

    def finish(self) -> np.ndarray:
        if len(self._inputs) > self.num_clients:
            raise InputRangeError(f"more than the {self.num_clients} clients the modulus was sized for")
        result = run_round(self.config, round_id=self.round_id, inputs=self._inputs)
        if len(result.survivors) != len(self._inputs):
            raise InputRangeError("the in-memory round lost clients without a dropout schedule")
        return result.ring_sum.astype(np.int64)


def open_session(backend: str, *, num_clients: int, dim: int, modulus_bits: int, round_id: int) -> SecureSumSession:
    """A fresh secure-sum session of the chosen backend ('fast' or 'inmemory')."""
    if backend == "fast":
        return RingSum(num_clients=num_clients, dim=dim, modulus_bits=modulus_bits)
    if backend == "inmemory":
        return InMemorySecAgg(num_clients=num_clients, dim=dim, modulus_bits=modulus_bits, round_id=round_id)
    raise ConfigError(f"secure-sum backend must be one of {BACKENDS}, got {backend!r}")


def round_id_for(round_index: int, phase: int) -> int:
    """A distinct secure-aggregation round id per (training round, phase): masks are never reused."""
    if round_index < 0 or phase not in (1, 2):
        raise ConfigError(f"bad round {round_index} / phase {phase}")
    return 2 * round_index + (phase - 1)

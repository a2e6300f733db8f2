"""Signed integers in the ring Z_{2^b}, and back.

Integers are stored in two's complement; a sum of n inputs in [-max_abs, max_abs] is decoded by
the centred lift, which is exact as long as n * max_abs <= 2^(b-1) - 1 (SecAggConfig enforces it,
with guard bits to spare; `check_no_wrap` names the numbers where it does not hold).
"""

from __future__ import annotations

import numpy as np

from mrff_secure.errors import ConfigError, SecAggError
from mrff_secure.secagg.config import MAX_MODULUS_BITS, guard_bits, required_modulus_bits


class InputRangeError(SecAggError, ValueError):
    """A client input lies outside the range the modulus was sized for."""


def check_no_wrap(num_clients: int, max_abs: int, modulus_bits: int, *, vector_length: int) -> None:
    """Refuse a (clients, range, modulus) combination whose sum could wrap or leaves the range check no
    guard bits (config.guard_bits), naming the numbers."""
    needed = required_modulus_bits(num_clients, max_abs, vector_length=vector_length)
    if modulus_bits < needed or modulus_bits > MAX_MODULUS_BITS:
        raise ConfigError(
            f"modulus of {modulus_bits} bits cannot hold the sum of {num_clients} clients x max_abs {max_abs} "
            f"= {num_clients * max_abs} with {guard_bits(vector_length)} guard bits: need between {needed} and "
            f"{MAX_MODULUS_BITS} bits"
        )


def to_ring(q: np.ndarray, modulus_bits: int, *, max_abs: int | None = None) -> np.ndarray:
    """Signed integers to Z_{2^b} in two's complement, (d,) uint64. With max_abs, refuse out-of-range values."""
    values = np.asarray(q)
    if values.dtype.kind not in "iu":
        raise InputRangeError(f"ring inputs must be integers, got dtype {values.dtype}")
    values = values.astype(np.int64)
    if max_abs is not None and values.size and int(np.abs(values).max()) > max_abs:
        raise InputRangeError(
            f"input coordinate {int(np.abs(values).max())} exceeds max_abs {max_abs} that the modulus was sized for"
        )
    return values.view(np.uint64) & np.uint64((1 << modulus_bits) - 1)


def from_ring(u: np.ndarray, modulus_bits: int) -> np.ndarray:
    """Centred lift of Z_{2^b} to [-2^(b-1), 2^(b-1) - 1], (d,) int64."""
    values = np.asarray(u).astype(np.uint64) & np.uint64((1 << modulus_bits) - 1)
    signed = values.astype(np.int64)
    return np.where(signed >= (1 << (modulus_bits - 1)), signed - (1 << modulus_bits), signed)

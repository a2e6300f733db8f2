"""Fixed-point encoding of float vectors into the ring Z_{2^b}, and back.

A float x with per-coordinate clipping range [-c, c] becomes an integer
q in [-L, L] (L = `levels`) by unbiased stochastic rounding of x * L / c:
E[q] = x * L / c exactly. Integers are stored in the ring in two's
complement, and a sum of n inputs is decoded by the centred lift, which is
exact as long as n * L <= 2^(b-1) - 1 (SecAggConfig enforces it, with guard bits to spare).
"""

from __future__ import annotations

import numpy as np

from mrff_secure.checks import check_int
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


def _check_range(clip: float | np.ndarray, levels: int) -> np.ndarray:
    check_int("levels", levels, low=1)
    clip_arr = np.asarray(clip, dtype=np.float64)
    if not np.all(np.isfinite(clip_arr)) or np.any(clip_arr <= 0):
        raise ConfigError("clipping range must be finite and > 0 for every coordinate")
    return clip_arr


def quantize(x: np.ndarray, *, clip: float | np.ndarray, levels: int, rng: np.random.Generator) -> np.ndarray:
    """Clip x to [-clip, clip] (per coordinate if clip is an array) and stochastically round to [-levels, levels].

    The rounding randomness comes from `rng`, which the caller owns: it must be
    unpredictable to the server when the rounding is part of a DP mechanism.
    Returns (d,) int64.
    """
    clip_arr = _check_range(clip, levels)
    values = np.asarray(x, dtype=np.float64)
    if values.ndim != 1:
        raise InputRangeError(f"expected a 1-D vector, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise InputRangeError("input contains NaN or infinity")
    scaled = np.clip(values, -clip_arr, clip_arr) * (levels / clip_arr)  # (d,) in [-L, L]
    floor = np.floor(scaled)
    round_up = rng.random(values.shape) < (scaled - floor)
    q = floor.astype(np.int64) + round_up
    return np.clip(q, -levels, levels)  # guards the float edge case scaled == L + tiny


def dequantize(q: np.ndarray, *, clip: float | np.ndarray, levels: int) -> np.ndarray:
    """Integers (a single input or a sum of inputs) back to floats: q * clip / levels. (d,) float64."""
    clip_arr = _check_range(clip, levels)
    return np.asarray(q, dtype=np.float64) * (clip_arr / levels)


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

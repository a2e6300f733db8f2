"""Randomized Hadamard rotation: y = H D pad(x) / sqrt(p), with its exact inverse.

Before discretization (distributed mode) each client rotates its clipped update so that the
energy spreads evenly over coordinates (each rotated coordinate is sub-Gaussian with variance
proxy ||x||^2 / p), which keeps the per-coordinate range small for the modulus. The random signs
D come from a seed shared by all clients of a round (and the server, which un-rotates the sum),
so rotating is linear: rotate(sum) == sum(rotate). The vector is zero-padded to the next power
of two p = ``padded_dim``; the rotated vector, its noise and the secure sum have length p.
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import torch

from mrff_secure.checks import check_int
from mrff_secure.errors import PrivacyError

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def next_power_of_two(n: int) -> int:
    """Smallest power of two >= n (n >= 1)."""
    check_int("dimension", n, low=1, error=PrivacyError)
    return 1 << (n - 1).bit_length()


_RADIX_BITS = 5  # Hadamard blocks of 32 x 32 for the matrix-product form
_HADAMARD_CACHE: dict[tuple[int, torch.dtype], torch.Tensor] = {}


def _hadamard(size: int, dtype: torch.dtype) -> torch.Tensor:
    """The Sylvester Hadamard matrix of a power-of-two size (+1/-1 entries), cached."""
    key = (size, dtype)
    if key not in _HADAMARD_CACHE:
        h = torch.ones(1, 1, dtype=dtype)
        while h.shape[0] < size:
            h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
        _HADAMARD_CACHE[key] = h
    return _HADAMARD_CACHE[key]


def _fwht_matmul(x: torch.Tensor) -> torch.Tensor:
    """The same transform as a few batched products with 32 x 32 Hadamard blocks (H_p = H_a (x) H_b (x) ...).

    Several times faster than the butterflies on large float inputs (BLAS instead of ~log2(p)
    passes over memory); the floating-point summation order differs, so results agree with the
    butterflies to rounding (exactly for integer-valued inputs below 2^53).
    """
    p = x.shape[-1]
    lead = tuple(x.shape[:-1])
    rows = math.prod(lead) if lead else 1
    y = x.reshape(rows, p)
    outer, bits_left = 1, p.bit_length() - 1
    while bits_left:
        bits = min(_RADIX_BITS, bits_left)
        f = 1 << bits
        inner = p // (outer * f)
        y = torch.matmul(_hadamard(f, x.dtype), y.reshape(rows * outer, f, inner))  # (rows*outer, f, inner)
        outer *= f
        bits_left -= bits
    return y.reshape(lead + (p,))


def fwht(x: Array) -> Array:
    """Unnormalized fast Walsh-Hadamard transform over the last axis (length a power of two).

    fwht(fwht(x)) == p * x exactly for integer input; numpy or torch, any leading shape.
    Floating-point inputs of length >= 64 take the matrix-product form (`_fwht_matmul`).
    """
    p = x.shape[-1]
    if p < 1 or p & (p - 1):
        raise PrivacyError(f"fwht needs a power-of-two length, got {p}")
    if p >= 64:
        if isinstance(x, torch.Tensor) and torch.is_floating_point(x):
            return _fwht_matmul(x)
        if isinstance(x, np.ndarray) and x.dtype in (np.float32, np.float64):
            return _fwht_matmul(torch.from_numpy(np.ascontiguousarray(x))).numpy()
    lead = tuple(x.shape[:-1])
    h = 1
    y = x
    while h < p:
        # (..., blocks, 2, h): pair each half-block with its partner
        y = y.reshape(lead + (p // (2 * h), 2, h))
        a, b = y[..., 0, :], y[..., 1, :]
        if isinstance(y, torch.Tensor):
            y = torch.stack((a + b, a - b), dim=-2)
        else:
            y = np.stack((a + b, a - b), axis=-2)
        h *= 2
    return y.reshape(lead + (p,))


def _seed_to_int(seed: int | bytes) -> int:
    if isinstance(seed, (bytes, bytearray)):
        if len(seed) == 0:
            raise PrivacyError("rotation seed must not be empty")
        return int.from_bytes(seed, "big")
    return check_int("rotation seed (not bytes)", seed, low=0, error=PrivacyError)


class RandomizedHadamard:
    """The rotation for vectors of length ``dim`` under a shared ``seed`` (int or bytes)."""

    def __init__(self, dim: int, *, seed: int | bytes) -> None:
        self.dim = dim
        self.padded_dim = next_power_of_two(dim)
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(_seed_to_int(seed))))
        self._signs = rng.integers(0, 2, size=self.padded_dim).astype(np.float64) * 2.0 - 1.0  # (p,)
        self._norm = 1.0 / math.sqrt(self.padded_dim)

    @property
    def signs(self) -> np.ndarray:
        """The diagonal of D (+1/-1), length ``padded_dim`` (a copy)."""
        return self._signs.copy()

    def _signs_like(self, x: Array) -> Array:
        if isinstance(x, torch.Tensor):
            return torch.as_tensor(self._signs, dtype=x.dtype, device=x.device)
        return self._signs.astype(x.dtype, copy=False)

    def forward(self, x: Array) -> Array:
        """Rotate (d,) or (clients, d) floats to (..., padded_dim)."""
        if x.shape[-1] != self.dim:
            raise PrivacyError(f"rotation built for length {self.dim}, got a vector of length {x.shape[-1]}")
        pad = self.padded_dim - self.dim
        if isinstance(x, torch.Tensor):
            if not torch.is_floating_point(x):
                raise PrivacyError(f"rotation needs floating-point input, got {x.dtype}")
            x = torch.nn.functional.pad(x, (0, pad))
        else:
            if not np.issubdtype(x.dtype, np.floating):
                raise PrivacyError(f"rotation needs floating-point input, got {x.dtype}")
            x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
        return fwht(x * self._signs_like(x)) * self._norm

    def inverse(self, y: Array) -> Array:
        """Undo :meth:`forward`: (..., padded_dim) -> (..., dim). (H D / sqrt(p))^-1 = D H / sqrt(p)."""
        if y.shape[-1] != self.padded_dim:
            raise PrivacyError(f"inverse rotation takes length {self.padded_dim}, got {y.shape[-1]}")
        if isinstance(y, torch.Tensor):
            if not torch.is_floating_point(y):
                y = y.to(torch.float64)
        elif not np.issubdtype(y.dtype, np.floating):
            y = y.astype(np.float64)
        x = fwht(y) * self._norm * self._signs_like(y)
        return x[..., : self.dim]

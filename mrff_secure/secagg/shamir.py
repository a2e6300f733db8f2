"""Shamir secret sharing of 32-byte secrets, written here and vectorized with numpy.

A 32-byte secret is padded with one zero byte and cut into 11 limbs of 3 bytes
(big-endian); each limb is shared independently by a random polynomial of
degree t - 1 over the prime field GF(p), p = 2^31 - 1. Limbs are below 2^24 < p,
and products of two field elements stay below 2^62, so all arithmetic is exact
in uint64. A share is (x, 11 field elements); x is a client id + 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from mrff_secure.checks import check_int
from mrff_secure.errors import SecAggError
from mrff_secure.secagg.primitives import RandomBytes, system_random

PRIME = 2**31 - 1
SECRET_BYTES = 32
LIMB_BYTES = 3
NUM_LIMBS = (SECRET_BYTES + LIMB_BYTES - 1) // LIMB_BYTES  # 11
SHARE_VALUE_BYTES = 4 * NUM_LIMBS  # 44: each field element as a big-endian u32


@dataclass(frozen=True)
class Share:
    """One Shamir share: the evaluation point x (1 <= x < p) and the 44-byte value (11 x u32, big-endian)."""

    x: int
    value: bytes

    def __post_init__(self) -> None:
        if type(self.x) is not int or not 1 <= self.x < PRIME:  # the common case without the call
            check_int("share x", self.x, low=1, high=PRIME - 1, error=SecAggError)
        if len(self.value) != SHARE_VALUE_BYTES:
            raise SecAggError(f"share value must be {SHARE_VALUE_BYTES} bytes, got {len(self.value)}")

    def elements(self) -> np.ndarray:
        """The field elements of this share, (NUM_LIMBS,) uint64."""
        return np.frombuffer(self.value, dtype=">u4").astype(np.uint64)


def _secret_to_limbs(secret: bytes) -> np.ndarray:
    """(NUM_LIMBS,) uint64 limbs, each < 2^24."""
    if len(secret) != SECRET_BYTES:
        raise SecAggError(f"secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    padded = np.frombuffer(secret + bytes(NUM_LIMBS * LIMB_BYTES - SECRET_BYTES), dtype=np.uint8)
    triples = padded.reshape(NUM_LIMBS, LIMB_BYTES).astype(np.uint64)  # (limbs, 3)
    return (triples[:, 0] << np.uint64(16)) | (triples[:, 1] << np.uint64(8)) | triples[:, 2]


def _limbs_to_secret(limbs: np.ndarray) -> bytes:
    if np.any(limbs >= (1 << (8 * LIMB_BYTES))):
        raise SecAggError("shares do not reconstruct a valid secret (wrong or too few shares)")
    triples = np.stack([(limbs >> np.uint64(s)) & np.uint64(0xFF) for s in (16, 8, 0)], axis=1).astype(np.uint8)
    raw = triples.tobytes()
    if any(raw[SECRET_BYTES:]):
        raise SecAggError("shares do not reconstruct a valid secret (wrong or too few shares)")
    return raw[:SECRET_BYTES]


def _random_field_elements(shape: tuple[int, ...], random: RandomBytes) -> np.ndarray:
    """Uniform elements of GF(p): 64 random bits reduced mod p (statistical distance < 2^-32)."""
    count = int(np.prod(shape))
    words = np.frombuffer(random(8 * count), dtype="<u8")
    return (words % np.uint64(PRIME)).reshape(shape)


def _check_points(xs: Sequence[int]) -> np.ndarray:
    points = np.asarray(list(xs), dtype=np.int64)
    if points.ndim != 1 or points.size == 0:
        raise SecAggError("need at least one evaluation point")
    if np.any(points < 1) or np.any(points >= PRIME):
        raise SecAggError(f"evaluation points must lie in [1, {PRIME - 1}]")
    if np.unique(points).size != points.size:
        raise SecAggError("evaluation points must be distinct")
    return points.astype(np.uint64)


def split_many(
    secrets: Sequence[bytes], xs: Sequence[int], threshold: int, *, random: RandomBytes = system_random
) -> list[list[Share]]:
    """Share several 32-byte secrets at the points `xs`; result[i][j] is the share of secret j at xs[i].

    Any `threshold` shares of a secret recover it; fewer are uniformly random.
    """
    points = _check_points(xs)
    check_int("threshold (at most the number of shares)", threshold, low=1, high=points.size, error=SecAggError)
    constant = np.stack([_secret_to_limbs(s) for s in secrets])  # (secrets, limbs)
    coefficients = _random_field_elements((threshold - 1,) + constant.shape, random)  # (t-1, secrets, limbs)
    p = np.uint64(PRIME)
    x = points[:, None, None]  # (n, 1, 1)
    # Horner from the highest coefficient down; acc stays < p, acc * x < 2^62.
    acc = np.zeros((points.size,) + constant.shape, dtype=np.uint64)  # (n, secrets, limbs)
    for j in range(threshold - 2, -1, -1):
        acc = (acc * x + coefficients[j]) % p
    acc = (acc * x + constant) % p
    raw = acc.astype(">u4").tobytes()  # (n, secrets, limbs) big-endian u32, row-major
    width = SHARE_VALUE_BYTES
    xs_int = points.tolist()
    return [
        [
            Share(x, raw[(i * len(secrets) + j) * width : (i * len(secrets) + j + 1) * width])
            for j in range(len(secrets))
        ]
        for i, x in enumerate(xs_int)
    ]


def split(
    secret: bytes, n: int, threshold: int, *, xs: Sequence[int] | None = None, random: RandomBytes = system_random
) -> list[Share]:
    """Share one 32-byte secret into n shares (at x = 1..n unless `xs` is given), threshold t."""
    points = list(range(1, n + 1)) if xs is None else list(xs)
    if len(points) != n:
        raise SecAggError(f"got {len(points)} evaluation points for n={n}")
    return [row[0] for row in split_many([secret], points, threshold, random=random)]


def lagrange_at_zero(xs: np.ndarray) -> np.ndarray:
    """Coefficients l_i with f(0) = sum_i l_i f(x_i) mod p, for distinct non-zero xs; (t,) uint64."""
    p = PRIME
    t = xs.size
    xs_int = [int(v) for v in xs]
    weights = np.empty(t, dtype=np.uint64)
    numerator_all = 1
    for v in xs_int:
        numerator_all = numerator_all * v % p
    for i, xi in enumerate(xs_int):
        denominator = xi
        for j, xj in enumerate(xs_int):
            if j != i:
                denominator = denominator * (xj - xi) % p
        weights[i] = numerator_all * pow(denominator, p - 2, p) % p
    return weights


def combine(shares: Sequence[Share], threshold: int) -> bytes:
    """Recover the secret from exactly `threshold` shares (the first t of those given are used).

    Raise SecAggError if fewer than t shares are given, x repeats, or the
    interpolated value is not a well-formed secret (a sign of wrong shares).
    """
    check_int("threshold", threshold, low=1, error=SecAggError)
    if len(shares) < threshold:
        raise SecAggError(f"need {threshold} shares to recover the secret, got {len(shares)}")
    used = list(shares[:threshold])
    points = _check_points([s.x for s in used])
    values = np.stack([s.elements() for s in used])  # (t, limbs)
    weights = lagrange_at_zero(points)[:, None]  # (t, 1)
    p = np.uint64(PRIME)
    limbs = ((weights * values) % p).sum(axis=0) % p  # (limbs,); t * p < 2^64 for t < 2^33
    return _limbs_to_secret(limbs)

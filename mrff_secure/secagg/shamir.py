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


def _powers(points: np.ndarray, count: int) -> np.ndarray:
    """(n, count) uint64: x_i^j mod p for j = 0..count-1 (each < p), doubling the filled columns per step."""
    p = np.uint64(PRIME)
    powers = np.empty((points.size, count), dtype=np.uint64)
    powers[:, 0] = 1
    filled = 1
    step = points % p  # x^filled
    while filled < count:
        width = min(filled, count - filled)
        block = powers[:, filled : filled + width]
        np.multiply(powers[:, :width], step[:, None], out=block)  # < 2^62
        block %= p
        filled += width
        if filled < count:
            step = powers[:, filled - 1] * points % p
    return powers


def _evaluate(points: np.ndarray, coefficients: np.ndarray, constant: np.ndarray) -> np.ndarray:
    """Each polynomial constant + sum_j coefficients[j] x^(j+1) mod p at every point: (n, secrets, limbs) uint64.

    A matrix product of the points' powers with the coefficients, exact in float64: powers and
    coefficients (< p < 2^31) are cut into 16-bit halves, so each product is below 2^32 and each
    sum of t (< 2^20) of them below 2^53, where float64 holds every integer; the halves are then
    recombined mod p in uint64. points: (n,) uint64 in [1, p); coefficients: (t-1, secrets, limbs);
    constant: (secrets, limbs).
    """
    t = coefficients.shape[0] + 1
    if t >= 1 << 20:
        raise SecAggError(f"threshold {t} is too large for exact evaluation")
    columns = np.concatenate([constant[None], coefficients]).reshape(t, -1)  # (t, secrets * limbs)
    width = columns.shape[1]
    mask, shift = np.uint64(0xFFFF), np.uint64(16)
    halves = np.concatenate([columns & mask, columns >> shift], axis=1).astype(np.float64)  # (t, 2 width)
    powers = _powers(points, t)  # (n, t)
    by_low = ((powers & mask).astype(np.float64) @ halves).astype(np.uint64)  # (n, 2 width), exact
    by_high = ((powers >> shift).astype(np.float64) @ halves).astype(np.uint64)
    p = np.uint64(PRIME)
    top = by_high[:, width:] % p  # coefficient of 2^32
    middle = by_low[:, width:] + by_high[:, :width]  # coefficient of 2^16, < 2^54
    values = ((top << shift) + middle % p) % p
    values = ((values << shift) + by_low[:, :width] % p) % p
    return values.reshape((points.size,) + constant.shape)


def split_values(
    secrets: Sequence[bytes], xs: Sequence[int], threshold: int, *, random: RandomBytes = system_random
) -> list[list[bytes]]:
    """split_many without the Share objects: result[i][j] is the 44-byte value of secret j's share at xs[i]
    (the same bytes split_many would put in Share(xs[i], ...), for the same randomness)."""
    points = _check_points(xs)
    check_int("threshold (at most the number of shares)", threshold, low=1, high=points.size, error=SecAggError)
    constant = np.stack([_secret_to_limbs(s) for s in secrets])  # (secrets, limbs)
    coefficients = _random_field_elements((threshold - 1,) + constant.shape, random)  # (t-1, secrets, limbs)
    values = _evaluate(points, coefficients, constant)  # (n, secrets, limbs)
    raw = values.astype(">u4").tobytes()  # (n, secrets, limbs) big-endian u32, row-major
    width = SHARE_VALUE_BYTES
    row = width * len(secrets)
    return [
        [raw[start + j * width : start + (j + 1) * width] for j in range(len(secrets))]
        for start in range(0, len(raw), row)
    ]


def split_many(
    secrets: Sequence[bytes], xs: Sequence[int], threshold: int, *, random: RandomBytes = system_random
) -> list[list[Share]]:
    """Share several 32-byte secrets at the points `xs`; result[i][j] is the share of secret j at xs[i].

    Any `threshold` shares of a secret recover it; fewer are uniformly random.
    """
    values = split_values(secrets, xs, threshold, random=random)
    return [[Share(int(x), value) for value in row] for x, row in zip(xs, values)]


def split(
    secret: bytes, n: int, threshold: int, *, xs: Sequence[int] | None = None, random: RandomBytes = system_random
) -> list[Share]:
    """Share one 32-byte secret into n shares (at x = 1..n unless `xs` is given), threshold t."""
    points = list(range(1, n + 1)) if xs is None else list(xs)
    if len(points) != n:
        raise SecAggError(f"got {len(points)} evaluation points for n={n}")
    return [row[0] for row in split_many([secret], points, threshold, random=random)]


def _row_products(matrix: np.ndarray) -> np.ndarray:
    """Product of each row mod p, (rows,) uint64, for entries < p: halving the columns pairwise
    (each product of two entries < 2^62, reduced at once)."""
    p = np.uint64(PRIME)
    while matrix.shape[1] > 1:
        if matrix.shape[1] % 2:
            matrix = np.concatenate([matrix, np.ones((matrix.shape[0], 1), dtype=np.uint64)], axis=1)
        matrix = matrix[:, 0::2] * matrix[:, 1::2]
        matrix %= p
    return matrix[:, 0]


def lagrange_at_zero(xs: np.ndarray) -> np.ndarray:
    """Coefficients l_i with f(0) = sum_i l_i f(x_i) mod p, for distinct non-zero xs; (t,) uint64.

    l_i = prod_j x_j / (x_i prod_{j != i} (x_j - x_i)) mod p: the t denominators are row products of the
    (t, t) difference matrix (diagonal set to 1), inverted together with one modular exponentiation
    (prefix products, one inverse, then back)."""
    p = PRIME
    points = np.asarray(xs, dtype=np.uint64) % np.uint64(p)  # (t,)
    t = points.size
    differences = (points[None, :] + np.uint64(p) - points[:, None]) % np.uint64(p)  # [i, j] = x_j - x_i mod p
    np.fill_diagonal(differences, points)  # the x_i factor of each denominator
    denominators = _row_products(differences).tolist()  # (t,) Python ints in [0, p)
    if 0 in denominators:
        raise SecAggError("evaluation points must be distinct and non-zero mod p")
    numerator_all = 1
    for v in points.tolist():
        numerator_all = numerator_all * v % p
    prefix = [1] * (t + 1)  # prefix[i] = prod of denominators[:i]
    for i, value in enumerate(denominators):
        prefix[i + 1] = prefix[i] * value % p
    inverse = pow(prefix[t], p - 2, p)  # 1 / prod of all denominators
    weights = [0] * t
    for i in range(t - 1, -1, -1):
        weights[i] = numerator_all * inverse % p * prefix[i] % p  # inverse * prefix[i] = 1 / denominators[i]
        inverse = inverse * denominators[i] % p
    return np.array(weights, dtype=np.uint64)


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

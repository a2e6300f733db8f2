"""Noise mechanisms behind one interface: ``mechanism.add_noise(x, *, rng) -> noisy x``.

- :class:`GridDiscreteGaussian` (local mode, in place of float Gaussian noise, which leaks through its
  low-order bits: Mironov 2012; Jin et al. 2022): the input snapped to a grid of spacing gamma (a power
  of two) plus gamma times a discrete Gaussian N_Z(0, (z C / gamma)^2): every output is an exact
  grid point, whatever the input's low bits (Canonne, Kamath, Steinke 2020).
- :class:`DistributedDiscreteGaussian` and :class:`DistributedSkellam` (integers, distributed
  mode): each client adds one share of variance (z*C*scale)^2 / n_min to its rotated, scaled,
  rounded vector, so that a secure sum over at least n_min = ceil(n * (1 - max_dropout_fraction))
  clients carries total variance >= (z*C*scale)^2. If fewer than n_min clients survive a round,
  the sum's noise falls short of what was accounted: :func:`check_survivors` refuses that round.

z = 0 adds no noise at all (the input comes back unchanged, as a copy).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from mrff_secure.checks import check_int, check_number
from mrff_secure.errors import PrivacyError


def check_survivors(*, survivors: int, n_min: int) -> None:
    """Refuse a distributed round whose survivors carry less noise than the accounting assumed."""
    if survivors < n_min:
        raise PrivacyError(
            f"only {survivors} clients survived but the noise shares assume at least n_min={n_min}: "
            "the sum would carry less noise than accounted; refuse the round"
        )


class NoiseMechanism(ABC):
    """A noise mechanism: what one client (or the server in tests) adds to one vector or a batch."""

    name: ClassVar[str]

    @property
    @abstractmethod
    def noise_std(self) -> float:
        """Per-coordinate standard deviation of the noise one call adds (in the input's units)."""

    @abstractmethod
    def add_noise(self, x: Any, *, rng: Any) -> Any:
        """Return ``x`` plus fresh noise on every coordinate (shape and type preserved)."""


GRID_SLACK = 2.0**-20  # the grid's rounding adds at most GRID_SLACK * C to an upload's L2 sensitivity
MAX_GRID_UNITS = 2.0**50  # |grid coordinate| bound: products with gamma stay exact in float64


def grid_spacing(*, clip: float, dim: int) -> float:
    """gamma = the largest power of two with sqrt(dim) * gamma <= GRID_SLACK * C.

    Snapping a vector to the nearest grid point moves it by at most sqrt(dim) * gamma / 2 in L2, so
    two snapped vectors differ by at most their float difference plus GRID_SLACK * C.
    """
    c = check_number("clip", clip, low=0.0, low_open=True, error=PrivacyError)
    check_int("dim", dim, low=1, error=PrivacyError)
    return 2.0 ** math.floor(math.log2(c * GRID_SLACK / math.sqrt(dim)))


class GridDiscreteGaussian(NoiseMechanism):
    """Local-mode noise safe in floating point: snap to the grid gamma Z, add gamma * N_Z(0, (zC/gamma)^2).

    The release is gamma * (round(x / gamma) + k) with k integer, computed exactly (every value
    below 2^50 grid units), so it is a discrete Gaussian mechanism on integers: its Renyi DP is at
    most that of the continuous Gaussian with the same sensitivity and std (Canonne, Kamath,
    Steinke 2020, Prop. 5 and composition over coordinates), for an L2 sensitivity of the snapped
    vector <= the float sensitivity + GRID_SLACK * C (see `grid_spacing`). The sampler's acceptance
    test is computed in float64 (`sample_discrete_gaussian`), not in exact arithmetic.
    Input and output are numpy float64 arrays (d,) or (clients, d).
    """

    name = "grid_discrete_gaussian"

    def __init__(self, *, noise_multiplier: float, clip: float, dim: int) -> None:
        self.noise_multiplier = check_number("noise_multiplier", noise_multiplier, low=0.0, error=PrivacyError)
        self.clip = check_number("clip", clip, low=0.0, low_open=True, error=PrivacyError)
        self.dim = dim
        self.gamma = grid_spacing(clip=clip, dim=dim)
        if self.noise_std / self.gamma > MAX_GRID_UNITS / 64:
            raise PrivacyError(f"noise std {self.noise_std:.4g} is too large for the grid {self.gamma:.4g}")

    @property
    def noise_std(self) -> float:
        return self.noise_multiplier * self.clip

    def add_noise(self, x: Any, *, rng: Any) -> np.ndarray:
        if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.floating) or x.shape[-1] != self.dim:
            raise PrivacyError(f"GridDiscreteGaussian takes a float numpy array of shape (..., {self.dim})")
        if not isinstance(rng, np.random.Generator):
            raise PrivacyError("rng must be a numpy.random.Generator")
        units = np.rint(x.astype(np.float64) / self.gamma)  # exact: gamma is a power of two
        if not np.all(np.isfinite(units)) or np.abs(units).max(initial=0.0) > MAX_GRID_UNITS / 2:
            raise PrivacyError("input outside the grid's exact range (clip it first)")
        k = units.astype(np.int64)
        if self.noise_std > 0.0:
            k = k + sample_discrete_gaussian(self.noise_std / self.gamma, k.shape, rng)
        return k.astype(np.float64) * self.gamma


SKELLAM_MAX_VARIANCE = 2.0**46  # see distributed.MAX_SKELLAM_SHARE_VARIANCE


def sample_discrete_gaussian(sigma: float, size: int | tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Draw N_Z(0, sigma^2) (P[k] proportional to exp(-k^2 / (2 sigma^2))) as int64.

    Rejection from a discrete Laplace of scale t = floor(sigma) + 1 (Canonne, Kamath, Steinke
    2020, Alg. 3), vectorized; the Laplace is the difference of two geometric variables. The
    acceptance test is computed in floating point (not the paper's exact-arithmetic version).
    """
    s = check_number("sigma", sigma, low=0.0, low_open=True, error=PrivacyError)
    shape = (size,) if isinstance(size, int) else tuple(size)
    count = int(np.prod(shape, dtype=np.int64))
    t = math.floor(s) + 1
    p = -math.expm1(-1.0 / t)  # 1 - exp(-1/t)
    out = np.empty(count, dtype=np.int64)
    todo = np.arange(count)
    while todo.size:
        k = todo.size
        y = rng.geometric(p, size=k).astype(np.int64) - rng.geometric(p, size=k).astype(np.int64)
        accept_prob = np.exp(-((np.abs(y) - s * s / t) ** 2) / (2.0 * s * s))
        ok = rng.random(k) < accept_prob
        out[todo[ok]] = y[ok]
        todo = todo[~ok]
    return out.reshape(shape)


def sample_skellam(variance: float, size: int | tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Draw symmetric Skellam noise Poisson(v/2) - Poisson(v/2) (variance v) as int64.

    Refuses v > 2^46: numpy's Poisson sampler is inaccurate for means far above 1e14.
    """
    v = check_number("variance", variance, low=0.0, low_open=True, error=PrivacyError)
    if v > SKELLAM_MAX_VARIANCE * (1.0 + 1e-9):  # the planner caps at exactly 2^46
        raise PrivacyError(
            f"Skellam variance {v:.4g} > 2^46: numpy's Poisson sampler is inaccurate there; lower the scale"
        )
    shape = (size,) if isinstance(size, int) else tuple(size)
    return rng.poisson(v / 2.0, size=shape).astype(np.int64) - rng.poisson(v / 2.0, size=shape).astype(np.int64)


class _DistributedIntegerMechanism(NoiseMechanism):
    """One client's integer noise share: variance (z * C * scale)^2 / n_min per coordinate."""

    def __init__(self, *, noise_multiplier: float, clip: float, scale: float, n_min: int) -> None:
        self.noise_multiplier = check_number("noise_multiplier", noise_multiplier, low=0.0, error=PrivacyError)
        self.clip = check_number("clip", clip, low=0.0, low_open=True, error=PrivacyError)
        self.scale = check_number("scale", scale, low=0.0, low_open=True, error=PrivacyError)
        self.n_min = check_int("n_min", n_min, low=1, error=PrivacyError)

    @property
    def total_std(self) -> float:
        """Std of the noise in a sum over n_min shares, integer units: z * C * scale."""
        return self.noise_multiplier * self.clip * self.scale

    @property
    def share_variance(self) -> float:
        """Variance of one client's share, integer units: (z C scale)^2 / n_min."""
        return self.total_std**2 / self.n_min

    @property
    def noise_std(self) -> float:
        return math.sqrt(self.share_variance)

    def _check_input(self, x: Any, rng: Any) -> None:
        if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.integer):
            raise PrivacyError(f"{type(self).__name__} adds noise to integer numpy arrays (the rounded vector)")
        if not isinstance(rng, np.random.Generator):
            raise PrivacyError("rng must be a numpy.random.Generator")

    @abstractmethod
    def _sample(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray: ...

    def add_noise(self, x: Any, *, rng: Any) -> np.ndarray:
        self._check_input(x, rng)
        if self.share_variance == 0.0:
            return x.astype(np.int64, copy=True)
        return x.astype(np.int64) + self._sample(x.shape, rng)


class DistributedDiscreteGaussian(_DistributedIntegerMechanism):
    """Distributed discrete Gaussian (Kairouz, Liu, Steinke 2021): share N_Z(0, sigma^2).

    Their RDP bound (Prop. 14) needs sigma >= 1/2 per share: construction refuses a smaller
    nonzero share (raise ``scale``).
    """

    name = "discrete_gaussian"

    def __init__(self, *, noise_multiplier: float, clip: float, scale: float, n_min: int) -> None:
        super().__init__(noise_multiplier=noise_multiplier, clip=clip, scale=scale, n_min=n_min)
        if 0.0 < self.noise_std < 0.5:
            raise PrivacyError(
                f"discrete Gaussian share sigma={self.noise_std:.4g} < 1/2 (z={noise_multiplier}, C={clip}, "
                f"scale={scale}, n_min={n_min}); the accounting bound needs sigma >= 1/2: raise the scale"
            )

    def _sample(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        return sample_discrete_gaussian(self.noise_std, shape, rng)


class DistributedSkellam(_DistributedIntegerMechanism):
    """Distributed Skellam (Agarwal, Kairouz, Liu 2021): share Poisson(v/2) - Poisson(v/2).

    Sums of Skellam shares are exactly Skellam with the summed variance.
    """

    name = "skellam"

    def _sample(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        return sample_skellam(self.share_variance, shape, rng)


DISTRIBUTED_MECHANISM_CLASSES: dict[str, type[_DistributedIntegerMechanism]] = {
    "discrete_gaussian": DistributedDiscreteGaussian,
    "skellam": DistributedSkellam,
}

"""Noise statistics: seeded, tolerances of 6 standard errors of the sample variance."""

import math

import numpy as np
import pytest

from mrff_secure.dp.mechanisms import (
    DistributedDiscreteGaussian,
    DistributedSkellam,
    GridDiscreteGaussian,
    NoiseMechanism,
    check_survivors,
    sample_discrete_gaussian,
    sample_skellam,
)
from mrff_secure.errors import PrivacyError


def _var_tolerance(variance: float, n: int, excess_kurtosis: float = 0.0) -> float:
    # SE of the sample variance: variance * sqrt(2 / (n - 1) + excess_kurtosis / n)
    return 6.0 * variance * math.sqrt(2.0 / (n - 1) + excess_kurtosis / n)


def test_interface():
    for mech in (
        GridDiscreteGaussian(noise_multiplier=1.0, clip=1.0, dim=4),
        DistributedSkellam(noise_multiplier=1.0, clip=1.0, scale=10.0, n_min=4),
    ):
        assert isinstance(mech, NoiseMechanism)
        assert mech.noise_std > 0


def test_zero_noise_multiplier_adds_nothing():
    ints = np.arange(5, dtype=np.int64)
    for cls in (DistributedDiscreteGaussian, DistributedSkellam):
        m = cls(noise_multiplier=0.0, clip=1.0, scale=100.0, n_min=3)
        assert np.array_equal(m.add_noise(ints, rng=np.random.default_rng(0)), ints)


def test_rng_and_array_types_are_checked():
    with pytest.raises(PrivacyError):
        GridDiscreteGaussian(noise_multiplier=1.0, clip=1.0, dim=3).add_noise(np.zeros(3), rng=None)
    with pytest.raises(PrivacyError):
        DistributedSkellam(noise_multiplier=1.0, clip=1.0, scale=10.0, n_min=2).add_noise(
            np.zeros(3), rng=np.random.default_rng(0)
        )  # floats, not integers


@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.7, 40.0])
def test_discrete_gaussian_sampler(sigma):
    x = sample_discrete_gaussian(sigma, 200_000, np.random.default_rng(11))
    assert x.dtype == np.int64
    # exact variance of N_Z(0, sigma^2) by summing its pmf
    k = np.arange(-int(12 * sigma) - 10, int(12 * sigma) + 11)
    w = np.exp(-(k**2) / (2 * sigma**2))
    var = float((w * k**2).sum() / w.sum())
    assert abs(x.var() - var) <= _var_tolerance(var, x.size, excess_kurtosis=1.0)
    assert abs(x.mean()) <= 6 * math.sqrt(var / x.size)
    # pmf of 0 (chi-square-free check of the shape at the mode)
    p0 = 1.0 / w.sum()
    assert abs((x == 0).mean() - p0) <= 6 * math.sqrt(p0 * (1 - p0) / x.size)


def test_skellam_sampler():
    x = sample_skellam(12.5, 200_000, np.random.default_rng(5))
    assert abs(x.var() - 12.5) <= _var_tolerance(12.5, x.size, excess_kurtosis=1 / 12.5)


@pytest.mark.parametrize("cls", [DistributedDiscreteGaussian, DistributedSkellam])
@pytest.mark.parametrize("n, frac", [(10, 0.0), (25, 0.2)])
def test_distributed_shares_sum_to_target_variance(cls, n, frac):
    z, clip, scale = 0.7, 1.0, 64.0
    n_min = math.ceil(n * (1 - frac))
    mech = cls(noise_multiplier=z, clip=clip, scale=scale, n_min=n_min)
    assert mech.share_variance == pytest.approx((z * clip * scale) ** 2 / n_min)
    d = 4000
    rng = np.random.default_rng(2024)
    zeros = np.zeros((n_min, d), dtype=np.int64)  # the worst case: exactly n_min survivors
    total = mech.add_noise(zeros, rng=rng).sum(axis=0)  # (d,)
    target = (z * clip * scale) ** 2
    assert abs(total.var() - target) <= _var_tolerance(target, d, excess_kurtosis=1 / target)
    # with all n clients present the sum carries at least the target
    full = mech.add_noise(np.zeros((n, d), dtype=np.int64), rng=rng).sum(axis=0)
    assert full.var() >= target - _var_tolerance(target, d, excess_kurtosis=1 / target)


def test_discrete_gaussian_share_below_half_refused():
    with pytest.raises(PrivacyError, match="sigma"):
        DistributedDiscreteGaussian(noise_multiplier=0.1, clip=1.0, scale=1.0, n_min=100)


def test_check_survivors():
    check_survivors(survivors=8, n_min=8)
    with pytest.raises(PrivacyError, match="n_min=8"):
        check_survivors(survivors=7, n_min=8)


@pytest.mark.parametrize(
    "bad",
    [
        dict(noise_multiplier=-1.0, clip=1.0),
        dict(noise_multiplier=1.0, clip=0.0),
        dict(noise_multiplier=float("nan"), clip=1.0),
    ],
)
def test_bad_parameters(bad):
    with pytest.raises(PrivacyError):
        GridDiscreteGaussian(**bad, dim=4)


# ---------------------------------------------------------------- D7: local noise safe in floating point


def test_grid_spacing_bounds_the_snapping_slack():
    from mrff_secure.dp.mechanisms import GRID_SLACK, grid_spacing

    for clip, dim in ((0.5, 13), (18.0, 71386), (1e-3, 1)):
        gamma = grid_spacing(clip=clip, dim=dim)
        assert math.log2(gamma) == int(math.log2(gamma))  # a power of two: x / gamma is exact
        assert GRID_SLACK * clip / 2 < math.sqrt(dim) * gamma <= GRID_SLACK * clip


def test_grid_gaussian_outputs_do_not_depend_on_the_inputs_low_bits():
    """Mironov's attack reads the input from the low bits of x + float noise; the grid mechanism has none."""
    mech = GridDiscreteGaussian(noise_multiplier=0.7, clip=0.5, dim=2000)
    rng = np.random.default_rng(0)
    points = np.round(rng.normal(0, 0.01, size=(3, 2000)) / mech.gamma) * mech.gamma
    x = points + mech.gamma * rng.uniform(-0.4, 0.4, size=points.shape)
    nudged = points + mech.gamma * rng.uniform(-0.4, 0.4, size=points.shape)  # same grid points, other low bits
    out = mech.add_noise(x, rng=np.random.default_rng(5))
    assert np.array_equal(out, mech.add_noise(nudged, rng=np.random.default_rng(5)))
    units = out / mech.gamma
    assert np.array_equal(units, np.round(units))  # every output is an exact grid point

    def float_gaussian(v):  # the construction D7 forbids: float noise of std z*C added to the input
        return v + np.random.default_rng(5).normal(0.0, 0.35, size=v.shape)

    assert not np.array_equal(float_gaussian(x), float_gaussian(nudged))
    noise = out - np.round(x / mech.gamma) * mech.gamma
    assert abs(noise.std() / 0.35 - 1) < 0.03  # 6,000 draws of std z*C


def test_grid_gaussian_refuses_what_it_cannot_represent_exactly():
    mech = GridDiscreteGaussian(noise_multiplier=1.0, clip=1.0, dim=4)
    with pytest.raises(PrivacyError, match="grid"):
        mech.add_noise(np.full(4, 1e12), rng=np.random.default_rng(0))
    with pytest.raises(PrivacyError, match="shape"):
        mech.add_noise(np.zeros(5), rng=np.random.default_rng(0))
    with pytest.raises(PrivacyError, match="too large"):
        GridDiscreteGaussian(noise_multiplier=1e12, clip=1.0, dim=4)

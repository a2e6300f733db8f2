import math

import numpy as np
import pytest

from mrff_secure.dp.discretize import (
    centered_lift,
    conditional_randomized_round,
    modular_clipping_probability,
    rounded_l1_bound,
    rounded_l2_bound,
    wrap_to_modulus,
)
from mrff_secure.dp.distributed import DistributedEncoder, choose_scale, plan_distributed
from mrff_secure.errors import PrivacyError


def test_rounded_bounds():
    assert rounded_l2_bound(scaled_norm=10.0, dim=16, beta=0.0) == 14.0
    b = rounded_l2_bound(scaled_norm=100.0, dim=16, beta=math.exp(-0.5))
    assert b == pytest.approx(math.sqrt(100**2 + 4 + 1.0 * (100 + 2)))
    assert 100.0 < b < 104.0
    assert rounded_l1_bound(l2_bound=3.0, dim=100) == 9.0
    assert rounded_l1_bound(l2_bound=30.0, dim=4) == 60.0


def test_conditional_rounding_respects_bound_and_is_nearly_unbiased():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 256))
    x *= 50.0 / np.linalg.norm(x)
    bound = rounded_l2_bound(scaled_norm=50.0, dim=256, beta=math.exp(-0.5))
    draws = conditional_randomized_round(np.repeat(x, 4000, axis=0), norm_bound=bound, rng=rng)
    assert draws.dtype == np.int64
    assert np.all(np.sqrt((draws.astype(np.float64) ** 2).sum(axis=1)) <= bound)
    assert np.all(np.abs(draws - x) < 1.0)
    # the rejection step adds a small bias (towards smaller norms); the mean stays within 0.05
    assert np.abs(draws.mean(axis=0) - x[0]).max() < 0.05


def test_conditional_rounding_gives_up_on_an_impossible_bound():
    with pytest.raises(PrivacyError, match="conditional rounding"):
        conditional_randomized_round(np.full(8, 0.5), norm_bound=0.1, rng=np.random.default_rng(0), max_tries=20)


def test_wrap_and_lift_round_trip():
    v = np.array([-(2**15), -1, 0, 1, 2**15 - 1], dtype=np.int64)
    u = wrap_to_modulus(v, modulus_bits=16)
    assert u.min() >= 0 and u.max() < 2**16
    assert np.array_equal(centered_lift(u, modulus_bits=16), v)
    # sums of residues lift to the true sum while it stays in range
    parts = np.array([[30000, -5], [-29000, 7], [500, -1]], dtype=np.int64)
    total = wrap_to_modulus(parts, modulus_bits=16).sum(axis=0)
    assert np.array_equal(centered_lift(total, modulus_bits=16), parts.sum(axis=0))


def test_modular_clipping_bound_holds_empirically():
    # a deliberately tight modulus so that wrap-around is frequent enough to measure
    n, p, c, scale, var, bits = 20, 64, 1.0, 40.0, 30.0, 10
    for mech in ("discrete_gaussian", "skellam"):
        rep = modular_clipping_probability(
            l2_bound=c, scale=scale, padded_dim=p, n_clients=n, share_variance=var, modulus_bits=bits, mechanism=mech
        )
        assert 0 < rep.per_coordinate < 1 and rep.half_range == 512
        assert rep.any_coordinate == min(1.0, rep.per_coordinate * p)
        rng = np.random.default_rng(1)
        trials = 400
        x = rng.normal(size=(trials, n, p))
        x *= (c * scale) / np.linalg.norm(x, axis=2, keepdims=True)
        x[:, :, :] = x[:, :1, :]  # every client the same direction: the worst case for the sum
        sums = np.floor(x + rng.random(x.shape)).sum(axis=1)  # randomized rounding, (trials, p)
        sums += rng.normal(0.0, math.sqrt(n * var), size=sums.shape)
        freq = float((np.abs(sums) >= rep.half_range).mean())
        assert freq <= rep.per_coordinate


def test_choose_scale_meets_target_and_is_maximal():
    kw = dict(
        mechanism="skellam", l2_bound=1.0, noise_std=1.0, padded_dim=1024, n_clients=100, n_min=90, modulus_bits=20
    )
    s = choose_scale(**kw, target_clip_probability=1e-6)

    def prob(scale):
        return modular_clipping_probability(
            l2_bound=1.0,
            scale=scale,
            padded_dim=1024,
            n_clients=100,
            share_variance=(scale * 1.0) ** 2 / 90,
            modulus_bits=20,
            mechanism="skellam",
        ).any_coordinate

    assert prob(s) <= 1e-6 < prob(s * 1.01)
    with pytest.raises(PrivacyError, match="too small"):
        choose_scale(**(kw | dict(modulus_bits=4, n_clients=10**6)))


@pytest.mark.parametrize("mechanism", ["discrete_gaussian", "skellam"])
def test_end_to_end_sum_has_target_noise(mechanism):
    n, dim, z, clip = 12, 300, 0.5, 1.0
    plan = plan_distributed(
        mechanism=mechanism,
        dim=dim,
        n_clients=n,
        max_dropout_fraction=0.0,
        clip=clip,
        noise_multiplier=z,
        modulus_bits=32,
    )
    assert plan.padded_dim == 512 and plan.n_min == 12
    assert plan.clipping.any_coordinate <= 1e-6
    enc = DistributedEncoder(plan, rotation_seed=b"round-3")
    rng = np.random.default_rng(99)
    updates = rng.normal(size=(n, dim)) * np.array([[0.01]] * 6 + [[1.0]] * 6)  # half are clipped
    residues = enc.encode(updates, rng=rng)
    assert residues.shape == (n, 512) and residues.min() >= 0 and residues.max() < 2**32
    total = np.mod(residues.sum(axis=0), 2**32)  # what secure aggregation returns
    decoded = enc.decode(total, survivors=n)
    clipped = updates * np.minimum(1.0, clip / np.linalg.norm(updates, axis=1, keepdims=True))
    err = decoded - clipped.sum(axis=0)
    # noise of std z*C (the rounding error is ~1/scale, negligible)
    target = (z * clip) ** 2
    assert abs(err.var() - target) <= 6 * target * math.sqrt(2 / (dim - 1)) + 1e-6
    assert abs(err.mean()) <= 6 * z * clip / math.sqrt(dim)
    with pytest.raises(PrivacyError, match="n_min"):
        enc.decode(total, survivors=n - 1)


def test_plan_with_count_tail_and_dropouts():
    plan = plan_distributed(
        mechanism="skellam",
        dim=10,
        n_clients=10,
        max_dropout_fraction=0.3,
        clip=1.0,
        noise_multiplier=1.0,
        modulus_bits=40,
        clip_len=8,
        extra_sensitivity=math.sqrt(2),
    )
    assert plan.n_min == 7 and plan.l2_bound == pytest.approx(math.sqrt(3))
    assert plan.share_variance == pytest.approx((plan.scale * 1.0) ** 2 / 7)
    enc = DistributedEncoder(plan, rotation_seed=5)
    ok = np.array([5.0] * 8 + [1.0, 1.0])
    enc.encode(ok, rng=np.random.default_rng(0))
    with pytest.raises(PrivacyError, match="extra_sensitivity"):
        enc.encode(np.array([0.0] * 8 + [2.0, 0.0]), rng=np.random.default_rng(0))
    account = plan.account(rounds=5, delta=1e-5)
    assert account.n_shares == 7 and math.isfinite(account.epsilon)


def test_plan_refuses_impossible_discrete_gaussian_share():
    with pytest.raises(PrivacyError, match="sigma"):
        plan_distributed(
            mechanism="discrete_gaussian",
            dim=100,
            n_clients=1000,
            max_dropout_fraction=0.0,
            clip=1.0,
            noise_multiplier=0.01,
            modulus_bits=40,
            scale=1.0,
        )

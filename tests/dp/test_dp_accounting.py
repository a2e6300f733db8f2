"""Golden numbers: our epsilons equal opacus' accountants called directly; discrete -> Gaussian limit."""

import math

import numpy as np
import pytest
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from mrff_secure.dp.accounting import (
    DISCRETE_ORDERS,
    ddg_rdp,
    ddg_tau,
    discrete_epsilon,
    epsilon,
    gaussian_epsilons,
    gaussian_rdp_epsilon_at_orders,
    local_upload_epsilon,
    normalize_history,
    prv_epsilon,
    rdp_epsilon,
    skellam_rdp,
)
from mrff_secure.errors import PrivacyError

CASES = [(1.0, 0.01, 1000, 1e-5), (0.8, 0.1, 100, 1e-4), (2.0, 1.0, 50, 1791**-1.1), (0.5, 1.0, 1, 1e-5)]


@pytest.mark.parametrize("z, q, steps, delta", CASES)
def test_equals_opacus_accountants_called_directly(z, q, steps, delta):
    ours = epsilon(noise_multiplier=z, sample_rate=q, rounds=steps, delta=delta)
    prv, rdp = PRVAccountant(), RDPAccountant()
    prv.history = [(z, q, steps)]
    rdp.history = [(z, q, steps)]
    assert ours.prv == prv.get_epsilon(delta=delta)
    assert ours.rdp == rdp.get_epsilon(delta=delta)
    assert ours.headline == ours.prv
    assert ours.prv <= ours.rdp + 0.02  # PRV is the tighter one


def test_heterogeneous_history_matches_opacus_steps():
    hist = [(1.0, 0.1, 30), (1.0, 0.1, 20), (1.5, 0.05, 40)]
    acc = RDPAccountant()
    for z, q, s in hist:
        for _ in range(s):
            acc.step(noise_multiplier=z, sample_rate=q)
    assert normalize_history(hist) == acc.history
    assert rdp_epsilon(history=hist, delta=1e-5) == acc.get_epsilon(delta=1e-5)
    p = PRVAccountant()
    p.history = acc.history
    assert prv_epsilon(history=hist, delta=1e-5) == p.get_epsilon(delta=1e-5)


def test_local_upload_is_one_step_at_rate_one():
    ours = local_upload_epsilon(noise_multiplier=0.5, delta=1e-5)
    acc = PRVAccountant()
    acc.history = [(0.5, 1.0, 1)]
    assert ours.prv == acc.get_epsilon(delta=1e-5)


def test_no_noise_is_infinite_never_zero():
    e = epsilon(noise_multiplier=0.0, sample_rate=1.0, rounds=10, delta=1e-5)
    assert e.prv == math.inf and e.rdp == math.inf and e.headline == math.inf
    assert gaussian_epsilons(history=[(1.0, 0.1, 5), (0.0, 0.1, 1)], delta=1e-5).headline == math.inf
    # nothing released at all is epsilon 0
    assert gaussian_epsilons(history=[], delta=1e-5).headline == 0.0


def test_prv_out_of_range_falls_back_to_rdp_with_a_note():
    # local mode at the paper's z = 0.5 over 500 rounds: epsilon in the thousands
    e = epsilon(noise_multiplier=0.5, sample_rate=1.0, rounds=500, delta=1e-5)
    assert e.prv is None and "PRV" in e.prv_note
    assert e.headline == e.rdp > 1000


def test_more_noise_less_epsilon():
    eps = [epsilon(noise_multiplier=z, sample_rate=0.1, rounds=50, delta=1e-5).prv for z in (0.8, 1.0, 2.0, 4.0)]
    assert eps == sorted(eps, reverse=True)


@pytest.mark.parametrize(
    "bad", [dict(delta=0.0), dict(delta=1.0), dict(noise_multiplier=-1.0), dict(sample_rate=1.5), dict(rounds=-1)]
)
def test_bad_parameters(bad):
    kwargs = dict(noise_multiplier=1.0, sample_rate=0.1, rounds=10, delta=1e-5) | bad
    with pytest.raises(PrivacyError):
        epsilon(**kwargs)


# ---------------------------------------------------------------- discrete mechanisms


def test_ddg_rdp_known_answer_and_single_share():
    orders = [2, 8, 32]
    # one share: tau = 0, exactly the Gaussian alpha * Delta^2 / (2 sigma^2)
    out = ddg_rdp(orders=orders, l2_sensitivity=3.0, l1_sensitivity=9.0, share_sigma=2.0, n_shares=1, dim=10)
    np.testing.assert_allclose(out, np.array(orders) * 9.0 / 8.0)
    # by hand for n = 2, sigma = 0.5, d = 4, Delta2 = 2, Delta1 = 4
    tau = 10 * math.exp(-2 * math.pi**2 * 0.25 * 0.5)
    assert ddg_tau(share_sigma=0.5, n_shares=2) == pytest.approx(tau)
    a = 2 / (math.sqrt(2) * 0.5)
    b = 4 / (math.sqrt(2) * 0.5)
    alpha = 3
    want = min(
        alpha * a * a / 2 + tau * 4, alpha / 2 * (a * a + 2 * b * tau + tau * tau * 4), alpha / 2 * (a + tau * 2) ** 2
    )
    got = ddg_rdp(orders=[alpha], l2_sensitivity=2, l1_sensitivity=4, share_sigma=0.5, n_shares=2, dim=4)
    assert got[0] == pytest.approx(want)
    with pytest.raises(PrivacyError):
        ddg_rdp(orders=[2], l2_sensitivity=1, l1_sensitivity=1, share_sigma=0.4, n_shares=2, dim=4)


def test_skellam_rdp_known_answer():
    # V = 2 mu: alpha D2^2/(4 mu) + min(((2 alpha - 1) D2^2 + 6 D1)/(16 mu^2), 3 D1/(4 mu))
    mu, d2, d1, alpha = 50.0, 3.0, 7.0, 4
    want = alpha * d2**2 / (4 * mu) + min(((2 * alpha - 1) * d2**2 + 6 * d1) / (16 * mu**2), 3 * d1 / (4 * mu))
    got = skellam_rdp(orders=[alpha], l2_sensitivity=d2, l1_sensitivity=d1, total_variance=2 * mu)
    assert got[0] == pytest.approx(want)
    with pytest.raises(PrivacyError):
        skellam_rdp(orders=[1.5], l2_sensitivity=1, l1_sensitivity=1, total_variance=1.0)


@pytest.mark.parametrize("mechanism", ["discrete_gaussian", "skellam"])
def test_discrete_epsilon_approaches_gaussian_limit(mechanism):
    z, clip, dim, n_min, rounds, delta = 1.0, 1.0, 1024, 100, 20, 1e-5
    gauss = gaussian_rdp_epsilon_at_orders(noise_multiplier=z, rounds=rounds, delta=delta)
    # the same conversion, computed straight from opacus
    rdp = compute_rdp(q=1.0, noise_multiplier=z, steps=rounds, orders=list(DISCRETE_ORDERS))
    assert gauss == pytest.approx(float(get_privacy_spent(orders=list(DISCRETE_ORDERS), rdp=rdp, delta=delta)[0]))
    eps = [
        discrete_epsilon(
            mechanism=mechanism,
            noise_multiplier=z,
            clip=clip,
            scale=s,
            dim=dim,
            n_min=n_min,
            rounds=rounds,
            delta=delta,
            beta=math.exp(-0.5),
        ).epsilon
        for s in (2.0**6, 2.0**9, 2.0**12, 2.0**16, 2.0**22)
    ]
    assert all(e >= gauss * (1 - 1e-9) for e in eps)  # never better than the continuous Gaussian
    assert eps == sorted(eps, reverse=True)  # finer scale, closer to it
    assert eps[-1] == pytest.approx(gauss, rel=2e-3)


def test_discrete_epsilon_zero_noise_and_zero_rounds():
    kw = dict(mechanism="skellam", clip=1.0, scale=100.0, dim=64, n_min=10, delta=1e-5, beta=0.5)
    assert discrete_epsilon(noise_multiplier=0.0, rounds=3, **kw).epsilon == math.inf
    assert discrete_epsilon(noise_multiplier=1.0, rounds=0, **kw).epsilon == 0.0


def test_discrete_account_uses_the_worst_case_share_count():
    kw = dict(
        mechanism="discrete_gaussian",
        noise_multiplier=1.0,
        clip=1.0,
        scale=2.0**10,
        dim=256,
        rounds=10,
        delta=1e-5,
        beta=math.exp(-0.5),
    )
    assert discrete_epsilon(n_min=80, **kw).n_shares == 80

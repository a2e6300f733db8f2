import math

import pytest
from opacus.accountants.utils import get_noise_multiplier

from mrff_secure.dp.calibration import (
    epsilon_for_noise_multiplier,
    noise_multiplier_for_epsilon,
    resolve_noise_multiplier,
)
from mrff_secure.dp.config import DPConfig
from mrff_secure.errors import PrivacyError


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
@pytest.mark.parametrize("target, q, rounds", [(8.0, 1.0, 100), (2.0, 0.05, 200)])
def test_round_trip_epsilon_z_epsilon(accountant, target, q, rounds):
    delta = 1e-5
    z = noise_multiplier_for_epsilon(target_epsilon=target, delta=delta, sample_rate=q, rounds=rounds,
                                     accountant=accountant, epsilon_tolerance=0.01)
    # our own bracketed search (bounded in time) lands in the same window as opacus' bisection
    assert z == pytest.approx(get_noise_multiplier(target_epsilon=target, target_delta=delta, sample_rate=q,
                                                   steps=rounds, accountant=accountant, epsilon_tolerance=0.01),
                              rel=2e-3)
    eps = epsilon_for_noise_multiplier(noise_multiplier=z, delta=delta, sample_rate=q, rounds=rounds)
    got = eps.prv if accountant == "prv" else eps.rdp
    assert target - 0.01 <= got <= target
    # and z -> epsilon -> z lands on (nearly) the same z
    z2 = noise_multiplier_for_epsilon(target_epsilon=got, delta=delta, sample_rate=q, rounds=rounds,
                                      accountant=accountant, epsilon_tolerance=0.001)
    assert z2 == pytest.approx(z, rel=0.02)


def test_impossible_target_is_a_privacy_error():
    with pytest.raises(PrivacyError, match="cannot reach"):
        noise_multiplier_for_epsilon(target_epsilon=1e-9, delta=1e-12, sample_rate=1.0, rounds=10**6,
                                     accountant="rdp")


@pytest.mark.parametrize("bad", [dict(target_epsilon=0.0), dict(target_epsilon=math.inf), dict(delta=0.0),
                                 dict(sample_rate=0.0), dict(rounds=0), dict(accountant="gdp")])
def test_bad_arguments(bad):
    kwargs = dict(target_epsilon=1.0, delta=1e-5, sample_rate=0.1, rounds=10) | bad
    with pytest.raises(PrivacyError):
        noise_multiplier_for_epsilon(**kwargs)


def test_resolve_noise_multiplier():
    assert resolve_noise_multiplier(DPConfig(), rounds=10, sample_rate=1.0, n_users=100) == 0.0
    cfg = DPConfig(mode="local", noise_multiplier=0.3)
    assert resolve_noise_multiplier(cfg, rounds=10, sample_rate=1.0, n_users=100) == 0.3
    cfg = DPConfig(mode="distributed", target_epsilon=10.0)
    z = resolve_noise_multiplier(cfg, rounds=20, sample_rate=1.0, n_users=1000)
    e = epsilon_for_noise_multiplier(noise_multiplier=z, delta=1000**-1.1, sample_rate=1.0, rounds=20)
    assert 9.99 <= e.prv <= 10.0

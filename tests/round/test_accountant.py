"""The one accounting of a round (`round.accountant`): adjacency per view, both phases, the discrete headline,
no amplification, calibration to the headline, and the thin stateful accountant."""

import json
import math

import pytest

from mrff_secure.dp import epsilon
from mrff_secure.errors import ConfigError, PrivacyError
from mrff_secure.round.accountant import RoundAccountant, account_rounds, calibrate_noise_multiplier
from mrff_secure.round.release import RoundRelease

DELTA = 1e-5


def release(mode="distributed", z=1.0, **changes):
    base = dict(
        dp_mode=mode,
        secure_aggregation=mode == "distributed",
        clip=0.5,
        noise_multiplier=z,
        num_blocks=2,
        num_groups=4,
        delta_size=500,
        participants=50,
        n_min=50,
        modulus_bits=48,
        count_cap=1,
        mechanism="discrete_gaussian" if mode == "distributed" else None,
    )
    return RoundRelease(**{**base, **changes})


def test_sensitivities_follow_the_servers_view():
    local = release("local")
    assert local.adjacency == "replace-one"
    assert local.gaussian_parts() == [(pytest.approx(math.sqrt(4 * 0.25 + 2 * 2 + 1) + 2.0**-20 * 0.5), 0.5)]
    secure = release()
    assert secure.adjacency == "zero-out"
    assert secure.gaussian_parts() == [
        (pytest.approx(math.sqrt(0.25 + 1)), 0.5),
        (pytest.approx(math.sqrt(2)), pytest.approx(math.sqrt(2))),
    ]
    assert secure.gaussian_parts("replace-one") == [
        (pytest.approx(math.sqrt(1 + 1)), 0.5),
        (pytest.approx(2.0), pytest.approx(math.sqrt(2))),
    ]
    assert release(num_blocks=0, num_groups=0).gaussian_parts() == [(pytest.approx(math.sqrt(1.25)), 0.5)]


def test_headline_is_the_discrete_bound_and_grows_with_every_round():
    account = account_rounds(release(), rounds=20, delta=DELTA)
    assert account.epsilon >= account.gaussian_limit.rdp * 0.99
    assert account.epsilon_replace_one > account.epsilon
    assert account_rounds(release(), rounds=40, delta=DELTA).epsilon > account.epsilon
    assert math.isinf(account_rounds(release(z=0.0), rounds=1, delta=DELTA).epsilon)
    assert math.isinf(account_rounds(release("off", z=0.0, secure_aggregation=True), rounds=1, delta=DELTA).epsilon)
    assert account_rounds(release(), rounds=0, delta=DELTA).epsilon == 0.0


def test_sampling_never_amplifies_the_headline():
    full = account_rounds(release("local"), rounds=30, delta=DELTA)
    sampled = account_rounds(release("local"), rounds=30, delta=DELTA, sample_rate=0.1)
    assert sampled.epsilon == full.epsilon
    assert sampled.typical_rounds == 3 and sampled.epsilon_typical < full.epsilon
    z_acc = release("local").accounted_noise_multiplier()
    assert full.epsilon > epsilon(noise_multiplier=z_acc, sample_rate=0.1, rounds=30, delta=DELTA).rdp


@pytest.mark.parametrize(
    "mode,mechanism", [("local", None), ("distributed", "discrete_gaussian"), ("distributed", "skellam")]
)
def test_calibration_reaches_the_headline_target(mode, mechanism):
    template = release(mode, z=0.0 if mode == "local" else 1.0, mechanism=mechanism)
    z = calibrate_noise_multiplier(template, target_epsilon=5.0, rounds=10, delta=DELTA)
    eps = account_rounds(template.with_noise_multiplier(z), rounds=10, delta=DELTA).epsilon
    assert 5.0 * 0.99 <= eps <= 5.0


def test_the_accountant_records_rounds_and_restores_its_state():
    acc = RoundAccountant(delta=DELTA)
    first = acc.step(release=release())
    second = acc.step(release=release())
    assert acc.history == [(release(), 2)]  # consecutive equal releases share one entry
    assert 0 < first < second == account_rounds(release(), rounds=2, delta=DELTA).epsilon
    other = RoundAccountant(delta=DELTA)
    other.load_state_dict(json.loads(json.dumps(acc.state_dict())))
    assert other.history == acc.history and other.epsilon() == second
    for broken in (
        {"version": 1, "rounds": 2},
        {**acc.state_dict(), "history": [{"release": {}, "rounds": 1}]},
        {**acc.state_dict(), "history": [{"release": release().to_dict(), "rounds": 0}]},
    ):
        with pytest.raises(PrivacyError, match="accountant state"):
            other.load_state_dict(broken)
    with pytest.raises(PrivacyError, match="delta"):
        RoundAccountant(delta=DELTA / 2).load_state_dict(acc.state_dict())


def test_a_history_of_differing_rounds_sums_their_curves():
    """The coordinator's rounds differ (participants, n_min): the history composes them by adding RDP curves;
    a noiseless round makes epsilon infinite; an account of several releases is refused by name."""
    acc = RoundAccountant(delta=DELTA)
    small, large = release(participants=50, n_min=30), release(participants=80, n_min=80)
    acc.step(release=small)
    acc.step(release=large)
    acc.step(release=small)
    assert [n for _, n in acc.history] == [1, 1, 1] and acc.rounds == 3
    low, high = sorted(account_rounds(r, rounds=3, delta=DELTA).epsilon for r in (small, large))
    assert low < high and low < acc.epsilon() < high  # between three rounds of either release
    assert acc.epsilon(replace_one=True) > acc.epsilon()
    with pytest.raises(PrivacyError, match="one release"):
        acc.account()
    acc.step(release=release(dp_mode="off", z=0.0, mechanism=None))
    assert acc.epsilon() == math.inf and acc.noiseless_rounds == 1


@pytest.mark.parametrize(
    "changes,needle",
    [
        (dict(dp_mode="local", secure_aggregation=True), "local DP"),
        (dict(secure_aggregation=False), "needs secure aggregation"),
        (dict(dp_mode="off"), "DP is off"),
        (dict(mechanism="gaussian"), "mechanism"),
        (dict(num_blocks=0), "num_blocks"),
        (dict(clip=0.0), "clip"),
    ],
)
def test_bad_releases_are_refused(changes, needle):
    with pytest.raises(ConfigError, match=needle):
        release(**changes)
    with pytest.raises(ConfigError, match="DP"):
        calibrate_noise_multiplier(
            release("off", z=0.0, secure_aggregation=True), target_epsilon=1.0, rounds=1, delta=DELTA
        )

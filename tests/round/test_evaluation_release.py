"""The federated evaluation's release (`round.evaluation_release`): its plan carries the round's mechanism and z
at the stated L2 bound, its RDP curve is the discrete Gaussian's bound itself, and the accountant adds it to the
rounds' (epsilon grows; state_dict round-trips with each entry's kind; version-2 states still load)."""

import json
import math

import numpy as np
import pytest

from mrff_secure.dp.accounting import DISCRETE_ORDERS, ddg_rdp
from mrff_secure.dp.discretize import rounded_l1_bound, rounded_l2_bound
from mrff_secure.errors import ConfigError, PrivacyError
from mrff_secure.round.accountant import RoundAccountant
from mrff_secure.round.evaluation_release import (
    L2_BOUND,
    PADDED_LENGTH,
    EvaluationRelease,
    evaluation_rdp_curve,
    evaluation_release,
)
from mrff_secure.round.release import RoundRelease
from mrff_secure.round.spec import RoundSpec

DELTA = 1e-5


def spec(dp_mode="distributed", z=1.0, n_min=35):
    return RoundSpec(
        local_steps=1,
        optimizer="adam",
        lr=0.1,
        dp_mode=dp_mode,
        clip=0.5,
        noise_multiplier=z if dp_mode == "distributed" else 0.0,
        min_survivors=n_min,
        min_group_size=5,
        mechanism="discrete_gaussian",
        modulus_bits=32,
        count_cap=10,
    )


def round_release(n=50, n_min=35):
    return RoundRelease(
        dp_mode="distributed",
        secure_aggregation=True,
        clip=0.5,
        noise_multiplier=1.0,
        num_blocks=2,
        num_groups=4,
        delta_size=500,
        participants=n,
        n_min=n_min,
        modulus_bits=32,
        count_cap=10,
        mechanism="discrete_gaussian",
    )


def test_the_release_is_the_rounds_mechanism_and_z_at_the_stated_bound():
    release = evaluation_release(spec(z=0.8), 50)
    assert release == EvaluationRelease(
        dp_mode="distributed",
        noise_multiplier=0.8,
        participants=50,
        n_min=35,
        modulus_bits=32,
        mechanism="discrete_gaussian",
    )
    plan = release.plan()
    assert plan.clip == pytest.approx(math.sqrt(5)) and L2_BOUND == pytest.approx(math.sqrt(5))
    assert plan.noise_multiplier == 0.8 and plan.n_min == 35 and plan.padded_dim == PADDED_LENGTH == 1024
    # each client's share: variance (z * sqrt(5) * scale)^2 / n_min, so n_min shares give std z sqrt(5) (float units)
    assert plan.share_variance == pytest.approx((0.8 * math.sqrt(5) * plan.scale) ** 2 / 35, rel=1e-9)
    assert release.noise_std == pytest.approx(0.8 * math.sqrt(5))
    assert release.noisy and json.loads(json.dumps(release.to_dict())) == release.to_dict()
    exact = evaluation_release(spec("off"), 50)
    assert not exact.noisy and exact.n_min == 1 and exact.noise_std == 0.0
    with pytest.raises(ConfigError, match="noise_multiplier"):
        EvaluationRelease(dp_mode="off", noise_multiplier=0.5, participants=50, n_min=1, modulus_bits=32)


def test_the_rdp_curve_is_the_distributed_discrete_gaussians_bound():
    release = evaluation_release(spec(z=1.0), 50)
    plan = release.plan()
    d2 = rounded_l2_bound(scaled_norm=math.sqrt(5) * plan.scale, dim=1024, beta=plan.beta)
    d1 = rounded_l1_bound(l2_bound=d2, dim=1024)
    expected = ddg_rdp(
        orders=DISCRETE_ORDERS,
        l2_sensitivity=d2,
        l1_sensitivity=d1,
        share_sigma=1.0 * math.sqrt(5) * plan.scale / math.sqrt(35),
        n_shares=35,
        dim=1024,
    )
    curve = evaluation_rdp_curve(release)
    np.testing.assert_allclose(curve, expected, rtol=1e-12)
    # about the Gaussian's alpha / (2 z^2) at the same sensitivity and std
    assert curve[0] == pytest.approx(DISCRETE_ORDERS[0] / 2.0, rel=1e-3)
    assert np.all(evaluation_rdp_curve(release, replace_one=True) > curve)
    # colluding survivors' shares are known to the server: only the n_min - c honest ones count (W17)
    colluding = evaluation_release(spec(z=1.0), 50, colluding_survivors=2)
    assert colluding.plan() == plan  # the same noise is added; only its accounting differs
    honest = ddg_rdp(
        orders=DISCRETE_ORDERS,
        l2_sensitivity=d2,
        l1_sensitivity=d1,
        share_sigma=1.0 * math.sqrt(5) * plan.scale / math.sqrt(35),
        n_shares=33,
        dim=1024,
    )
    np.testing.assert_allclose(evaluation_rdp_curve(colluding), honest, rtol=1e-12)
    assert np.all(honest > curve)
    assert np.all(np.isinf(evaluation_rdp_curve(evaluation_release(spec("off"), 50))))


def test_the_accountant_adds_evaluations_and_round_trips_their_kind():
    acc = RoundAccountant(delta=DELTA)
    acc.step(release=round_release())
    rounds_only = acc.epsilon()
    evaluation = evaluation_release(spec(), 50)
    with_evaluation = acc.step(release=evaluation)
    assert with_evaluation > rounds_only > 0
    assert acc.rounds == 1 and acc.evaluations == 1
    # the sum of the curves, converted once
    alone = RoundAccountant(delta=DELTA)
    alone.step(release=evaluation)
    assert rounds_only < with_evaluation < rounds_only + alone.epsilon()
    state = json.loads(json.dumps(acc.state_dict()))
    assert state["version"] == 3 and [e["kind"] for e in state["history"]] == ["round", "evaluation"]
    other = RoundAccountant(delta=DELTA)
    other.load_state_dict(state)
    assert other.history == acc.history and other.epsilon() == with_evaluation
    with pytest.raises(PrivacyError, match="one release"):
        acc.account()
    # a version-2 state (rounds only, no kinds) still loads
    old = {**state, "version": 2, "history": [{"release": round_release().to_dict(), "rounds": 2}]}
    other.load_state_dict(old)
    assert other.history == [(round_release(), 2)] and other.evaluations == 0
    with pytest.raises(PrivacyError, match="kind"):
        other.load_state_dict({**state, "history": [{**state["history"][1], "kind": "mystery"}]})
    # an exact evaluation (DP off) leaves no guarantee: infinite, never 0
    acc.step(release=evaluation_release(spec("off"), 50))
    assert math.isinf(acc.epsilon()) and acc.noiseless_evaluations == 1


def test_a_target_epsilon_is_spent_by_the_rounds_and_the_planned_evaluations_together():
    from mrff_secure.round.accountant import calibrate_release, history_epsilon

    template, evaluation = round_release(), evaluation_release(spec(), 50)
    alone = calibrate_release(template, target_epsilon=4.0, rounds=5, delta=DELTA)
    both = calibrate_release(template, target_epsilon=4.0, rounds=5, delta=DELTA, evaluation=evaluation, evaluations=3)
    assert both.noise_multiplier > alone.noise_multiplier  # three more releases need more noise
    z = both.noise_multiplier
    spent = history_epsilon(
        [
            (template.with_noise_multiplier(z), 5),
            (EvaluationRelease(**{**evaluation.to_dict(), "noise_multiplier": z}), 3),
        ],
        delta=DELTA,
    )
    assert spent == pytest.approx(both.epsilon) and 4.0 * 0.99 < spent <= 4.0
    # the rounds alone at that z spend less than the target: the evaluations' share is real
    assert history_epsilon([(template.with_noise_multiplier(z), 5)], delta=DELTA) < 4.0 * 0.95


def test_the_server_plans_its_evaluations_as_it_schedules_them():
    from mrff_secure.app.server_command import planned_evaluations
    from server.run_state import ServerSettings

    for rounds, every, cap in ((10, 0, 5), (10, 1, 5), (10, 3, 10), (1, 1, 5), (7, 2, 2), (10, 4, 0)):
        settings = ServerSettings(rounds=rounds, eval_every=every, max_evaluations=cap)
        scheduled = sum(settings.evaluates(r) for r in range(rounds))
        assert planned_evaluations(rounds, every, cap) == min(scheduled, cap)
    assert ServerSettings().eval_every == 0 and not any(ServerSettings().evaluates(r) for r in range(3))

"""The client's privacy policy file: every field round-trips, a typo or a wrong type is refused by name."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from client.policy import POLICY_FIELDS, ClientPolicy
from mrff_secure.errors import ConfigError


def test_a_policy_round_trips_through_its_file(tmp_path):
    policy = ClientPolicy(
        min_participants=5,
        allow_plain=True,
        dp_modes=("distributed",),
        max_clip=2.0,
        join_evaluation=False,
        max_epsilon=4.0,
        accept_weaker=True,
    )
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy.to_dict()))
    assert ClientPolicy.from_file(path) == policy
    assert set(policy.to_dict()) == set(POLICY_FIELDS)


@pytest.mark.parametrize(
    "data, words",
    [
        ({"join_evaluaton": False}, "unknown policy keys"),
        ({"join_evaluation": "no"}, "join_evaluation must be true or false"),
        ({"allow_plain": 1}, "allow_plain must be true or false"),
        ({"min_group_size": 1}, "min_group_size must be an int >= 2"),
        ({"dp_modes": []}, "dp_modes must be a non-empty subset"),
        ({"max_epsilon": -1}, "max_epsilon must be"),
        ({"max_aborted_sessions": -1}, "max_aborted_sessions must be"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_field(data, words):
    with pytest.raises(ConfigError, match=words):
        ClientPolicy.from_dict(data)


def test_the_default_policy_is_the_safe_one():
    policy = ClientPolicy()
    assert policy.dp_modes == ("distributed",) and policy.min_noise_multiplier >= 0.5
    assert policy.max_epsilon == 10.0 and policy.delta == 1e-5 and policy.max_aborted_sessions == 2
    assert policy.min_honest_shares >= 3 and policy.weaker_settings() == []


@pytest.mark.parametrize(
    "weaker, named",
    [
        ({"dp_modes": ["off", "distributed"]}, "dp_modes"),
        ({"min_noise_multiplier": 0.0}, "min_noise_multiplier=0"),
        ({"max_epsilon": None}, "max_epsilon=inf"),
        ({"max_aborted_sessions": 10}, "max_aborted_sessions=10"),
        ({"min_honest_shares": 1}, "min_honest_shares=1"),
        ({"corrupt_neighbours": 0}, "corrupt_neighbours=0"),
        ({"min_group_size": 2}, "min_group_size=2"),
    ],
)
def test_lowering_a_safe_default_takes_an_explicit_acceptance(weaker, named):
    with pytest.raises(ConfigError, match="--accept-weaker-privacy"):
        ClientPolicy.from_dict(weaker)
    accepted = ClientPolicy.from_dict({**weaker, "accept_weaker": True})
    assert any(named in text for text in accepted.weaker_settings())


@pytest.mark.parametrize(
    "dp_mode, z, needle",
    [
        ("off", 0.0, "the server proposes DP mode 'off'; the policy allows ['distributed']"),
        ("distributed", 1e-6, "below the policy's min_noise_multiplier=0.5"),
        ("distributed", 0.49, "below the policy's min_noise_multiplier=0.5"),
    ],
)
def test_the_default_policy_refuses_rounds_without_real_noise(dp_mode, z, needle):
    """W13: no flags, no DP off, no z of 1e-6 (each refused naming the rule)."""
    from mrff_secure.round.spec import RoundSpec
    from mrff_secure.secagg.policy import PolicyViolation

    spec = RoundSpec(
        local_steps=1,
        optimizer="adam",
        lr=0.1,
        dp_mode=dp_mode,
        clip=1.0,
        noise_multiplier=z,
        min_survivors=9,
        mechanism="discrete_gaussian",
        modulus_bits=32,
        count_cap=10,
        min_group_size=5,
    )
    with pytest.raises(PolicyViolation, match=re.escape(needle)):
        ClientPolicy().check_round(secure=True, spec=spec)
    ClientPolicy().check_round(secure=True, spec=dataclasses.replace(spec, dp_mode="distributed", noise_multiplier=0.5))

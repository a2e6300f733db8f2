"""The client's privacy policy file: every field round-trips, a typo or a wrong type is refused by name."""

from __future__ import annotations

import json

import pytest

from client.policy import POLICY_FIELDS, ClientPolicy
from mrff_secure.errors import ConfigError


def test_a_policy_round_trips_through_its_file(tmp_path):
    policy = ClientPolicy(
        min_participants=5, allow_plain=True, dp_modes=("distributed",), max_clip=2.0, join_evaluation=False
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
    ],
)
def test_a_bad_policy_is_refused_naming_the_field(data, words):
    with pytest.raises(ConfigError, match=words):
        ClientPolicy.from_dict(data)

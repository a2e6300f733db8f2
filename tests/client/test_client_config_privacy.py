"""Issue D: `mrff client --config FILE` honours the file's [privacy] table as the least the client accepts, and a
configuration file never weakens the client's policy silently (that still takes --accept-weaker-privacy)."""

from __future__ import annotations

import math

import pytest

from mrff_secure.app import options
from mrff_secure.app.cli import build_parser
from mrff_secure.app.client_command import client_policy, config_policy
from mrff_secure.errors import ConfigError


def _policy(tmp_path, toml: str, *flags: str):
    path = tmp_path / "run.toml"
    path.write_text(toml)
    args = build_parser().parse_args(["client", "--users", "0", "--config", str(path), *flags])
    options.resolve(args, "client")
    return client_policy(args)


def test_a_stricter_privacy_table_is_the_clients_policy(tmp_path) -> None:
    policy = _policy(
        tmp_path,
        '[privacy]\ndp = "distributed"\nnoise_multiplier = 1.5\nclip = 0.5\nmin_group_size = 8\n'
        'corrupt_neighbours = 3\ndelta = 1e-6\nsecure_aggregation = "on"\ntarget_epsilon = 4.0\n',
    )
    assert policy.dp_modes == ("distributed",)
    assert (policy.min_noise_multiplier, policy.max_clip, policy.min_group_size) == (1.5, 0.5, 8)
    assert (policy.corrupt_neighbours, policy.delta, policy.allow_plain) == (3, 1e-5, False)  # delta: the server's
    assert not policy.accept_weaker and policy.weaker_settings() == []


def test_flags_and_the_policy_file_win_over_the_table(tmp_path) -> None:
    (tmp_path / "policy.json").write_text('{"min_group_size": 6}')
    policy = _policy(
        tmp_path,
        "[privacy]\nnoise_multiplier = 1.5\nmin_group_size = 8\n",
        "--min-noise-multiplier",
        "2.0",
        "--policy",
        str(tmp_path / "policy.json"),
    )
    assert (policy.min_noise_multiplier, policy.min_group_size) == (2.0, 6)


@pytest.mark.parametrize(
    "table, named",
    [
        ("noise_multiplier = 0.05", "min_noise_multiplier=0.05"),
        ('dp = "off"', "dp_modes=['off', 'distributed']"),
        ("min_group_size = 2", "min_group_size=2"),
        ('secure_aggregation = "off"', "allow_plain=True"),
    ],
)
def test_a_weaker_privacy_table_is_refused_without_accept_weaker_privacy(tmp_path, table, named) -> None:
    with pytest.raises(ConfigError, match="weaker than the safe defaults") as refused:
        _policy(tmp_path, f"[privacy]\n{table}\n")
    assert f"the [privacy] table of --config {tmp_path / 'run.toml'} sets {named}" in str(refused.value)


def test_a_weaker_table_with_accept_weaker_privacy_is_taken_and_said(tmp_path) -> None:
    policy = _policy(tmp_path, "[privacy]\nnoise_multiplier = 0.05\n", "--accept-weaker-privacy")
    assert policy.min_noise_multiplier == 0.05 and policy.accept_weaker
    assert policy.weaker_settings() == ["min_noise_multiplier=0.05 (safe default 0.5)"]  # warned on every round


def test_what_no_client_can_use_is_refused_and_the_servers_settings_are_named(tmp_path) -> None:
    path = tmp_path / "local.toml"
    path.write_text('[privacy]\ndp = "local"\n')
    with pytest.raises(ConfigError, match=r'privacy.dp in .*local.toml: dp = "local" is not run over the network'):
        config_policy(path)
    path.write_text('[privacy]\nmechanism = "skellam"\nmodulus_bits = 40\nclip = 2.0\n')
    fields, server_only = config_policy(path)
    assert fields == {"max_clip": 2.0} and server_only == ["mechanism", "modulus_bits"]
    assert math.isinf(_policy(tmp_path, "[federation]\nrounds = 2\n").max_clip)  # no table: the defaults

import json
import math

import pytest

from mrff_secure.app import cli
from mrff_secure.app.privacy_command import privacy_report
from mrff_secure.dp.accounting import epsilon, local_upload_epsilon
from mrff_secure.dp.sensitivity import compose_noise_multipliers

KEYS = {
    "mechanism",
    "mode",
    "noise_multiplier",
    "clip",
    "delta",
    "epsilon",
    "epsilon_bound",
    "adjacency",
    "gaussian_limit",
    "rounds",
    "clients",
    "sample_rate",
    "blocks",
    "groups",
}


def _run(argv, capsys):
    if "--dp" not in argv:
        argv = [*argv, "--dp", "local"]
    rc = cli.main(["privacy", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def local_z_eff(z, clip=1.0, blocks=2):
    """The replace-one accounted multiplier of one local upload (grid slack included)."""
    return z * clip / (math.sqrt(4 * clip**2 + 2 * blocks + 1) + 2.0**-20 * clip)


def test_local_json_is_replace_one_with_the_layouts_count_part_and_no_amplification(capsys):
    rc, out, _ = _run(
        ["--noise-multiplier", "1.0", "--rounds", "50", "--clients", "1000", "--client-fraction", "0.1", "--json"],
        capsys,
    )
    assert rc == 0
    data = json.loads(out)
    assert KEYS <= set(data)
    assert data["mode"] == "local" and data["mechanism"] == "grid_discrete_gaussian" and data["clip"] == 1.0
    assert data["adjacency"] == "replace-one" and data["blocks"] == 2
    assert data["delta"] == pytest.approx(1000**-1.1)
    z_eff = local_z_eff(1.0)
    assert data["accounted_noise_multiplier"] == pytest.approx(z_eff)
    # D5: the headline is a user in all 50 rounds, never amplified by the 0.1 sampling rate
    every_round = epsilon(noise_multiplier=z_eff, sample_rate=1.0, rounds=50, delta=1000**-1.1)
    assert data["epsilon"] == pytest.approx(every_round.rdp)
    amplified = epsilon(noise_multiplier=z_eff, sample_rate=0.1, rounds=50, delta=1000**-1.1)
    assert data["epsilon"] > 3 * amplified.rdp
    assert data["typical_user"]["rounds"] == 5
    assert data["typical_user"]["epsilon"] == pytest.approx(
        epsilon(noise_multiplier=z_eff, sample_rate=1.0, rounds=5, delta=1000**-1.1).rdp
    )
    assert data["epsilon_per_round"] == pytest.approx(
        local_upload_epsilon(noise_multiplier=z_eff, delta=1000**-1.1).rdp
    )


def test_zero_noise_prints_inf_as_a_string(capsys):
    rc, out, _ = _run(["--noise-multiplier", "0", "--rounds", "5", "--clients", "100", "--json"], capsys)
    data = json.loads(out)
    assert rc == 0 and data["epsilon"] == "inf" and data["gaussian_limit"]["epsilon_rdp"] == "inf"
    assert data["epsilon_per_round"] == "inf"
    rc, text, _ = _run(["--noise-multiplier", "0", "--rounds", "5", "--clients", "100"], capsys)
    assert "inf" in text and "epsilon" in text


def test_target_epsilon_calibrates_the_headline(capsys):
    rc, out, _ = _run(
        ["--target-epsilon", "8", "--rounds", "100", "--clients", "500", "--delta", "1e-5", "--json"], capsys
    )
    data = json.loads(out)
    assert rc == 0 and data["delta"] == 1e-5
    assert 7.9 <= data["epsilon"] <= 8.0


def test_noise_options_are_mutually_exclusive_and_one_is_required(capsys):
    rc, _, err = _run(["--noise-multiplier", "1", "--target-epsilon", "2", "--rounds", "1", "--clients", "10"], capsys)
    assert rc == 2 and "exactly one of --noise-multiplier" in err
    rc, _, err = _run(["--rounds", "1", "--clients", "10"], capsys)
    assert rc == 2 and "exactly one of --noise-multiplier" in err
    rc, _, err = _run(["--rounds", "1", "--clients", "10", "--noise-multiplier", "1", "--dp", "off"], capsys)
    assert rc == 2 and "--noise-multiplier needs a DP mode (--dp is off" in err and "--dp local" in err


def test_bad_values_exit_nonzero_with_a_message(capsys):
    rc, _, err = _run(["--noise-multiplier", "1", "--rounds", "1", "--clients", "10", "--clip", "0"], capsys)
    assert rc == 2 and "clip" in err
    rc, _, err = _run(["--noise-multiplier", "-1", "--rounds", "1", "--clients", "10"], capsys)
    assert rc == 2 and "-1" in err
    rc, _, err = _run(["--noise-multiplier", "1", "--rounds", "1", "--clients", "10", "--dp", "distributed"], capsys)
    assert rc == 2 and "--dim" in err


def test_distributed_report_headlines_the_discrete_bound_of_both_phases(capsys):
    rc, out, _ = _run(
        [
            "--noise-multiplier",
            "1.0",
            "--rounds",
            "10",
            "--clients",
            "100",
            "--dp",
            "distributed",
            "--max-dropout-fraction",
            "0.2",
            "--dim",
            "1000",
            "--modulus-bits",
            "32",
            "--json",
        ],
        capsys,
    )
    data = json.loads(out)
    assert rc == 0 and KEYS <= set(data)
    assert data["mechanism"] == "discrete_gaussian" and data["n_min"] == 80 and data["adjacency"] == "zero-out"
    assert data["padded_dim"] == 1024 and data["modular_clipping_probability"] <= 1e-6
    # D6: the headline is the integer mechanism's bound, above its Gaussian limit
    assert data["epsilon"] >= data["gaussian_limit"]["epsilon_rdp"]
    # D3: both phases: the update (sqrt(C^2 + 1)) and the one-hots (sqrt(2)) at std z*C and z*sqrt(2)
    assert data["accounted_noise_multiplier"] == pytest.approx(
        compose_noise_multipliers([(math.sqrt(2.0), 1.0), (math.sqrt(2.0), math.sqrt(2.0))])
    )
    assert data["epsilon_replace_one"] > 1.5 * data["epsilon"]


def test_count_sensitivity_comes_from_the_layout_never_zero():
    with_groups = privacy_report(rounds=10, clients=100, noise_multiplier=1.0)
    no_groups = privacy_report(rounds=10, clients=100, noise_multiplier=1.0, groups=0)
    assert with_groups["accounted_noise_multiplier"] == pytest.approx(local_z_eff(1.0, blocks=2))
    # without groups the example count (<= 1) is still released: sqrt(4C^2 + 1)
    assert no_groups["accounted_noise_multiplier"] == pytest.approx(local_z_eff(1.0, blocks=0))
    assert no_groups["epsilon"] < with_groups["epsilon"]


def test_sensitivity_helpers():
    # two releases of one round, (sensitivity, std): 1/sqrt((1/2)^2 + (1/2)^2)
    assert compose_noise_multipliers([(1.0, 2.0), (1.0, 2.0)]) == pytest.approx(math.sqrt(2))
    assert compose_noise_multipliers([(1.0, 2.0), (1.0, 0.0)]) == 0.0

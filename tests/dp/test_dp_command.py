import argparse
import json
import math

import pytest

from mrff_secure.dp.accounting import epsilon, local_upload_epsilon
from mrff_secure.dp.command import add_privacy_arguments, privacy_main, privacy_report
from mrff_secure.dp.sensitivity import compose_noise_multipliers, count_part_sensitivity, effective_noise_multiplier

KEYS = {"mechanism", "mode", "noise_multiplier", "clip", "delta", "epsilon_prv", "epsilon_rdp", "rounds", "clients",
        "sample_rate"}


def _run(argv, capsys):
    parser = argparse.ArgumentParser(prog="mrff privacy")
    add_privacy_arguments(parser)
    rc = privacy_main(parser.parse_args(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_local_json(capsys):
    rc, out, _ = _run(["--noise-multiplier", "1.0", "--rounds", "50", "--clients", "1000", "--sample-rate", "0.1",
                       "--json"], capsys)
    assert rc == 0
    data = json.loads(out)
    assert KEYS | {"epsilon_per_upload"} <= set(data)
    assert data["mode"] == "local" and data["mechanism"] == "gaussian" and data["clip"] == 1.0
    assert data["delta"] == pytest.approx(1000**-1.1)
    want = epsilon(noise_multiplier=1.0, sample_rate=0.1, rounds=50, delta=1000**-1.1)
    assert data["epsilon_prv"] == want.prv and data["epsilon_rdp"] == want.rdp
    assert data["epsilon_per_upload"] == local_upload_epsilon(noise_multiplier=1.0, delta=1000**-1.1).prv


def test_zero_noise_prints_inf_as_a_string(capsys):
    rc, out, _ = _run(["--noise-multiplier", "0", "--rounds", "5", "--clients", "100", "--json"], capsys)
    data = json.loads(out)
    assert rc == 0 and data["epsilon_prv"] == "inf" and data["epsilon_rdp"] == "inf"
    assert data["epsilon_per_upload"] == "inf"
    rc, text, _ = _run(["--noise-multiplier", "0", "--rounds", "5", "--clients", "100"], capsys)
    assert "inf" in text and "epsilon" in text


def test_target_epsilon_calibrates(capsys):
    rc, out, _ = _run(["--target-epsilon", "8", "--rounds", "100", "--clients", "500", "--delta", "1e-5",
                       "--json"], capsys)
    data = json.loads(out)
    assert rc == 0 and data["delta"] == 1e-5
    assert 7.99 <= data["epsilon_prv"] <= 8.0


def test_noise_options_are_mutually_exclusive_and_one_is_required(capsys):
    parser = argparse.ArgumentParser()
    add_privacy_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--noise-multiplier", "1", "--target-epsilon", "2", "--rounds", "1", "--clients", "10"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--rounds", "1", "--clients", "10"])


def test_bad_values_exit_nonzero_with_a_message(capsys):
    rc, _, err = _run(["--noise-multiplier", "1", "--rounds", "1", "--clients", "10", "--clip", "0"], capsys)
    assert rc == 2 and "clip" in err
    rc, _, err = _run(["--noise-multiplier", "-1", "--rounds", "1", "--clients", "10"], capsys)
    assert rc == 2 and "-1" in err


def test_distributed_report_with_modulus(capsys):
    rc, out, _ = _run(["--noise-multiplier", "1.0", "--rounds", "10", "--clients", "100", "--mode", "distributed",
                       "--max-dropout-fraction", "0.2", "--dim", "1000", "--modulus-bits", "32", "--json"], capsys)
    data = json.loads(out)
    assert rc == 0 and KEYS <= set(data)
    assert data["mechanism"] == "discrete_gaussian" and data["n_min"] == 80
    assert data["padded_dim"] == 1024 and data["modular_clipping_probability"] <= 1e-6
    assert data["epsilon_discrete"] >= data["epsilon_rdp"]  # no sampling amplification, discretization cost
    assert "epsilon_per_upload" not in data


def test_report_with_count_part_uses_effective_multiplier():
    s = count_part_sensitivity(blocks=2, max_example_count=1.0)
    assert s == pytest.approx(math.sqrt(3))
    rep = privacy_report(rounds=10, clients=100, noise_multiplier=1.0, count_sensitivity=s)
    assert rep["effective_noise_multiplier"] == pytest.approx(0.5)
    assert rep["epsilon_rdp"] == pytest.approx(epsilon(noise_multiplier=0.5, sample_rate=1.0, rounds=10, delta=100**-1.1).rdp)


def test_sensitivity_helpers():
    assert effective_noise_multiplier(noise_multiplier=1.0, clip=1.0, extra_sensitivity=0.0) == 1.0
    # two releases of one round, (sensitivity, std): 1/sqrt((1/2)^2 + (1/2)^2)
    assert compose_noise_multipliers([(1.0, 2.0), (1.0, 2.0)]) == pytest.approx(math.sqrt(2))
    assert compose_noise_multipliers([(1.0, 2.0), (1.0, 0.0)]) == 0.0

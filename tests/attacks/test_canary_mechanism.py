"""Canaries inserted in the real release path, the exact mechanism check, the planted defects it must
catch, one error budget and the audit's one verdict (attacks.canary, attacks.rules)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from attacks.grid import Cell, run_cell
from attacks.rules import count_tests, evaluate_rules, overall_verdict
from mrff_secure.config import ModelConfig
from mrff_secure.data import make_synthetic
from mrff_secure.errors import ConfigError
from mrff_secure.federation.planted_defects import PLANTED_DEFECTS
from mrff_secure.round.spec import ThreatModel

MODEL = ModelConfig(maxlen=12, attribute_dim=4, num_blocks=1, prediction_dims=(8,))
CANARIES = 60


@pytest.fixture(scope="module")
def data():
    return make_synthetic(num_users=60, num_items=120, maxlen=12, min_interactions=5, max_interactions=12, seed=3)


def _cell(data, threat_model: str, *, z: float = 0.5, defect: str | None = None, rounds: int = 2) -> dict:
    noise = z if threat_model in (ThreatModel.SECAGG_DP, ThreatModel.LOCAL_DP) else 0.0
    cell = Cell(threat_model, noise_multiplier=noise, planted_defect=defect)
    return run_cell(cell, data, model=MODEL, rounds=rounds, canaries=CANARIES, clip=1.0)


@pytest.fixture(scope="module")
def honest(data):
    return {model: _cell(data, model) for model in (ThreatModel.SECAGG_DP, ThreatModel.LOCAL_DP)}


@pytest.mark.parametrize("model", [ThreatModel.SECAGG_DP, ThreatModel.LOCAL_DP])
def test_an_honest_release_is_exactly_the_claimed_mechanism(honest, model):
    canary = honest[model]["canary"]
    # an included canary moves the release by the claimed sensitivity (the clip made its 2 C into C)
    assert abs(canary["measured_shift"] - canary["canary_sensitivity"]) < 5 * canary["measured_shift_se"]
    expected = math.sqrt(4 + 2 * 1 + 1) if model == ThreatModel.LOCAL_DP else 1.0  # replace-one / zero-out, C = 1
    assert canary["canary_sensitivity"] == pytest.approx(expected)
    noise = canary["update_noise"]
    assert abs(noise["variance_ratio"] - 1.0) < 5 * math.sqrt(2 / noise["samples"])  # chi-square: sd sqrt(2 / N)
    if model == ThreatModel.LOCAL_DP:  # the first chunk's noise against what the public seed would draw
        assert noise["replayed_samples"] > 1000
        assert abs(noise["seed_correlation"]) * math.sqrt(noise["replayed_samples"]) < 5
    else:  # the first round's ring sum encoded again with a seeded run's generators: not the release
        assert canary["seed_reproduces_release"] is False
    assert canary["canaries"] == CANARIES and len(canary["scores"]) == CANARIES
    rules = evaluate_rules([honest[model]])
    assert rules["R2"]["verdict"] == "holds", rules["R2"]


@pytest.mark.parametrize("model", [ThreatModel.SECAGG_DP, ThreatModel.LOCAL_DP])
def test_the_count_part_is_checked_apart(honest, model):
    """Secure cells: from the unrounded ring sum of phase 1; local cells: the one-hot and count coordinates."""
    counts = honest[model]["canary"]["count_noise"]
    assert counts["samples"] > 0 and abs(counts["variance_ratio"] - 1.0) < 5 * math.sqrt(2 / counts["samples"])


def test_canaries_separate_without_noise_and_the_finding_is_reported(data):
    result = _cell(data, ThreatModel.SECAGG)
    assert result["scores"]["canary_auc"] == 1.0
    rules = evaluate_rules([result])
    assert "secure aggregation alone is not DP" in rules["R4"]["cells"][result["cell"]]["finding"]


@pytest.mark.parametrize(
    "model, defect, rule",
    [
        (ThreatModel.SECAGG_DP, "noise_halved", "R2"),
        (ThreatModel.LOCAL_DP, "noise_halved", "R2"),
        (ThreatModel.SECAGG_DP, "count_phase_noiseless", "R2"),
        (ThreatModel.LOCAL_DP, "count_phase_noiseless", "R2"),
        (ThreatModel.SECAGG_DP, "clip_skipped", "R2"),
        (ThreatModel.LOCAL_DP, "clip_skipped", "R2"),
        (ThreatModel.SECAGG_DP, "noise_from_seed", "R2"),
        (ThreatModel.LOCAL_DP, "noise_from_seed", "R2"),
        (ThreatModel.SECAGG_DP, "dropout_share_uncompensated", "R2"),
        (ThreatModel.LOCAL_DP, "replace_one_as_add_remove", "R2"),
    ],
)
def test_a_planted_defect_fails_the_mechanism_check(data, model, defect, rule):
    result = _cell(data, model, defect=defect)
    assert defect in result["cell"] and result["planted_defect_meaning"] == PLANTED_DEFECTS[defect]
    rules = evaluate_rules([result])
    assert rules[rule]["verdict"] == "fails", rules[rule]
    verdict = overall_verdict(rules, [result])
    assert verdict["verdict"] == "fails" and verdict["exit_code"] == 3
    assert any(result["cell"] in p["cell"] or model in p["cell"] for p in verdict["problems"])


def test_a_defect_needs_a_privacy_pipeline_and_an_unknown_one_is_refused(data):
    with pytest.raises(ConfigError, match="planted_defect"):
        Cell(ThreatModel.LOCAL_DP, noise_multiplier=1.0, planted_defect="noise_doubled")
    with pytest.raises(ConfigError, match="privacy pipeline"):
        run_cell(
            Cell(ThreatModel.PLAIN, planted_defect="noise_halved"), data, model=MODEL, rounds=1, canaries=10, clip=1.0
        )


def test_one_error_budget_is_split_over_every_test(honest):
    results = list(honest.values())
    rules = evaluate_rules(results, family_confidence=0.99)
    tests = count_tests(results)
    assert rules["budget"]["total_tests"] == sum(tests.values()) > 5
    assert rules["budget"]["alpha_per_test"] == pytest.approx(0.01 / sum(tests.values()))
    assert tests["R1"] == 4 and tests["R3"] == 6  # two bounds and three curve points per canary cell


def test_the_verdict_says_no_claim_was_tested_without_dp_cells(data):
    results = [_cell(data, ThreatModel.SECAGG)]
    rules = evaluate_rules(results)
    verdict = overall_verdict(rules, results)
    assert verdict["verdict"] == "no claim tested" and verdict["exit_code"] == 3
    assert "NO DP CLAIM TESTED" in verdict["headline"]


def test_the_verdict_is_inconclusive_when_an_attack_lacks_power(honest):
    results = list(honest.values())
    rules = evaluate_rules(results)  # no plain cell: the attacks' power is unknown
    verdict = overall_verdict(rules, results)
    if verdict["verdict"] != "fails":  # a chance failure of an honest cell would take precedence
        assert verdict["verdict"] == "inconclusive" and verdict["exit_code"] == 3
        assert verdict["problems"][0]["rule"] == "R0"


def test_max_certifiable_decides_between_holds_and_not_refutable(honest):
    result = honest[ThreatModel.LOCAL_DP]
    entry = evaluate_rules([result])["R1"]["cells"][result["cell"]]
    claimed = entry["claimed_epsilon"]
    assert entry["max_certifiable_mu"] > 0  # (the any-mechanism epsilon can be 0: m delta > 1 at 60 users)
    refutable = claimed < entry["max_certifiable_epsilon"] or entry["claimed_mu"] < entry["max_certifiable_mu"]
    assert (entry["verdict"] == "not refutable at m") == (not refutable and entry["verdict"] != "fails")
    assert np.isfinite(entry["canary_epsilon_if_as_claimed"])


def test_a_misreported_noise_fails_the_noise_test_and_names_its_cell(data):
    """The claim says twice the noise that was added: the residuals carry a quarter of the claimed variance."""
    cell = Cell(ThreatModel.LOCAL_DP, noise_multiplier=0.5, misreport_noise=2.0)
    result = run_cell(cell, data, model=MODEL, rounds=2, canaries=CANARIES, clip=1.0)
    ratio = result["canary"]["update_noise"]["variance_ratio"]
    assert ratio == pytest.approx(0.25, rel=0.02)  # the noise is drawn from the OS: 0.2494 and 0.2503 both occur
    rules = evaluate_rules([result])
    verdict = overall_verdict(rules, [result])
    assert verdict["verdict"] == "fails"
    assert "local-dp update noise" in verdict["problems"][0]["cell"] and "MISREPORTED" in verdict["problems"][0]["cell"]
    assert f"variance {ratio:.4f} over" in verdict["problems"][0]["what"] and verdict["problems"][0]["next"]

"""The one epsilon format and the end-of-run summary table of a training run (the network one: tests/server)."""

import math

import pytest

from mrff_secure.run_summary import format_epsilon, format_run_summary, spread


@pytest.mark.parametrize(
    "value,shown",
    [
        (7.99961376198834, "8.00"),
        (8.777665222804535, "8.78"),
        (8, "8.00"),
        (1.1, "1.10"),  # not 1.11: 1.1 * 100 is 110.00000000000001
        (0.57, "0.57"),
        (0.001, "0.01"),  # rounded up: a bound is never printed below itself
        (113.2, "113.20"),
        ("inf", "inf"),
        (math.inf, "inf"),
        (None, "inf"),
        ("4.5", "4.50"),
        (math.nan, "nan"),
    ],
)
def test_format_epsilon(value, shown):
    assert format_epsilon(value) == shown


def test_spread():
    assert spread([3, 1, 2, 10]) == {"min": 1, "median": 2.5, "max": 10}
    assert spread([]) is None


def training_summary(**changes):
    summary = {
        "kind": "training",
        "rounds": 30,
        "rounds_run": 30,
        "stopped_early": False,
        "participants_per_round": {"min": 38, "median": 40, "max": 41},
        "privacy": {
            "private": True,
            "mode": "local",
            "epsilon": 7.99961376198834,
            "delta": 0.00137,
            "adjacency": "replace-one",
            "mechanism": "gaussian",
            "target_epsilon": 8.0,
        },
        "operator-only": {
            "best_round": 17,
            "val_auc": 0.71234,
            "test_auc": 0.70111,
            "test_logloss": 0.61234,
            "test_auc_ci95": [0.68, 0.72],
        },
    }
    summary.update(changes)
    return summary


def test_training_table_has_every_line_aligned():
    text = format_run_summary(training_summary(), "/runs/a")
    lines = text.splitlines()
    assert lines[0] == "training run summary"
    body = {line[:22].strip(): line[22:] for line in lines[1:]}  # two spaces, the longest label (18), two spaces
    assert body == {
        "rounds": "30 of 30 completed",
        "participants/round": "min 38, median 40, max 41 (sampled clients)",
        "privacy": "epsilon 8.00 at delta 0.00137 (replace-one, gaussian); target 8.00",
        "best validation": "AUC 0.7123 at round 17 (operator only)",
        "test": "AUC 0.7011 (95% CI 0.6800-0.7200), LogLoss 0.6123 at round 17 (operator only)",
        "run folder": "/runs/a",
    }
    assert all(line[20:22] == "  " and line[22] != " " for line in lines[1:])
    assert "\x1b" not in text  # no colour codes


def test_training_table_without_dp_or_evaluation():
    summary = training_summary(
        privacy={"private": False, "mode": "off", "epsilon": "inf"},
        rounds_run=12,
        stopped_early=True,
    )
    summary["operator-only"] = {"warnings": []}
    text = format_run_summary(summary)
    assert "NOT PRIVATE: no DP (epsilon inf)" in text
    assert "12 of 30 completed (stopped early" in text
    assert text.count("not evaluated") == 2 and "run folder" not in text
    # summary.json alone (no operator-only evaluation): the table says where the evaluation is
    del summary["operator-only"]
    assert "see operator-only/evaluation.json" in format_run_summary(summary)

"""A network run's metrics.csv, its summary's participants and dropouts, and the end-of-run table `mrff server`
prints (format_run_summary), from a real run-local audit log (tests/fixtures/network_run: 2 rounds, 12 clients,
distributed DP, a federated evaluation every round) and from hand-made records with dropouts and an abort."""

import csv
import json
import shutil
from pathlib import Path

from mrff_secure.metrics_csv import flatten_row
from mrff_secure.run_summary import format_run_summary
from server.results import metrics_rows, summary_of, write_results

FIXTURE = Path(__file__).parents[1] / "fixtures" / "network_run"


def table(text):
    """{label: value} of a summary table, checking that every value starts in the same column."""
    lines = text.splitlines()[1:]
    starts = {len(line) - len(line[2:].split("  ", 1)[1].lstrip()) for line in lines}
    assert len(starts) == 1, text
    start = starts.pop()
    return {line[:start].strip(): line[start:] for line in lines}


def test_a_real_run_gets_metrics_csv_and_a_summary_table(tmp_path):
    run = tmp_path / "server"
    shutil.copytree(FIXTURE, run)
    summary = write_results(run)
    jsonl = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    with (run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["round"] for r in rows] == ["0", "1"]
    columns = set().union(*(flatten_row(line) for line in jsonl))
    for row, line in zip(rows, jsonl):  # every scalar of the JSON line, read back unchanged
        assert set(row) == columns and "group_counts_seen_by_server" not in row  # a list
        for name, value in flatten_row(line).items():
            if value is None:
                assert row[name] == ""
            elif isinstance(value, (bool, str)):
                assert row[name] == str(value)
            else:
                assert float(row[name]) == value, name
        assert row["phases.update.survivors"] == "12" and row["dropped"] == "0"
    assert float(rows[1]["val_logloss"]) == jsonl[1]["val_logloss"]

    assert summary["participants_per_round"] == {"min": 12, "median": 12, "max": 12}
    assert summary["dropped"] == {"total": 0, "max_per_round": 0}
    assert json.loads((run / "summary.json").read_text()) == summary
    text = format_run_summary(summary, run)
    assert text.splitlines()[0] == "network run summary"
    assert table(text) == {
        "rounds": "2 of 2 completed, 0 aborted",
        "participants/round": "min 12, median 12, max 12 (clients starting a round)",
        "dropped": "0 in all, at most 0 in a round",
        "privacy": "epsilon 9.36 at delta 1e-05 (zero-out, discrete_gaussian)",
        "best validation": "AUC n/a, LogLoss 11.2160 at round 1 (federated, noisy under DP, 2 evaluated; the model "
        "after round 0)",
        "test": "AUC n/a, LogLoss 0.0000 at round 1",
        "run folder": str(run),
    }

    # run again (as after a resumed run appended to the audit log): every round once
    write_results(run)
    assert (run / "metrics.csv").read_text().count("\n") == 3


def phase(survivors, **dropouts):
    return {"survivors": survivors, "dropouts": dropouts}


RECORDS = [
    {
        "type": "run_started",
        "run_id": "r1",
        "settings": {"rounds": 4},
        "spec": {"dp_mode": "off", "clip": 1.0},
    },
    {
        "type": "round",
        "round": 0,
        "participants": [1, 2, 3, 4, 5],
        "phases": {
            "counts": phase([1, 2, 3, 4], keys=[5]),
            "update": phase([1, 2], keys=[3], masked=[4, 5]),  # 5 again: counted once
        },
        "seconds": 2.5,
        "epsilon": {"epsilon": "inf", "delta": None, "adjacency": "zero-out"},
        "group_counts": [[1, 1]],
    },
    {
        "type": "round_aborted",
        "round": 1,
        "participants": [1, 2, 3],
        "phases": {"counts": phase([1], keys=[2, 3])},
        "seconds": 30.0,
        "reason": "too few survivors, 1 < 2",
    },
    {
        "type": "round",
        "round": 2,
        "participants": [1, 2, 3, 4, 5, 6],
        "phases": {"counts": phase([1, 2, 3, 4, 5, 6]), "update": phase([1, 2, 3, 4, 5, 6])},
        "seconds": 1.5,
        "epsilon": {"epsilon": "inf", "delta": None, "adjacency": "zero-out"},
        "group_counts": [[3, 3]],
        "evaluation": {
            "available": True,
            "val": {"auc": 0.61234, "log_loss": 0.69},
            "test": {"auc": 0.6, "log_loss": 0.7},
            "clients": 6,
            "noise_std": 0.0,
            "in_epsilon": False,
        },
    },
]


def test_dropouts_aborts_and_an_unfinished_run_in_the_csv_and_the_table(tmp_path):
    rows = metrics_rows(RECORDS)
    assert [r["dropped"] for r in rows] == [3, 2, 0]
    summary = summary_of(RECORDS, rows)
    assert summary["participants_per_round"] == {"min": 3, "median": 5, "max": 6}
    assert summary["dropped"] == {"total": 5, "max_per_round": 3}

    from mrff_secure.metrics_csv import write_metrics_csv

    write_metrics_csv(tmp_path / "metrics.csv", rows)
    with (tmp_path / "metrics.csv").open() as handle:
        back = list(csv.DictReader(handle))
    assert [r["completed"] for r in back] == ["True", "False", "True"]
    assert back[1]["reason"] == "too few survivors, 1 < 2" and back[1]["phases.counts.dropouts"] == "2"
    assert back[1]["val_auc"] == "" and back[2]["val_auc"] == "0.61234"

    got = table(format_run_summary(summary))
    assert got["rounds"] == "2 of 4 completed, 1 aborted; run NOT FINISHED"
    assert got["participants/round"] == "min 3, median 5, max 6 (clients starting a round)"
    assert got["dropped"] == "5 in all, at most 3 in a round"
    assert got["privacy"] == "NOT PRIVATE: no DP (epsilon inf)"
    assert got["best validation"].startswith("AUC 0.6123, LogLoss 0.6900 at round 2 (federated, exact, 1 evaluated")
    assert got["test"] == "AUC 0.6000, LogLoss 0.7000 at round 2"


def test_a_run_without_evaluation_says_so():
    records = [r for r in RECORDS if "evaluation" not in r]
    got = table(format_run_summary(summary_of(records, metrics_rows(records))))
    assert got["best validation"] == "not evaluated" and got["test"] == "not evaluated"


def test_the_final_models_evaluation_has_its_own_line_or_says_why_not():
    summary = summary_of(RECORDS, metrics_rows(RECORDS))
    assert "final model" not in table(format_run_summary(summary))  # not asked: no line
    summary["final_evaluation"] = {
        "available": True,
        "participants": 20,
        "clients": 18,
        "val_auc": 0.7,
        "val_logloss": 0.61,
        "test_auc": None,
        "test_logloss": 0.6,
        "in_epsilon": True,
    }
    assert table(format_run_summary(summary))["final model"] == (
        "validation AUC 0.7000, LogLoss 0.6100; test AUC n/a, LogLoss 0.6000 (federated, noisy under DP, 18 of 20 "
        "clients scored)"
    )
    summary["final_evaluation"]["refused"] = "every client kept its scores out"
    assert table(format_run_summary(summary))["final model"] == "not evaluated: every client kept its scores out"
    summary["final_evaluation"] = {"available": False, "reason": "the server stopped before it"}
    assert table(format_run_summary(summary))["final model"] == "not evaluated: the server stopped before it"

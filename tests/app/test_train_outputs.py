"""What `mrff train` leaves an operator: metrics.csv beside metrics.jsonl (and the operator's joined one), the
end-of-run summary table, one epsilon format, each warning once, and a plot drawn without matplotlib warnings."""

import csv
import json
import logging
import re
import warnings

import pytest

from mrff_secure.app import cli
from mrff_secure.app.experiment import plot_training, run_training
from mrff_secure.config import FederationConfig, ModelConfig
from mrff_secure.data import make_synthetic

SMALL = ["--synthetic-users", "12", "--maxlen", "6", "--attribute-dim", "4", "--no-progress"]


def read_csv(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_train_writes_metrics_csv_and_prints_the_summary_table(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--rounds", "3", "--run-dir", str(run), *SMALL]) == 0
    out = capsys.readouterr().out

    public, operator = read_jsonl(run / "metrics.jsonl"), read_jsonl(run / "operator-only" / "metrics.jsonl")
    rows = read_csv(run / "metrics.csv")
    assert list(rows[0]) == ["round", "participants", "train_seconds", "epsilon", "private"]
    assert [r["round"] for r in rows] == ["0", "1", "2"]
    for row, line in zip(rows, public):
        assert int(row["participants"]) == line["participants"] and float(row["train_seconds"]) == line["train_seconds"]
        assert row["epsilon"] == "inf" and row["private"] == "False"
    # the shareable file holds nothing computed on private data; the operator's joins both by round
    assert not any("auc" in c or "logloss" in c for c in rows[0])
    joined = read_csv(run / "operator-only" / "metrics.csv")
    assert list(joined[0])[:5] == ["round", "participants", "train_seconds", "eval_seconds", "epsilon"]
    for row, line, extra in zip(joined, public, operator):
        assert int(row["participants"]) == line["participants"]
        assert float(row["val_auc"]) == extra["val_auc"] and float(row["test_logloss"]) == extra["test_logloss"]

    summary = json.loads((run / "summary.json").read_text())
    assert summary["kind"] == "training"
    assert summary["participants_per_round"] == {"min": 12, "median": 12, "max": 12}
    evaluation = json.loads((run / "operator-only" / "evaluation.json").read_text())
    table = out[out.index("training run summary") :].splitlines()
    start = len(table[1]) - len(table[1][2:].split("  ", 1)[1].lstrip())  # every value starts here
    got = {line[:start].strip(): line[start:] for line in table[1:7]}
    assert got["rounds"] == "3 of 3 completed"
    assert got["participants/round"] == "min 12, median 12, max 12 (sampled clients)"
    assert got["privacy"] == "NOT PRIVATE: no DP (epsilon inf)"
    assert (
        got["best validation"] == f"AUC {evaluation['val_auc']:.4f} at round {evaluation['best_round']} (operator only)"
    )
    assert got["test"].startswith(f"AUC {evaluation['test_auc']:.4f} (95% CI ")
    assert got["run folder"] == str(run)
    assert "Operator only" in out and "\x1b" not in out


def test_a_resumed_run_repeats_no_csv_row(tmp_path):
    data = make_synthetic(num_users=12, num_items=40, min_interactions=4, max_interactions=10, maxlen=8, seed=1)
    model = ModelConfig(maxlen=8, num_groups=2, dropout=0.0)
    federation = FederationConfig(rounds=4, chunk_size=0)
    calls = []

    def crash_in_round_2():  # asked after every round: round 2's rows are written, the checkpoint holds 2 rounds
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return False

    kw = dict(progress=False, checkpoint_every=2, fingerprint="f")
    with pytest.raises(KeyboardInterrupt):
        run_training(data, model, federation, tmp_path, should_stop=crash_in_round_2, **kw)
    assert [r["round"] for r in read_csv(tmp_path / "metrics.csv")] == ["0", "1", "2"]
    run_training(data, model, federation, tmp_path, resume=True, **kw)
    for path in (tmp_path / "metrics.csv", tmp_path / "operator-only" / "metrics.csv"):
        assert [r["round"] for r in read_csv(path)] == ["0", "1", "2", "3"], path
    assert [r["round"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [0, 1, 2, 3]


def test_epsilon_is_printed_one_way(tmp_path, capsys, caplog):
    # -v logs every round's epsilon so far: with the table's, all with two decimals (the target's too)
    caplog.set_level(logging.INFO, logger="mrff_secure")
    argv = ["train", "--run-dir", str(tmp_path / "run"), *SMALL, "--rounds", "2", "--dp", "local", "-v"]
    assert cli.main([*argv, "--target-epsilon", "8"]) == 0
    captured = capsys.readouterr()
    printed = captured.out + captured.err + caplog.text
    shown = re.findall(r"epsilon (?:so far )?(\S+)", printed)
    assert len(shown) >= 3 and all(re.fullmatch(r"\d+\.\d\d|inf", s.rstrip(",;)")) for s in shown), shown
    assert "epsilon so far 8.00" in printed and "epsilon 8.00 at delta" in printed and "target 8.00" in printed


def test_the_divergence_warning_is_printed_once(tmp_path, capsys, caplog):
    # a learning rate of 20 sends the validation LogLoss from 2.15 (round 1) to 8.72 (round 2); the CLI shows
    # the log's warnings on stderr (caplog stands for that here)
    argv = ["train", "--run-dir", str(tmp_path / "run"), "--synthetic-users", "50", "--maxlen", "8", "--rounds", "4"]
    assert cli.main([*argv, "--lr", "20", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert (captured.out + captured.err + caplog.text).count("training may be diverging") == 1
    evaluation = json.loads((tmp_path / "run" / "operator-only" / "evaluation.json").read_text())
    assert len(evaluation["warnings"]) == 1  # still recorded for the operator


@pytest.mark.parametrize("groups", [4, 24, 64])
def test_the_training_plot_draws_many_groups_without_warnings(tmp_path, groups):
    rows = [
        {"round": r, "group_sizes": [[r + g for g in range(groups)]] * 2, "val_auc": 0.5 + r / 10} for r in range(3)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tight_layout warned "Tight layout not applied" from 24 groups
        plot_training(rows, tmp_path / "training.png")
    assert (tmp_path / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

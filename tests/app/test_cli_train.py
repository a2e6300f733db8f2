"""`mrff train` end to end on the embedded synthetic data: run folder files (shareable ones apart from
operator-only/ outputs), --json, clear errors."""

import json
import subprocess
import sys

import pytest

from mrff_secure.app.cli import main


def test_train_writes_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--dataset",
            "synthetic",
            "--synthetic-users",
            "60",
            "--maxlen",
            "12",
            "--rounds",
            "3",
            "--run-dir",
            str(out),
            "--json",
            "--no-progress",
            "--seed",
            "1",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    evaluation = printed.pop("operator-only")
    summary = json.loads((out / "summary.json").read_text())
    assert printed == summary
    assert evaluation == json.loads((out / "operator-only" / "evaluation.json").read_text())
    # nothing computed on private data without noise in the shareable files
    assert not {"test_auc", "val_auc", "best_round", "calibration", "train_interactions"} & set(summary)
    public = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["round"] for l in public] == [0, 1, 2]
    for line in public:
        assert not {"val_auc", "test_auc", "group_sizes", "clipped_fraction"} & set(line)
        assert {"participants", "epsilon", "private", "group_counts_seen_by_server"} <= set(line)
        assert line["private"] is False and line["epsilon"] == "inf"  # DP off: no guarantee
    lines = [json.loads(l) for l in (out / "operator-only" / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        assert {"val_auc", "val_logloss", "test_auc", "test_logloss", "group_sizes"} <= set(line)
        assert len(line["group_sizes"]) == 2 and sum(line["group_sizes"][0]) == 60
    best = max(lines, key=lambda l: l["val_auc"])
    assert evaluation["best_round"] == best["round"] and evaluation["test_auc"] == best["test_auc"]
    low, high = evaluation["test_auc_ci95"]
    assert low <= evaluation["test_auc"] <= high
    assert summary["parameters"]["private"] > 0 and summary["inference_ms_per_user"] > 0
    assert (out / "operator-only" / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "training.png").exists() and not (out / "predictions.npz").exists()
    import numpy as np

    with np.load(out / "operator-only" / "predictions.npz", allow_pickle=False) as saved:
        assert saved["test_probability"].shape == (60,) and int(saved["best_round"]) == evaluation["best_round"]
    assert evaluation["calibration"]["temperature"] > 0
    outside = summary["outputs"]["outside_the_guarantee"]
    assert {
        "operator-only/metrics.jsonl",
        "operator-only/evaluation.json",
        "operator-only/predictions.npz",
        "operator-only/training.png",
    } <= set(outside)


def test_no_mrff_baseline_has_no_groups(tmp_path, capsys):
    out = tmp_path / "base"
    assert (
        main(
            [
                "train",
                "--synthetic-users",
                "40",
                "--maxlen",
                "10",
                "--rounds",
                "1",
                "--no-mrff",
                "--run-dir",
                str(out),
                "--json",
                "--no-progress",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["parameters"]["group"] == 0
    assert json.loads((out / "operator-only" / "metrics.jsonl").read_text())["group_sizes"] == []


def test_missing_data_dir_is_a_clear_error(capsys):
    assert main(["train", "--dataset", "kuaisar-r", "--rounds", "1"]) == 2
    assert "needs --data-dir" in capsys.readouterr().err


def test_bad_config_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--rounds", "1", "--dropout", "1.5", "--run-dir", str(tmp_path / "x")]) == 2
    assert "--dropout must be < 1, got 1.5" in capsys.readouterr().err  # the flag, not ModelConfig.dropout


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "mrff_secure.app.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "train" in result.stdout


@pytest.mark.parametrize(
    "flags,groups",
    [
        (["--backbone", "hstu"], True),
        (["--backbone", "llama", "--no-mrff"], False),
        (["--backbone", "ncf", "--no-mrff"], False),
        (["--backbone", "pa", "--no-mrff"], True),
    ],
)
def test_every_backbone_and_baseline_trains_through_mrff_train(tmp_path, capsys, flags, groups):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--synthetic-users",
                "40",
                "--maxlen",
                "10",
                "--rounds",
                "2",
                *flags,
                "--run-dir",
                str(out),
                "--json",
                "--no-progress",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["config"]["model"]["backbone"] == flags[1]
    assert (summary["parameters"]["group"] > 0) == groups
    evaluation = json.loads((out / "operator-only" / "evaluation.json").read_text())
    assert 0.0 <= evaluation["test_auc"] <= 1.0 and evaluation["best_round"] in (0, 1)


def test_baseline_with_mrff_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--rounds", "1", "--backbone", "ncf", "--run-dir", str(tmp_path / "x")]) == 2
    assert "--no-mrff" in capsys.readouterr().err

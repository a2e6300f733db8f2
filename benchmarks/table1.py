"""Table 1 on KuaiSAR-R: every row the dataset allows, the paper's setup and the tuned recipe, several seeds.

Rows: FedNCF, FedPA, FedSASRec, FedHSTU, FedLLaMA, the three backbones also w/ MRFF. Each run is `mrff train`
in a subprocess (one torch thread each, `--parallel` at a time) writing its own run folder; finished runs are
reused, so the benchmark can be resumed. The JSON is rewritten after every run.

Recipes:
  paper  the paper's setup (Adam lr 0.1 fresh each round, one step, every client, plain averaging), up to
         --rounds rounds with early stopping after --paper-patience rounds without a better validation AUC
         (the test metric is read at the best-validation round either way).
  tuned  TUNED_FLAGS: chosen on validation AUC / LogLoss only (benchmarks/results/table1_tuning.json lists
         every candidate tried, with validation figures only); test is read once, at the best-validation round.

    python benchmarks/table1.py --recipes paper tuned --seeds 0 1 2 --parallel 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "KuaiSAR-R"
METHODS = {  # name: (backbone, mrff)
    "FedNCF": ("ncf", False),
    "FedPA": ("pa", False),
    "FedSASRec": ("sasrec", False),
    "FedSASRec w/ MRFF": ("sasrec", True),
    "FedHSTU": ("hstu", False),
    "FedHSTU w/ MRFF": ("hstu", True),
    "FedLLaMA": ("llama", False),
    "FedLLaMA w/ MRFF": ("llama", True),
}
PAPER = {  # Table 1, KuaiSAR-R (AUC, LogLoss)
    "FedNCF": (0.6710, 2.5670),
    "FedPA": (0.6707, 0.8055),
    "FedSASRec": (0.7007, 0.7105),
    "FedSASRec w/ MRFF": (0.7070, 0.6583),
    "FedHSTU": (0.7030, 0.7338),
    "FedHSTU w/ MRFF": (0.7064, 0.6426),
    "FedLLaMA": (0.7003, 0.7152),
    "FedLLaMA w/ MRFF": (0.7084, 0.6554),
}
TUNED_FLAGS = ["--lr", "0.01", "--server-optimizer", "avgm", "--server-momentum", "0.9", "--weight-decay", "1.0"]
AUC_STANDARD_ERROR_NOTE = "one held-out item per user: 1,791 labels, AUC standard error about 0.014"


def run_args(method: str, recipe: str, seed: int, args: argparse.Namespace, out: Path) -> list[str]:
    backbone, mrff = METHODS[method]
    argv = [
        sys.executable,
        "-m",
        "mrff_secure.app.cli",
        "train",
        "--dataset",
        "kuaisar-r",
        "--data-dir",
        str(args.data_dir),
        "--seed",
        str(seed),
        "--run-dir",
        str(out),
        "--no-progress",
        "--backbone",
        backbone,
    ]
    if not mrff:
        argv.append("--no-mrff")
    if recipe == "paper":
        argv += ["--rounds", str(args.rounds), "--patience", str(args.paper_patience)]
    else:
        argv += ["--rounds", str(args.tuned_rounds), "--patience", str(args.tuned_patience), *TUNED_FLAGS]
    return argv


def _commit() -> str:
    """The commit (and whether the tree had changes) this JSON was written at; run folders do not record theirs."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "mrff_secure"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return head + (" (mrff_secure/ modified)" if dirty else "")


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    return (statistics.fmean(values) if values else None, statistics.stdev(values) if len(values) > 1 else None)


def summarize_method(method: str, summaries: list[dict]) -> dict:
    per_seed = [
        {
            k: s.get(k)
            for k in (
                "seed",
                "best_round",
                "rounds_run",
                "test_auc",
                "test_logloss",
                "test_auc_ci95",
                "val_auc",
                "val_logloss",
            )
        }
        for s in summaries
    ]
    auc_mean, auc_std = _mean_std([s["test_auc"] for s in summaries])
    loss_mean, loss_std = _mean_std([s["test_logloss"] for s in summaries])
    entry = {
        "seeds": [s["seed"] for s in summaries],
        "per_seed": per_seed,
        "test_auc_mean": auc_mean,
        "test_auc_std": auc_std,
        "test_logloss_mean": loss_mean,
        "test_logloss_std": loss_std,
        "parameters": summaries[0]["parameters"] if summaries else None,
        "paper": {"auc": PAPER[method][0], "logloss": PAPER[method][1]},
    }
    if auc_mean is not None:
        entry["above_paper_row"] = {"auc": auc_mean > PAPER[method][0], "logloss": loss_mean < PAPER[method][1]}
    return entry


def compare(with_mrff: dict, without: dict) -> dict:
    """MRFF against its own backbone: the gap, and whether it exceeds the seeds' spread."""
    gap = with_mrff["test_auc_mean"] - without["test_auc_mean"]
    direction = f"MRFF {'above' if gap > 0 else 'below'} its backbone by {abs(gap):.4f} AUC, "
    delong = "one seed's DeLong 95% interval is about +-0.024"
    entry = {"auc_gap": gap, "logloss_gap": with_mrff["test_logloss_mean"] - without["test_logloss_mean"]}
    if with_mrff["test_auc_std"] is None or without["test_auc_std"] is None:  # a single seed has no spread
        seeds = min(len(with_mrff["seeds"]), len(without["seeds"]))
        return {
            **entry,
            "seed_spread": None,
            "above_spread": False,
            "statement": direction + f"from {seeds} seed(s) only: no seeds' spread to compare with; " + delong,
        }
    spread = max(with_mrff["test_auc_std"], without["test_auc_std"])
    return {
        **entry,
        "seed_spread": spread,
        "above_spread": gap > spread,
        "statement": direction
        + ("more than" if abs(gap) > spread else "within")
        + f" the seeds' spread ({spread:.4f}); "
        + delong,
    }


def summarize(runs: dict[tuple[str, str], list[dict]], args: argparse.Namespace, started: float, carried: dict) -> dict:
    table: dict[str, dict] = {}
    for (method, recipe), summaries in runs.items():
        if summaries:
            table.setdefault(recipe, {})[method] = summarize_method(method, summaries)
    for recipe, rows in carried.items():  # rows measured by an earlier run of this benchmark (same code)
        for method, entry in rows.items():
            table.setdefault(recipe, {}).setdefault(method, entry)
    comparisons, targets = {}, {}
    for recipe, rows in table.items():
        for backbone in ("SASRec", "HSTU", "LLaMA"):
            a, b = rows.get(f"Fed{backbone} w/ MRFF"), rows.get(f"Fed{backbone}")
            if a and b and a["test_auc_mean"] is not None and b["test_auc_mean"] is not None:
                comparisons[f"{recipe}: Fed{backbone} w/ MRFF vs Fed{backbone}"] = compare(a, b)
            if a and a["test_auc_mean"] is not None:
                targets[f"{recipe}: Fed{backbone} w/ MRFF above its paper row"] = {
                    "auc": a["test_auc_mean"],
                    "paper_auc": PAPER[f"Fed{backbone} w/ MRFF"][0],
                    "logloss": a["test_logloss_mean"],
                    "paper_logloss": PAPER[f"Fed{backbone} w/ MRFF"][1],
                    "met": a["test_auc_mean"] > PAPER[f"Fed{backbone} w/ MRFF"][0],
                }
    tuned = table.get("tuned", {}).get("FedSASRec w/ MRFF")
    if tuned:
        targets["tuned MRFF (SASRec) AUC >= 0.7100"] = {
            "measured": tuned["test_auc_mean"],
            "met": tuned["test_auc_mean"] >= 0.7100,
        }
        targets["tuned MRFF (SASRec) raw LogLoss <= 0.6583"] = {
            "measured": tuned["test_logloss_mean"],
            "met": tuned["test_logloss_mean"] <= 0.6583,
        }
    return {
        "benchmark": "table1",
        "dataset": "KuaiSAR-R",
        "recipes": {
            "paper": f"Adam lr 0.1 fresh each round, one local step, all 1,791 clients, plain averaging, dropout 0.5, "
            f"2 blocks, 1 head, 4 groups, alpha 0.1; up to {args.rounds} rounds, early stopping after "
            f"{args.paper_patience} rounds without a better validation AUC; test at the best-validation round",
            "tuned": "the paper's model and data with " + " ".join(TUNED_FLAGS) + f"; up to {args.tuned_rounds} "
            f"rounds, early stopping after {args.tuned_patience}; chosen on validation only "
            "(table1_tuning.json); test at the best-validation round, read once",
        },
        "note": AUC_STANDARD_ERROR_NOTE,
        "collected_at_commit": _commit(),
        "methods": table,
        "comparisons": comparisons,
        "targets": targets,
        "wall_seconds": round(time.time() - started, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--paper-patience", type=int, default=50)
    parser.add_argument("--tuned-rounds", type=int, default=300)
    parser.add_argument("--tuned-patience", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--recipes", nargs="+", default=["paper", "tuned"], choices=["paper", "tuned"])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "table1")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "table1_kuaisar_r.json")
    parser.add_argument(
        "--carry",
        type=Path,
        default=None,
        help="a JSON of this benchmark whose rows (recipe -> method) are kept where not rerun",
    )
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--collect-only", action="store_true", help="launch nothing: write the JSON from finished runs")
    args = parser.parse_args()
    started = time.time()
    carried = json.loads(args.carry.read_text())["carried_rows"] if args.carry else {}
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
        "MPLBACKEND": "Agg",
    }
    jobs = [(m, r, s) for s in args.seeds for r in args.recipes for m in args.methods]
    runs: dict[tuple[str, str], list[dict]] = {(m, r): [] for m in args.methods for r in args.recipes}

    def run_dir(method: str, recipe: str, seed: int) -> Path:
        backbone, mrff = METHODS[method]
        return args.runs_dir / f"{backbone}{'-mrff' if mrff else ''}-{recipe}-seed{seed}"

    def collect(method: str, recipe: str, seed: int) -> bool:
        folder = run_dir(method, recipe, seed)
        if not (folder / "summary.json").is_file() or not (folder / "operator-only" / "evaluation.json").is_file():
            return False
        summary = json.loads((folder / "summary.json").read_text())
        evaluation = json.loads((folder / "operator-only" / "evaluation.json").read_text())
        if "test_auc" not in evaluation:
            return False
        runs[(method, recipe)].append(
            {**evaluation, "seed": seed, "parameters": summary["parameters"], "rounds_run": summary.get("rounds_run")}
        )
        return True

    def write() -> dict:
        result = summarize(runs, args, started, carried)
        if carried:
            result["carried_rows"] = carried
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        return result

    pending = [job for job in jobs if not collect(*job)]
    if args.collect_only:
        print(json.dumps(write()["targets"], indent=2))
        return 0
    running = []
    while pending or running:
        while pending and len(running) < args.parallel:
            job = pending.pop(0)
            proc = subprocess.Popen(
                run_args(job[0], job[1], job[2], args, run_dir(*job)) + ["--overwrite"],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            running.append((proc, job))
        time.sleep(5)
        for item in list(running):
            proc, job = item
            if proc.poll() is None:
                continue
            running.remove(item)
            if proc.returncode != 0 or not collect(*job):
                print(f"{job} failed: {proc.stderr.read().decode()[-2000:]}", file=sys.stderr)
                return 1
            write()
            print(f"done: {job}", flush=True)
    print(json.dumps(write()["targets"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

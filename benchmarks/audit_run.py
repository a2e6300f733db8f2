"""`mrff audit` end to end, timed: the audit folder's grid and report copied into benchmarks/results.

Run: python benchmarks/audit_run.py --dataset synthetic --name audit_synthetic
     python benchmarks/audit_run.py --dataset kuaisar-r --data-dir ../shared/datasets/KuaiSAR-R --name audit_kuaisar_r

Writes benchmarks/results/<name>.json (wall time, the verdicts, the exit code, the grid with every
cell) and <name>.html (the self-contained report). The audit runs in a fresh folder under /tmp (not
resumed), in-process, with the default grid (one seed, 5 rounds, 1,000 canaries). Target: the synthetic
audit in <= 300 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrff_secure.app import cli  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_SECONDS = 300.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("synthetic", "kuaisar-r"), default="synthetic")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--name", required=True)
    parser.add_argument("--keep", type=Path, default=None, help="keep the audit folder here")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="mrff-audit-")) / "audit"
    argv = ["audit", "--dataset", args.dataset, "--run-dir", str(folder), "--no-progress"]
    if args.data_dir is not None:
        argv += ["--data-dir", str(args.data_dir)]
    start = time.perf_counter()
    code = cli.main(argv)
    seconds = time.perf_counter() - start
    grid = json.loads((folder / "grid.json").read_text())
    report = json.loads((folder / "report.json").read_text())
    out = {
        "benchmark": {
            "command": "mrff " + " ".join(argv[:-3] + ["--no-progress"]),
            "wall_seconds": seconds,
            "exit_code": code,
            "cells": len(grid["cells"]),
            "cpus": os.cpu_count(),
            "target_seconds": TARGET_SECONDS if args.dataset == "synthetic" else None,
            "target_met": (seconds <= TARGET_SECONDS) if args.dataset == "synthetic" else None,
            "cell_seconds": {c["cell"]: c["seconds"] for c in grid["cells"]},
            "note": "shared 2-core machine; other work may have run at the same time",
        },
        "verdicts": report["verdicts"],
        "grid": grid,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(out, indent=1) + "\n")
    shutil.copy(folder / "report.html", RESULTS / f"{args.name}.html")
    if args.keep is not None:
        shutil.rmtree(args.keep, ignore_errors=True)
        shutil.copytree(folder, args.keep)
    print(f"{args.dataset}: exit {code}, {seconds:.1f} s, {len(grid['cells'])} cells")
    for row in report["verdicts"]:
        print(f"  {row['rule']}: {row['verdict']} ({row['evidence']})")


if __name__ == "__main__":
    main()

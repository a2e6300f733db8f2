"""The plot of benchmarks/results/grpc_round.json: server CPU per round against n*k (k: each client's neighbours
in the secure sums) with the secure mode's linear fit, and round latency against n in both modes.

    python benchmarks/plot_grpc_round.py [--results benchmarks/results/grpc_round.json] [--out ...png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = ROOT / "benchmarks" / "results" / "grpc_round.json"


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["summary"]
    fig, (cpu, latency) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode, marker in (("secure", "o"), ("plain", "s")):
        done = [r for r in rows if mode in r and r[mode]["completed"]]
        cpu.plot(
            [r["n_times_k"] for r in done],
            [r[mode]["server_cpu_seconds"] for r in done],
            marker,
            label=f"{mode}: measured",
        )
        latency.plot([r["clients"] for r in done], [r[mode]["round_seconds"] for r in done], marker + "-", label=mode)
        for r in done:
            cpu.annotate(f"n={r['clients']}", (r["n_times_k"], r[mode]["server_cpu_seconds"]), fontsize=7)
    fit = results.get("server_cpu_fit")
    if fit:
        xs = [0, max(r["n_times_k"] for r in rows)]
        cpu.plot(
            xs,
            [fit["slope_seconds_per_n_k"] * x + fit["intercept_seconds"] for x in xs],
            "--",
            label=f"secure fit: {fit['slope_seconds_per_n_k'] * 1e3:.3f} ms per n*k {fit['intercept_seconds']:+.2f} s "
            f"(R$^2$ = {fit['r_squared']:.3f})",
        )
    cpu.set_xlabel("n * k (clients x neighbours)")
    cpu.set_ylabel("server CPU seconds per round")
    cpu.set_title("server CPU per round")
    cpu.legend(fontsize=8)
    for r in rows:
        if "secure_over_plain_latency" in r:
            latency.annotate(
                f"{r['secure_over_plain_latency']:.2f}x", (r["clients"], r["secure"]["round_seconds"]), fontsize=8
            )
    latency.set_xlabel("clients n")
    latency.set_ylabel("round seconds (last round)")
    latency.set_title("round latency over gRPC/TLS (secure / plain)")
    latency.legend(fontsize=8)
    env = results.get("environment", {})
    fig.suptitle(
        f"mrff server + 4 client processes on one {env.get('cpus', '?')}-core machine, KuaiSAR-R, DP off", fontsize=9
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--out", type=Path, default=None, help="default: the results' name with .png")
    args = parser.parse_args()
    out = args.out if args.out is not None else args.results.with_suffix(".png")
    plot(json.loads(args.results.read_text()), out)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

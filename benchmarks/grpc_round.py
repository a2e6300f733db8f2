"""Round latency, server CPU and bytes on the wire of `mrff server` + `mrff client` over loopback.

For each number of logical clients (default 100, 500, 1000, spread over 4 client processes) and
each aggregation (secure: the two-phase SecAgg+ sum; plain: unmasked sums over the same gRPC/TLS
transport), runs a real server process and the client processes on 127.0.0.1 with the KuaiSAR-R
model (default ModelConfig) and reads the numbers the server records in its audit log:

- seconds: wall time of the round, from the announcement to the checkpointed global update
  (includes local training, which is identical in both modes);
- server_cpu_seconds: CPU time of the whole server process (all threads) during the round;
- wire_bytes: protobuf message bytes received + sent by the server, per participant (no
  gRPC/HTTP2/TLS framing), and the size of the signed round announcement (the model download).

Both modes encode with the same DP encoder (here DP off: clipping, rotation, rounding into a
32-bit ring); plain sends the residues unmasked (clients run with --allow-plain), secure runs the
six SecAgg+ stages per phase (participant set, seed reveal, O(k) neighbour verification, ...).
Round 0 includes warm-up (model building in each client process); the headline uses the last
round. Results are written after every configuration, so a partial run still leaves a file.

    nice -n 10 python benchmarks/grpc_round.py [--sizes 100 500 1000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mrff_secure.pki import AuthorityPaths, issue_state_credentials, make_authority, make_dev_pki, publish_authority

ROOT = Path(__file__).resolve().parents[1]
# the shared folder beside the checkout (/work/main) or beside its worktrees' folder (/work/wt/NAME)
DEFAULT_DATA = next(
    (
        p
        for p in (
            ROOT.parent / "shared" / "datasets" / "KuaiSAR-R",
            ROOT.parents[1] / "shared" / "datasets" / "KuaiSAR-R",
        )
        if p.is_dir()
    ),
    ROOT.parent / "shared" / "datasets" / "KuaiSAR-R",
)
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "grpc_round.json"
TARGET_RATIO = 1.5
# DP is off (the benchmark measures the protocol, not the noise): the clients' policy must accept that
CLIENT_POLICY = ["--allow-dp-off", "--min-noise-multiplier", "0", "--max-epsilon", "inf", "--accept-weaker-privacy"]


def authority_of(pki: Path) -> Path:
    """The identity authority's folder, apart from the server's certificates folder `pki`."""
    return pki.parent / f"{pki.name}-authority"


def make_pki(pki: Path) -> None:
    """A development PKI (TLS, the server's signing key) and an identity authority published into it."""
    make_dev_pki(pki)
    publish_authority(make_authority(authority_of(pki)), pki)


def run_one(
    n: int,
    mode: str,
    *,
    processes: int,
    rounds: int,
    data_dir: Path,
    pki: Path,
    work: Path,
    timeout: float,
    profile: Path | None = None,
) -> dict:
    import grpc  # noqa: F401  (fail early if missing)

    run_dir = work / f"{mode}-{n}"
    data_args = ["--dataset", "kuaisar-r", "--data-dir", str(data_dir)]
    cmd = [sys.executable, "-m", "mrff_secure.app.cli"]

    def profiled(name: str) -> list[str]:
        """py-spy's sampling profiler around a process (--profile: the server and the first client process)."""
        if profile is None:
            return []
        profile.mkdir(parents=True, exist_ok=True)
        return [
            "py-spy",
            "record",
            "--gil",
            *(["--native"] if os.environ.get("GRPC_ROUND_NATIVE") else []),
            "--format",
            "raw",
            "--rate",
            "50",
            "-o",
            str(profile / f"{mode}-{n}-{name}.txt"),
            "--",
        ]

    # the identity authority certifies every client (offline, before the run: not timed)
    issue_state_credentials(AuthorityPaths(authority_of(pki)), list(range(n)), run_dir / "clients")
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    server = subprocess.Popen(
        profiled("server")
        + cmd
        + [
            "server",
            "--run-dir",
            str(run_dir),
            "--address",
            "127.0.0.1:0",
            "--certs",
            str(pki),
            "--linger",
            "60",
            "--rounds",
            str(rounds),
            "--min-clients",
            str(n),
            "--secure-aggregation",
            {"secure": "on", "plain": "off"}[mode],
            "--train-timeout",
            "1800",
            "--stage-timeout",
            "1800",
            "--dp",
            "off",
        ]
        + data_args,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    clients = []
    logs = []
    try:
        stdout = server.stdout
        if stdout is None:  # stdout=PIPE above: cannot happen
            raise RuntimeError("the server's output is not piped")
        line = stdout.readline()
        while line.startswith("py-spy>") or line == "\n":  # the profiler's own lines (--profile)
            line = stdout.readline()
        if not line.startswith("LISTENING"):
            raise RuntimeError(f"server did not start: {line!r}")
        address = line.split()[1]
        per = -(-n // processes)
        for i in range(processes):
            lo, hi = i * per, min(n, (i + 1) * per) - 1
            if lo <= hi:
                logs.append((run_dir / f"client-{i}.log").open("w"))  # the policy's warnings, failures
                clients.append(
                    subprocess.Popen(
                        (profiled("client0") if i == 0 else [])
                        + cmd
                        + [
                            "client",
                            "--address",
                            address,
                            "--users",
                            f"{lo}-{hi}",
                            "--certs",
                            str(pki),
                            "--state-dir",
                            str(run_dir / "clients"),
                            "--retry-timeout",
                            "600",
                        ]
                        + data_args
                        + CLIENT_POLICY
                        + (["--allow-plain"] if mode == "plain" else []),
                        cwd=ROOT,
                        stdout=subprocess.DEVNULL,
                        stderr=logs[-1],
                    )
                )
        codes = [p.wait(timeout=timeout) for p in clients]
        server_code = server.wait(timeout=120)
    finally:
        for p in clients + [server]:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs:
            f.close()
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    records = [json.loads(line) for line in (run_dir / "audit.jsonl").read_text().splitlines()]
    rounds_out = [
        {k: r.get(k) for k in ("round", "type", "seconds", "server_cpu_seconds", "wire_bytes")}
        | {
            "survivors": len(r.get("phases", {}).get("update", {}).get("survivors", [])),
            "stage_seconds": {ph: v.get("stage_seconds") for ph, v in r.get("phases", {}).items()},
        }
        for r in records
        if r["type"] in ("round", "round_aborted")
    ]
    return {
        "clients": n,
        "mode": mode,
        "client_processes": processes,
        "exit_codes": codes + [server_code],
        "rounds": rounds_out,
        "run_wall_seconds": round(time.perf_counter() - started, 2),
        "load_average_after": os.getloadavg(),  # 1, 5, 15 minutes: the machine is shared
        "all_processes_cpu_seconds": round(
            (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime), 2
        ),
    }


def neighbours(n: int) -> int:
    """k, the neighbours of each client in the secure sums of an n-client round (the server's default graph)."""
    from mrff_secure.secagg.config import default_graph

    return default_graph(n)[0]


def linear_fit(xs: list[float], ys: list[float]) -> dict | None:
    """Least squares y = slope x + intercept, with R^2 (None under 2 distinct points)."""
    if len(xs) < 2 or len(set(xs)) < 2:
        return None
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    intercept = my - slope * mx
    residual = sum((y - (slope * x + intercept)) ** 2 for x, y in zip(xs, ys))
    total = sum((y - my) ** 2 for y in ys)
    return {
        "slope_seconds_per_n_k": slope,
        "intercept_seconds": round(intercept, 4),
        "r_squared": round(1 - residual / total, 5) if total else 1.0,
        "points": n,
    }


def server_cpu_fit(summary: list[dict], mode: str = "secure") -> dict | None:
    """The server's CPU seconds per round against n*k, fitted over the sizes measured in `mode`."""
    points = [
        (row["n_times_k"], row[mode]["server_cpu_seconds"])
        for row in summary
        if mode in row and row[mode]["completed"] and row[mode]["server_cpu_seconds"] is not None
    ]
    fit = linear_fit([float(x) for x, _ in points], [float(y) for _, y in points])
    return None if fit is None else {"mode": mode, "x": "n*k", "y": "server CPU seconds per round", **fit}


def summarize(results: list[dict]) -> list[dict]:
    out = []
    for n in sorted({r["clients"] for r in results}):
        by_mode = {r["mode"]: r for r in results if r["clients"] == n}
        row: dict = {"clients": n, "neighbours_k": neighbours(n), "n_times_k": n * neighbours(n)}
        for mode, r in by_mode.items():
            last = r["rounds"][-1] if r["rounds"] else {}
            row[mode] = {
                "round_seconds": last.get("seconds"),
                "server_cpu_seconds": last.get("server_cpu_seconds"),
                "bytes_per_client": (last.get("wire_bytes") or {}).get("per_participant"),
                "completed": last.get("type") == "round",
            }
        if "secure" in row and "plain" in row and row["plain"]["round_seconds"]:
            ratio = row["secure"]["round_seconds"] / row["plain"]["round_seconds"]
            row["secure_over_plain_latency"] = round(ratio, 3)
            row["target_secure_over_plain_at_most"] = TARGET_RATIO
            row["target_met"] = ratio <= TARGET_RATIO
        out.append(row)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--modes", nargs="+", default=["plain", "secure"], choices=["plain", "secure"])
    parser.add_argument("--client-processes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--timeout", type=float, default=3600.0, help="per configuration")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    parser.add_argument(
        "--profile", type=Path, default=None, help="py-spy the server and the first client process (raw stacks here)"
    )
    args = parser.parse_args()
    if not (args.data_dir / "df.csv").is_file():
        raise SystemExit(f"KuaiSAR-R not found at {args.data_dir}")
    import grpc
    import torch

    environment = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "grpc": grpc.__version__,
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "platform": platform.platform(),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="mrff-grpc-bench-") as tmp:
        work = Path(tmp)
        make_pki(work / "pki")
        for n in args.sizes:
            for mode in args.modes:
                print(f"{mode} n={n} ...", flush=True)
                try:
                    result = run_one(
                        n,
                        mode,
                        processes=args.client_processes,
                        rounds=args.rounds,
                        data_dir=args.data_dir,
                        pki=work / "pki",
                        work=work,
                        timeout=args.timeout,
                        profile=args.profile,
                    )
                except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
                    result = {"clients": n, "mode": mode, "error": f"{type(exc).__name__}: {exc}", "rounds": []}
                results.append(result)
                print(json.dumps(result["rounds"][-1] if result["rounds"] else result), flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                summary = summarize([r for r in results if r["rounds"]])
                payload = {
                    "benchmark": "grpc_round",
                    "environment": environment,
                    "note": args.note,
                    "load_average_at_end": os.getloadavg(),
                    "config": {
                        "sizes": args.sizes,
                        "modes": args.modes,
                        "rounds": args.rounds,
                        "client_processes": args.client_processes,
                        "model": "ModelConfig() defaults",
                        "dataset": "KuaiSAR-R",
                        "tls": True,
                        "dp": "off",
                    },
                    "summary": summary,
                    "server_cpu_fit": server_cpu_fit(summary),
                    "runs": results,
                    "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
                tmp_out = args.out.with_suffix(".json.tmp")
                tmp_out.write_text(json.dumps(payload, indent=2) + "\n")
                os.replace(tmp_out, args.out)
    print(json.dumps(summarize([r for r in results if r["rounds"]]), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

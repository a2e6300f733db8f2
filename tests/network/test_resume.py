"""Kill the server (SIGKILL) after round 2, restart it with --resume: round 3 starts, clients
reconnect on their own, and the final model equals an uninterrupted run's (the in-memory
reference, which test_secure_round shows equals an uninterrupted gRPC run bit for bit)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mrff_secure.round.spec import RoundSpec

from . import harness
from .reference import run_reference

pytestmark = pytest.mark.timeout(300)


def test_server_killed_after_round_2_resumes_at_round_3_with_same_final_model(tmp_path, certs, procs) -> None:
    run_dir = tmp_path / "run"
    server, address = harness.start_server(
        tmp_path,
        certs,
        run_dir,
        extra=[
            "--rounds",
            "4",
            "--min-clients",
            "8",
            "--min-group-size",
            "2",
            "--dp",
            "distributed",
            "--clip",
            "0.5",
            "--noise-multiplier",
            "0.05",
            "--stage-timeout",
            "60",
        ],
    )
    procs.append(server)
    reproducible = ["--insecure-reproducible-noise"]  # the reference redoes the clients' rounding and noise
    procs.append(harness.start_clients(tmp_path, certs, address, "0-3", seed=11, extra=reproducible))
    procs.append(harness.start_clients(tmp_path, certs, address, "4-7", seed=11, extra=reproducible))
    harness.wait_for_record(run_dir, lambda r: r["type"] == "round" and r["round"] == 1, timeout=150, procs=procs)
    server.kill()
    assert server.popen.returncode == -9

    # A round 2 the clients already sent an input for is refused by them and waits out the train timeout: short.
    resumed, address2 = harness.start_server(
        tmp_path, certs, run_dir, resume=True, address=address, name="resumed", extra=["--train-timeout", "15"]
    )
    procs.append(resumed)
    assert address2 == address
    assert resumed.wait(timeout=200) == 0, resumed.stderr()
    for client in procs[1:3]:
        assert client.wait(timeout=60) == 0, client.stderr()

    records = harness.audit_records(run_dir)
    resumed_record = next(r for r in records if r["type"] == "resumed")
    assert resumed_record["next_round"] == 2
    rounds = harness.round_records(run_dir)
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert [r["type"] for r in rounds[:2]] == ["round", "round"]
    assert records.index(resumed_record) < records.index(rounds[2])
    spec = RoundSpec(**records[0]["spec"])
    expected = run_reference(
        harness.data(), harness.model_config(), spec, seed=0, client_seed=11, rounds=2, users=list(range(8))
    )
    assert [r["model_digest"] for r in rounds[:2]] == expected  # nothing lost across the crash
    # Round 2 may have started before the kill: a client that already sent a masked input for it refuses the
    # resumed server's second session of the same round (a replayed round could be differenced), so round 2
    # is either completed or aborted with the model unchanged; round 3 completes from where the model was.
    if rounds[2]["type"] == "round_aborted":
        assert rounds[2]["model_digest"] == rounds[1]["model_digest"]
    assert rounds[3]["type"] == "round" and rounds[3]["model_digest"] != rounds[2]["model_digest"]
    assert [r["epsilon"]["rounds_accounted"] for r in rounds if r["type"] == "round"][-1] == sum(
        r["type"] == "round" for r in rounds
    )  # the ledger survived the crash too
    assert records[-1]["type"] == "run_finished" and records[-1]["model_digest"] == rounds[3]["model_digest"]
    verify = subprocess.run(
        [
            sys.executable,
            "-m",
            "mrff_secure.app.cli",
            "audit-log",
            "verify",
            str(run_dir),
            "--signing-pub",
            str(certs / "signing.pub"),
        ],
        capture_output=True,
        text=True,
        cwd=harness.ROOT,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stdout
    assert verify.returncode == 0 and verify.stdout.startswith("ok:"), verify.stdout
    # a finished run is not resumed: nothing is appended to its signed, finished log
    size = (run_dir / "audit.jsonl").stat().st_size
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "mrff_secure.app.cli",
            "server",
            "--run-dir",
            str(run_dir),
            "--resume",
            "--certs",
            str(certs),
            "--address",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        cwd=harness.ROOT,
        timeout=120,
    )
    assert again.returncode == 2 and "has finished" in again.stderr and "Traceback" not in again.stderr
    assert (run_dir / "audit.jsonl").stat().st_size == size

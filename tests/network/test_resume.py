"""Kill the server (SIGKILL) after round 1, restart it with --resume: a new round starts (round 2, or round 3
when round 2 was announced before the kill: it is recorded aborted and its id never reused), clients
reconnect on their own, and the models up to the kill equal an uninterrupted run's (the in-memory
reference, which test_secure_round shows equals an uninterrupted gRPC run bit for bit)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mrff_secure.round.spec import RoundSpec

from . import harness
from .reference import run_reference

pytestmark = pytest.mark.timeout(300)


def test_server_killed_after_round_1_resumes_with_a_new_round_and_no_dead_wait(tmp_path, certs, procs) -> None:
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

    # No dead wait: a round the kill interrupted is recorded aborted and its id never reused, so the resumed
    # server's rounds are new rounds the clients play at once (they would refuse a second session of one they
    # sent an input for, and the round would wait out this train timeout).
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
    rounds = harness.round_records(run_dir)
    assert [r["round"] for r in rounds] == list(range(len(rounds)))  # one numbering, no id used twice
    assert [r["type"] for r in rounds[:2]] == ["round", "round"]
    assert resumed_record["next_round"] in (2, 3) and resumed_record["completed_rounds"] == 2
    if resumed_record["next_round"] == 3:  # round 2 was announced before the kill: recorded aborted on resume
        assert rounds[2]["type"] == "round_aborted" and rounds[2]["interrupted"]
        assert rounds[2]["model_digest"] == rounds[1]["model_digest"]
    after = rounds[resumed_record["next_round"] :]
    assert [r["type"] for r in after] == ["round", "round"], after  # both rounds after the resume completed
    assert records.index(resumed_record) < records.index(after[0])
    assert all(r["seconds"] < 15 for r in after)
    spec = RoundSpec(**records[0]["spec"])
    expected = run_reference(
        harness.data(), harness.model_config(), spec, seed=0, client_seed=11, rounds=2, users=list(range(8))
    )
    assert [r["model_digest"] for r in rounds[:2]] == expected  # nothing lost across the crash
    assert after[0]["model_digest"] != rounds[1]["model_digest"]
    assert [r["epsilon"]["rounds_accounted"] for r in rounds if r["type"] == "round"][-1] >= 4
    for user in range(8):  # the ledgers: one release per (round, phase), equal on both sides
        ledger = json.loads((tmp_path / "state" / f"user-{user}" / "ledger.json").read_text())
        sent = [(e["round"], e["phase"]) for e in ledger["releases"]]
        assert len(sent) == len(set(sent))
        server_epsilon = rounds[-1]["epsilon"]["epsilon"]
        if resumed_record["next_round"] == 2:  # nothing was in flight at the kill
            assert ledger["epsilon"] == pytest.approx(server_epsilon, rel=1e-9)
        else:  # an input sent for round 2 before the kill, never decoded, is accounted by its client only
            assert ledger["epsilon"] >= server_epsilon * (1 - 1e-9)
    assert records[-1]["type"] == "run_finished" and records[-1]["model_digest"] == rounds[-1]["model_digest"]
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

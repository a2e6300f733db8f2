"""A secure round with DP over gRPC (real server and client processes on 127.0.0.1) gives the
model of the in-memory run, bit for bit."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mrff_secure.federation.client_update import RoundSpec
from tests.network import harness
from tests.network.reference import run_reference

pytestmark = pytest.mark.timeout(240)


def test_secure_dp_rounds_over_grpc_equal_in_memory_bit_for_bit(tmp_path, certs, procs) -> None:
    run_dir = tmp_path / "run"
    server, address = harness.start_server(tmp_path, certs, run_dir, extra=[
        "--rounds", "2", "--min-clients", "8", "--dp", "distributed", "--clip", "1.0", "--noise-multiplier", "0.5",
        "--min-group-size", "2", "--stage-timeout", "60"])
    procs.append(server)
    procs.append(harness.start_clients(tmp_path, certs, address, "0-3", seed=7))
    procs.append(harness.start_clients(tmp_path, certs, address, "4-7", seed=7))
    assert server.wait(timeout=200) == 0, server.stderr()
    for client in procs[1:]:
        assert client.wait(timeout=60) == 0, client.stderr()

    records = harness.audit_records(run_dir)
    started = records[0]
    rounds = harness.round_records(run_dir)
    assert [r["type"] for r in rounds] == ["round", "round"]
    for r in rounds:
        assert r["participants"] == list(range(8))
        assert r["phases"]["update"]["survivors"] == list(range(8))
        assert r["epsilon"]["rdp"] is not None and r["epsilon"]["rdp"] > 0
    spec = RoundSpec(**started["spec"])
    assert spec.dp_mode == "distributed" and spec.noise_std > 0
    expected = run_reference(harness.data(), harness.model_config(), spec, seed=0, client_seed=7, rounds=2,
                             users=list(range(8)))
    assert [r["model_digest"] for r in rounds] == expected
    assert rounds[0]["model_digest"] != started["model_digest"]  # the model moved

    verify = subprocess.run([sys.executable, "-m", "mrff_secure.cli", "audit-log", "verify", str(run_dir)],
                            capture_output=True, text=True, cwd=harness.ROOT, timeout=60)
    assert verify.returncode == 0 and verify.stdout.startswith("ok:"), verify.stdout + verify.stderr

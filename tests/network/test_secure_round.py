"""A secure round with DP over gRPC gives the model of the in-memory run, bit for bit.

Driven through `mrff run-local` (which starts a real server process and P client processes on
127.0.0.1 with a fresh development PKI), so the end-to-end command is exercised too."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mrff_secure.federation.client_update import RoundSpec
from . import harness
from .reference import run_reference

pytestmark = pytest.mark.timeout(240)


def test_secure_dp_rounds_over_grpc_equal_in_memory_bit_for_bit(tmp_path) -> None:
    run_dir = tmp_path / "local"
    done = subprocess.run(
        [sys.executable, "-m", "mrff_secure.cli", "run-local", "--client-processes", "2", "--users", "8",
         "--run-dir", str(run_dir), "--client-seed", "7", "--rounds", "2", "--dp", "distributed", "--clip", "1.0",
         "--noise-multiplier", "0.5", "--min-group-size", "2", "--stage-timeout", "60", "--timeout", "200"]
        + harness.DATA_ARGS + harness.MODEL_ARGS,
        capture_output=True, text=True, cwd=harness.ROOT, timeout=230)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2/2 rounds completed; audit log intact" in done.stdout
    assert "(TLS)" in done.stdout

    server_dir = run_dir / "server"
    records = harness.audit_records(server_dir)
    started = records[0]
    rounds = harness.round_records(server_dir)
    assert [r["type"] for r in rounds] == ["round", "round"]
    for r in rounds:
        assert r["participants"] == list(range(8)) and r["secure"]
        assert r["phases"]["update"]["survivors"] == list(range(8))
        assert r["epsilon"]["rdp"] is not None and r["epsilon"]["rdp"] > 0
    spec = RoundSpec(**started["spec"])
    assert spec.dp_mode == "distributed" and spec.noise_std > 0
    expected = run_reference(harness.data(), harness.model_config(), spec, seed=0, client_seed=7, rounds=2,
                             users=list(range(8)))
    assert [r["model_digest"] for r in rounds] == expected
    assert rounds[0]["model_digest"] != started["model_digest"]  # the model moved
    assert f"model_digest={expected[-1]}" in done.stdout

"""A client whose policy keeps its held-out items out of the federated evaluation (`--no-evaluation`).

Over real gRPC with real processes: the client still trains (its update is in the round's sum) and sends zeros
(with its noise share) to the evaluation's sum instead of its scores, so that sum is still over exactly the
update's survivors (a server cannot leave one client out of one evaluation: W14)."""

from __future__ import annotations

import pytest

from . import harness

pytestmark = pytest.mark.timeout(240)


def test_a_client_that_opts_out_of_the_evaluation_trains_but_sends_zeros(tmp_path, certs, procs) -> None:
    run_dir = tmp_path / "run"
    server, address = harness.start_server(
        tmp_path,
        certs,
        run_dir,
        extra=[
            "--rounds",
            "1",
            "--min-clients",
            "8",
            "--stage-timeout",
            "20",
            "--train-timeout",
            "60",
            "--min-group-size",
            "2",
            "--dp",
            "distributed",
            "--noise-multiplier",
            "1.0",
            "--federated-eval-every",
            "1",
        ],
    )
    procs.append(server)
    opted_out = harness.start_clients(tmp_path, certs, address, "0", extra=["--no-evaluation", "-v"], name="opted-out")
    procs.append(opted_out)
    others = harness.start_clients(tmp_path, certs, address, "1-7", extra=["-v"])
    procs.append(others)
    assert server.wait(timeout=200) == 0, server.stderr()[-3000:]
    assert opted_out.wait(timeout=60) == 0 and others.wait(timeout=60) == 0
    assert "no held-out scores for the federated evaluation" in opted_out.stderr()
    assert "zeros for the federated evaluation" in opted_out.stderr()
    assert "zeros for the federated evaluation" not in others.stderr()
    [record] = harness.round_records(run_dir)
    assert record["type"] == "round" and record["phases"]["update"]["survivors"] == list(range(8))
    assert record["phases"]["evaluation"]["survivors"] == list(range(8))
    assert record["evaluation"]["available"] and record["evaluation"]["in_epsilon"]

"""A client whose policy keeps its held-out items out of the federated evaluation (`--no-evaluation`).

Over real gRPC with real processes: the client still trains (its update is in the round's sum), sends
nothing to the evaluation's sum, and the server, told at enrolment, does not wait for it there."""

from __future__ import annotations

import pytest

from . import harness

pytestmark = pytest.mark.timeout(240)


def test_a_client_that_opts_out_of_the_evaluation_trains_but_sends_no_scores(tmp_path, certs, procs) -> None:
    run_dir = tmp_path / "run"
    stage_timeout = 20
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
            str(stage_timeout),
            "--train-timeout",
            "60",
            "--min-group-size",
            "2",
        ],
    )
    procs.append(server)
    opted_out = harness.start_clients(tmp_path, certs, address, "0", extra=["--no-evaluation"], name="opted-out")
    procs.append(opted_out)
    others = harness.start_clients(tmp_path, certs, address, "1-7")
    procs.append(others)
    assert server.wait(timeout=200) == 0, server.stderr()[-3000:]
    assert opted_out.wait(timeout=60) == 0 and others.wait(timeout=60) == 0
    assert "no held-out scores for the federated evaluation" in opted_out.stderr()
    [record] = harness.round_records(run_dir)
    assert record["type"] == "round" and record["phases"]["update"]["survivors"] == list(range(8))
    evaluation = record["phases"]["evaluation"]
    assert evaluation["survivors"] == list(range(1, 8)) and evaluation["dropouts"]["advertise_keys"] == []
    assert evaluation["stage_seconds"]["advertise_keys"] < stage_timeout / 2  # nobody waited for client 0
    assert record["evaluation"]["available"] and record["evaluation"]["clients"] == 7

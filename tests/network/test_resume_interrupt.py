"""Issue B: Ctrl-C (SIGINT) the server in the middle of a round in which the clients have released their phase-1
counts, restart it with --resume while new client processes (the same state) join: the resumed server starts a
NEW round at once (the clients never see a second session of the round they sent an input for, so nothing
waits out the train timeout), one round numbering holds in the lines and the audit log, the run completes its
--rounds completed rounds, and the exit codes say whether it did. Every release is accounted on both sides:
the interrupted round's counts by the server's ledger and by every client's."""

from __future__ import annotations

import json
import re
import signal
import time

import pytest

from . import harness

pytestmark = pytest.mark.timeout(240)
USERS = "0-5"
SERVER = [
    "--rounds",
    "3",
    "--min-clients",
    "6",
    "--min-group-size",
    "2",
    "--dp",
    "distributed",
    "--noise-multiplier",
    "2.0",
    "--stage-timeout",
    "60",
]
TRAIN_TIMEOUT = 20.0  # the resumed server's: a refused round would wait this long


def test_ctrl_c_mid_round_then_resume_starts_a_new_round_at_once(tmp_path, certs, procs) -> None:
    run_dir = tmp_path / "run"
    server, address = harness.start_server(tmp_path, certs, run_dir, extra=SERVER)
    procs.append(server)
    paused = harness.start_clients(
        tmp_path, certs, address, USERS, extra=["--pause-after", "1:update:advertise_keys"], name="paused"
    )
    procs.append(paused)
    paused.wait_line("PAUSED", timeout=150)  # round 1's counts are released; its update phase waits for them
    server.popen.send_signal(signal.SIGINT)
    assert server.wait(timeout=60) == 130, server.stderr()[-3000:]  # interrupted (the README's exit code)
    done = next(line for line in server.output if line.startswith("DONE"))
    assert done.startswith("DONE 1 of 3 rounds completed, 1 aborted; run NOT FINISHED"), done
    assert "--resume" in done
    paused.kill()

    resumed, _ = harness.start_server(
        tmp_path,
        certs,
        run_dir,
        resume=True,
        address=address,
        name="resumed",
        extra=["--train-timeout", str(TRAIN_TIMEOUT)],
    )
    procs.append(resumed)
    started = time.monotonic()
    clients = harness.start_clients(tmp_path, certs, address, USERS, name="clients")
    procs.append(clients)
    assert resumed.wait(timeout=150) == 0, resumed.stderr()[-3000:]
    elapsed = time.monotonic() - started
    assert clients.wait(timeout=60) == 0, clients.stderr()[-3000:]
    done = next(line for line in resumed.output if line.startswith("DONE"))
    assert done.startswith("DONE 3 of 3 rounds completed, 1 aborted; run finished"), done

    rounds = harness.round_records(run_dir)
    assert [(r["round"], r["type"]) for r in rounds] == [(0, "round"), (1, "round_aborted"), (2, "round"), (3, "round")]
    assert rounds[1]["interrupted"] and rounds[1]["reason"] == "the server was stopped during the round"
    assert all(r["seconds"] < TRAIN_TIMEOUT / 2 for r in rounds[2:]), [r["seconds"] for r in rounds]
    assert elapsed < 60, elapsed  # the clients' start, enrolment and two rounds: no dead wait
    print(f"resumed first round {rounds[2]['seconds']:.2f} s; resume to DONE {elapsed:.1f} s")

    # one numbering: the lines name the audit log's round ids, and no secure-sum session number
    lines = [line for line in server.output + resumed.output if line.startswith("[ROUND")]
    assert [int(re.match(r"\[ROUND (\d+)\]", line).group(1)) for line in lines] == [0, 1, 2, 3], lines
    assert "ABORTED: the server was stopped during the round" in lines[1]
    assert lines[-1].startswith("[ROUND 3] completed: 3 of 3 rounds completed"), lines[-1]
    client_lines = [line for line in clients.output if line.startswith("[ROUND")]
    assert [line.split("]")[0] for line in client_lines] == ["[ROUND 2", "[ROUND 3"], clients.output

    # exact accounting on both sides: round 1's counts (released before the stop) and rounds 0, 2, 3
    server_epsilon = rounds[-1]["epsilon"]["epsilon"]
    assert rounds[1]["epsilon"]["releases_accounted"] == 3  # round 0's two phases and round 1's counts
    for user in range(6):
        ledger = json.loads((tmp_path / "state" / f"user-{user}" / "ledger.json").read_text())
        sent = [(e["round"], e["phase"]) for e in ledger["releases"]]
        assert sorted(sent) == [
            (0, "counts"),
            (0, "update"),
            (1, "counts"),
            (2, "counts"),
            (2, "update"),
            (3, "counts"),
            (3, "update"),
        ]
        assert ledger["epsilon"] == pytest.approx(server_epsilon, rel=1e-9)

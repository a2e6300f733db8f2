"""The client owns its privacy, over real gRPC with real processes on 127.0.0.1 (SECURITY-REVIEW W12, W13, W17).

A lying server (attacks/hostile_server.py) freezes a round and replays it, or relabels the run; an
honest one proposes DP off or almost no noise, or aborts a round after its counts. The clients run their
DEFAULT policy (no weakening flag) and their own ledgers (client/ledger.py) decide: nothing is released
twice, nothing without noise, every release is accounted when it is sent, and the client's epsilon equals
the server's on what was honestly released."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from . import harness
from .test_malicious_server import HostileServer

pytestmark = pytest.mark.timeout(300)
ALL = f"0-{harness.USERS - 1}"
# A refused round costs the server its train timeout: short, as 12 clients train in about a second.
COMMON = ["--min-clients", str(harness.USERS), "--stage-timeout", "8", "--train-timeout", "5", "--linger", "2"]


def _ledger(state: Path, user: int) -> dict:
    return json.loads((state / f"user-{user}" / "ledger.json").read_text())


def _phases(ledger: dict, round_id: int) -> list[str]:
    return sorted(e["phase"] for e in ledger["releases"] if e["round"] == round_id)


def _hostile(tmp_path, certs, procs, lie: str, extra: list[str]) -> tuple[HostileServer, str, Path]:
    run_dir = tmp_path / "run"
    args = ["--address", "127.0.0.1:0", "--certs", str(certs), "--run-dir", str(run_dir)] + COMMON
    server = HostileServer(lie, args + harness.DATA_ARGS + harness.MODEL_ARGS + extra, tmp_path / "server.log")
    procs.append(server)
    return server, server.wait_line("LISTENING", timeout=90).split()[1], run_dir


def test_frozen_replays_are_each_accounted_until_the_cap_stops_the_client(tmp_path, certs, procs):
    """W12 freeze and difference: every round is summed, reported 'aborted' and the model frozen, so each
    round is the last one again. The clients (default policy) count every release in their own ledgers,
    equal to the server's epsilon of the sums it took, and stop at their cap (10) instead of at the
    server's word."""
    extra = ["--rounds", "4", "--dp", "distributed", "--noise-multiplier", "2.0"]
    server, address, run_dir = _hostile(tmp_path, certs, procs, "freeze-and-replay", extra)
    clients = harness.start_clients(tmp_path, certs, address, ALL, extra=["-v"], policy=[])
    procs.append(clients)
    # the clients stop at their cap, so rounds abort until the server stops the run unfinished (exit 1)
    assert server.wait(timeout=280) == 1, server.stderr()[-3000:]
    assert harness.audit_records(run_dir)[-1]["type"] == "run_stopped"
    clients.wait(timeout=60)
    rounds = harness.round_records(run_dir)
    summed = [r for r in rounds if r["type"] == "round"]
    assert 2 <= len(summed) < 4 and rounds[len(summed)]["type"] == "round_aborted"  # then the clients stopped
    assert "past its cap max_epsilon=10" in clients.stderr()
    server_epsilon = summed[-1]["epsilon"]["epsilon"]
    for user in range(harness.USERS):
        ledger = _ledger(tmp_path / "state", user)
        assert sorted({e["round"] for e in ledger["releases"]}) == [r["round"] for r in summed]
        assert all(_phases(ledger, r["round"]) == ["counts", "update"] for r in summed)
        assert ledger["epsilon"] == pytest.approx(server_epsilon, rel=1e-9) and ledger["epsilon"] <= 10.0


def test_a_replay_under_a_new_run_label_is_refused(tmp_path, certs, procs):
    """W12: the same round 0 announced again under another run id is not a new run to the clients: they
    enrolled in the first one."""
    server, address, run_dir = _hostile(tmp_path, certs, procs, "relabel-and-replay", ["--rounds", "1"])
    clients = harness.start_clients(tmp_path, certs, address, ALL, extra=["-v"], policy=[])
    procs.append(clients)
    clients.wait(timeout=200)
    assert "a relabelled replay is not a new run" in clients.stderr()
    rounds = harness.round_records(run_dir)
    assert [(r["round"], r["type"]) for r in rounds][:1] == [(0, "round")]
    for user in range(harness.USERS):
        assert _phases(_ledger(tmp_path / "state", user), 0) == ["counts", "update"]  # once, never twice


def test_the_default_policy_refuses_rounds_without_noise(tmp_path, certs, procs):
    """W13: a client with no policy flags takes part in no round with DP off (almost no noise: the policy's unit
    test, tests/client/test_client_policy.py::test_the_default_policy_refuses_rounds_without_real_noise)."""
    reason = "the server proposes DP mode 'off'; the policy allows ['distributed']"
    server, address = harness.start_server(
        tmp_path, certs, tmp_path / "run", extra=["--rounds", "1", "--dp", "off"] + COMMON
    )
    procs.append(server)
    clients = harness.start_clients(tmp_path, certs, address, ALL, extra=["-v"], policy=[])
    procs.append(clients)
    assert server.wait(timeout=200) == 1, server.stderr()[-3000:]  # no round completed: the run is not finished
    clients.wait(timeout=60)
    assert reason in clients.stderr()
    # each refused round is retried as a new round, until MAX_ABORTED_IN_A_ROW (3) in a row stop the run
    assert [r["type"] for r in harness.round_records(tmp_path / "run")] == ["round_aborted"] * 3
    for user in range(harness.USERS):  # nothing was released: no ledger entry (no ledger file written at all)
        path = tmp_path / "state" / f"user-{user}" / "ledger.json"
        assert not path.exists() or json.loads(path.read_text())["releases"] == []


def test_counts_released_before_an_abort_are_accounted_on_both_sides(tmp_path, certs, procs):
    """W17: nine clients stop after the update phase opened (they hold the phase-1 counts), so the round
    aborts; the counts were a DP release: the server's ledger and every client's ledger account them."""
    run_dir = tmp_path / "run"
    server_args = ["--rounds", "1", "--dp", "distributed", "--noise-multiplier", "2.0"] + COMMON
    server, address = harness.start_server(tmp_path, certs, run_dir, extra=server_args)
    procs.append(server)
    paused = harness.start_clients(
        tmp_path, certs, address, "0-8", extra=["--pause-after", "0:update:advertise_keys"], policy=[], name="paused"
    )
    procs.append(paused)
    rest = harness.start_clients(tmp_path, certs, address, "9-11", policy=[])
    procs.append(rest)
    # the paused clients are not there to retry the round: the run stops unfinished (exit 1) after the abort
    assert server.wait(timeout=240) == 1, server.stderr()[-3000:]
    (aborted,) = harness.round_records(run_dir)
    assert aborted["type"] == "round_aborted"
    server_epsilon = aborted["epsilon"]["epsilon"]
    assert 0 < server_epsilon < float("inf") and aborted["epsilon"]["releases_accounted"] == 1
    for user in range(harness.USERS):
        ledger = _ledger(tmp_path / "state", user)
        assert _phases(ledger, 0) == ["counts"]
        assert ledger["epsilon"] == pytest.approx(server_epsilon, rel=1e-9)


def test_malformed_signed_announcements_cost_a_round_not_the_client(tmp_path, certs, procs):
    """W19: a signed announcement with group fractions of the wrong length (round 0) or a model configuration
    that is no JSON object (round 1) is refused by every client, which stays and plays the honest round 2."""
    extra = ["--rounds", "3", "--dp", "distributed", "--noise-multiplier", "4.0"]
    server, address, run_dir = _hostile(tmp_path, certs, procs, "malformed-round-0", extra)
    clients = harness.start_clients(tmp_path, certs, address, ALL, extra=["-v"], policy=[])
    procs.append(clients)
    assert server.wait(timeout=240) == 0, server.stderr()[-3000:]
    assert clients.wait(timeout=60) == 0, clients.stderr()[-3000:]
    # the two refused rounds are retried as rounds 3 and 4: the run completes its 3 rounds
    assert [r["type"] for r in harness.round_records(run_dir)] == ["round_aborted"] * 2 + ["round"] * 3
    stderr = clients.stderr()
    assert "group fractions announced, expected" in stderr and "model configuration is not acceptable" in stderr
    for user in range(harness.USERS):
        assert sorted({e["round"] for e in _ledger(tmp_path / "state", user)["releases"]}) == [2, 3, 4]

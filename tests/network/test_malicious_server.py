"""A lying coordinator over real gRPC, with real client processes on 127.0.0.1: the clients refuse.

The server is the real `mrff server` with one lie patched in (attacks/hostile_server.py).
Each test checks that no round completes (nothing is released), and that the clients name the
reason: their own policy, not the server's word, decided (SECURITY.md: W2, W3, W7)."""

from __future__ import annotations

import pytest

from attacks.network_cell import ChildProcess

from . import harness

pytestmark = pytest.mark.timeout(240)


class HostileServer(ChildProcess):
    def __init__(self, lie: str, args: list[str], log) -> None:  # `mrff server` with the lie installed
        super().__init__(["-m", "attacks.hostile_server", lie, "--", *args], log, cwd=harness.ROOT)


def _run(tmp_path, certs, procs, lie: str, server_extra: list[str], client_extra: list[str] = ()) -> tuple[list, str]:
    run_dir = tmp_path / "run"
    args = [
        "--address",
        "127.0.0.1:0",
        "--certs",
        str(certs),
        "--linger",
        "2",
        "--run-dir",
        str(run_dir),
        "--rounds",
        "1",
        "--min-clients",
        "8",
        "--stage-timeout",
        "8",
        "--train-timeout",
        "6",  # the clients refuse before they train: a refused round costs the server this wait
        "--min-group-size",
        "2",
    ]
    server = HostileServer(lie, args + harness.DATA_ARGS + harness.MODEL_ARGS + server_extra, tmp_path / "server.log")
    procs.append(server)
    address = server.wait_line("LISTENING", timeout=90).split()[1]
    clients = harness.start_clients(tmp_path, certs, address, "0-7", extra=["-v", *client_extra])
    procs.append(clients)
    code = server.wait(timeout=200)
    clients.wait(timeout=60)
    rounds = harness.round_records(run_dir)
    # exit 0 only when the run completed its round; a refused round is retried as a new round, up to
    # MAX_ABORTED_IN_A_ROW (3) in a row or until the clients are gone, then the run stops unfinished (exit 1)
    completed = any(r["type"] == "round" for r in rounds)
    assert code == (0 if completed else 1), server.stderr()[-3000:]
    return rounds, clients.stderr()


def test_weak_threshold_is_refused_before_anything_is_revealed(tmp_path, certs, procs) -> None:
    rounds, log = _run(tmp_path, certs, procs, "weak-threshold", [])
    assert rounds and {r["type"] for r in rounds} == {"round_aborted"}
    assert "2t - k = 2" in log and "corrupt_neighbours=2" in log
    counts = rounds[0]["phases"]["counts"]["dropouts"]
    assert counts["advertise_keys"] == list(range(8))  # no client even advertised keys


def test_a_weak_threshold_on_the_evaluation_sum_alone_is_refused(tmp_path, certs, procs) -> None:
    """The third sum (held-out scores, a DP release) is checked by each client like the other two: the
    update completes, the evaluation gets no keys at all, and nothing of it is released."""
    rounds, log = _run(tmp_path, certs, procs, "weak-evaluation-threshold", ["--federated-eval-every", "1"])
    assert [r["type"] for r in rounds] == ["round"]
    assert "2t - k = 2" in log and "federated evaluation failed" in log
    assert rounds[0]["phases"]["evaluation"]["dropouts"]["advertise_keys"] == list(range(8))
    assert rounds[0]["evaluation"]["available"] is False


def test_tiny_k_is_refused(tmp_path, certs, procs) -> None:
    rounds, log = _run(tmp_path, certs, procs, "tiny-k", [])
    assert rounds and {r["type"] for r in rounds} == {"round_aborted"}
    assert "2t - k" in log
    assert rounds[0]["phases"]["counts"]["dropouts"]["advertise_keys"] == list(range(8))


def test_a_ring_announced_without_guard_bits_is_refused(tmp_path, certs, procs) -> None:
    """W8 over gRPC: a server announcing an input bound that leaves its range check blind is refused by every
    client's own config check, before any key is advertised."""
    rounds, log = _run(tmp_path, certs, procs, "no-guard-bits", [])
    assert rounds and {r["type"] for r in rounds} == {"round_aborted"}
    assert "leaves no room for the range check" in log
    assert rounds[0]["phases"]["counts"]["dropouts"]["advertise_keys"] == list(range(8))


def test_noise_sized_for_absent_survivors_is_refused(tmp_path, certs, procs) -> None:
    rounds, log = _run(
        tmp_path,
        certs,
        procs,
        "huge-noise-survivors",
        ["--dp", "distributed", "--clip", "1", "--noise-multiplier", "1"],
    )
    assert rounds and {r["type"] for r in rounds} == {"round_aborted"}
    assert "n_min=1000000 survivors cannot exceed the 8 participants" in log
    assert rounds[0]["phases"]["counts"]["dropouts"]["advertise_keys"] == list(range(8))


def test_survivor_list_below_the_noise_survivors_is_not_unmasked(tmp_path, certs, procs) -> None:
    rounds, log = _run(
        tmp_path,
        certs,
        procs,
        "drop-below-noise-survivors",
        ["--dp", "distributed", "--clip", "1", "--noise-multiplier", "1"],
    )
    assert rounds and {r["type"] for r in rounds} == {"round_aborted"}
    assert "7 survivors, below the policy's min_survivors=8" in log
    update = rounds[0]["phases"]["update"]["dropouts"]
    assert update["consistency_check"] == sorted(update["consistency_check"]) and len(update["consistency_check"]) == 7

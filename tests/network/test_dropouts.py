"""Client processes killed (SIGKILL, by PID) in the middle of a round.

Scenario, 9 users in three processes A (0-2), B (3-5), C (6-8); threshold t = 5 of k = 8 (the
clients' policy withstands c_max = 1 colluding neighbour: 2t - k = 2 > 1):
round 0: C stops after submitting share-keys of the update phase and is killed -> the round
completes with the exact sum of A and B; round 1: B and C (restarted) are killed at the same
point -> 3 survivors < t, the round aborts and releases nothing; round 2: B and C restarted,
the round completes with everyone. `--pause-after` only makes the kill land at a known stage.
"""

from __future__ import annotations

import pytest

from mrff_secure.round.spec import RoundSpec

from . import harness
from .reference import run_reference

pytestmark = pytest.mark.timeout(300)
# c_max = 1 to match t = 5 of k = 8; reproducible noise so that the in-memory reference can redo the rounding
POLICY = ["--corrupt-neighbours", "1", "--insecure-reproducible-noise"]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, certs):
    tmp = tmp_path_factory.mktemp("dropouts")
    run_dir = tmp / "run"
    started: list[harness.Proc] = []
    try:
        server, address = harness.start_server(
            tmp,
            certs,
            run_dir,
            extra=[
                "--rounds",
                "3",
                "--min-clients",
                "9",
                "--min-group-size",
                "2",
                "--stage-timeout",
                "6",
                "--threshold",
                "5",
            ],
        )
        started.append(server)
        a = harness.start_clients(tmp, certs, address, "0-2", extra=POLICY)
        b = harness.start_clients(tmp, certs, address, "3-5", extra=POLICY + ["--pause-after", "1:update:share_keys"])
        c = harness.start_clients(tmp, certs, address, "6-8", extra=POLICY + ["--pause-after", "0:update:share_keys"])
        started += [a, b, c]
        c.wait_line("PAUSED", timeout=120)
        c.kill()
        round0 = harness.wait_for_record(
            run_dir, lambda r: r.get("round") == 0 and r["type"].startswith("round"), timeout=90, procs=started
        )
        c2 = harness.start_clients(
            tmp, certs, address, "6-8", extra=POLICY + ["--pause-after", "1:update:share_keys"], name="clients-restart1"
        )
        started.append(c2)
        b.wait_line("PAUSED", timeout=120)
        c2.wait_line("PAUSED", timeout=120)
        b.kill()
        c2.kill()
        round1 = harness.wait_for_record(
            run_dir, lambda r: r.get("round") == 1 and r["type"].startswith("round"), timeout=90, procs=started
        )
        b3 = harness.start_clients(tmp, certs, address, "3-5", name="clients-restart2", extra=POLICY)
        c3 = harness.start_clients(tmp, certs, address, "6-8", name="clients-restart2", extra=POLICY)
        started += [b3, c3]
        server_code = server.wait(timeout=150)
        codes = [p.wait(timeout=60) for p in (a, b3, c3)]
        yield {
            "run_dir": run_dir,
            "round0": round0,
            "round1": round1,
            "server_code": server_code,
            "codes": codes,
            "records": harness.audit_records(run_dir),
            "server": server,
        }
    finally:
        for proc in reversed(started):
            proc.stop()


def test_client_killed_after_share_keys_round_completes_with_exact_survivor_sum(scenario) -> None:
    round0 = scenario["round0"]
    assert round0["type"] == "round", round0
    update = round0["phases"]["update"]
    assert update["dropouts"]["share_keys"] == []
    assert update["dropouts"]["masked_input"] == [6, 7, 8]
    assert update["survivors"] == [0, 1, 2, 3, 4, 5]
    assert scenario["round0"]["phases"]["counts"]["survivors"] == list(range(9))
    spec = RoundSpec(**scenario["records"][0]["spec"])
    expected = run_reference(
        harness.data(),
        harness.model_config(),
        spec,
        seed=0,
        client_seed=7,
        rounds=1,
        users=list(range(9)),
        drops={0: {"update": {6, 7, 8}}},
        options={"threshold": 5},
    )
    assert round0["model_digest"] == expected[0]  # the exact sum of the six survivors, applied
    everyone = run_reference(
        harness.data(),
        harness.model_config(),
        spec,
        seed=0,
        client_seed=7,
        rounds=1,
        users=list(range(9)),
        options={"threshold": 5},
    )
    assert everyone[0] != expected[0]  # the dropouts really changed the sum


def test_below_threshold_round_aborts_and_next_round_proceeds(scenario) -> None:
    round1 = scenario["round1"]
    assert round1["type"] == "round_aborted", round1
    assert round1["reason"].startswith("update phase: ")  # in our round numbering: no secure-sum session number
    assert round1["phases"]["update"]["dropouts"]["masked_input"] == [3, 4, 5, 6, 7, 8]
    assert round1["model_digest"] == scenario["round0"]["model_digest"]  # nothing released, model unchanged
    rounds = [r for r in scenario["records"] if r["type"] in ("round", "round_aborted")]
    assert [r["type"] for r in rounds] == ["round", "round_aborted", "round", "round"]  # the aborted one retried
    assert rounds[2]["phases"]["update"]["survivors"] == list(range(9))
    assert rounds[2]["model_digest"] != round1["model_digest"]
    assert scenario["server_code"] == 0, scenario["server"].stderr()
    assert scenario["codes"] == [0, 0, 0]

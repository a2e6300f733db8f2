"""The federated evaluation inside the guarantee, over real gRPC with real processes: a DP run that asks for an
evaluation releases it noised and its ledger (the round line, metrics.jsonl, summary.json) includes its cost; the
same run without one (the default) evaluates nothing and reports the rounds' epsilon alone."""

from __future__ import annotations

import json

import pytest

from mrff_secure.round.accountant import RoundAccountant
from mrff_secure.round.evaluation_release import EvaluationRelease

from . import harness

pytestmark = pytest.mark.timeout(300)

DP = ["--dp", "distributed", "--noise-multiplier", "1.0", "--clip", "1.0", "--min-group-size", "2"]
COMMON = ["--rounds", "1", "--min-clients", "8", "--stage-timeout", "20", "--train-timeout", "60"]


def _run(tmp_path, certs, procs, name: str, extra: list[str], client_extra: list[str] = ()) -> tuple[dict, dict, str]:
    run_dir = tmp_path / name
    server, address = harness.start_server(tmp_path, certs, run_dir, extra=COMMON + DP + extra, name=name)
    procs.append(server)
    clients = harness.start_clients(tmp_path, certs, address, "0-7", name=f"{name}-clients", extra=list(client_extra))
    procs.append(clients)
    assert server.wait(timeout=200) == 0, server.stderr()[-3000:]
    assert clients.wait(timeout=60) == 0
    [record] = harness.round_records(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    return record, summary, server.stderr()


def test_an_evaluated_run_reports_the_evaluation_in_epsilon_and_an_unevaluated_one_does_not(
    tmp_path, certs, procs
) -> None:
    plain, plain_summary, _ = _run(tmp_path, certs, procs, "default", [])
    assert "evaluation" not in plain and "evaluation" not in plain["phases"]  # none unless asked
    assert plain["epsilon"]["evaluations_accounted"] == 0
    assert plain_summary["evaluation"]["available"] is False

    evaluated, summary, _ = _run(tmp_path, certs, procs, "evaluated", ["--federated-eval-every", "1"])
    assert evaluated["phases"]["evaluation"]["survivors"] == evaluated["phases"]["update"]["survivors"]
    evaluation = evaluated["evaluation"]
    assert evaluation["available"] and evaluation["in_epsilon"] and "outside_the_guarantee" not in evaluation
    release = EvaluationRelease(**{k: evaluation["release"][k] for k in EvaluationRelease.__dataclass_fields__})
    assert release.noisy and release.noise_multiplier == 1.0 and release.participants == 8
    eps, eps_without = evaluated["epsilon"]["epsilon"], plain["epsilon"]["epsilon"]
    assert evaluated["epsilon"]["evaluations_accounted"] == 1 and evaluated["epsilon"]["rounds_accounted"] == 1
    assert eps > eps_without > 0  # the same round, plus the evaluation's release
    # the ledger's figure is the round's curve plus the evaluation's, converted once
    alone = RoundAccountant(delta=evaluated["epsilon"]["delta"])
    alone.step(release=release)
    assert eps < eps_without + alone.epsilon()
    assert summary["privacy"]["epsilon"] == eps and summary["privacy"]["private"] is True
    assert summary["privacy"]["evaluations_accounted"] == 1
    assert summary["evaluation"]["available"] and "in the run's epsilon" in summary["evaluation"]["guarantee"]
    metrics = [json.loads(line) for line in (tmp_path / "evaluated" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["epsilon"] == eps


def test_an_evaluation_without_one_update_survivor_is_refused_by_the_others(tmp_path, certs, procs) -> None:
    """W14's differencing attack: the server runs the evaluation over the update's survivors minus client 0. The
    other clients unmask no survivor list shorter than the update's they signed: nothing is released, the round
    stays completed, and the ledger accounts no evaluation."""
    from .test_malicious_server import _run as run_hostile

    rounds, log = run_hostile(
        tmp_path, certs, procs, "evaluation-without-target", ["--federated-eval-every", "1", *DP[:4]]
    )
    [record] = rounds
    assert record["type"] == "round" and record["phases"]["update"]["survivors"] == list(range(8))
    assert record["evaluation"]["available"] is False
    assert "7 survivors, below the policy's min_survivors=8" in log and "federated evaluation failed" in log
    assert record["epsilon"]["evaluations_accounted"] == 0


def test_with_dp_off_clients_send_zeros_to_an_exact_evaluation(tmp_path, certs, procs) -> None:
    """DP off: the evaluation would be exact, so the default client policy (allow_exact_evaluation false) sends
    zeros: the sum counts no client, and every output says the release is outside any guarantee."""
    run_dir = tmp_path / "off"
    extra = COMMON + ["--dp", "off", "--min-group-size", "2", "--federated-eval-every", "1"]
    server, address = harness.start_server(tmp_path, certs, run_dir, extra=extra, name="off")
    procs.append(server)
    clients = harness.start_clients(
        tmp_path, certs, address, "0-7", name="off-clients", extra=["-v", "--min-noise-multiplier", "0"]
    )
    procs.append(clients)
    assert server.wait(timeout=200) == 0, server.stderr()[-3000:]
    assert clients.wait(timeout=60) == 0
    assert "allow_exact_evaluation" in server.stderr() and "allow_exact_evaluation false" in clients.stderr()
    [record] = harness.round_records(run_dir)
    evaluation = record["evaluation"]
    assert evaluation["available"] and not evaluation["in_epsilon"] and evaluation["outside_the_guarantee"]
    assert evaluation["clients"] == 0 and evaluation["val"]["positives"] == 0 and evaluation["val"]["auc"] is None
    assert record["epsilon"]["epsilon"] == "inf" and record["epsilon"]["evaluations_accounted"] == 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["privacy"]["private"] is False and "outside_the_guarantee" in summary["evaluation"]


def test_the_server_stops_evaluating_at_its_cap(tmp_path, certs, procs) -> None:
    """--max-evaluations 2 over 3 rounds evaluated every round: rounds 0 and 1 are evaluated and accounted, round 2
    announces no evaluation at all."""
    run_dir = tmp_path / "capped"
    extra = ["--rounds", "3", "--min-clients", "8", "--stage-timeout", "20", "--train-timeout", "60"]
    extra += DP + ["--federated-eval-every", "1", "--max-evaluations", "2"]
    server, address = harness.start_server(tmp_path, certs, run_dir, extra=extra, name="capped")
    procs.append(server)
    clients = harness.start_clients(tmp_path, certs, address, "0-7", name="capped-clients")
    procs.append(clients)
    assert server.wait(timeout=250) == 0, server.stderr()[-3000:]
    assert clients.wait(timeout=60) == 0
    rounds = harness.round_records(run_dir)
    assert [r["type"] for r in rounds] == ["round"] * 3
    assert [r["epsilon"]["evaluations_accounted"] for r in rounds] == [1, 2, 2]
    assert [("evaluation" in r, "evaluation" in r["phases"]) for r in rounds] == [(True, True)] * 2 + [(False, False)]
    assert all(r["evaluation"]["available"] for r in rounds[:2])


def test_a_client_sends_zeros_past_its_own_max_evaluations(tmp_path, certs, procs) -> None:
    """The client's cap, whatever the server asks: a policy of max_evaluations 1 scores round 0's evaluation and
    sends zeros in round 1's (counted from its ledger), while the other clients score both."""
    run_dir = tmp_path / "client-cap"
    extra = ["--rounds", "2", "--min-clients", "8", "--stage-timeout", "20", "--train-timeout", "60"]
    server, address = harness.start_server(
        tmp_path, certs, run_dir, extra=extra + DP + ["--federated-eval-every", "1"], name="client-cap"
    )
    procs.append(server)
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"max_evaluations": 1}))
    capped = harness.start_clients(tmp_path, certs, address, "0", name="capped", extra=["-v", "--policy", str(policy)])
    others = harness.start_clients(tmp_path, certs, address, "1-7", name="others", extra=["-v"])
    procs.extend([capped, others])
    assert server.wait(timeout=250) == 0, server.stderr()[-3000:]
    assert capped.wait(timeout=60) == 0 and others.wait(timeout=60) == 0
    zeros = [line for line in capped.stderr().splitlines() if "zeros for the federated evaluation" in line]
    assert len(zeros) == 1 and "round 1" in zeros[0] and "max_evaluations" in zeros[0]
    assert "zeros for the federated evaluation" not in others.stderr()
    rounds = harness.round_records(run_dir)
    assert [r["phases"]["evaluation"]["survivors"] for r in rounds] == [list(range(8))] * 2

"""A secure round with DP over gRPC gives the model of FederatedSimulation itself, bit for bit.

Driven through `mrff run-local` (a real server process and P client processes on 127.0.0.1 with a
fresh development PKI and credentials), so the end-to-end command is exercised too. The clients run
with --insecure-reproducible-noise: each draws its rounding and DP noise from default_rng([client
seed, round, phase, user]), which the simulation's reproducible mode uses too; with OS entropy (the
default) no two runs could be compared. Everything else is the one per-client path: training
(`train_clients`), the encoding (`round.encoding`), the decoding and the global step."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from mrff_secure.config import FederationConfig
from mrff_secure.dp import DPConfig
from mrff_secure.dp.config import min_survivors
from mrff_secure.federation import evaluation_sum
from mrff_secure.federation.client_update import evaluate_user
from mrff_secure.federation.simulation import FederatedSimulation
from mrff_secure.round.evaluation_release import evaluation_release
from mrff_secure.round.participant import client_generator, rotation_seed
from mrff_secure.round.spec import Phase, PrivacySettings, RoundSpec
from mrff_secure.wire import tensors

from . import harness

pytestmark = pytest.mark.timeout(300)

USERS = 8


def simulated_run(rounds: int) -> tuple[list[str], list[dict]]:
    """(model digest after each round, the federated evaluation of each round's starting model and, last, of
    the final model (--final-evaluation, round id `rounds`): what the evaluation's secure sum over all USERS
    clients decodes to, each client's noise share drawn from its reproducible generator as the network clients
    draw it)."""
    release = evaluation_release(
        RoundSpec(
            local_steps=1,
            optimizer="adam",
            lr=0.1,
            dp_mode="distributed",
            clip=1.0,
            noise_multiplier=0.5,
            min_survivors=min_survivors(USERS, 0.3),
            min_group_size=2,
            mechanism="discrete_gaussian",
            modulus_bits=32,
            count_cap=1,
        ),
        USERS,
    )
    data = harness.data().subset(np.arange(USERS))
    privacy = PrivacySettings(
        dp=DPConfig(
            mode="distributed", clip=1.0, noise_multiplier=0.5, mechanism="discrete_gaussian", max_dropout_fraction=0.3
        ),
        secure_aggregation="inmemory",
        modulus_bits=32,
        min_group_size=2,
        insecure_reproducible_noise=True,
    )
    sim = FederatedSimulation(
        data, harness.model_config(), FederationConfig(rounds=rounds, seed=0, chunk_size=1), privacy=privacy
    )
    digests, evaluations = [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the client processes train: float reductions depend on the thread count
    try:
        for _ in range(rounds + 1):
            r = len(evaluations)
            ring = sum(
                evaluation_sum.encode(
                    release,
                    evaluation_sum.client_vector(
                        evaluate_user(sim.model, sim.global_params, {n: t[u] for n, t in sim.private.items()}, data, u)
                    ),
                    rotation_seed=rotation_seed(0, r, Phase.EVALUATION),
                    rng=client_generator(0, r, Phase.EVALUATION, u),
                )
                for u in range(USERS)
            ) % (1 << 32)
            decoded = evaluation_sum.decode_ring(
                release, ring, survivors=USERS, rotation_seed=rotation_seed(0, r, Phase.EVALUATION)
            )
            evaluations.append({k: v.to_json() for k, v in decoded.items()})
            if r == rounds:  # the final model's evaluation
                break
            sim.train_round()
            digests.append(tensors.digest(sim.global_params).hex())
    finally:
        torch.set_num_threads(threads)
    return digests, evaluations


def test_secure_dp_rounds_over_grpc_equal_the_simulation_bit_for_bit(tmp_path) -> None:
    run_dir = tmp_path / "local"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mrff_secure.app.cli",
            "run-local",
            "--client-processes",
            "2",
            "--clients",
            str(USERS),
            "--run-dir",
            str(run_dir),
            "--client-seed",
            "0",
            "--insecure-reproducible-noise",
            "--rounds",
            "2",
            "--dp",
            "distributed",
            "--clip",
            "1.0",
            "--noise-multiplier",
            "0.5",
            "--min-group-size",
            "2",
            "--federated-eval-every",
            "1",
            "--final-evaluation",
            "--stage-timeout",
            "60",
            "--timeout",
            "250",
        ]
        + harness.DATA_ARGS
        + harness.MODEL_ARGS,
        capture_output=True,
        text=True,
        cwd=harness.ROOT,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2/2 rounds completed; audit log intact" in done.stdout
    assert "(mutual TLS;" in done.stdout
    # W15: the identity authority's key was made apart, never in the server's certificates or run folder
    assert (run_dir / "authority" / "identity-ca.key").is_file() and (run_dir / "certs" / "identity-ca.pub").is_file()
    assert not list(run_dir.glob("certs/*identity-ca.key")) and not list(run_dir.glob("server/**/identity-ca.key"))

    server_dir = run_dir / "server"
    records = harness.audit_records(server_dir)
    started = records[0]
    rounds = harness.round_records(server_dir)
    assert [r["type"] for r in rounds] == ["round", "round"]
    for i, r in enumerate(rounds):
        assert r["participants"] == list(range(USERS)) and r["secure"]
        assert r["phases"]["update"]["survivors"] == list(range(USERS))
        assert r["epsilon"]["adjacency"] == "zero-out" and r["epsilon"]["rounds_accounted"] == i + 1
        assert r["epsilon"]["evaluations_accounted"] == i + 1  # each round's evaluation is in its epsilon
        assert 0 < r["epsilon"]["epsilon"] < r["epsilon"]["epsilon_replace_one"]
    assert started["spec"]["dp_mode"] == "distributed" and started["spec"]["noise_multiplier"] == 0.5
    expected, evaluations = simulated_run(2)
    assert [r["model_digest"] for r in rounds] == expected
    assert rounds[0]["model_digest"] != started["model_digest"]  # the model moved
    assert f"model_digest={expected[-1]}" in done.stdout
    # the network run gives results in the files mrff train writes, derived from what the server saw
    assert "[ROUND 0] completed" in done.stdout and "[ROUND 1] completed" in done.stdout
    assert "DONE 2 of 2 rounds completed, 0 aborted; run finished" in done.stdout
    metrics = [json.loads(line) for line in (server_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [0, 1] and all(m["completed"] for m in metrics)
    assert [m["epsilon"] for m in metrics] == [r["epsilon"]["epsilon"] for r in rounds]  # epsilon per round
    assert all(m["phases"]["update"]["survivors"] == USERS and m["bytes_per_participant"] > 0 for m in metrics)
    summary = json.loads((server_dir / "summary.json").read_text())
    assert summary["finished"] and summary["rounds_completed"] == 2 and summary["model_digest"] == expected[-1]
    assert summary["privacy"]["mechanism"] == "discrete_gaussian" and summary["privacy"]["private"] is True
    final = next(r for r in records if r["type"] == "final_evaluation")
    assert final["epsilon"]["evaluations_accounted"] == 3  # the final model's evaluation is in the run's epsilon
    assert summary["privacy"]["epsilon"] == final["epsilon"]["epsilon"] > rounds[-1]["epsilon"]["epsilon"]
    # every client's own ledger (client/ledger.py) accounts exactly what the server's does on this honest run
    for user in range(USERS):
        ledger = json.loads((run_dir / "clients" / f"user-{user}" / "ledger.json").read_text())
        assert ledger["epsilon"] == pytest.approx(summary["privacy"]["epsilon"], rel=1e-9)
        assert sorted({(e["round"], e["phase"]) for e in ledger["releases"]}) == [
            (r, phase) for r in range(2) for phase in ("counts", "evaluation", "update")
        ] + [(2, "evaluation")]
    # the federated evaluation: each round's starting model scored by every client on its own held-out
    # items, with its noise share, decoded from the secure sum, equals the simulation's predictions encoded
    # and summed the same way
    for m, r, want in zip(metrics, rounds, evaluations[:2]):
        assert r["evaluation"]["available"] and r["evaluation"]["clients"] == want["val"]["clients"]
        assert {k: r["evaluation"][k] for k in ("val", "test")} == want
        assert (m["val_auc"], m["test_logloss"]) == (want["val"]["auc"], want["test"]["log_loss"])
        assert m["evaluated_after_round"] == m["round"] - 1 and m["evaluation_clients"] == want["val"]["clients"]
        assert r["evaluation"]["in_epsilon"] and "outside_the_guarantee" not in r["evaluation"]
    assert rounds[0]["evaluation"]["evaluated_model"] == started["model_digest"]
    assert rounds[1]["evaluation"]["evaluated_model"] == expected[0]
    assert r["phases"]["evaluation"]["survivors"] == list(range(USERS))
    best = summary["evaluation"]["best"]
    assert summary["evaluation"]["available"] and best["val_auc"] == max(
        (e["val"]["auc"] for e in evaluations if e["val"]["auc"] is not None), default=None
    )
    assert "in the run's epsilon" in summary["evaluation"]["guarantee"]
    assert "outside_the_guarantee" not in summary["evaluation"]
    assert "validation AUC" in done.stdout
    # the final model's evaluation (--final-evaluation): every client scores the model the run ended with, in a
    # round of its own (id 2) with only the evaluation sum, and it decodes to the simulation's
    assert final["round"] == 2 and final["model_digest"] == expected[-1] and final["participants"] == list(range(USERS))
    assert final["evaluation"]["available"] and final["evaluation"]["evaluated_model"] == expected[-1]
    assert {k: final["evaluation"][k] for k in ("val", "test")} == evaluations[2]
    assert final["phases"]["evaluation"]["survivors"] == list(range(USERS))
    want = summary["final_evaluation"]
    assert want["available"] and want["clients"] == evaluations[2]["val"]["clients"] and want["in_epsilon"]
    assert (want["val_auc"], want["test_logloss"]) == (evaluations[2]["val"]["auc"], evaluations[2]["test"]["log_loss"])
    assert "[FINAL EVALUATION] 8 participants, validation AUC" in done.stdout
    assert (server_dir / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

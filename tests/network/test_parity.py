"""The network trains as `mrff train` does: a run of the tuned recipe (FedAvgM on the server, the clients'
cosine lr schedule and decoupled weight decay) over gRPC gives the simulation's model, bit for bit.

Real processes on loopback (`mrff run-local`: a server and 2 client processes), secure aggregation on, DP off.
Where the two paths could differ: the secure sum is exact in the ring Z_{2^32}, so the only loss is the
fixed-point encoding's conditional randomized rounding of each client's vector (an error below one
quantization step, 1 / scale, per coordinate and client); the clients run with --insecure-reproducible-noise
and draw that rounding from default_rng([client seed, round, phase, user]), as the simulation's reproducible
mode does, so the rounding is the same on both sides and the models are equal bit for bit (no tolerance).
Everything else is one code path: training (`train_clients`, one client per chunk on both sides, one torch
thread), the encoding (`round.encoding`), the decoding, `aggregate_round` and `ServerOptimizer`; the server
evaluates the lr schedule at the number of completed rounds, the simulation at its round index (equal without
aborted rounds).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from mrff_secure.config import FederationConfig
from mrff_secure.dp import DPConfig
from mrff_secure.federation.simulation import FederatedSimulation
from mrff_secure.round.spec import PrivacySettings, SecureAggregation
from mrff_secure.wire import tensors

from . import harness

pytestmark = pytest.mark.timeout(240)

USERS, ROUNDS = 6, 3
RECIPE = FederationConfig(
    rounds=ROUNDS,
    seed=0,
    chunk_size=1,
    server_optimizer="avgm",
    server_lr=1.0,
    server_momentum=0.9,
    lr_schedule="cosine",
    weight_decay=0.05,
)
RECIPE_ARGS = [
    "--server-optimizer",
    "avgm",
    "--server-lr",
    "1.0",
    "--server-momentum",
    "0.9",
    "--lr-schedule",
    "cosine",
    "--weight-decay",
    "0.05",
]


def simulated_digests(federation: FederationConfig) -> list[str]:
    """The simulation's model digest after each round: secure aggregation (the real state machines in memory),
    DP off, the rounding drawn from each client's reproducible generator as the network clients draw it."""
    data = harness.data().subset(np.arange(USERS))
    privacy = PrivacySettings(
        dp=DPConfig(mode="off"),
        secure_aggregation=SecureAggregation.INMEMORY,
        modulus_bits=32,
        min_group_size=2,
        insecure_reproducible_noise=True,
    )
    sim = FederatedSimulation(data, harness.model_config(), federation, privacy=privacy)
    digests = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the client processes train: float reductions depend on the thread count
    try:
        for _ in range(federation.rounds):
            sim.train_round()
            digests.append(tensors.digest(sim.global_params).hex())
    finally:
        torch.set_num_threads(threads)
    return digests


def test_the_recipe_over_grpc_equals_the_simulation_bit_for_bit(tmp_path) -> None:
    run_dir = tmp_path / "local"
    done = subprocess.run(
        [sys.executable, "-m", "mrff_secure.app.cli", "run-local", "--client-processes", "2"]
        + ["--clients", str(USERS), "--run-dir", str(run_dir), "--client-seed", "0", "--insecure-reproducible-noise"]
        + ["--rounds", str(ROUNDS), "--dp", "off", "--min-group-size", "2", "--stage-timeout", "60"]
        + ["--timeout", "200", "--final-evaluation"]
        + RECIPE_ARGS
        + harness.DATA_ARGS
        + harness.MODEL_ARGS,
        capture_output=True,
        text=True,
        cwd=harness.ROOT,
        timeout=220,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    server_dir = run_dir / "server"
    started = harness.audit_records(server_dir)[0]
    assert started["settings"]["server_optimizer"] == "avgm" and started["settings"]["lr_schedule"] == "cosine"
    assert started["spec"]["weight_decay"] == 0.05
    rounds = harness.round_records(server_dir)
    assert [r["type"] for r in rounds] == ["round"] * ROUNDS
    # each round's lr is the schedule's, signed in the round's body
    assert [r["lr"] for r in rounds] == [RECIPE.client_lr(i) for i in range(ROUNDS)]
    assert rounds[-1]["lr"] < rounds[0]["lr"] == 0.1
    expected = simulated_digests(RECIPE)
    assert [r["model_digest"] for r in rounds] == expected
    summary = json.loads((server_dir / "summary.json").read_text())
    assert summary["model_digest"] == expected[-1]
    # the final model is evaluated once at the end; with DP off that sum is exact, which these clients' policy
    # (no allow_exact_evaluation) keeps their scores out of: each sends zeros, and the summary says so
    final = summary["final_evaluation"]
    assert final["available"] and final["evaluated_model"] == expected[-1] and final["round"] == ROUNDS
    assert final["clients"] == 0 and "every client kept its scores out" in final["refused"]
    assert final["participants"] == USERS and "outside_the_guarantee" in final
    assert "[FINAL EVALUATION] 6 participants: every client kept its scores out" in done.stdout
    for user in range(USERS):
        ledger = json.loads((run_dir / "clients" / f"user-{user}" / "ledger.json").read_text())
        assert all(e["phase"] != "evaluation" for e in ledger["releases"])
    # the recipe is what made this model: the paper's plain averaging at a constant lr without decay does not
    plain = simulated_digests(
        dataclasses.replace(RECIPE, server_optimizer="avg", lr_schedule="constant", weight_decay=0.0)
    )
    assert plain[0] != expected[0] and plain[-1] != expected[-1]

"""The tuned recipe's parts: server optimizers (FedAvgM, FedAdam), the clients' weight decay and lr schedule,
early stopping on validation; the defaults stay the paper's setup."""

import json
import math

import pytest
import torch

from mrff_secure.app.cli import main
from mrff_secure.config import FederationConfig, ModelConfig
from mrff_secure.data import make_synthetic
from mrff_secure.errors import ConfigError
from mrff_secure.federation.simulation import FederatedSimulation
from mrff_secure.round.aggregate import SERVER_ADAM_BETA2, SERVER_ADAM_EPS


@pytest.fixture(scope="module")
def data():
    return make_synthetic(num_users=30, num_items=60, min_interactions=5, max_interactions=15, maxlen=8, seed=6)


def _sim(data, **federation):
    return FederatedSimulation(
        data, ModelConfig(maxlen=8, num_groups=3, dropout=0.0), FederationConfig(rounds=4, chunk_size=8, **federation)
    )


def test_server_optimizers_first_step_from_the_mean(data):
    """Round 0 from the same start: the clients' mean is the same, so each optimizer's first step is a known
    function of (mean - x0): avg with server lr eta moves eta of the way, FedAvgM too (m = d), FedAdam by
    eta (1 - b1) d / (sqrt(1 - b2) |d| + tau)."""
    plain = _sim(data)
    start = {n: t.clone() for n, t in plain.global_params.items()}
    plain.train_round()
    for kind, lr in (("avg", 0.5), ("avgm", 0.7), ("adam", 0.01)):
        sim = _sim(data, server_optimizer=kind, server_lr=lr, server_momentum=0.8)
        sim.train_round()
        for n, x0 in start.items():
            d = plain.global_params[n] - x0
            if kind == "adam":
                expected = x0 + lr * (1 - 0.8) * d / ((1 - SERVER_ADAM_BETA2) ** 0.5 * d.abs() + SERVER_ADAM_EPS)
            else:
                expected = x0 + lr * d
            torch.testing.assert_close(sim.global_params[n], expected, atol=1e-6, rtol=1e-5)


def test_fedavgm_momentum_carries_into_the_next_round(data):
    sim = _sim(data, server_optimizer="avgm", server_lr=1.0, server_momentum=0.9)
    sim.train_round()
    momentum = {n: m.clone() for n, m in sim.server_optimizer.first.items()}
    before = {n: t.clone() for n, t in sim.global_params.items()}
    sim.train_round()
    name = next(iter(before))
    # x2 - x1 = m2 = 0.9 m1 + d2, with m1 = x1 - x0 nonzero: the step is not the round's mean change alone
    step = sim.global_params[name] - before[name]
    torch.testing.assert_close(step, sim.server_optimizer.first[name])
    assert not torch.allclose(sim.server_optimizer.first[name], momentum[name])
    assert momentum[name].abs().sum() > 0


@pytest.mark.parametrize("kind", ["avgm", "adam"])
def test_server_optimizer_state_survives_a_checkpoint(data, kind):
    straight = _sim(data, server_optimizer=kind, server_lr=0.5)
    for _ in range(3):
        straight.train_round()
    first = _sim(data, server_optimizer=kind, server_lr=0.5)
    for _ in range(2):
        first.train_round()
    arrays = first.state_arrays()
    assert any(k.startswith("server_m/") for k in arrays)
    resumed = _sim(data, server_optimizer=kind, server_lr=0.5)
    resumed.load_state_arrays(arrays, first.round_index)
    resumed.train_round()
    for n, value in straight.global_params.items():
        assert torch.equal(resumed.global_params[n], value), n


def test_paper_default_is_the_plain_mean(data):
    sim = _sim(data)
    assert sim.server_optimizer.kind == "avg" and sim.server_optimizer.lr == 1.0
    assert not any(k.startswith("server_") for k in sim.state_arrays())


def test_cosine_schedule_and_its_bounds():
    federation = FederationConfig(rounds=10, lr=0.2, lr_schedule="cosine")
    assert federation.client_lr(0) == pytest.approx(0.2)
    assert federation.client_lr(5) == pytest.approx(0.1)
    assert federation.client_lr(10) == pytest.approx(0.0, abs=1e-12)
    assert FederationConfig(rounds=10, lr=0.2).client_lr(7) == 0.2
    lrs = [federation.client_lr(r) for r in range(10)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def test_cosine_schedule_reaches_the_clients(data):
    """A round with the cosine schedule at round r is the round a constant run with lr = client_lr(r) makes."""
    scheduled = _sim(data, lr=0.1, lr_schedule="cosine")
    scheduled.train_round()
    constant = _sim(data, lr=0.1)
    constant.train_round()
    for n in constant.global_params:
        assert torch.equal(scheduled.global_params[n], constant.global_params[n])  # round 0: full lr
    scheduled.train_round()
    reduced = FederatedSimulation(
        data,
        ModelConfig(maxlen=8, num_groups=3, dropout=0.0),
        FederationConfig(rounds=4, chunk_size=8, lr=scheduled.federation.client_lr(1)),
    )
    reduced.load_state_arrays(constant.state_arrays(), 1)
    reduced.train_round()
    for n in reduced.global_params:
        torch.testing.assert_close(scheduled.global_params[n], reduced.global_params[n], atol=0, rtol=0)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("server_optimizer", "sgd", "server_optimizer"),
        ("server_lr", 0.0, "server_lr"),
        ("server_momentum", 1.0, "server_momentum"),
        ("weight_decay", -0.1, "weight_decay"),
        ("lr_schedule", "step", "lr_schedule"),
        ("patience", -1, "patience"),
    ],
)
def test_bad_recipe_values_are_named(field, value, match):
    with pytest.raises(ConfigError, match=match):
        FederationConfig(rounds=1, **{field: value})


def test_early_stopping_ends_the_run_and_says_so(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "train",
        "--synthetic-users",
        "30",
        "--maxlen",
        "8",
        "--rounds",
        "60",
        "--patience",
        "3",
        "--lr",
        "0.3",
        "--run-dir",
        str(out),
        "--json",
        "--no-progress",
    ]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    evaluation = json.loads((out / "operator-only" / "evaluation.json").read_text())
    assert summary["stopped_early"] and summary["rounds_run"] < 60
    assert summary["rounds_run"] == evaluation["best_round"] + 3 + 1
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == summary["rounds_run"]
    # resuming a run that stopped early trains nothing more
    assert main(["train", "--resume", "--run-dir", str(out), "--no-progress", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["rounds_run"] == summary["rounds_run"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == len(rows)


def test_early_stopping_is_refused_under_dp(tmp_path, capsys):
    assert (
        main(
            [
                "train",
                "--rounds",
                "3",
                "--patience",
                "2",
                "--dp",
                "local",
                "--noise-multiplier",
                "1.0",
                "--run-dir",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "--patience" in capsys.readouterr().err


def test_cosine_lr_is_a_finite_schedule():
    assert all(math.isfinite(FederationConfig(rounds=3, lr_schedule="cosine").client_lr(r)) for r in range(5))

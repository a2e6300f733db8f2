"""The network server's recipe (`mrff train`'s): the server optimizer's state in the checkpoint, restored on
resume and refused when it is not the run's; the lr schedule and weight decay checks; the final evaluation's
place in the evaluation budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mrff_secure.app.server_command import planned_evaluations
from mrff_secure.config import ModelConfig
from mrff_secure.data.schema import PublicSchema
from mrff_secure.data.synthetic import make_synthetic
from mrff_secure.errors import CheckpointError, ConfigError
from mrff_secure.round.spec import RoundSpec
from server import checkpoint
from server.run_state import RunState, ServerSettings

SPEC = RoundSpec(
    local_steps=1,
    optimizer="adam",
    lr=0.1,
    weight_decay=0.05,
    dp_mode="off",
    clip=1.0,
    noise_multiplier=0.0,
    min_survivors=1,
    min_group_size=2,
    mechanism="discrete_gaussian",
    modulus_bits=32,
    count_cap=10,
)


def _open(run_dir, settings, *, resume: bool, key: Ed25519PrivateKey) -> RunState:
    schema = PublicSchema.of(make_synthetic(num_users=6, maxlen=10, seed=0))
    config = ModelConfig(attribute_dim=4, dropout=0.0, maxlen=10)
    return (RunState.resume if resume else RunState.create)(run_dir, settings, config, schema, SPEC, key)


def test_the_server_optimizer_state_is_saved_with_the_model_and_restored_on_resume(tmp_path) -> None:
    settings = ServerSettings(rounds=3, server_optimizer="adam", server_lr=0.5, server_momentum=0.8)
    key = Ed25519PrivateKey.generate()
    state = _open(tmp_path, settings, resume=False, key=key)
    assert state.server_optimizer.kind == "adam" and state.server_optimizer.lr == 0.5
    for shift in (0.01, -0.02):  # two steps: first and second moments both non-zero
        averaged = {n: t + shift for n, t in state.params.items()}
        state.params = state.server_optimizer.step(state.params, averaged)
    first = {n: t.clone() for n, t in state.server_optimizer.first.items()}
    second = {n: t.clone() for n, t in state.server_optimizer.second.items()}
    state.save()
    resumed = _open(tmp_path, settings, resume=True, key=key)
    assert resumed.model_digest() == state.model_digest()
    assert set(resumed.server_optimizer.first) == set(first) and set(resumed.server_optimizer.second) == set(second)
    for name in first:
        assert torch.equal(resumed.server_optimizer.first[name], first[name])
        assert torch.equal(resumed.server_optimizer.second[name], second[name])
    # the resumed run takes the same next step as the uninterrupted one
    averaged = {n: t * 0.9 for n, t in state.params.items()}
    expected = state.server_optimizer.step(state.params, averaged)
    got = resumed.server_optimizer.step(resumed.params, averaged)
    assert all(torch.equal(expected[n], got[n]) for n in expected)


def test_a_checkpoint_without_the_run_optimizer_state_is_refused(tmp_path) -> None:
    settings = ServerSettings(rounds=3, server_optimizer="avgm")
    key = Ed25519PrivateKey.generate()
    state = _open(tmp_path, settings, resume=False, key=key)
    params, meta, optimizer = checkpoint.load_with_optimizer(tmp_path)
    assert optimizer and all(name.startswith("server_m/") for name in optimizer)  # zeros before any step
    checkpoint.save(tmp_path, params, meta)  # the momentum dropped
    with pytest.raises(CheckpointError, match="server optimizer state .* not that of --server-optimizer avgm"):
        _open(tmp_path, settings, resume=True, key=key)
    assert state.run_id == meta["run_id"]


def test_plain_averaging_keeps_no_optimizer_state(tmp_path) -> None:
    _open(tmp_path, ServerSettings(rounds=2), resume=False, key=Ed25519PrivateKey.generate())
    assert checkpoint.load_with_optimizer(tmp_path)[2] == {}


def test_the_recipe_is_checked_and_scheduled_as_train_does() -> None:
    with pytest.raises(ConfigError, match="server_optimizer"):
        ServerSettings(server_optimizer="sgd")
    with pytest.raises(ConfigError, match="lr_schedule"):
        ServerSettings(lr_schedule="linear")
    with pytest.raises(ConfigError, match="server_momentum"):
        ServerSettings(server_momentum=1.0)
    recipe = ServerSettings(rounds=4, lr_schedule="cosine").recipe(lr=0.1)
    lrs = [recipe.client_lr(r) for r in range(4)]
    assert lrs[0] == 0.1 and lrs == sorted(lrs, reverse=True) and lrs[-1] > 0
    assert np.isclose(lrs[2], 0.05)


@pytest.mark.parametrize(
    "lr, weight_decay, needle",
    [
        (float("nan"), 0.0, "lr must be a finite number"),
        (0.0, 0.0, "lr must be a finite number > 0"),
        (0.1, -0.1, "weight_decay must be a finite number >= 0"),
        (0.1, float("inf"), "weight_decay must be a finite number"),
        (0.1, 10.0, "lr x weight_decay must be below 1"),
    ],
)
def test_a_malformed_lr_or_weight_decay_is_refused_naming_it(lr, weight_decay, needle) -> None:
    import dataclasses

    with pytest.raises(ConfigError, match=needle):
        dataclasses.replace(SPEC, lr=lr, weight_decay=weight_decay)


def test_the_final_evaluation_is_kept_within_max_evaluations() -> None:
    settings = ServerSettings(rounds=6, eval_every=1, max_evaluations=3, final_evaluation=True)
    assert settings.evaluates_final_model and settings.round_evaluations_cap == 2
    assert planned_evaluations(6, 1, 3, True) == 3 and planned_evaluations(6, 1, 3) == 3
    assert planned_evaluations(6, 0, 3, True) == 1 and planned_evaluations(6, 0, 3) == 0
    assert planned_evaluations(6, 1, 0, True) == 0  # no evaluation at all
    assert not ServerSettings(max_evaluations=0, final_evaluation=True).evaluates_final_model

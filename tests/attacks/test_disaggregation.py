"""Least-squares disaggregation across rounds: sums over known, changing subsets of users are taken
apart again (rare rows found), better than comparing a user's rounds with the others; noise stops it."""

from __future__ import annotations

import numpy as np
import pytest

from attacks.disaggregation import disaggregate, in_out_scores, least_squares_scores
from attacks.recorder import RowRecorder
from attacks.rows import ItemRows
from attacks.scores import binary_scores
from mrff_secure.config import FederationConfig, ModelConfig
from mrff_secure.data import make_synthetic
from mrff_secure.federation.simulation import FederatedSimulation

MODEL = ModelConfig(maxlen=12, attribute_dim=4, num_blocks=1, prediction_dims=(8,))


def _sums(noise: float, seed: int = 0, users: int = 80, rounds: int = 30, rows: int = 150, dim: int = 4):
    """Per-round row energies of secure sums: each row touched by 1-3 users, each of which adds about the
    same signed step (Adam-like, 0.01 per coordinate, +-20%) in every round it takes part."""
    rng = np.random.default_rng(seed)
    took_part = rng.random((rounds, users)) < 0.1
    truth = np.zeros((users, rows), dtype=bool)
    for row in range(rows):
        truth[rng.choice(users, size=rng.integers(1, 4), replace=False), row] = True
    signs = rng.choice([-1.0, 1.0], size=(users, rows, dim))
    steps = 0.01 * signs[None] * (1 + 0.2 * rng.standard_normal((rounds, users, rows, dim)))
    steps *= truth[None, :, :, None]
    sums = np.einsum("tu,turd->trd", took_part.astype(float), steps) + noise * rng.standard_normal((rounds, rows, dim))
    return np.square(sums).sum(-1), took_part, truth


def _auc(truth, scores, took_part):
    usable = (took_part.sum(0) > 0) & (took_part.sum(0) < took_part.shape[0])
    return binary_scores(truth[usable].ravel(), scores[usable].ravel())


def test_least_squares_takes_noiseless_sums_apart_better_than_in_out():
    energy, took_part, truth = _sums(noise=0.0)
    fitted = least_squares_scores(energy, took_part, np.ones(energy.shape[1], dtype=bool))
    simple = in_out_scores(energy, took_part)
    least, in_out = _auc(truth, fitted, took_part), _auc(truth, simple, took_part)
    assert least["auc"] > 0.97 and least["auc"] > in_out["auc"] + 0.01
    assert least["tpr_at_1pct_fpr"] > in_out["tpr_at_1pct_fpr"] + 0.2
    assert (fitted >= 0).all()


def test_noise_far_above_the_steps_leaves_least_squares_at_chance():
    energy, took_part, truth = _sums(noise=1.0)  # 100x the per-coordinate step
    fitted = least_squares_scores(energy, took_part, np.ones(energy.shape[1], dtype=bool))
    assert abs(_auc(truth, fitted, took_part)["auc"] - 0.5) < 0.06


def test_only_the_chosen_rows_are_fitted():
    energy, took_part, _ = _sums(noise=0.0, rows=10)
    columns = np.zeros(10, dtype=bool)
    columns[[2, 5]] = True
    fitted = least_squares_scores(energy, took_part, columns)
    assert not fitted[:, ~columns].any() and fitted[:, columns].any()


@pytest.fixture(scope="module")
def rare_data():
    return make_synthetic(
        num_users=30, num_items=120, maxlen=12, min_interactions=5, max_interactions=12, seed=3, rare_values=6
    )


def test_planted_rare_values_are_found_in_secure_sums_with_sampling(rare_data):
    probe = FederatedSimulation(rare_data, MODEL, FederationConfig(rounds=0))
    recorder = RowRecorder(ItemRows.from_layout(probe.layout, rare_data.item_attributes), rare_data.num_users)
    federation = FederationConfig(rounds=16, client_fraction=0.2, seed=1)
    sim = FederatedSimulation(rare_data, MODEL, federation, observer=recorder, plain_individual_view=False)
    for _ in range(16):
        sim.train_round()
    result = disaggregate(recorder, rare_data)
    rare, in_out = result["rare_rows"], result["in_out"]["rare_rows"]
    assert result["applicable"] and rare["rows"] >= 6 and rare["positives"] >= 6
    assert rare["auc"] > 0.93 and rare["auc"] > in_out["auc"] + 0.03 and rare["advantage_auc"] > 0.2
    assert rare["tpr_at_0.1pct_fpr"] <= rare["tpr_at_1pct_fpr"]

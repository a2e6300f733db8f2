"""The known-noise likelihood test of reconstruction and the calibrated membership inference: power
without noise, chance on pure noise, the signed sums' gain where steps keep their sign, and the test's
false-positive rate at its nominal level."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from attacks.membership import item_membership
from attacks.reconstruction import ALPHA, chi2_logsf, reconstruct_rows, row_log_p
from attacks.recorder import RowRecorder, step_pull
from attacks.rows import ItemRows, touched_rows
from attacks.scores import auc_standard_error, binary_scores
from mrff_secure.config import FederationConfig, ModelConfig
from mrff_secure.data import make_synthetic
from mrff_secure.federation.simulation import FederatedSimulation, ServerView
from mrff_secure.round.spec import ThreatModel

MODEL = ModelConfig(maxlen=12, attribute_dim=4, num_blocks=1, prediction_dims=(8,))


@pytest.fixture(scope="module")
def data():
    return make_synthetic(num_users=60, num_items=120, maxlen=12, min_interactions=5, max_interactions=12, seed=3)


@pytest.fixture(scope="module")
def layout(data):
    return FederatedSimulation(data, MODEL, FederationConfig(rounds=0)).layout


def _views(data, layout, *, rounds, sigma, step, consistent, seed=0, threat_model=ThreatModel.LOCAL_DP):
    """A recorder fed with hand-built individual views: every touched item-attribute row of a user moves by
    +-step on each coordinate (signs fixed per user and row when `consistent`, fresh each round when not),
    every coordinate gets Gaussian noise of std sigma."""
    rng = np.random.default_rng(seed)
    rows = ItemRows.from_layout(layout, data.item_attributes)
    truth = touched_rows(data, rows)
    recorder = RowRecorder(rows, data.num_users)
    fixed_signs = rng.choice([-1.0, 1.0], size=(data.num_users, rows.num_rows, rows.dim))
    for r in range(rounds):
        signs = fixed_signs if consistent else rng.choice([-1.0, 1.0], size=fixed_signs.shape)
        row_values = step * signs * truth[:, :, None]
        uploads = np.zeros((data.num_users, layout.size))
        for field, (start, vocab) in enumerate(zip(rows.starts, rows.vocab_sizes)):
            lo = int(rows.field_offsets[field])
            uploads[:, start : start + vocab * rows.dim] = row_values[:, lo : lo + vocab].reshape(data.num_users, -1)
        uploads += sigma * rng.standard_normal(uploads.shape)
        individual = torch.from_numpy(uploads)
        recorder.on_round(
            ServerView(
                round_index=r,
                participants=np.arange(data.num_users),
                layout=layout,
                group_counts=torch.zeros(0, 0),
                summed_update=individual.sum(0),
                individual_updates=individual,
                threat_model=threat_model,
            )
        )
    return recorder


def _within_chance(result):
    se = auc_standard_error(0.5, result["positives"], result["negatives"])
    return abs(result["auc"] - 0.5) < 3 * se


def test_power_at_noise_zero_on_a_trained_plain_view(data):
    probe = FederatedSimulation(data, MODEL, FederationConfig(rounds=0))
    recorder = RowRecorder(ItemRows.from_layout(probe.layout, data.item_attributes), data.num_users)
    sim = FederatedSimulation(data, MODEL, FederationConfig(rounds=2), observer=recorder)
    for _ in range(2):
        sim.train_round()
    assert recorder.pull.any()  # a plain view reads Adam's pull
    recon = reconstruct_rows(recorder, data)
    assert recon["f1"] >= 0.95 and recon["threshold"] == 0.0 and recon["false_positive_rate"] == 0.0
    membership = item_membership(recorder, data)
    assert "Adam's pull" in membership["row_evidence"]
    assert membership["auc"] > membership["baseline_auc"] + 0.1
    assert membership["tpr_at_1pct_fpr"] > 0.01 and set(membership["variants"]) == {
        "uncalibrated",
        "per_user",
        "per_item",
    }


def test_attacks_are_at_chance_on_a_pure_noise_view(data, layout):
    recorder = _views(data, layout, rounds=3, sigma=0.1, step=0.0, consistent=True)
    for noise_std in (0.1, None):  # given, or estimated from the padding rows
        recon = reconstruct_rows(recorder, data, noise_std=noise_std)
        assert _within_chance(recon), recon
        membership = item_membership(recorder, data, noise_std=noise_std)
        assert _within_chance(membership), membership
        for variant in membership["variants"].values():
            assert _within_chance(variant), variant


def test_signed_sums_beat_energy_where_steps_keep_their_sign(data, layout):
    """Step 0.03 under noise 0.1 on 4 coordinates for 12 rounds: the signed sum's noncentrality is
    12 * 4 * 0.09 = 4.3 on chi2(4); the energy's is the same on chi2(48)."""
    recorder = _views(data, layout, rounds=12, sigma=0.1, step=0.03, consistent=True, seed=1)
    recon = reconstruct_rows(recorder, data, noise_std=0.1)
    rows = recorder.rows
    real = np.ones(rows.num_rows, dtype=bool)
    real[rows.padding_rows] = False
    labels = touched_rows(data, rows)[:, real].ravel()
    energy = binary_scores(labels, recorder.energy[:, real].ravel())
    se = auc_standard_error(recon["auc"], recon["positives"], recon["negatives"])
    assert recon["auc"] > energy["auc"] + 3 * se, (recon["auc"], energy["auc"])
    # and with signs that change every round, the joint test is not much worse than energy
    shuffled = _views(data, layout, rounds=12, sigma=0.1, step=0.03, consistent=False, seed=1)
    recon_shuffled = reconstruct_rows(shuffled, data, noise_std=0.1)
    energy_shuffled = binary_scores(labels, shuffled.energy[:, real].ravel())
    assert recon_shuffled["auc"] > energy_shuffled["auc"] - 0.05


@pytest.mark.parametrize("rounds", [1, 4])
def test_the_likelihood_threshold_has_its_nominal_false_positive_rate_on_untouched_rows(rounds):
    rng = np.random.default_rng(rounds)
    rows = ItemRows(starts=(0,), vocab_sizes=(51,), dim=6)
    users, sigma = 2000, 0.3
    recorder = RowRecorder(rows, users)
    for _ in range(rounds):
        values = sigma * rng.standard_normal((users, rows.num_rows, rows.dim))
        recorder.energy += np.square(values).sum(-1)
        recorder.signed_sum += values
        recorder.rounds_seen += 1
    p = np.exp(row_log_p(recorder, sigma)).ravel()
    n = p.size
    rate = float((p < ALPHA).mean())
    assert abs(rate - ALPHA) < 3 * np.sqrt(ALPHA * (1 - ALPHA) / n), rate
    assert stats.kstest(p, "uniform").pvalue > 1e-3  # exact under the null, not just at ALPHA
    # a wrong (too small) sigma is caught: far more rejections than nominal
    assert float((np.exp(row_log_p(recorder, sigma / 2)).ravel() < ALPHA).mean()) > 10 * ALPHA


def test_step_pull_reads_the_gradient_size_from_adams_shortfall():
    """Adam's first step is lr * g / (|g| + eps): the shortfall from lr gives |g| / eps back (lr read as the
    largest step: a coordinate with a large gradient steps by lr up to rounding)."""
    lr, eps = 0.1, 1e-8
    gradients = np.array([1e-6, -1e-5, 1e-4, 0.0, 1.0])
    steps = lr * gradients / (np.abs(gradients) + eps)
    pull = step_pull(steps.reshape(1, 5, 1))[0]  # one client, five rows of one coordinate
    assert pull[3] == 0.0 and pull[0] < pull[1] < pull[2] < pull[4]
    assert np.allclose(pull[:3], np.log(np.abs(gradients[:3]) / eps), atol=1e-3)


def test_log_p_keeps_its_order_far_in_the_tail():
    """A noise-free sum scored at a small sigma lies far beyond where chi2's survival function underflows:
    the log p-values stay finite and ordered there (else every touched row ties and the AUC reads 0.5)."""
    x = np.geomspace(1.0, 1e9, 400)
    for dof in (2.0, 4.0, 48.0):
        values = chi2_logsf(x, dof)
        assert np.isfinite(values).all() and (np.diff(values) < 0).all()
        finite = np.isfinite(stats.chi2.logsf(x, dof))
        assert np.allclose(values[finite], stats.chi2.logsf(x[finite], dof))
        assert (~finite).any()  # the range reaches where scipy gives -inf

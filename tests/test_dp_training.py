"""DP wired into training: DP off is the untouched plain path with an infinite epsilon; local DP
clips and noises every coordinate of every upload and the server averages with the noisy counts;
the run folder records the epsilon per round and a `privacy` summary; the CLI validates."""

import json
import math

import numpy as np
import pytest
import torch

from mrff_secure import cli
from mrff_secure.config import FederationConfig, ModelConfig
from mrff_secure.data import make_synthetic
from mrff_secure.dp import (
    DPConfig,
    compose_noise_multipliers,
    count_part_sensitivity,
    effective_noise_multiplier,
    epsilon,
    local_upload_epsilon,
)
from mrff_secure.experiment import run_training
from mrff_secure.federation.aggregation import apply_sum
from mrff_secure.federation.privacy_pipeline import PrivacySettings
from mrff_secure.federation.simulation import FederatedSimulation

MODEL = ModelConfig(maxlen=8, num_groups=2, dropout=0.0)


@pytest.fixture(scope="module")
def data():
    return make_synthetic(num_users=12, num_items=40, min_interactions=4, max_interactions=10, maxlen=8, seed=1)


class Recorder:
    def __init__(self):
        self.views = []

    def on_round(self, view):
        self.views.append(view)


def local(z, clip=0.5):
    return PrivacySettings(dp=DPConfig(mode="local", clip=clip, noise_multiplier=z))


def test_dp_off_is_the_plain_path_bit_for_bit(data):
    federation = FederationConfig(rounds=2, chunk_size=0)
    model = ModelConfig(maxlen=8, num_groups=2, dropout=0.3)
    reference = FederatedSimulation(data, model, federation)
    off = FederatedSimulation(data, model, federation, privacy=PrivacySettings(dp=DPConfig(mode="off")))
    assert off.privacy is None  # no pipeline at all: the original code path runs
    for _ in range(2):
        reference.train_round()
        off.train_round()
    for name, value in reference.global_params.items():
        assert torch.equal(off.global_params[name], value)
    for name, value in reference.private.items():
        assert torch.equal(off.private[name], value)


def test_local_uploads_are_clipped_and_noised_on_every_coordinate(data):
    views = {}
    for z in (0.0, 0.7):
        observer = Recorder()
        sim = FederatedSimulation(data, MODEL, FederationConfig(rounds=1, chunk_size=0), observer=observer,
                                  privacy=local(z))
        sim.train_round()
        views[z] = observer.views[0]
    layout = views[0.0].layout
    quiet = views[0.0].individual_updates  # z = 0: clipped, exactly no noise
    assert quiet.shape == (12, layout.size)
    norms = torch.linalg.vector_norm(quiet[:, :layout.delta_size].double(), dim=1)
    assert float(norms.max()) <= 0.5
    tail = quiet[:, layout.delta_size:]
    assert set(tail[:, :-1].unique().tolist()) <= {0.0, 1.0}  # the one-hots, unclipped and unnoised
    assert torch.all(tail[:, :-1].sum(1) == layout.num_blocks)
    assert float(tail[:, -1].min()) > 0 and float(tail[:, -1].max()) <= 1.0  # count / cap
    # the same clients, seeds and training: the difference is the noise alone, on every coordinate
    noise = (views[0.7].individual_updates - quiet).double()
    assert abs(float(noise.std()) / (0.7 * 0.5) - 1) < 0.02
    count_noise = noise[:, layout.delta_size:]
    assert abs(float(count_noise.std()) / (0.7 * 0.5) - 1) < 0.35  # 12 clients x 5 coordinates
    assert bool((count_noise != 0).all())
    assert torch.allclose(views[0.7].summed_update, views[0.7].individual_updates.sum(0), atol=1e-4)


def test_local_mode_averages_with_the_noisy_counts_from_the_uploads(data):
    observer = Recorder()
    sim = FederatedSimulation(data, MODEL, FederationConfig(rounds=1, chunk_size=0), observer=observer,
                              privacy=local(0.3))
    before = dict(sim.global_params)
    result = sim.train_round()
    view = observer.views[0]
    _, _, noisy_counts, _ = view.layout.split(view.summed_update)
    assert torch.equal(view.group_counts, noisy_counts)
    assert not torch.equal(noisy_counts, torch.tensor(result.group_counts, dtype=noisy_counts.dtype))
    floor = sim.privacy.local_count_floor(12)
    assert floor == pytest.approx(3 * 0.3 * 0.5 * math.sqrt(12))  # three stds of the count noise
    averaging = torch.where(noisy_counts >= floor, noisy_counts, torch.zeros_like(noisy_counts))
    expected = apply_sum(before, view.layout, view.summed_update, 12, averaging)
    for name, value in expected.items():
        assert torch.equal(sim.global_params[name], value), name
    assert torch.equal(sim.group_fractions, noisy_counts.clamp(min=0) / 12)


def test_local_accounting_covers_the_count_part(data, tmp_path):
    z, clip, rounds = 0.9, 0.5, 2
    summary = run_training(data, MODEL, FederationConfig(rounds=rounds, chunk_size=0), tmp_path, progress=False,
                           privacy=local(z, clip))
    privacy = summary["privacy"]
    s = count_part_sensitivity(blocks=2, max_example_count=1.0)
    z_eff = effective_noise_multiplier(noise_multiplier=z, clip=clip, extra_sensitivity=s)
    assert privacy["accounted_noise_multiplier"] == pytest.approx(z_eff)
    assert privacy["accounted_noise_multiplier"] < z  # the unclipped count part costs privacy
    expected = epsilon(noise_multiplier=z_eff, sample_rate=1.0, rounds=rounds, delta=privacy["delta"])
    assert privacy["epsilon_prv"] == pytest.approx(expected.prv)
    assert privacy["epsilon_rdp"] == pytest.approx(expected.rdp)
    upload = local_upload_epsilon(noise_multiplier=z_eff, delta=privacy["delta"])
    assert privacy["epsilon_per_upload_prv"] == pytest.approx(upload.prv)
    assert privacy["delta"] == pytest.approx(1 / 12**1.1)
    assert privacy["count_part"]["l2_sensitivity"] == pytest.approx(math.sqrt(3))
    assert "Poisson" in privacy["sampling_note"]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[0]["epsilon_rdp"] < rows[1]["epsilon_rdp"] == pytest.approx(expected.rdp)
    assert all(0.0 <= r["clipped_fraction"] <= 1.0 for r in rows)


def test_dp_off_run_reports_an_infinite_epsilon_never_zero(data, tmp_path):
    summary = run_training(data, MODEL, FederationConfig(rounds=1, chunk_size=0), tmp_path, progress=False)
    assert summary["privacy"]["mode"] == "off"
    assert summary["privacy"]["epsilon_prv"] == "inf" and summary["privacy"]["epsilon_rdp"] == "inf"
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert row["epsilon_prv"] == "inf" and row["epsilon_rdp"] == "inf"
    # valid strict JSON (no Infinity tokens)
    json.loads((tmp_path / "summary.json").read_text(), parse_constant=lambda name: pytest.fail(name))


def test_distributed_accounting_composes_both_phases(data, tmp_path):
    z, clip = 1.1, 0.5
    settings = PrivacySettings(dp=DPConfig(mode="distributed", clip=clip, noise_multiplier=z), secure_sum="fast",
                               min_group_size=2)
    summary = run_training(data, MODEL, FederationConfig(rounds=1, chunk_size=0), tmp_path, progress=False,
                           privacy=settings)
    privacy = summary["privacy"]
    # phase 2 carries the example count (<= 1) but no one-hots (W5); phase 1 the one-hots of 2 blocks
    z_round = compose_noise_multipliers([(math.sqrt(clip**2 + 1.0), z * clip), (math.sqrt(2), z * math.sqrt(2))])
    assert privacy["accounted_noise_multiplier"] == pytest.approx(z_round)
    assert privacy["epsilon_rdp"] == pytest.approx(
        epsilon(noise_multiplier=z_round, sample_rate=1.0, rounds=1, delta=privacy["delta"]).rdp)
    assert privacy["mode"] == "distributed" and privacy["secure_aggregation"] == "fast"
    assert privacy["epsilon_discrete"] >= privacy["epsilon_rdp"] * 0.99  # the integer mechanism costs a bit more
    assert privacy["min_group_size"] == 2


def test_target_epsilon_is_met(data, tmp_path):
    settings = PrivacySettings(dp=DPConfig(mode="local", clip=0.5, target_epsilon=8.0))
    summary = run_training(data, MODEL, FederationConfig(rounds=2, chunk_size=0), tmp_path, progress=False,
                           privacy=settings)
    assert summary["privacy"]["epsilon_prv"] <= 8.0 * 1.01
    assert summary["privacy"]["epsilon_prv"] >= 8.0 * 0.9  # calibrated, not wildly over-noised


def test_cli_train_with_local_dp_writes_the_privacy_summary(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["train", "--synthetic-users", "10", "--maxlen", "8", "--rounds", "1", "--no-progress",
                     "--dp", "local", "--clip", "0.5", "--noise-multiplier", "1.0", "--out", str(out), "--json"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["privacy"]["mode"] == "local" and summary["privacy"]["noise_multiplier"] == 1.0
    assert summary["privacy"]["clip"] == 0.5
    assert isinstance(summary["privacy"]["epsilon_prv"], float)


@pytest.mark.parametrize("argv,needle", [
    (["--dp", "local", "--noise-multiplier", "1"], "--clip"),
    (["--dp", "local", "--clip", "1"], "--noise-multiplier"),
    (["--noise-multiplier", "1"], "need --dp"),
    (["--dp", "distributed", "--clip", "1", "--noise-multiplier", "1", "--min-group-size", "1"], "min_group_size"),
    (["--dp", "distributed", "--clip", "1", "--noise-multiplier", "1", "--secure-aggregation", "off"], "secure"),
    (["--dp", "local", "--clip", "-1", "--noise-multiplier", "1"], "clip"),
])
def test_cli_train_rejects_bad_privacy_arguments(tmp_path, capsys, argv, needle):
    code = cli.main(["train", "--synthetic-users", "10", "--rounds", "1", "--no-progress", "--out", str(tmp_path), *argv])
    assert code == 2
    assert needle in capsys.readouterr().err


def test_cli_noise_multiplier_and_target_epsilon_are_exclusive(tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["train", "--dp", "local", "--clip", "1", "--noise-multiplier", "1", "--target-epsilon", "3",
                  "--out", str(tmp_path)])


def test_local_round_uses_no_phase_one_in_the_clear(data):
    """In local mode the server's counts come from the noisy uploads: rerunning with other noise changes them."""
    counts = []
    for seed in (0, 1):
        observer = Recorder()
        sim = FederatedSimulation(data, MODEL, FederationConfig(rounds=1, chunk_size=0, seed=seed), observer=observer,
                                  privacy=local(0.5))
        sim.train_round()
        counts.append(observer.views[0].group_counts)
    for noisy in counts:
        assert not np.allclose(noisy.numpy(), np.round(noisy.numpy()))  # not integer counts: noisy sums
    assert not torch.equal(counts[0], counts[1])

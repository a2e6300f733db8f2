"""DP wired into training: DP off is the untouched plain path with an infinite epsilon; local DP
clips and noises every coordinate of every upload and the server averages with the noisy counts;
the run folder records the epsilon per round and a `privacy` summary; the CLI validates."""

import json
import math

import numpy as np
import pytest
import torch

from mrff_secure.app import cli
from mrff_secure.app.experiment import run_training
from mrff_secure.config import FederationConfig, ModelConfig
from mrff_secure.data import make_synthetic
from mrff_secure.dp import (
    DPConfig,
    compose_noise_multipliers,
    epsilon,
    local_upload_epsilon,
)
from mrff_secure.federation.privacy_summary import privacy_summary
from mrff_secure.federation.simulation import FederatedSimulation
from mrff_secure.round.aggregate import apply_sum, local_count_floor
from mrff_secure.round.spec import PrivacySettings

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
        sim = FederatedSimulation(
            data, MODEL, FederationConfig(rounds=1, chunk_size=0), observer=observer, privacy=local(z)
        )
        sim.train_round()
        views[z] = observer.views[0]
    layout = views[0.0].layout
    quiet = views[0.0].individual_updates  # z = 0: clipped and snapped to the grid, no noise
    assert quiet.shape == (12, layout.size)
    norms = torch.linalg.vector_norm(quiet[:, : layout.delta_size].double(), dim=1)
    # clipped to C; the grid moves a vector by at most 2^-21 C (accounted), the float32 cast by ~1e-7 relative
    assert float(norms.max()) <= 0.5 * (1 + 2.0**-21) * (1 + 1.2e-7)
    tail = quiet[:, layout.delta_size :]
    assert set(tail[:, :-1].unique().tolist()) <= {0.0, 1.0}  # the one-hots, unclipped and unnoised
    assert torch.all(tail[:, :-1].sum(1) == layout.num_blocks)
    assert float(tail[:, -1].min()) > 0 and float(tail[:, -1].max()) <= 1.0  # count / cap
    # the same clients, seeds and training: the difference is the noise alone, on every coordinate
    noise = (views[0.7].individual_updates - quiet).double()
    assert abs(float(noise.std()) / (0.7 * 0.5) - 1) < 0.02
    count_noise = noise[:, layout.delta_size :]
    assert abs(float(count_noise.std()) / (0.7 * 0.5) - 1) < 0.35  # 12 clients x 5 coordinates
    assert bool((count_noise != 0).all())
    assert torch.allclose(views[0.7].summed_update, views[0.7].individual_updates.sum(0), atol=1e-4)


def test_local_mode_averages_with_the_noisy_counts_from_the_uploads(data):
    observer = Recorder()
    sim = FederatedSimulation(
        data, MODEL, FederationConfig(rounds=1, chunk_size=0), observer=observer, privacy=local(0.3)
    )
    before = dict(sim.global_params)
    result = sim.train_round()
    view = observer.views[0]
    _, _, noisy_counts, _ = view.layout.split(view.summed_update)
    assert torch.equal(view.group_counts, noisy_counts)
    assert not torch.equal(noisy_counts, torch.tensor(result.group_counts, dtype=noisy_counts.dtype))
    floor = local_count_floor(min_group_size=sim.privacy.min_group_size, noise_std=0.3 * 0.5, uploads=12)
    assert floor == pytest.approx(3 * 0.3 * 0.5 * math.sqrt(12))  # three stds of the count noise
    averaging = torch.where(noisy_counts >= floor, noisy_counts, torch.zeros_like(noisy_counts))
    expected = apply_sum(before, view.layout, view.summed_update, 12, averaging)
    for name, value in expected.items():
        assert torch.equal(sim.global_params[name], value), name
    assert torch.equal(sim.group_fractions, noisy_counts.clamp(min=0) / 12)


def test_local_accounting_is_replace_one_with_the_count_part(data, tmp_path):
    z, clip, rounds = 0.9, 0.5, 2
    summary = run_training(
        data, MODEL, FederationConfig(rounds=rounds, chunk_size=0), tmp_path, progress=False, privacy=local(z, clip)
    )
    privacy = summary["privacy"]
    # D4: the server sees identified uploads: replace-one, sensitivity sqrt(4C^2 + 2B + 1) (+ the grid's 2^-20 C)
    z_eff = z * clip / (math.sqrt(4 * clip**2 + 2 * 2 + 1) + 2.0**-20 * clip)
    assert privacy["adjacency"] == "replace-one"
    assert privacy["accounted_noise_multiplier"] == pytest.approx(z_eff)
    assert privacy["mechanism"] == "grid_discrete_gaussian" and privacy["private"] is True
    expected = epsilon(noise_multiplier=z_eff, sample_rate=1.0, rounds=rounds, delta=privacy["delta"])
    assert privacy["epsilon"] == pytest.approx(expected.rdp)  # the proven RDP bound, every round
    assert privacy["gaussian_limit"]["epsilon_prv"] == pytest.approx(expected.prv)
    upload = local_upload_epsilon(noise_multiplier=z_eff, delta=privacy["delta"])
    assert privacy["epsilon_per_round"] == pytest.approx(upload.rdp)
    assert privacy["delta"] == pytest.approx(1 / 12**1.1)
    assert "no amplification" in privacy["sampling"]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[0]["epsilon"] < rows[1]["epsilon"] == pytest.approx(expected.rdp)
    operator = [json.loads(line) for line in (tmp_path / "operator-only" / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["clipped_fraction"] <= 1.0 for r in operator)


def test_dp_off_run_reports_an_infinite_epsilon_never_zero(data, tmp_path):
    summary = run_training(data, MODEL, FederationConfig(rounds=1, chunk_size=0), tmp_path, progress=False)
    assert summary["privacy"]["mode"] == "off" and summary["privacy"]["private"] is False
    assert summary["privacy"]["epsilon"] == "inf" and summary["privacy"]["gaussian_limit"]["epsilon_rdp"] == "inf"
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert row["epsilon"] == "inf" and row["private"] is False
    # valid strict JSON (no Infinity tokens)
    json.loads((tmp_path / "summary.json").read_text(), parse_constant=lambda name: pytest.fail(name))


def test_distributed_accounting_composes_both_phases_and_headlines_the_discrete_bound(data, tmp_path):
    z, clip = 1.1, 0.5
    settings = PrivacySettings(
        modulus_bits=48,
        dp=DPConfig(mode="distributed", clip=clip, noise_multiplier=z),
        secure_aggregation="fast",
        min_group_size=2,
    )
    summary = run_training(
        data, MODEL, FederationConfig(rounds=1, chunk_size=0), tmp_path, progress=False, privacy=settings
    )
    privacy = summary["privacy"]
    # phase 2 carries the example count (<= 1) but no one-hots (W5); phase 1 the one-hots of 2 blocks
    z_round = compose_noise_multipliers([(math.sqrt(clip**2 + 1.0), z * clip), (math.sqrt(2), z * math.sqrt(2))])
    assert privacy["accounted_noise_multiplier"] == pytest.approx(z_round)
    assert privacy["gaussian_limit"]["epsilon_rdp"] == pytest.approx(
        epsilon(noise_multiplier=z_round, sample_rate=1.0, rounds=1, delta=privacy["delta"]).rdp
    )
    assert privacy["mode"] == "distributed" and privacy["secure_aggregation"] == "fast"
    assert privacy["adjacency"] == "zero-out" and privacy["epsilon_replace_one"] > privacy["epsilon"]
    # D6: the headline is the integer mechanism's proven bound, not its Gaussian limit
    assert privacy["epsilon"] >= privacy["gaussian_limit"]["epsilon_rdp"] * 0.99
    assert "discrete_gaussian" in privacy["epsilon_bound"]
    assert privacy["min_group_size"] == 2


@pytest.mark.parametrize("mode", ["local", "distributed"])
def test_calibrating_with_mrff_privacy_then_training_at_that_z_spends_the_target(data, tmp_path, mode):
    """D3: `mrff privacy --target-epsilon` and `mrff train` account a round the same way."""
    from mrff_secure.app.privacy_command import privacy_report
    from mrff_secure.federation.simulation import FederatedSimulation as Sim

    target, rounds, clip = 6.0, 3, 0.5
    layout = Sim(data, MODEL, FederationConfig(rounds=rounds)).layout
    report = privacy_report(
        rounds=rounds,
        clients=12,
        mode=mode,
        target_epsilon=target,
        clip=clip,
        blocks=2,
        groups=2,
        dim=layout.delta_size if mode == "distributed" else None,
    )
    secure = "fast" if mode == "distributed" else "off"
    settings = PrivacySettings(
        modulus_bits=32,
        dp=DPConfig(mode=mode, clip=clip, noise_multiplier=report["noise_multiplier"]),
        secure_aggregation=secure,
        min_group_size=2 if mode == "distributed" else None,
    )
    summary = run_training(
        data, MODEL, FederationConfig(rounds=rounds, chunk_size=0), tmp_path, progress=False, privacy=settings
    )
    assert summary["privacy"]["epsilon"] == pytest.approx(report["epsilon"], rel=1e-9)
    assert target * 0.99 <= summary["privacy"]["epsilon"] <= target
    # and `mrff train --target-epsilon` calibrates to the same z
    calibrated = PrivacySettings(
        modulus_bits=32,
        dp=DPConfig(mode=mode, clip=clip, target_epsilon=target),
        secure_aggregation=secure,
        min_group_size=2 if mode == "distributed" else None,
    )
    summary = run_training(
        data, MODEL, FederationConfig(rounds=rounds, chunk_size=0), tmp_path / "t", progress=False, privacy=calibrated
    )
    assert summary["privacy"]["noise_multiplier"] == pytest.approx(report["noise_multiplier"], rel=1e-9)


def test_no_amplification_is_claimed_when_a_fraction_of_clients_takes_part(data, tmp_path):
    """D5: a fixed-size subset, participation visible: the headline is a user in every round."""
    z, clip, rounds = 2.0, 0.5, 4
    summary = run_training(
        data,
        MODEL,
        FederationConfig(rounds=rounds, chunk_size=0, client_fraction=0.5),
        tmp_path,
        progress=False,
        privacy=local(z, clip),
    )
    privacy = summary["privacy"]
    z_eff = privacy["accounted_noise_multiplier"]
    every_round = epsilon(noise_multiplier=z_eff, sample_rate=1.0, rounds=rounds, delta=privacy["delta"]).rdp
    amplified = epsilon(noise_multiplier=z_eff, sample_rate=0.5, rounds=rounds, delta=privacy["delta"]).rdp
    assert privacy["epsilon"] == pytest.approx(every_round) and privacy["epsilon"] > amplified
    assert privacy["typical_user"]["rounds"] == 2
    assert (
        privacy["typical_user"]["epsilon"] < privacy["epsilon"]
        and "not a guarantee" in privacy["typical_user"]["meaning"]
    )


def test_cli_train_with_local_dp_writes_the_privacy_summary(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(
        [
            "train",
            "--synthetic-users",
            "10",
            "--maxlen",
            "8",
            "--rounds",
            "1",
            "--no-progress",
            "--dp",
            "local",
            "--clip",
            "0.5",
            "--noise-multiplier",
            "1.0",
            "--run-dir",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["privacy"]["mode"] == "local" and summary["privacy"]["noise_multiplier"] == 1.0
    assert summary["privacy"]["clip"] == 0.5
    assert isinstance(summary["privacy"]["epsilon"], float) and summary["privacy"]["private"] is True


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--dp", "local", "--noise-multiplier", "1", "--mechanism", "skellam"], "--mechanism"),
        (["--dp", "local", "--clip", "1"], "--noise-multiplier"),
        (["--noise-multiplier", "1"], "need --dp"),
        (
            ["--dp", "distributed", "--clip", "1", "--noise-multiplier", "1", "--min-group-size", "1"],
            "--min-group-size must be >= 2",
        ),
        (["--dp", "distributed", "--clip", "1", "--noise-multiplier", "1", "--secure-aggregation", "off"], "secure"),
        (["--dp", "local", "--clip", "-1", "--noise-multiplier", "1"], "--clip must be > 0"),
    ],
)
def test_cli_train_rejects_bad_privacy_arguments(tmp_path, capsys, argv, needle):
    code = cli.main(
        ["train", "--synthetic-users", "10", "--rounds", "1", "--no-progress", "--run-dir", str(tmp_path), *argv]
    )
    assert code == 2
    assert needle in capsys.readouterr().err


def test_cli_noise_multiplier_and_target_epsilon_are_exclusive(tmp_path, capsys):
    assert (
        cli.main(
            [
                "train",
                "--dp",
                "local",
                "--clip",
                "1",
                "--noise-multiplier",
                "1",
                "--target-epsilon",
                "3",
                "--run-dir",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "give --noise-multiplier or --target-epsilon, not both" in capsys.readouterr().err


def test_local_round_uses_no_phase_one_in_the_clear(data):
    """In local mode the server's counts come from the noisy uploads: rerunning with other noise changes them."""
    counts = []
    for seed in (0, 1):
        observer = Recorder()
        sim = FederatedSimulation(
            data, MODEL, FederationConfig(rounds=1, chunk_size=0, seed=seed), observer=observer, privacy=local(0.5)
        )
        sim.train_round()
        counts.append(observer.views[0].group_counts)
    for noisy in counts:
        assert not np.allclose(noisy.numpy(), np.round(noisy.numpy()))  # not integer counts: noisy sums
    assert not torch.equal(counts[0], counts[1])


# ---------------------------------------------------------------- D1: noise nobody can regenerate


def strip_local_noise_with_the_seed(
    uploads: np.ndarray, seed: int, round_index: int, z: float, clip: float
) -> list[np.ndarray]:
    """The D1 attacker: knowing the run seed (summary.json records it), regenerate the noise and subtract it.

    Tries the seed derivation the simulation used before (torch.randn) and the one of the
    debugging switch insecure_reproducible_noise (numpy, grid discrete Gaussian).
    """
    from mrff_secure.dp.mechanisms import GridDiscreteGaussian, sample_discrete_gaussian

    old = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, round_index, 11]).generate_state(1)[0]))
    old_noise = torch.randn(uploads.shape, generator=old, dtype=torch.float32).double().numpy() * z * clip
    rng = np.random.default_rng(np.random.SeedSequence([seed, round_index, 0, 31, 0]))  # chunk (row block) 0
    grid = GridDiscreteGaussian(noise_multiplier=z, clip=clip, dim=uploads.shape[1])
    new_noise = sample_discrete_gaussian(grid.noise_std / grid.gamma, uploads.shape, rng) * grid.gamma
    return [uploads - old_noise, uploads - new_noise]


@pytest.mark.parametrize("reproducible", [False, True])
def test_an_observer_who_knows_the_seed_cannot_strip_the_local_noise(data, reproducible):
    z, clip, seed = 0.7, 0.5, 3
    uploads = {}
    for noise in (0.0, z):
        observer = Recorder()
        settings = PrivacySettings(
            dp=DPConfig(mode="local", clip=clip, noise_multiplier=noise), insecure_reproducible_noise=reproducible
        )
        sim = FederatedSimulation(
            data, MODEL, FederationConfig(rounds=1, chunk_size=0, seed=seed), observer=observer, privacy=settings
        )
        sim.train_round()
        uploads[noise] = observer.views[0].individual_updates.double().numpy()
    exact = uploads[0.0]  # the clipped uploads themselves (z = 0, same training)
    errors = [np.abs(guess - exact).max() for guess in strip_local_noise_with_the_seed(uploads[z], seed, 0, z, clip)]
    if reproducible:
        assert min(errors) < 1e-5  # the debugging switch: the attack recovers every clipped upload
        assert privacy_summary(sim.privacy)["private"] is False
    else:
        assert min(errors) > z * clip  # OS entropy: the regenerated noise is unrelated to the real one


# ---------------------------------------------------------------- D8 and the not-private switch


def test_insecure_reproducible_noise_marks_every_output_not_private(data, tmp_path):
    settings = PrivacySettings(
        dp=DPConfig(mode="local", clip=0.5, noise_multiplier=1.0), insecure_reproducible_noise=True
    )
    summary = run_training(
        data, MODEL, FederationConfig(rounds=2, chunk_size=0), tmp_path, progress=False, privacy=settings
    )
    assert summary["privacy"]["private"] is False and "NOT PRIVATE" in summary["privacy"]["not_private"]
    assert "run seed" in summary["privacy"]["noise_source"]
    assert (
        "NOT covered" in summary["outputs"]["covered_by_epsilon"]["metrics.jsonl: epsilon, group_counts_seen_by_server"]
    )
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert row["private"] is False and "NOT PRIVATE" in row["not_private"]
    default = run_training(
        data, MODEL, FederationConfig(rounds=1, chunk_size=0), tmp_path / "d", progress=False, privacy=local(1.0)
    )
    assert default["privacy"]["private"] is True and "os.urandom" in default["privacy"]["noise_source"]


def test_a_clip_bound_from_private_data_is_flagged(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(
        [
            "train",
            "--synthetic-users",
            "10",
            "--maxlen",
            "8",
            "--rounds",
            "1",
            "--no-progress",
            "--dp",
            "local",
            "--clip",
            "0.5",
            "--noise-multiplier",
            "1.0",
            "--clip-from-private-data",
            "--run-dir",
            str(out),
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert "private data" in summary["privacy"]["clip_choice"]
    assert any("clip bound" in key for key in summary["outputs"]["outside_the_guarantee"])
    assert "Operator only" in capsys.readouterr().out


def test_the_summary_records_the_release_it_accounted(data, tmp_path):
    from mrff_secure.round.accountant import account_rounds
    from mrff_secure.round.release import RoundRelease

    summary = run_training(
        data,
        MODEL,
        FederationConfig(rounds=2, chunk_size=0),
        tmp_path,
        progress=False,
        privacy=PrivacySettings(
            modulus_bits=48,
            dp=DPConfig(mode="distributed", clip=0.5, noise_multiplier=1.0),
            secure_aggregation="fast",
            min_group_size=2,
        ),
    )
    p = json.loads((tmp_path / "summary.json").read_text())["privacy"]
    again = account_rounds(RoundRelease(**p["release"]), rounds=2, delta=p["delta"])
    assert again.epsilon == summary["privacy"]["epsilon"]


def test_a_checkpoint_from_before_the_accountants_history_resumes_with_the_same_epsilon(data, tmp_path):
    """Version-1 accountant state (a round count) is read as that many rounds of the run's own release."""
    from mrff_secure.errors import PrivacyError
    from mrff_secure.federation.privacy_pipeline import PrivacyPipeline
    from mrff_secure.round.accountant import RoundAccountant
    from mrff_secure.round.update_vector import UpdateLayout

    sim = FederatedSimulation(data, MODEL, FederationConfig(rounds=3, chunk_size=0))
    settings = PrivacySettings(dp=DPConfig(mode="local", clip=0.5, noise_multiplier=1.0))

    def pipeline() -> PrivacyPipeline:
        layout = UpdateLayout.from_model(sim.model)
        return PrivacyPipeline(
            settings, layout=layout, num_users=data.num_users, maxlen=data.maxlen, rounds=3, sample_rate=1.0, seed=0
        )

    ran = pipeline()
    for _ in range(3):
        ran.record_round()
    old = pipeline()
    old.load_accountant_state({"version": 1, "rounds": 3})
    assert old.accountant.history == ran.accountant.history and old.accountant.epsilon() == ran.accountant.epsilon()
    new = pipeline()
    new.load_accountant_state(ran.accountant.state_dict())
    assert new.accountant.history == ran.accountant.history
    with pytest.raises(PrivacyError, match="rounds"):
        pipeline().load_accountant_state({"version": 1, "rounds": -1})
    with pytest.raises(PrivacyError, match="version 2"):  # without the run's release, a round count is refused
        RoundAccountant(delta=ran.delta).load_state_dict({"version": 1, "rounds": 3})

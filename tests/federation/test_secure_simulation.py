"""Secure rounds in the simulation: the real secagg state machines and the fast ring sum give the
same bits; the two-phase round suppresses small groups; the observer sees only sums; the
decoded sum carries exactly the configured noise."""

import math

import numpy as np
import pytest
import torch

from mrff_secure.config import FederationConfig, ModelConfig
from mrff_secure.data import make_synthetic
from mrff_secure.dp import DPConfig
from mrff_secure.errors import ConfigError
from mrff_secure.federation.simulation import FederatedSimulation
from mrff_secure.round.participant import rotation_seed
from mrff_secure.round.secure_sum import InMemorySecAgg, RingSum
from mrff_secure.round.spec import PrivacySettings
from mrff_secure.secagg.config import max_abs_for
from mrff_secure.secagg.encoding import InputRangeError

MODEL = ModelConfig(maxlen=8, num_groups=2, dropout=0.0)


@pytest.fixture(scope="module")
def data():
    return make_synthetic(num_users=12, num_items=40, min_interactions=4, max_interactions=10, maxlen=8, seed=1)


class Recorder:
    def __init__(self):
        self.views = []

    def on_round(self, view):
        self.views.append(view)


class VectorTap:
    """update_transform that keeps the plain vectors of every chunk (a test seam, not a server view)."""

    def __init__(self):
        self.rows = []

    def __call__(self, vectors, round_index, client_rows):
        self.rows.append(vectors.clone())
        return vectors


def secure(
    z=0.5, backend="fast", mechanism=None, sampling="per_client", clip=0.5, min_group_size=None, reproducible=False
):
    return PrivacySettings(
        modulus_bits=48,
        dp=DPConfig(mode="distributed", clip=clip, noise_multiplier=z, mechanism=mechanism),
        secure_aggregation=backend,
        noise_sampling=sampling,
        min_group_size=min_group_size,
        insecure_reproducible_noise=reproducible,
    )


def test_ring_sum_and_inmemory_secagg_agree_bit_for_bit_on_random_residues():
    rng = np.random.default_rng(0)
    n, dim, bits = 5, 37, 20
    limit = max_abs_for(n, bits, vector_length=dim)
    signed = rng.integers(-limit, limit + 1, size=(n, dim))
    residues = np.mod(signed, 1 << bits)
    fast = RingSum(num_clients=n, dim=dim, modulus_bits=bits)
    fast.add(np.arange(3), residues[:3])
    fast.add(np.arange(3, 5), residues[3:])
    slow = InMemorySecAgg(num_clients=n, dim=dim, modulus_bits=bits, round_id=4)
    slow.add(np.arange(n), residues)
    expected = np.mod(signed.sum(0), 1 << bits)
    assert np.array_equal(fast.finish(), expected)
    assert np.array_equal(slow.finish(), expected)


def test_secure_sums_refuse_out_of_range_inputs_and_repeated_clients():
    n, bits = 4, 24  # a length-3 sum keeps guard_bits(3) = 14 bits of headroom
    limit = max_abs_for(n, bits, vector_length=3)
    too_big = np.full((1, 3), limit + 1)
    for session in (
        RingSum(num_clients=n, dim=3, modulus_bits=bits),
        InMemorySecAgg(num_clients=n, dim=3, modulus_bits=bits, round_id=0),
    ):
        with pytest.raises(InputRangeError):
            session.add(np.array([0]), too_big)
    fast = RingSum(num_clients=n, dim=3, modulus_bits=bits)
    fast.add(np.array([1]), np.zeros((1, 3), dtype=np.int64))
    with pytest.raises(InputRangeError):
        fast.add(np.array([1]), np.zeros((1, 3), dtype=np.int64))


def test_training_round_inmemory_secagg_equals_fast_ring_sum_bit_for_bit(data):
    # the debugging switch makes the noise reproducible, so that both backends see the same residues
    sims = {}
    for backend in ("inmemory", "fast"):
        observer = Recorder()
        sim = FederatedSimulation(
            data,
            MODEL,
            FederationConfig(rounds=1, chunk_size=5),
            observer=observer,
            privacy=secure(z=0.5, backend=backend, min_group_size=2, reproducible=True),
        )
        sim.train_round()
        sims[backend] = (sim, observer)
    fast, slow = sims["fast"][0], sims["inmemory"][0]
    for phase in (1, 2):
        assert fast.privacy.last_ring_sums[phase].dtype == np.int64
        assert np.array_equal(fast.privacy.last_ring_sums[phase], slow.privacy.last_ring_sums[phase])
    for name in fast.global_params:
        assert torch.equal(fast.global_params[name], slow.global_params[name]), name
    assert torch.equal(sims["fast"][1].views[0].summed_update, sims["inmemory"][1].views[0].summed_update)


@pytest.mark.parametrize("backend", ["fast", "inmemory"])
def test_secure_observer_sees_only_sums_and_phase_one_counts(data, backend):
    observer = Recorder()
    sim = FederatedSimulation(
        data,
        MODEL,
        FederationConfig(rounds=1, chunk_size=0),
        observer=observer,
        privacy=secure(z=0.0, backend=backend, min_group_size=2),
    )
    result = sim.train_round()
    view = observer.views[0]
    assert view.individual_updates is None
    assert view.summed_update.shape == (sim.layout.size,)
    # z = 0: the phase-1 secure count sum is exact, so it equals the true counts
    assert view.group_counts.tolist() == [[float(c) for c in row] for row in result.group_counts]


def test_two_phase_round_zeroes_small_groups_and_decodes_the_plain_sum(data):
    tap = VectorTap()
    observer = Recorder()
    model = ModelConfig(maxlen=8, num_groups=3, dropout=0.0)  # routes [[4, 5, 3], [4, 7, 1]] on this data
    sim = FederatedSimulation(
        data,
        model,
        FederationConfig(rounds=1, chunk_size=0),
        observer=observer,
        update_transform=tap,
        privacy=secure(z=0.0, clip=50.0, min_group_size=5),
    )
    before = {n: p.clone() for n, p in sim.global_params.items()}
    result = sim.train_round()
    counts = torch.tensor(result.group_counts, dtype=torch.float32)
    small = (counts > 0) & (counts < 5)
    assert bool(small.any()), "the fixture should route some group below 5 users"
    plain = torch.cat(tap.rows).to(torch.float64)  # built with the phase-1 suppression, before encoding
    assert float(torch.linalg.vector_norm(plain[:, : sim.layout.delta_size], dim=1).max()) < 50.0  # nothing clipped
    _, group_parts, _, _ = sim.layout.split(plain.sum(0))
    for block, names in enumerate(sim.layout.group_names):
        for name in names:
            assert torch.all(group_parts[name][small[block]] == 0)
            # a suppressed group keeps its FFN exactly
            assert torch.equal(sim.global_params[name][small[block]], before[name][small[block]])
    # z = 0 and a clip bound above every norm: the decoded secure sum is the plain sum up to the
    # rounding of the integer encoding (~1/scale per coordinate) and the cast to the model's float32
    expected = plain.sum(0)
    expected[sim.layout.delta_size : sim.layout.delta_size + sim.layout.count_size] = 0.0  # phase 2 has no one-hots
    expected = expected.to(torch.float32)
    torch.testing.assert_close(
        observer.views[0].summed_update, expected, atol=1e-6, rtol=torch.finfo(torch.float32).eps
    )


@pytest.mark.parametrize(
    "mechanism,sampling",
    [
        ("discrete_gaussian", "per_client"),
        ("skellam", "per_client"),
        ("discrete_gaussian", "aggregate"),
        ("skellam", "aggregate"),
    ],
)
def test_decoded_sum_carries_noise_of_std_z_c(data, mechanism, sampling):
    z, clip = 0.8, 0.5
    tap = VectorTap()
    observer = Recorder()
    sim = FederatedSimulation(
        data,
        MODEL,
        FederationConfig(rounds=1, chunk_size=0),
        observer=observer,
        update_transform=tap,
        privacy=secure(z=z, mechanism=mechanism, sampling=sampling, clip=clip, min_group_size=2),
    )
    sim.train_round()
    plain = torch.cat(tap.rows).to(torch.float64)
    delta = sim.layout.delta_size
    clipped = plain.clone()
    norms = torch.linalg.vector_norm(plain[:, :delta], dim=1, keepdim=True)
    clipped[:, :delta] *= torch.clamp(clip / norms, max=1.0)
    clipped[:, delta : delta + sim.layout.count_size] = 0.0  # phase 2 uploads no one-hots (W5)
    noise = observer.views[0].summed_update.to(torch.float64) - clipped.sum(0)  # (size,)
    # ~12.9k coordinates: the sample std is within 3% of z*C with overwhelming probability
    assert abs(float(noise.std()) / (z * clip) - 1.0) < 0.03
    assert abs(float(noise.mean())) < 4 * z * clip / math.sqrt(noise.numel())


def test_secure_settings_are_validated():
    with pytest.raises(ConfigError):
        PrivacySettings(dp=DPConfig(mode="distributed", clip=1.0, noise_multiplier=1.0))  # no secure sum
    with pytest.raises(ConfigError):
        secure(min_group_size=1)  # a group of one would release its member's update
    with pytest.raises(ConfigError):
        PrivacySettings(
            modulus_bits=48, dp=DPConfig(mode="local", clip=1.0, noise_multiplier=1.0), secure_aggregation="fast"
        )
    with pytest.raises(ConfigError):
        secure(backend="inmemory", sampling="aggregate")
    with pytest.raises(ConfigError):
        PrivacySettings(secure_aggregation="fast", modulus_bits=70)
    assert PrivacySettings(modulus_bits=48, secure_aggregation="fast").resolved_min_group_size() == 5
    assert (
        PrivacySettings(modulus_bits=48, secure_aggregation="fast").resolved_min_group_size(7) == 7
    )  # the federation's own setting
    assert PrivacySettings(modulus_bits=48, secure_aggregation="fast", min_group_size=3).resolved_min_group_size(7) == 3
    assert PrivacySettings().resolved_min_group_size() == 1


@pytest.mark.parametrize("reproducible", [False, True])
def test_an_observer_who_knows_the_seed_cannot_recover_the_true_group_counts(data, reproducible):
    """D1 under secure aggregation: regenerate the phase-1 noise from the run seed and subtract it."""
    from mrff_secure.round.encoding import add_to_ring, decode_counts, summed_noise_shares

    seed, z = 4, 5.0
    sim = FederatedSimulation(
        data,
        MODEL,
        FederationConfig(rounds=1, chunk_size=0, seed=seed),
        privacy=secure(z=z, sampling="aggregate", min_group_size=2, reproducible=reproducible),
    )
    result = sim.train_round()
    pipeline = sim.privacy
    plans = pipeline.plans_for(12)
    # the attacker's generator: the seed derivation of the summed noise draw (the debugging switch's; the
    # clients' rounding draws come from their chunks' generators, PrivacyPipeline.chunk_generator)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0, 1, 31]))
    noise = summed_noise_shares(plans.counts, 12, rng)
    stripped = add_to_ring(plans.counts, pipeline.last_ring_sums[1], -noise)
    guess = decode_counts(plans, stripped, survivors=12, rotation_seed=rotation_seed(pipeline.seed, 0, 1))
    error = np.abs(guess - np.array(result.group_counts)).sum()
    if reproducible:
        assert error == 0  # the debugging switch: exact true counts, as DP-REVIEW D1 found
    else:
        assert error > 0  # OS entropy: the phase-1 counts keep their noise (std z*sqrt(2) = 7 per count)


@pytest.mark.parametrize("backbone,mrff", [("hstu", True), ("llama", True), ("ncf", False), ("pa", False)])
def test_every_backbone_and_baseline_runs_the_secure_and_local_dp_paths(data, backbone, mrff):
    """Secure aggregation at z = 0 with a clip bound above every norm lands on the plain round's model (up to the
    integer encoding's rounding); local DP runs and clips; both through the same update vector."""
    model = ModelConfig(backbone=backbone, mrff=mrff, maxlen=8, num_groups=2, dropout=0.0)
    plain = FederatedSimulation(data, model, FederationConfig(rounds=1, chunk_size=5, min_group_size=2))
    plain.train_round()
    secured = FederatedSimulation(
        data, model, FederationConfig(rounds=1, chunk_size=5), privacy=secure(z=0.0, clip=1e3, min_group_size=2)
    )
    secured.train_round()
    for name, value in plain.global_params.items():
        torch.testing.assert_close(secured.global_params[name], value, atol=1e-5, rtol=1e-5)
    local = FederatedSimulation(
        data,
        model,
        FederationConfig(rounds=1, chunk_size=5),
        privacy=PrivacySettings(dp=DPConfig(mode="local", clip=0.01, noise_multiplier=0.5)),
    )
    result = local.train_round()
    assert result.clipped_fraction == 1.0  # every update is larger than 0.01
    assert all(bool(torch.isfinite(t).all()) for t in local.global_params.values())
    assert any(not torch.equal(local.global_params[n], plain.global_params[n]) for n in plain.global_params)

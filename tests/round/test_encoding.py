"""The one per-client encoding of secure rounds (`round.encoding`): the simulation goes
through it bit for bit, phase 2 carries no group one-hots, noise covers every coordinate, decoding
the sum of uploads gives the true sum, and impossible settings are refused by name."""

import math

import numpy as np
import pytest
import torch

from mrff_secure.config import FederationConfig, ModelConfig
from mrff_secure.data import make_synthetic
from mrff_secure.dp import DPConfig
from mrff_secure.errors import ConfigError, PrivacyError
from mrff_secure.federation.simulation import FederatedSimulation
from mrff_secure.round.encoding import (
    counts_upload,
    decode_counts,
    decode_sum,
    secure_generator,
    secure_round_plans,
    update_upload,
)
from mrff_secure.round.participant import rotation_seed, scaled_example_count
from mrff_secure.round.spec import PrivacySettings
from mrff_secure.secagg.config import guard_bits

DELTA, BLOCKS, GROUPS = 300, 2, 3
COUNT = BLOCKS * GROUPS
SIZE = DELTA + COUNT + 1


def plans_for(z=1.0, n=40, clip=0.5, mechanism=None, dp_mode="distributed", n_min=None, bits=48):
    return secure_round_plans(
        delta_size=DELTA,
        num_blocks=BLOCKS,
        num_groups=GROUPS,
        dp_mode=dp_mode,
        mechanism=mechanism,
        clip=clip,
        noise_multiplier=z,
        n_clients=n,
        n_min=n if n_min is None else n_min,
        modulus_bits=bits,
        count_cap=20,
    )


def client_vectors(n, seed=0, clip=0.5):
    """(n, SIZE) layout vectors: a delta part of norm ~clip, one one-hot per block, count / cap."""
    rng = np.random.default_rng(seed)
    delta = rng.normal(0, clip / math.sqrt(DELTA), size=(n, DELTA)) * rng.uniform(0.5, 2.0, size=(n, 1))
    routes = rng.integers(0, GROUPS, size=(n, BLOCKS))
    hots = np.zeros((n, BLOCKS, GROUPS))
    hots[np.arange(n)[:, None], np.arange(BLOCKS)[None, :], routes] = 1.0
    counts = scaled_example_count(torch.as_tensor(rng.integers(1, 40, size=n), dtype=torch.float64), 20).numpy()
    return np.concatenate([delta, hots.reshape(n, COUNT), counts[:, None]], axis=1), hots.reshape(n, COUNT)


def ring_sum(residues, bits):
    return np.mod(residues.sum(0), 1 << bits).astype(np.int64)


def clipped(vectors, clip):
    out = vectors.copy()
    norms = np.linalg.norm(out[:, :DELTA], axis=1, keepdims=True)
    out[:, :DELTA] *= np.minimum(1.0, clip / norms)
    return out


# ------------------------------------------------------------------ the simulation goes through it


@pytest.mark.parametrize(
    "mechanism,backend", [("discrete_gaussian", "fast"), ("skellam", "fast"), ("discrete_gaussian", "inmemory")]
)
def test_simulation_encoder_equals_the_shared_functions_bit_for_bit(mechanism, backend):
    data = make_synthetic(num_users=12, num_items=40, min_interactions=4, max_interactions=10, maxlen=8, seed=1)
    rows = []

    def tap(vectors, round_index, client_rows):
        rows.append(vectors.clone())
        return vectors

    settings = PrivacySettings(
        modulus_bits=48,
        dp=DPConfig(mode="distributed", clip=0.5, noise_multiplier=0.7, mechanism=mechanism),
        secure_aggregation=backend,
        min_group_size=2,
        insecure_reproducible_noise=True,
    )
    sim = FederatedSimulation(
        data,
        ModelConfig(maxlen=8, num_groups=2, dropout=0.0),
        FederationConfig(rounds=1, chunk_size=0),
        update_transform=tap,
        privacy=settings,
    )
    sim.train_round()
    pipeline, layout = sim.privacy, sim.layout
    vectors = rows[0].double().numpy()  # (12, size): exactly what the simulation handed the encoder
    plans = secure_round_plans(
        delta_size=layout.delta_size,
        num_blocks=layout.num_blocks,
        num_groups=layout.num_groups,
        dp_mode="distributed",
        mechanism=mechanism,
        clip=0.5,
        noise_multiplier=0.7,
        n_clients=12,
        n_min=12,
        modulus_bits=48,
        count_cap=data.maxlen,
    )
    one_hots = vectors[:, layout.delta_size : layout.delta_size + layout.count_size]
    # each client from its own generator: [run seed, round, phase, client id], as a network client draws
    phase1 = np.stack(
        [
            counts_upload(
                plans,
                one_hots[c],
                rotation_seed=rotation_seed(pipeline.seed, 0, 1),
                rng=np.random.default_rng([0, 0, 1, c]),
            )
            for c in range(12)
        ]
    )
    phase2 = np.stack(
        [
            update_upload(
                plans,
                vectors[c],
                rotation_seed=rotation_seed(pipeline.seed, 0, 2),
                rng=np.random.default_rng([0, 0, 2, c]),
            )
            for c in range(12)
        ]
    )
    assert np.array_equal(ring_sum(phase1, 48), pipeline.last_ring_sums[1])
    assert np.array_equal(ring_sum(phase2, 48), pipeline.last_ring_sums[2])


def test_one_client_encodes_the_same_whether_alone_or_in_a_batch_of_one():
    plans = plans_for(z=1.0)
    vectors, hots = client_vectors(1)
    alone = update_upload(plans, vectors[0], rotation_seed=5, rng=np.random.default_rng(3))
    batch = update_upload(plans, vectors, rotation_seed=5, rng=np.random.default_rng(3))
    assert alone.shape == (plans.update.padded_dim,) and batch.shape == (1, plans.update.padded_dim)
    assert np.array_equal(alone, batch[0])
    assert alone.dtype == np.int64 and alone.min() >= 0 and alone.max() < 2**48
    assert np.array_equal(
        counts_upload(plans, hots[0], rotation_seed=5, rng=np.random.default_rng(3)),
        counts_upload(plans, hots, rotation_seed=5, rng=np.random.default_rng(3))[0],
    )


# ------------------------------------------------------------------ W5: no one-hots in phase 2


def test_phase_two_upload_does_not_depend_on_the_group_one_hots():
    plans = plans_for(z=1.0)
    vectors, _ = client_vectors(1)
    other = vectors.copy()
    hots = other[0, DELTA : DELTA + COUNT].reshape(BLOCKS, GROUPS)
    other[0, DELTA : DELTA + COUNT] = np.roll(hots, 1, axis=1).reshape(-1)  # another group in every block
    assert not np.array_equal(other, vectors)
    a = update_upload(plans, vectors, rotation_seed=1, rng=np.random.default_rng(9))
    b = update_upload(plans, other, rotation_seed=1, rng=np.random.default_rng(9))
    assert np.array_equal(a, b)  # the phase-2 residues carry no trace of the group
    hots_a, hots_b = vectors[:, DELTA : DELTA + COUNT], other[:, DELTA : DELTA + COUNT]
    assert not np.array_equal(
        counts_upload(plans, hots_a, rotation_seed=1, rng=np.random.default_rng(9)),
        counts_upload(plans, hots_b, rotation_seed=1, rng=np.random.default_rng(9)),
    )


def test_phase_two_count_coordinates_are_zero_before_noise_and_noised_after():
    n, clip = 60, 0.5
    vectors, hots = client_vectors(n, clip=clip)
    assert hots.sum(0).min() > 0  # the true group counts are far from zero
    quiet = plans_for(z=0.0, n=n, clip=clip, dp_mode="off")
    total = decode_sum(
        quiet.update,
        ring_sum(update_upload(quiet, vectors, rotation_seed=2, rng=secure_generator()), 48),
        survivors=n,
        rotation_seed=2,
    )
    assert np.abs(total[DELTA : DELTA + COUNT]).max() < 1e-6  # no group information at all
    z = 2.0
    noisy = plans_for(z=z, n=n, clip=clip)
    stds = []
    for seed in range(40):  # 40 rounds x 6 count coordinates
        total = decode_sum(
            noisy.update,
            ring_sum(update_upload(noisy, vectors, rotation_seed=seed, rng=secure_generator()), 48),
            survivors=n,
            rotation_seed=seed,
        )
        stds.append(total[DELTA:])  # one-hot coordinates and the example count: pure noise / noise + count
    noise = np.array(stds)[:, :COUNT]
    assert abs(noise.std() / (z * clip) - 1.0) < 0.15  # 240 draws: noise of std z*C, centred on 0, not on the counts
    assert abs(noise.mean()) < 4 * z * clip / math.sqrt(noise.size)
    example = np.array(stds)[:, -1] - vectors[:, -1].sum()
    assert abs(example.std() / (z * clip) - 1.0) < 0.35 and example.std() > 0  # the example count is noised


# ------------------------------------------------------------------ decode(sum of uploads) ~ true sum


@pytest.mark.parametrize("mechanism", ["discrete_gaussian", "skellam"])
def test_decoded_sum_of_uploads_is_the_true_clipped_sum(mechanism):
    n, clip = 50, 0.5
    vectors, hots = client_vectors(n, seed=4, clip=clip)
    expected = clipped(vectors, clip).sum(0)
    expected[DELTA : DELTA + COUNT] = 0.0
    quiet = plans_for(z=0.0, n=n, clip=clip, mechanism=mechanism, dp_mode="off")
    exact = decode_sum(
        quiet.update,
        ring_sum(update_upload(quiet, vectors, rotation_seed=7, rng=secure_generator()), 48),
        survivors=n,
        rotation_seed=7,
    )
    np.testing.assert_allclose(exact, expected, atol=1e-6, rtol=0)
    assert np.array_equal(
        decode_counts(
            quiet,
            ring_sum(counts_upload(quiet, hots, rotation_seed=8, rng=secure_generator()), 48),
            survivors=n,
            rotation_seed=8,
        ),
        hots.sum(0).reshape(BLOCKS, GROUPS),
    )
    z = 1.5
    plans = plans_for(z=z, n=n, clip=clip, mechanism=mechanism)
    total = decode_sum(
        plans.update,
        ring_sum(update_upload(plans, vectors, rotation_seed=7, rng=secure_generator()), 48),
        survivors=n,
        rotation_seed=7,
    )
    residual = total - expected  # (307,) the noise of the sum
    assert abs(residual.std() / (z * clip) - 1.0) < 0.15
    with pytest.raises(PrivacyError, match="n_min"):
        decode_sum(
            plans.update,
            ring_sum(update_upload(plans, vectors[:49], rotation_seed=7, rng=secure_generator()), 48),
            survivors=49,
            rotation_seed=7,
        )


def test_secure_aggregation_without_dp_has_no_noise_share():
    plans = plans_for(z=0.0, dp_mode="off")
    assert plans.update.share_variance == 0.0 and plans.counts.share_variance == 0.0
    assert plans.dp_mode == "off"
    # each phase keeps guard_bits(its padded length) of headroom for the range check
    assert plans.update_max_abs == ((1 << 47) - 1) // (40 << guard_bits(plans.update.padded_dim))
    assert plans.counts_max_abs == ((1 << 47) - 1) // (40 << guard_bits(plans.counts.padded_dim))


# ------------------------------------------------------------------ the generator


def test_secure_generator_ignores_every_seed():
    np.random.seed(0)
    a = secure_generator().integers(0, 2**63, size=4)
    np.random.seed(0)
    b = secure_generator().integers(0, 2**63, size=4)
    assert isinstance(secure_generator(), np.random.Generator)
    assert not np.array_equal(a, b)


# ------------------------------------------------------------------ refused settings


@pytest.mark.parametrize(
    "changes,error,needle",
    [
        (dict(n_clients=2, n_min=2), ConfigError, "at least 3 participants"),
        (dict(n_min=41), ConfigError, "n_min=41"),
        (dict(n_min=0), ConfigError, "n_min"),
        (dict(dp_mode="local"), ConfigError, "local DP has no secure sum"),
        (dict(dp_mode="off"), ConfigError, "dp_mode='off' adds no noise"),
        (dict(mechanism="gaussian"), ConfigError, "mechanism"),
        (dict(clip=0.0), ConfigError, "clip"),
        (dict(noise_multiplier=-1.0), ConfigError, "noise_multiplier"),
        (dict(modulus_bits=6), ConfigError, "modulus"),
        (dict(modulus_bits=63), ConfigError, "modulus_bits"),
        (dict(count_cap=0), ConfigError, "count_cap"),
        (dict(num_blocks=0), ConfigError, "num_blocks"),
        (dict(modulus_bits=10), ConfigError, "modulus"),
        (dict(modulus_bits=16, noise_multiplier=0.001), PrivacyError, "1/2"),  # share too fine for the modulus
    ],
)
def test_impossible_settings_are_refused_by_name(changes, error, needle):
    base = dict(
        delta_size=DELTA,
        num_blocks=BLOCKS,
        num_groups=GROUPS,
        dp_mode="distributed",
        mechanism=None,
        clip=0.5,
        noise_multiplier=1.0,
        n_clients=40,
        n_min=40,
        modulus_bits=48,
        count_cap=20,
    )
    with pytest.raises(error, match=needle):
        secure_round_plans(**{**base, **changes})


def test_malformed_inputs_are_refused():
    plans = plans_for()
    vectors, hots = client_vectors(2)
    with pytest.raises(PrivacyError, match="0 or 1"):
        counts_upload(plans, hots * 2, rotation_seed=1, rng=secure_generator())
    two = hots.copy()
    two[0, :GROUPS] = 1.0
    with pytest.raises(PrivacyError, match="one 1 per block"):
        counts_upload(plans, two, rotation_seed=1, rng=secure_generator())
    raw = vectors.copy()
    raw[:, -1] = 17.0  # the raw example count, not min(count, cap) / cap
    with pytest.raises(PrivacyError, match="scaled_example_count"):
        update_upload(plans, raw, rotation_seed=1, rng=secure_generator())
    with pytest.raises(PrivacyError, match="shape"):
        update_upload(plans, vectors[:, :-1], rotation_seed=1, rng=secure_generator())
    bad = vectors.copy()
    bad[0, 3] = np.nan
    with pytest.raises(PrivacyError, match="non-finite"):
        update_upload(plans, bad, rotation_seed=1, rng=secure_generator())


def test_network_helpers_feed_the_shared_encoding():
    """The round package's helpers turn a RoundSpec and one trained user into inputs of the shared functions."""
    import dataclasses

    from mrff_secure.federation.client_update import build_global, initial_private, train_user
    from mrff_secure.round.encoding import plan_configs, round_plans
    from mrff_secure.round.participant import update_vectors
    from mrff_secure.round.spec import RoundSpec
    from mrff_secure.round.update_vector import UpdateLayout

    data = make_synthetic(num_users=6, num_items=30, min_interactions=4, max_interactions=8, maxlen=8, seed=2)
    config = ModelConfig(maxlen=8, num_groups=2, dropout=0.0)
    model, params = build_global(config, data, 0)
    layout = UpdateLayout.from_model(model)
    spec = RoundSpec(
        local_steps=1,
        optimizer="adam",
        lr=0.1,
        dp_mode="distributed",
        clip=0.5,
        noise_multiplier=1.0,
        min_survivors=5,
        min_group_size=5,
        mechanism="discrete_gaussian",
        count_cap=8,
        modulus_bits=48,
    )
    fractions = torch.full((layout.num_blocks, 2), 0.5)
    update = train_user(model, params, initial_private(model, data, config, 0, 1), data, 1, fractions, spec, config, 3)
    plans = round_plans(spec, layout, 6)
    assert plans.n_min == 5 and plans.count_cap == 8 and plans.size == layout.size
    vector = (
        update_vectors(
            layout,
            update.deltas,
            update.routes,
            update.num_examples,
            suppressed=torch.zeros(layout.num_blocks, 2, dtype=torch.bool),
            count_cap=plans.count_cap,
        )[0]
        .detach()
        .to(torch.float64)
        .numpy()
    )
    assert vector.shape == (layout.size,) and 0 < vector[-1] <= 1.0
    residues = update_upload(plans, vector, rotation_seed=1, rng=secure_generator())
    counts_config, update_config = plan_configs(plans, 6)
    assert residues.shape == (update_config.vector_length,)
    assert counts_config.vector_length == plans.counts.padded_dim and update_config.max_abs == plans.update_max_abs
    assert counts_config.max_abs == plans.counts_max_abs
    with pytest.raises(ConfigError, match="local DP"):
        round_plans(dataclasses.replace(spec, dp_mode="local"), layout, 6)

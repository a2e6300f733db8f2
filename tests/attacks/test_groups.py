"""Count differencing: with client sampling the server takes the rounds' group counts apart again
(exact where the participation matrix has full column rank), and not without sampling or under heavy
count noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks.groups import GroupRecorder, difference_counts, infer_groups
from mrff_secure.config import FederationConfig, ModelConfig
from mrff_secure.data import make_synthetic
from mrff_secure.federation.simulation import FederatedSimulation, ServerView
from mrff_secure.round.spec import ThreatModel

MODEL = ModelConfig(maxlen=12, attribute_dim=4, num_blocks=2, prediction_dims=(8,))


@pytest.fixture(scope="module")
def layout():
    data = make_synthetic(num_users=20, num_items=60, maxlen=12, min_interactions=5, max_interactions=8, seed=3)
    return FederatedSimulation(data, MODEL, FederationConfig(rounds=0)).layout


def _run(layout, *, users, rounds, fraction, count_noise=0.0, seed=0, skew=(0.55, 0.25, 0.15, 0.05)):
    """Feed a recorder the sum views of rounds where every user keeps one group per block (drawn with the
    shares `skew`): the truth through its transform, the (noisy) counts through on_round."""
    rng = np.random.default_rng(seed)
    groups, blocks = layout.num_groups, layout.num_blocks
    shares = np.asarray(skew[:groups]) / np.sum(skew[:groups])
    routes = rng.choice(groups, size=(users, blocks), p=shares)
    recorder = GroupRecorder(layout, users)
    for t in range(rounds):
        participants = np.flatnonzero(rng.random(users) < fraction)
        if participants.size == 0:
            participants = rng.choice(users, size=1)
        vectors = torch.zeros(participants.size, layout.size, dtype=torch.float64)
        one_hots = np.zeros((participants.size, blocks, groups))
        one_hots[np.arange(participants.size)[:, None], np.arange(blocks)[None], routes[participants]] = 1.0
        start = layout.delta_size
        vectors[:, start : start + layout.count_size] = torch.as_tensor(one_hots.reshape(participants.size, -1))
        recorder.transform(vectors, t, participants)
        counts = one_hots.sum(0) + count_noise * rng.standard_normal((blocks, groups))
        recorder.on_round(
            ServerView(
                round_index=t,
                participants=participants,
                layout=layout,
                group_counts=torch.as_tensor(counts),
                summed_update=torch.zeros(layout.size, dtype=torch.float64),
                individual_updates=None,
                threat_model=ThreatModel.SECAGG,
            )
        )
    return recorder


def test_noiseless_counts_with_sampling_give_every_group_exactly(layout):
    assert layout.num_groups >= 2
    recorder = _run(layout, users=20, rounds=80, fraction=0.3)
    took_part = np.zeros((80, 20))
    for t, (participants, _) in enumerate(recorder.counts):
        took_part[t, participants] = 1
    assert np.linalg.matrix_rank(took_part) == 20  # full column rank: least squares is exact
    result = infer_groups(recorder, 20)
    assert result["method"] == "count differencing" and result["count_differencing"]["fits"]
    assert result["accuracy"] == 1.0 and result["advantage"] > 0.2
    assert result["largest_group"]["accuracy"] < 0.9


def test_fewer_rounds_than_users_still_beats_the_majority(layout):
    result = infer_groups(_run(layout, users=100, rounds=30, fraction=0.1, seed=1), 100)
    assert result["method"] == "count differencing"
    assert result["advantage"] > 0.1


def test_full_participation_leaves_nothing_to_difference(layout):
    recorder = _run(layout, users=20, rounds=20, fraction=1.0)
    assert difference_counts(recorder) is None
    result = infer_groups(recorder, 20)
    assert result["method"] == "largest group" and not result["count_differencing"]["applicable"]
    assert result["accuracy"] == result["majority_baseline"] and result["advantage"] == 0.0


def test_heavy_count_noise_leaves_differencing_near_the_baseline(layout):
    result = infer_groups(_run(layout, users=20, rounds=80, fraction=0.3, count_noise=30.0), 20)
    differencing = result["count_differencing"]
    assert differencing["applicable"] and differencing["advantage"] < 0.05
    assert not differencing["fits"] and result["method"] == "largest group" and result["advantage"] < 0.05

"""The group-wise vector layout and the two-phase round, checked against a per-client loop."""

from __future__ import annotations

import numpy as np
import pytest

from mrff_secure.errors import ConfigError
from mrff_secure.secagg.encoding import InputRangeError
from mrff_secure.secagg.groupwise import VectorLayout, check_min_group_size, suppressed_groups, two_phase_round
from mrff_secure.secagg.inmemory import run_round
from mrff_secure.secagg.stages import Stage


def test_layout_build_and_split():
    layout = VectorLayout(d_shared=3, d_group=2, num_blocks=2, num_groups=3)
    assert layout.length == 3 + 2 * 3 * 2 + 2 * 3 + 1
    v = layout.build(np.array([1.0, 2.0, 3.0]), np.array([[10.0, 11.0], [20.0, 21.0]]), np.array([2, 0]), 7)
    shared, groups, counts, examples = layout.split(v)
    assert shared.tolist() == [1, 2, 3]
    assert groups[0].tolist() == [[0, 0], [0, 0], [10, 11]]
    assert groups[1].tolist() == [[20, 21], [0, 0], [0, 0]]
    assert counts.tolist() == [[0, 0, 1], [1, 0, 0]]
    assert examples == 7
    suppressed = np.array([[False, False, True], [False, False, False]])
    v2 = layout.build(np.zeros(3), np.array([[10.0, 11.0], [20.0, 21.0]]), np.array([2, 0]), 7, suppressed=suppressed)
    assert layout.split(v2)[1][0, 2].tolist() == [0, 0]
    assert layout.split(v2)[2].tolist() == counts.tolist()  # counts are unchanged


@pytest.mark.parametrize("bad", [
    lambda L: L.build(np.zeros(2), np.zeros((2, 2)), np.array([0, 0]), 1),
    lambda L: L.build(np.zeros(3), np.zeros((1, 2)), np.array([0, 0]), 1),
    lambda L: L.build(np.zeros(3), np.zeros((2, 2)), np.array([0, 3]), 1),
    lambda L: L.build(np.zeros(3), np.zeros((2, 2)), np.array([0, 0]), -1),
    lambda L: L.split(np.zeros(5)),
])
def test_layout_rejects_bad_shapes(bad):
    with pytest.raises(InputRangeError):
        bad(VectorLayout(3, 2, 2, 3))


def test_min_group_size_is_never_below_two():
    for bad in (1, 0, -3, 2.0):
        with pytest.raises(ConfigError):
            check_min_group_size(bad)  # type: ignore[arg-type]
    check_min_group_size(2)
    assert suppressed_groups(np.array([[0, 1, 4, 5]]), 5).tolist() == [[True, True, True, False]]


def _clients(n: int, layout: VectorLayout, seed: int):
    rng = np.random.default_rng(seed)
    return ({c: rng.uniform(-0.5, 0.5, layout.d_shared) for c in range(n)},
            {c: rng.uniform(-0.5, 0.5, (layout.num_blocks, layout.d_group)) for c in range(n)},
            {c: rng.choice(layout.num_groups, layout.num_blocks, p=[0.6, 0.3, 0.1] if layout.num_groups == 3 else None)
             for c in range(n)},
            {c: int(rng.integers(1, 40)) for c in range(n)})


def test_two_phase_round_matches_a_per_client_loop():
    n = 16
    layout = VectorLayout(d_shared=5, d_group=3, num_blocks=2, num_groups=3)
    shared, group, chosen, examples = _clients(n, layout, seed=4)
    levels = 2**14

    def secure_sum(config, phase, inputs):
        return run_round(config, round_id=1000 + phase, inputs=inputs).total

    result, suppressed = two_phase_round(
        layout, secure_sum, num_clients=n, shared_deltas=shared, group_deltas=group, chosen_groups=chosen,
        num_examples=examples, clip=1.0, levels=levels, max_examples=100, rng=np.random.default_rng(0),
        min_group_size=5)
    # reference: a plain loop over the clients
    counts = np.zeros((2, 3), dtype=np.int64)
    sums = np.zeros((2, 3, 3))
    for c in range(n):
        for b in range(2):
            counts[b, chosen[c][b]] += 1
    expected_suppressed = counts < 5
    for c in range(n):
        for b in range(2):
            g = chosen[c][b]
            if not expected_suppressed[b, g]:
                sums[b, g] += group[c][b]
    assert expected_suppressed.any() and not expected_suppressed.all()
    assert np.array_equal(suppressed, expected_suppressed)
    assert np.array_equal(result.group_counts, counts)
    assert result.example_count == sum(examples.values())
    tolerance = n / levels
    assert np.allclose(result.shared_sum, sum(shared.values()), atol=tolerance)
    assert np.allclose(result.group_sums, sums, atol=tolerance)
    assert np.all(result.group_sums[expected_suppressed] == 0)


def test_two_phase_round_with_dropouts_sums_the_survivors():
    n = 12
    layout = VectorLayout(d_shared=4, d_group=2, num_blocks=1, num_groups=2)
    shared, group, chosen, examples = _clients(n, layout, seed=6)

    def secure_sum(config, phase, inputs):
        return run_round(config, round_id=phase, inputs=inputs, dropouts={Stage.MASKED_INPUT: {3}}).total

    result, _ = two_phase_round(layout, secure_sum, num_clients=n, shared_deltas=shared, group_deltas=group,
                                chosen_groups=chosen, num_examples=examples, clip=1.0, levels=2**10,
                                max_examples=50, rng=np.random.default_rng(1), min_group_size=2)
    assert result.example_count == sum(v for c, v in examples.items() if c != 3)
    assert np.allclose(result.shared_sum, sum(v for c, v in shared.items() if c != 3), atol=n / 2**10)


def test_encode_refuses_counts_out_of_range():
    layout = VectorLayout(2, 1, 1, 2)
    v = layout.build(np.zeros(2), np.zeros((1, 1)), np.array([1]), 500)
    with pytest.raises(InputRangeError, match="count part"):
        layout.encode(v, clip=1.0, levels=8, max_examples=100, rng=np.random.default_rng(0))

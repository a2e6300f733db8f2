"""Shamir sharing: known-answer vectors, recovery from any t shares, secrecy of t - 1."""

from __future__ import annotations

import itertools
import os
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrff_secure.errors import SecAggError
from mrff_secure.secagg import primitives, shamir


def _share(item: dict) -> shamir.Share:
    return shamir.Share(item["x"], bytes.fromhex(item["value"]))


def test_known_answer_generate(vectors):
    for case in vectors("shamir")["generate"]:
        shares = shamir.split(
            bytes.fromhex(case["secret"]),
            case["n"],
            case["t"],
            random=primitives.keystream_random(bytes.fromhex(case["seed"])),
        )
        assert [{"x": s.x, "value": s.value.hex()} for s in shares] == case["shares"]


def test_known_answer_verify(vectors):
    for case in vectors("shamir")["verify"]:
        assert shamir.combine([_share(s) for s in case["shares"]], case["t"]).hex() == case["secret"]


def test_known_answer_invalid(vectors):
    for case in vectors("shamir")["invalid"]:
        with pytest.raises(SecAggError):
            shamir.combine([_share(s) for s in case["shares"]], case["t"])


@settings(max_examples=40, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), n=st.integers(1, 12), data=st.data())
def test_any_t_shares_recover(secret, n, data):
    t = data.draw(st.integers(1, n))
    shares = shamir.split(secret, n, t)
    subset = data.draw(st.permutations(shares))[:t]
    assert shamir.combine(subset, t) == secret
    # more than t given: the first t are used
    assert shamir.combine(data.draw(st.permutations(shares)), t) == secret


def test_all_subsets_recover_small():
    secret = os.urandom(32)
    shares = shamir.split(secret, 6, 3)
    for subset in itertools.combinations(shares, 3):
        assert shamir.combine(list(subset), 3) == secret


def _interpolate(points: list[tuple[int, np.ndarray]], at: int) -> np.ndarray:
    """Reference Lagrange interpolation with Python ints (independent of the module's code)."""
    p = shamir.PRIME
    total = np.zeros(shamir.NUM_LIMBS, dtype=object)
    for i, (xi, yi) in enumerate(points):
        weight = 1
        for j, (xj, _) in enumerate(points):
            if j != i:
                weight = weight * (at - xj) * pow(xi - xj, p - 2, p) % p
        total = (total + weight * yi.astype(object)) % p
    return total


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 10), data=st.data())
def test_t_minus_one_shares_reveal_nothing(n, data):
    """Any t - 1 shares are consistent with every secret: for a different secret there is a
    degree t - 1 polynomial through those same shares. Combining t - 1 gives an unrelated value."""
    t = data.draw(st.integers(2, n))
    secret, other = os.urandom(32), os.urandom(32)
    shares = shamir.split(secret, n, t)
    seen = data.draw(st.permutations(shares))[: t - 1]
    other_limbs = shamir._secret_to_limbs(other)
    points = [(0, other_limbs)] + [(s.x, s.elements()) for s in seen]
    # the polynomial through (0, other) and the seen shares reproduces every seen share
    for s in seen:
        assert np.array_equal(_interpolate(points, s.x).astype(np.uint64), s.elements())
    if t - 1 >= 1:
        try:
            assert shamir.combine(seen, t - 1) != secret
        except SecAggError:
            pass  # not even a well-formed secret


def test_t_minus_one_values_are_uniform():
    """A single share of a fixed secret (t = 2) is uniform over the field: chi-square over 16 bins."""
    secret = bytes(32)
    draws = np.concatenate([shamir.split(secret, 2, 2)[0].elements() for _ in range(400)])  # 4400 elements
    counts = np.bincount((draws * 16 // shamir.PRIME).astype(np.int64), minlength=16)
    expected = draws.size / 16
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 37.7  # 15 dof, p = 0.001


def test_split_many_matches_split_semantics():
    secrets = [os.urandom(32), os.urandom(32)]
    table = shamir.split_many(secrets, [3, 9, 11, 20], 3)
    for j, secret in enumerate(secrets):
        column = [row[j] for row in table]
        assert [s.x for s in column] == [3, 9, 11, 20]
        assert shamir.combine(random.sample(column, 3), 3) == secret


@pytest.mark.parametrize(
    "bad",
    [
        lambda: shamir.split(bytes(31), 3, 2),
        lambda: shamir.split(bytes(32), 3, 4),
        lambda: shamir.split(bytes(32), 3, 0),
        lambda: shamir.split(bytes(32), 3, 2, xs=[1, 1, 2]),
        lambda: shamir.split(bytes(32), 3, 2, xs=[0, 1, 2]),
        lambda: shamir.Share(0, bytes(44)),
        lambda: shamir.Share(1, bytes(43)),
    ],
)
def test_invalid_inputs_raise(bad):
    with pytest.raises(SecAggError):
        bad()


def test_speed_n100_t51():
    """The target is <= 20 ms each way; allow slack for a loaded CI machine."""
    import time

    secret = os.urandom(32)
    start = time.perf_counter()
    shares = shamir.split(secret, 100, 51)
    split_s = time.perf_counter() - start
    start = time.perf_counter()
    assert shamir.combine(shares[49:], 51) == secret
    combine_s = time.perf_counter() - start
    assert split_s < 0.2 and combine_s < 0.2

"""k and t sized for a corrupt fraction (sizing.py, W16 of the security review): the exact
probabilities against brute-force counts and the real graph-drawing code, graph_for's bounds and
minimality, and the client's policy refusing today's weaker defaults at n = 1,791."""

from __future__ import annotations

import hashlib
import math
from fractions import Fraction
from itertools import combinations, permutations

import pytest

from mrff_secure.errors import ConfigError
from mrff_secure.round.inmemory import make_identities
from mrff_secure.secagg.config import SecAggConfig, default_graph, default_threshold
from mrff_secure.secagg.context import SessionContext
from mrff_secure.secagg.graph import neighbour_graph, neighbours_of
from mrff_secure.secagg.policy import PolicyViolation, SecAggPolicy
from mrff_secure.secagg.sizing import (
    degree_counts,
    dropout_failure_probability,
    fraction_count,
    graph_for,
    split_view_probability,
    within_bound,
)
from mrff_secure.secagg.stages import Stage

# --- the exact probabilities against brute force -----------------------------------------------


def _seed(label: bytes) -> bytes:
    return hashlib.sha256(label).digest()


def _over_all_orderings(n: int, k: int, marked: set[int]) -> dict[tuple[int, int], int]:
    """{(degree, marked neighbours): how many of the n! ring orderings give client 0 that}, from the
    graph graph.py builds, relabelled by every permutation (each ordering of the ring once)."""
    base = neighbour_graph(_seed(b"any seed"), range(n), k)
    counts: dict[tuple[int, int], int] = {}
    for sigma in permutations(range(n)):
        position = sigma.index(0)  # client 0 takes the place of base client `position`
        neighbours = {sigma[v] for v in base[position]}
        key = (len(neighbours), len(neighbours & marked))
        counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.mark.parametrize("n", [5, 6, 7])
def test_probabilities_equal_a_count_over_every_ring_ordering(n):
    """Every k, t and number of marked (corrupt or dropped) others, at odd and even n: the exact
    probability equals the share of all n! orderings of graph.py's ring that open a split view on
    (or starve) client 0. Odd k at odd n gives one client k - 1 neighbours; the count sees that."""
    orderings = math.factorial(n)
    for k in range(2, n):
        for marked_count in range(0, n):
            counts = _over_all_orderings(n, k, set(range(1, marked_count + 1)))
            for t in range(1, k + 1):
                split = sum(c for (d, m), c in counts.items() if m >= 2 * t - d)
                starved = sum(c for (d, m), c in counts.items() if d - m < t)
                assert split_view_probability(n, k, t, marked_count) == Fraction(split, orderings), (k, t)
                assert dropout_failure_probability(n, k, t, marked_count) == Fraction(starved, orderings), (k, t)


def test_split_view_equals_a_count_over_every_neighbour_subset():
    """At even n every client has exactly k neighbours, a uniform k-subset of the n - 1 others:
    the probability is the share of all k-subsets with at least 2t - k corrupt members."""
    n, corrupt = 14, 4
    for k in range(2, n - 1):
        subsets = list(combinations(range(1, n), k))
        for t in range(k // 2 + 1, k + 1):
            opened = sum(1 for s in subsets if sum(1 for v in s if v <= corrupt) >= 2 * t - k)
            assert split_view_probability(n, k, t, corrupt) == Fraction(opened, len(subsets))


def test_degree_counts_match_the_drawn_graph():
    for n in range(3, 24):
        for k in range(1, n + 2):
            drawn = neighbour_graph(_seed(b"degrees %d %d" % (n, k)), range(n), k)
            observed: dict[int, int] = {}
            for neighbours in drawn.values():
                observed[len(neighbours)] = observed.get(len(neighbours), 0) + 1
            assert degree_counts(n, k) == observed, (n, k)


def test_monte_carlo_over_the_real_graph_drawing_code():
    """n = 61 and k = 11 (both odd): 4,000 graphs drawn by graph.py from seeds; client 0 honest, 1..12
    corrupt, 13..24 dropped. The empirical rates agree with the exact values within 4.5 binomial
    standard errors (a fixed seed list, so the test is deterministic)."""
    n, k, t, draws = 61, 11, 7, 4000
    corrupt, dropped = set(range(1, 13)), set(range(13, 25))
    split = starved = 0
    for i in range(draws):
        neighbours = set(neighbours_of(_seed(b"monte carlo %d" % i), range(n), k, 0))
        split += len(neighbours & corrupt) >= 2 * t - len(neighbours)
        starved += len(neighbours - dropped) < t
    for hits, exact in (
        (split, split_view_probability(n, k, t, len(corrupt))),
        (starved, dropout_failure_probability(n, k, t, len(dropped))),
    ):
        p = float(exact)
        assert 0.02 < p < 0.98  # the case is informative: neither rate is near 0 or 1
        standard_error = math.sqrt(p * (1 - p) / draws)
        assert abs(hits / draws - p) <= 4.5 * standard_error, (hits / draws, p)


def test_monotone_in_threshold_and_marked_count():
    n = 41
    for k in (6, 9, 16):
        for t in range(k // 2 + 1, k):
            for c in range(0, 20):
                assert split_view_probability(n, k, t + 1, c) <= split_view_probability(n, k, t, c)
                assert split_view_probability(n, k, t, c + 1) >= split_view_probability(n, k, t, c)
                assert dropout_failure_probability(n, k, t + 1, c) >= dropout_failure_probability(n, k, t, c)
                assert dropout_failure_probability(n, k, t, c + 1) >= dropout_failure_probability(n, k, t, c)
    # the complete graph: every corrupt client is a neighbour, the answer is 0 or 1
    assert split_view_probability(10, 9, 6, 2) == 0 and split_view_probability(10, 9, 5, 1) == 1


def test_bad_arguments_are_refused_by_name():
    with pytest.raises(ConfigError, match="threshold"):
        split_view_probability(10, 4, 5, 1)
    with pytest.raises(ConfigError, match="num_neighbours"):
        split_view_probability(10, 10, 5, 1)
    with pytest.raises(ConfigError, match="corrupt"):
        split_view_probability(10, 4, 3, 10)
    with pytest.raises(ConfigError, match="dropped"):
        dropout_failure_probability(10, 4, 3, -1)
    with pytest.raises(ConfigError, match="fraction"):
        fraction_count(10, 1.5)


def test_fraction_count_reads_the_fraction_as_written():
    assert fraction_count(20, 0.05) == 1  # exactly 1, though 0.05 as a binary float is above 1/20
    assert fraction_count(19, 0.05) == 0
    assert fraction_count(1791, 0.05) == 89  # floor(89.55)
    assert fraction_count(10, 1.0) == 9  # never more than the n - 1 others


# --- the review's numbers ------------------------------------------------------------------------


def test_todays_defaults_at_1791_clients_reproduce_the_review():
    """Before this change k = 2 ceil(log2 n) = 22 and t = 13 at n = 1,791. With 5% colluders (90 of
    the others, as the review counted) each honest client is open to a split view with p = 0.022,
    about 37 of the 1,701 honest clients per round (review W16)."""
    n = 1791
    k = 2 * math.ceil(math.log2(n))
    t = SecAggConfig(num_clients=n, vector_length=1, max_abs=1, num_neighbours=k).t
    assert (k, t) == (22, 13)
    p = split_view_probability(n, k, t, 90)
    assert abs(float(p) - 0.022) < 0.0005
    assert round(float(p) * (n - 90)) == 37
    # the policy's own count, floor(0.05 n) = 89: the same order
    assert 0.020 < float(split_view_probability(n, k, t, fraction_count(n, 0.05))) < 0.022


# --- graph_for -------------------------------------------------------------------------------------


def _meets(n: int, k: int, t: int, corrupt: int, dropped: int, c_max: int = 2) -> bool:
    return (
        k // 2 < t <= (k - 1 if k >= 3 else k)
        and 2 * t - k > c_max
        and within_bound(n, split_view_probability(n, k, t, corrupt), 40)
        and within_bound(n, dropout_failure_probability(n, k, t, dropped), 20)
    )


@pytest.mark.parametrize("n", [6, 10, 100, 1000, 1791])
def test_graph_for_meets_its_bounds_with_the_smallest_k(n):
    k, t = graph_for(n, 0.05, 0.1)
    corrupt, dropped = fraction_count(n, 0.05), fraction_count(n, 0.1)
    assert _meets(n, k, t, corrupt, dropped)
    assert not any(_meets(n, k, smaller, corrupt, dropped) for smaller in range(1, t))  # the smallest t
    for fewer in range(2, k):  # no smaller k, with any t
        assert not any(_meets(n, fewer, s, corrupt, dropped) for s in range(1, fewer + 1)), fewer


def test_graph_for_grows_with_the_corrupt_fraction_and_the_bits():
    n = 1000
    assert graph_for(n, 0.01, 0.1)[0] < graph_for(n, 0.05, 0.1)[0] < graph_for(n, 0.1, 0.1)[0]
    assert graph_for(n, 0.05, 0.1, security_bits=20)[0] < graph_for(n, 0.05, 0.1)[0]
    assert graph_for(n, 0.05, 0.01)[0] < graph_for(n, 0.05, 0.1)[0]


def test_graph_for_small_n_is_the_complete_graph_with_the_absolute_rule():
    assert graph_for(6) == (5, 4)  # 2t - k = 3 > c_max = 2; one dropout of 5 leaves 4 = t
    for n in (3, 4, 5):  # c_max = 2 needs t = k <= 4: no neighbour may drop
        with pytest.raises(ConfigError, match=f"{n} clients.*corrupt_neighbours=2"):
            graph_for(n)
        assert default_graph(n)[0] == n - 1  # the config falls back; the client's policy judges


def test_graph_for_refuses_impossible_fractions_by_name():
    with pytest.raises(
        ConfigError, match=r"200 clients.*corrupt_fraction=0\.4 .*dropout_fraction=0\.3.*t >= 140.*t <= 139"
    ):
        graph_for(200, 0.4, 0.3)


def test_server_default_is_graph_for_with_the_old_degree_as_a_floor():
    """default_graph = graph_for with k >= min(n - 1, 2 ceil(log2 n)): unchanged up to 40 clients
    (where the fractions round to one colluder or none), graph_for's smallest k from 50 on."""
    for n in range(6, 41):
        old_k = min(n - 1, 2 * math.ceil(math.log2(n)))
        assert default_graph(n) == (old_k, default_threshold(old_k)), n
    for n in (50, 100, 1791, 10000):
        assert graph_for(n)[0] > 2 * math.ceil(math.log2(n))
        assert default_graph(n) == graph_for(n)
        config = SecAggConfig(num_clients=n, vector_length=4, max_abs=1)
        assert (config.k, config.t) == graph_for(n)
    # the floor is the smallest k at or above it that meets the bounds, with the smallest t there
    k, t = graph_for(1000, min_neighbours=90)
    assert k == 90 and t == min(s for s in range(46, 90) if _meets(1000, 90, s, 50, 100))


# --- the client's policy ---------------------------------------------------------------------------


def test_policy_refuses_todays_weaker_defaults_at_1791_clients():
    """A real ClientSession with the default policy (5% corrupt, 40 bits) refuses the old (22, 13)
    before it makes a key, naming k, t, n and the probability, and accepts graph_for's (k, t)."""
    ids = make_identities([0])
    context = SessionContext.fresh(round_id=1)
    n = 1791
    old = SecAggConfig(num_clients=n, vector_length=2, max_abs=10, num_neighbours=22, threshold=13)
    with pytest.raises(PolicyViolation, match=r"k=22 .*t=13 .*n=1791.*probability 0\.021"):
        ids.session(old, context, 0, SecAggPolicy())
    new = SecAggConfig(num_clients=n, vector_length=2, max_abs=10)
    assert ids.session(new, context, 0, SecAggPolicy()).stage is Stage.ADVERTISE_KEYS
    # the absolute rule alone (no fraction) accepts the old graph: the fraction check is what refuses
    assert ids.session(old, context, 0, SecAggPolicy(corrupt_fraction=0.0)).stage is Stage.ADVERTISE_KEYS


def test_policy_bound_is_graph_fors_bound():
    """The policy accepts exactly the (k, t) whose union bound over n is within 2^-security_bits:
    graph_for's (k, t) passes, and one less threshold (more split views) at that k fails."""
    for n in (100, 1000, 1791):
        k, t = graph_for(n)
        policy = SecAggPolicy()
        policy.check_graph(n, k, t)
        refused = not within_bound(n, split_view_probability(n, k, t - 1, fraction_count(n, 0.05)), 40)
        if refused:
            with pytest.raises(PolicyViolation, match=f"k={k} neighbours and threshold t={t - 1} among n={n}"):
                policy.check_graph(n, k, t - 1)
        else:
            policy.check_graph(n, k, t - 1)  # t - 1 failed graph_for's liveness or c_max rule instead


def test_policy_stricter_fraction_or_bits_refuses_more():
    n = 1000
    k, t = graph_for(n)
    with pytest.raises(PolicyViolation, match="corrupt_fraction=0.1"):
        SecAggPolicy(corrupt_fraction=0.1).check_graph(n, k, t)
    with pytest.raises(PolicyViolation, match="2\\^-80"):
        SecAggPolicy(security_bits=80).check_graph(n, k, t)
    SecAggPolicy(corrupt_fraction=0.01).check_graph(n, k, t)


def test_policy_fields_are_checked():
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ConfigError, match="corrupt_fraction"):
            SecAggPolicy(corrupt_fraction=bad)
    with pytest.raises(ConfigError, match="security_bits"):
        SecAggPolicy(security_bits=-1)
    # the keyword arguments the client policy passes still work
    policy = SecAggPolicy(min_participants=4, min_neighbours=3, corrupt_neighbours=1, min_survivors=4)
    assert (policy.corrupt_fraction, policy.security_bits) == (0.05, 40)


def test_fewer_participants_than_k_plus_one_is_the_complete_graph():
    """k >= n - 1 draws the complete graph: every one of floor(0.05 n) corrupt clients is a neighbour."""
    policy = SecAggPolicy()
    policy.check_graph(40, 60, 22)  # 39 neighbours, 2 corrupt: 2t - 39 = 5 > 2
    with pytest.raises(PolicyViolation, match="probability 1"):
        policy.check_graph(40, 60, 20)  # 2t - 39 = 1 <= 2 corrupt neighbours: always open

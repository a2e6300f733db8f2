"""Neighbour count k and threshold t sized for a stated corrupt fraction and dropout fraction.

SecAgg+ (Bell et al., CCS 2020) joins each client to k neighbours and shares its two secrets t-of-k
among them. Two things must then hold for every client, with probability over the random graph:

- privacy: a server colluding with c of a client's neighbours unmasks it by a split view (two
  disjoint groups of honest neighbours shown different survivor lists) iff c >= 2t - k (policy.py);
- liveness: at least t of the client's neighbours survive to the unmask stage, or the round aborts.

How graph.py draws neighbours: a uniformly random ordering of the n clients (a keystream from a
seed fixed after the participants, modelled as uniform), each client joined to the clients at fixed
ring offsets from its own position. For one client the other n - 1 clients fill the other n - 1
positions uniformly at random, so its neighbours are a uniformly random d-subset of them, d its
degree: k for every client, except that one client (at a uniformly random position) has k - 1 when
k and n are both odd, and every client has n - 1 when k >= n - 1. The number of corrupt (or dropped)
neighbours is therefore hypergeometric, and the probabilities below are exact mixtures over the
degree, computed with integers and fractions (no floating point, no simulation).

The counts: a fraction f of the n clients is floor(f n) of them (at most n - 1), all possibly among
one client's n - 1 others, with f taken as the decimal it is written as (0.05 x 20 is exactly 1).

Bounds are union bounds over the n clients: n x (per-client probability) <= 2^-bits. Each graph
draw is one chance: a server that aborts and re-runs sessions draws r graphs and gets r times the
bound (W16 of the security review: clients should count aborted sessions). Only the split view is
bounded here; the honest-survivor subgraph staying connected (else the server learns a component's
partial sum) is not.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache

from mrff_secure.checks import check_int, check_number
from mrff_secure.errors import ConfigError

DEFAULT_CORRUPT_NEIGHBOURS = 2
"""c_max of the default policy: the corrupt neighbours (sybils, colluders) a client withstands
whatever the fraction (the absolute rule that covers small n, where a fraction rounds to 1)."""

DEFAULT_CORRUPT_FRACTION = 0.05
"""The fraction of clients assumed to collude with the server (sybils included)."""

DEFAULT_DROPOUT_FRACTION = 0.1
"""The fraction of clients assumed to drop out between the key exchange and the unmask stage."""

DEFAULT_SECURITY_BITS = 40
"""A split view on any client in one graph draw has probability <= 2^-40: the statistical security
parameter this project uses elsewhere (the output range check, config.RANGE_CHECK_SECURITY_BITS)."""

DEFAULT_LIVENESS_BITS = 20
"""A round aborts for lack of surviving neighbours with probability <= 2^-20 (one round in a
million): an abort costs a retry, not privacy, so a weaker bound than privacy's keeps k smaller."""


def fraction_count(num_clients: int, fraction: float) -> int:
    """floor(fraction x n), at most n - 1: the most clients a fraction of n covers, all of them
    possibly among one client's n - 1 others.

    The fraction is read as the decimal it is written as (repr), so 0.05 x 20 is exactly 1. Rounding
    down keeps the fraction an upper bound (|C| <= f n); a fixed small number of colluders, which a
    fraction of a small n rounds to 0, is the absolute rule's job (corrupt_neighbours, c_max).
    """
    check_int("num_clients", num_clients, low=2)
    check_number("fraction", fraction, low=0.0, high=1.0)
    return min(num_clients - 1, math.floor(Fraction(repr(float(fraction))) * num_clients))


def degree_counts(num_clients: int, num_neighbours: int) -> dict[int, int]:
    """{degree: number of clients with it} of the graph graph.py draws with k = num_neighbours."""
    n, k = num_clients, num_neighbours
    check_int("num_clients", n, low=2)
    check_int(f"num_neighbours (of {n} clients)", k, low=1)
    if k >= n - 1:
        return {n - 1: n}
    if k % 2 == 1 and n % 2 == 1:
        return {k: n - 1, k - 1: 1}
    return {k: n}


def _tail(others: int, marked: int, degree: int, at_least: int) -> Fraction:
    """P(X >= at_least), X ~ Hypergeometric(others clients, `marked` of them marked, `degree` drawn)."""
    low = max(at_least, 0, degree - (others - marked))
    high = min(degree, marked)
    favourable = sum(math.comb(marked, x) * math.comb(others - marked, degree - x) for x in range(low, high + 1))
    return Fraction(favourable, math.comb(others, degree))


def _check(num_clients: int, num_neighbours: int, threshold: int, marked: int, what: str) -> None:
    check_int("num_clients", num_clients, low=2)
    check_int(f"num_neighbours (of {num_clients} clients)", num_neighbours, low=1, high=num_clients - 1)
    check_int(f"threshold (of {num_neighbours} neighbours)", threshold, low=1, high=num_neighbours)
    check_int(f"{what} (of the {num_clients - 1} other clients)", marked, low=0, high=num_clients - 1)


def split_view_probability(num_clients: int, num_neighbours: int, threshold: int, corrupt: int) -> Fraction:
    """The probability that one honest client has at least 2t - d corrupt neighbours (d its degree),
    so that a server colluding with them can unmask it by a split view, when `corrupt` of the other
    n - 1 clients are corrupt and the graph is drawn as graph.py draws it (exact)."""
    _check(num_clients, num_neighbours, threshold, corrupt, "corrupt")
    others = num_clients - 1
    total = Fraction(0)
    for degree, count in degree_counts(num_clients, num_neighbours).items():
        total += count * _tail(others, corrupt, degree, 2 * threshold - degree)
    return total / num_clients


def dropout_failure_probability(num_clients: int, num_neighbours: int, threshold: int, dropped: int) -> Fraction:
    """The probability that fewer than t of one client's neighbours survive (its secret cannot be
    rebuilt, the round aborts), when `dropped` of the other n - 1 clients drop out, a set independent
    of the graph, and the graph is drawn as graph.py draws it (exact)."""
    _check(num_clients, num_neighbours, threshold, dropped, "dropped")
    others = num_clients - 1
    total = Fraction(0)
    for degree, count in degree_counts(num_clients, num_neighbours).items():
        # fewer than t survivors among d neighbours <=> more than d - t of them dropped
        total += count * _tail(others, dropped, degree, degree - threshold + 1)
    return total / num_clients


def within_bound(num_clients: int, probability: Fraction, bits: int) -> bool:
    """The union bound over the n clients: n x probability <= 2^-bits."""
    return num_clients * probability * (1 << bits) <= 1


@lru_cache(maxsize=256)
def graph_for(
    num_clients: int,
    corrupt_fraction: float = DEFAULT_CORRUPT_FRACTION,
    dropout_fraction: float = DEFAULT_DROPOUT_FRACTION,
    *,
    security_bits: int = DEFAULT_SECURITY_BITS,
    liveness_bits: int = DEFAULT_LIVENESS_BITS,
    corrupt_neighbours: int = DEFAULT_CORRUPT_NEIGHBOURS,
    min_neighbours: int = 2,
) -> tuple[int, int]:
    """The smallest k >= min_neighbours, and with it the smallest t, such that with
    c = fraction_count(n, corrupt_fraction) corrupt and m = fraction_count(n, dropout_fraction) dropped

        n x split_view_probability(n, k, t, c) <= 2^-security_bits,
        n x dropout_failure_probability(n, k, t, m) <= 2^-liveness_bits,
        2t - k > corrupt_neighbours (the absolute c_max rule of policy.py),
        k // 2 < t <= k - 1 (t <= k for k = 2): every client survives one neighbour's dropout.

    The smallest t leaves the most room for dropouts beyond the stated fraction. Where no k < n - 1
    qualifies (small n) this is the complete graph k = n - 1, where every corrupt client is a
    neighbour and t is the smallest with 2t - k > max(c, corrupt_neighbours). Raises ConfigError,
    naming the parameters, where no (k, t) meets all of these (n <= 5 with the defaults: c_max = 2
    needs t = k among k <= 4 neighbours).
    """
    n = check_int("num_clients", num_clients, low=3)
    check_int("security_bits", security_bits, low=0)
    check_int("liveness_bits", liveness_bits, low=0)
    check_int("corrupt_neighbours", corrupt_neighbours, low=0)
    check_int("min_neighbours", min_neighbours, low=0)
    corrupt = fraction_count(n, corrupt_fraction)
    dropped = fraction_count(n, dropout_fraction)
    for k in range(min(max(2, min_neighbours), n - 1), n):
        cap = k - 1 if k >= 3 else k
        for t in range(max(k // 2 + 1, threshold_for(k, corrupt_neighbours)), cap + 1):
            if not within_bound(n, split_view_probability(n, k, t, corrupt), security_bits):
                continue  # a larger t lowers the split-view probability
            if within_bound(n, dropout_failure_probability(n, k, t, dropped), liveness_bits):
                return k, t
            break  # a larger t only raises the liveness failure
    raise ConfigError(
        f"no neighbour count k and threshold t for {n} clients meet both bounds: corrupt_fraction="
        f"{corrupt_fraction} ({corrupt} of the {n - 1} others) with split views <= 2^-{security_bits}, "
        f"corrupt_neighbours={corrupt_neighbours}, and dropout_fraction={dropout_fraction} ({dropped} others) "
        f"with aborts <= 2^-{liveness_bits}; even the complete graph (k = {n - 1}) needs "
        f"t >= {threshold_for(n - 1, max(corrupt, corrupt_neighbours))} for privacy but "
        f"t <= {min(n - 1 - dropped, n - 2 if n >= 4 else n - 1)} for liveness"
    )


def threshold_for(num_neighbours: int, corrupt_neighbours: int) -> int:
    """The smallest t with 2t - k > c_max (see policy.py for why)."""
    return (num_neighbours + corrupt_neighbours) // 2 + 1

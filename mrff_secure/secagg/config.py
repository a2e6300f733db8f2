"""The one configuration object of secure aggregation, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass

from mrff_secure.checks import check_int
from mrff_secure.errors import ConfigError
from mrff_secure.secagg.sizing import DEFAULT_CORRUPT_NEIGHBOURS as DEFAULT_CORRUPT_NEIGHBOURS
from mrff_secure.secagg.sizing import graph_for
from mrff_secure.secagg.sizing import threshold_for as threshold_for

MAX_MODULUS_BITS = 62
MAX_CLIENT_ID = 2**31 - 3
"""Client ids are Shamir x-coordinates minus one in the field GF(2^31 - 1)."""


def default_graph(num_clients: int) -> tuple[int, int]:
    """The server's default (k, t): sizing.graph_for(n) with its defaults (5% of the clients
    corrupt, 10% dropping out, split views <= 2^-40 and aborts <= 2^-20 over the n clients,
    2t - k > DEFAULT_CORRUPT_NEIGHBOURS), with k at least min(n - 1, 2 ceil(log2 n)), the O(log n)
    degree SecAgg+ suggests and this project used before: below about 40 clients the fractions round
    to a colluder or a dropout or none, and the denser graph keeps small rounds' dropout margin.

    Where no (k, t) meets those bounds (n <= 5: c_max = 2 needs t = k among so few), the complete
    graph k = n - 1 with default_threshold(k), which does not; a client's policy judges whether it
    takes part.
    """
    check_int("num_clients", num_clients, low=3)
    try:
        return graph_for(num_clients, min_neighbours=2 * math.ceil(math.log2(num_clients)))
    except ConfigError:
        return num_clients - 1, default_threshold(num_clients - 1)


def default_num_neighbours(num_clients: int) -> int:
    """k of default_graph(n)."""
    return default_graph(num_clients)[0]


def default_threshold(num_neighbours: int, corrupt_neighbours: int = DEFAULT_CORRUPT_NEIGHBOURS) -> int:
    """t = the smallest threshold that withstands `corrupt_neighbours` colluding neighbours, at most k - 1.

    With c colluding neighbours a server unmasks a client by a split view iff c >= 2t - k; t = floor(k/2) + 1
    (a bare majority) fails to 2 colluders at even k, 1 at odd k (SECURITY.md, W2). t stays below
    k (for k >= 3): with odd k and an odd number of clients one client has only k - 1 neighbours, and
    every client should survive one neighbour's dropout. Where k is too small for the bound, t = k - 1
    and clients whose policy needs more refuse such a round.
    """
    cap = num_neighbours - 1 if num_neighbours >= 3 else num_neighbours
    return min(cap, max(num_neighbours // 2 + 1, threshold_for(num_neighbours, corrupt_neighbours)))


RANGE_CHECK_SECURITY_BITS = 40
"""The server's output range check lets a vector of uniform junk through with probability <= 2^-40."""


def guard_bits(vector_length: int) -> int:
    """Headroom bits g above the largest honest sum: g >= 1 and g * d >= RANGE_CHECK_SECURITY_BITS.

    After unmasking, the server refuses a sum with a coordinate outside +-(survivors x max_abs). A mask
    that was not what it claimed (a dealer that masked with another seed than it shared, a corrupted
    share of a dropped client's key) leaves the sum uniform over the ring in every coordinate; one
    coordinate lands in the honest range with probability (2 n max_abs + 1) / 2^b <= 2^-g when
    n x max_abs x 2^g <= 2^(b-1) - 1, so all d of them with probability <= 2^-(g d) <= 2^-40. Without
    headroom (max_abs = (2^(b-1) - 1) // n) the check catches almost nothing.
    """
    check_int("vector_length", vector_length, low=1)
    return max(1, -(-RANGE_CHECK_SECURITY_BITS // vector_length))


def required_modulus_bits(num_clients: int, max_abs: int, *, vector_length: int) -> int:
    """The smallest b such that any sum of `num_clients` values in [-max_abs, max_abs] fits in Z_{2^b}
    with guard_bits(vector_length) bits to spare.

    The centred range of Z_{2^b} is [-2^(b-1), 2^(b-1) - 1], so we need
    num_clients * max_abs * 2^g <= 2^(b-1) - 1.
    """
    return max(2, ((num_clients * max_abs) << guard_bits(vector_length)).bit_length() + 1)


@dataclass(frozen=True)
class SecAggConfig:
    """Parameters of one secure-aggregation round.

    num_clients: the most clients that can take part (sizes the modulus).
    vector_length: integers each client sums.
    max_abs: every client input coordinate lies in [-max_abs, max_abs].
    modulus_bits: b, the ring Z_{2^b}; None picks the smallest b that cannot wrap and leaves the
        range check guard_bits(vector_length) bits of headroom (a smaller b is refused).
    num_neighbours: k, neighbours per client in the SecAgg+ graph; None (with threshold None) = the k
        and t of default_graph(n), sized for a corrupt and a dropout fraction (sizing.py).
    threshold: t, Shamir threshold among a client's neighbours; None = default_graph(n)'s t where k is
        None too, else default_threshold(k): withstands DEFAULT_CORRUPT_NEIGHBOURS colluding neighbours
        (not sized for a fraction: a client's policy checks that).
    """

    num_clients: int
    vector_length: int
    max_abs: int
    modulus_bits: int | None = None
    num_neighbours: int | None = None
    threshold: int | None = None

    def __post_init__(self) -> None:
        # below 3 clients a sum hides nothing: each of two clients learns the other's input from it
        check_int("num_clients", self.num_clients, low=3, high=MAX_CLIENT_ID + 1)
        check_int("vector_length", self.vector_length, low=1)
        check_int("max_abs", self.max_abs, low=1)

        needed = required_modulus_bits(self.num_clients, self.max_abs, vector_length=self.vector_length)
        guard = guard_bits(self.vector_length)
        bits = needed if self.modulus_bits is None else self.modulus_bits
        if bits > MAX_MODULUS_BITS:
            raise ConfigError(
                f"{self.num_clients} clients x max_abs {self.max_abs} need a {needed}-bit modulus, "
                f"above the supported {MAX_MODULUS_BITS} bits; lower the quantization levels"
            )
        if bits < needed:
            raise ConfigError(
                f"modulus_bits={bits} leaves no room for the range check: {self.num_clients} clients x max_abs "
                f"{self.max_abs} x 2^{guard} guard bits = {(self.num_clients * self.max_abs) << guard} needs "
                f"2^(b-1) - 1 >= that, i.e. modulus_bits >= {needed}"
            )
        object.__setattr__(self, "modulus_bits", bits)

        if self.num_neighbours is None:
            k, default_t = default_graph(self.num_clients)
        else:
            k = check_int(
                f"num_neighbours (of {self.num_clients} clients)", self.num_neighbours, low=2, high=self.num_clients - 1
            )
            default_t = default_threshold(k)
        object.__setattr__(self, "num_neighbours", k)

        t = default_t if self.threshold is None else self.threshold
        check_int(f"threshold (a strict majority of the {k} neighbours)", t, low=k // 2 + 1, high=k)
        object.__setattr__(self, "threshold", t)

    @property
    def bits(self) -> int:
        """modulus_bits, typed as int (always set after validation)."""
        return _resolved("modulus_bits", self.modulus_bits)

    @property
    def k(self) -> int:
        return _resolved("num_neighbours", self.num_neighbours)

    @property
    def t(self) -> int:
        return _resolved("threshold", self.threshold)


def _resolved(name: str, value: int | None) -> int:
    """A SecAggConfig field that __post_init__ resolves from None to a number."""
    if value is None:
        raise ConfigError(f"SecAggConfig.{name} is unset: the config was not built through __post_init__")
    return int(value)


def max_abs_for(num_clients: int, modulus_bits: int, *, vector_length: int) -> int:
    """The largest per-client |coordinate| such that `num_clients` of them sum without wrapping mod 2^b,
    with guard_bits(vector_length) bits of headroom left for the range check (SecAggConfig's rule)."""
    check_int("num_clients", num_clients, low=1)
    check_int("modulus_bits", modulus_bits, low=2, high=MAX_MODULUS_BITS)
    guard = guard_bits(vector_length)
    value = ((1 << (modulus_bits - 1)) - 1) // (num_clients << guard)
    if value < 1:
        raise ConfigError(
            f"a {modulus_bits}-bit modulus cannot hold a sum over {num_clients} clients with {guard} guard bits"
        )
    return value

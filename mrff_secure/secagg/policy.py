"""A client's own security policy: the parameters below which it takes no part in a round.

The server proposes a round (participants, k, t); the client checks the proposal
against this policy before it reveals anything, and checks the survivor lists
against it before it helps to unmask. SECURITY.md's W2, W3 and W7 show what
happens when a client takes the server's word instead.

The threshold rule: a server colluding with c of a client's k neighbours can
collect t shares of both of that client's secrets (and so unmask its input) by
showing two disjoint groups of honest neighbours two different survivor lists
exactly when c >= 2t - k (Bell et al., CCS 2020; Bonawitz et al., CCS 2017 for
the active setting). A client therefore refuses any round with
2t - k <= corrupt_neighbours.

That absolute rule does not grow with n: with a fraction of the clients corrupt, some client among
many has more corrupt neighbours than c_max (at n = 1,791 with 5% corrupt, k = 22 and t = 13, about
one client in 46). So a client also states the fraction it assumes corrupt and refuses a round in
which, over the random graph, any client would be open to a split view with probability above
2^-security_bits (sizing.py: the per-client probability times n, the bound sizing.graph_for meets).
"""

from __future__ import annotations

from dataclasses import dataclass

from mrff_secure.checks import check_int, check_number
from mrff_secure.errors import ConfigError, ProtocolViolation
from mrff_secure.secagg.config import SecAggConfig
from mrff_secure.secagg.sizing import (
    DEFAULT_CORRUPT_FRACTION,
    DEFAULT_CORRUPT_NEIGHBOURS,
    DEFAULT_SECURITY_BITS,
    fraction_count,
    split_view_probability,
    threshold_for,
    within_bound,
)


class PolicyViolation(ProtocolViolation):
    """The server proposed something weaker than the client's policy allows; the client refuses."""


@dataclass(frozen=True)
class SecAggPolicy:
    """min_participants: the fewest clients a sum may be taken over (participant set and survivors).
    min_neighbours: the smallest k accepted.
    corrupt_neighbours: c_max, the most corrupt neighbours (sybils or clients colluding with the
    server) the client must withstand; it requires 2t - k > c_max.
    min_survivors: the fewest survivors of a sum the client helps to unmask (>= min_participants
    is not required: dropouts happen; but never below 3).
    corrupt_fraction: the fraction of clients assumed corrupt, in [0, 1): of n clients, floor(fraction
    x n), all possibly among a client's n - 1 others (sizing.fraction_count).
    security_bits: the client refuses (n, k, t) unless n x split_view_probability <= 2^-security_bits.
    """

    min_participants: int = 3
    min_neighbours: int = 2
    corrupt_neighbours: int = DEFAULT_CORRUPT_NEIGHBOURS
    min_survivors: int = 3
    corrupt_fraction: float = DEFAULT_CORRUPT_FRACTION
    security_bits: int = DEFAULT_SECURITY_BITS

    def __post_init__(self) -> None:
        for name in ("min_participants", "min_neighbours", "corrupt_neighbours", "min_survivors"):
            check_int(f"policy {name}", getattr(self, name), low=0)
        check_number("policy corrupt_fraction", self.corrupt_fraction, low=0.0, high=1.0, high_open=True)
        check_int("policy security_bits", self.security_bits, low=0, high=256)
        if self.min_participants < 3:
            raise ConfigError(f"policy min_participants must be >= 3, got {self.min_participants}")
        if self.min_survivors < 3:
            raise ConfigError(
                f"policy min_survivors must be >= 3 (a sum of two reveals each to the other), got {self.min_survivors}"
            )
        if self.min_neighbours < 2:
            raise ConfigError(f"policy min_neighbours must be >= 2, got {self.min_neighbours}")

    def check_config(self, config: SecAggConfig) -> None:
        """Refuse announced parameters weaker than the policy (before anything is revealed)."""
        k, t = config.k, config.t
        if config.num_clients < self.min_participants:
            raise PolicyViolation(
                f"the round is sized for {config.num_clients} clients, below the policy's "
                f"min_participants={self.min_participants}"
            )
        if k < self.min_neighbours and k < config.num_clients - 1:
            raise PolicyViolation(f"k={k} neighbours is below the policy's min_neighbours={self.min_neighbours}")
        if 2 * t - k <= self.corrupt_neighbours:
            raise PolicyViolation(
                f"threshold t={t} with k={k} neighbours gives 2t - k = {2 * t - k}: {2 * t - k} colluding "
                f"neighbours could unmask a client by a split view; the policy tolerates "
                f"corrupt_neighbours={self.corrupt_neighbours}, which needs t >= {threshold_for(k, self.corrupt_neighbours)}"
            )
        self.check_graph(config.num_clients, k, t)

    def check_graph(self, num_clients: int, k: int, t: int) -> None:
        """Refuse a graph of `num_clients` clients, k neighbours and threshold t in which a split view
        on some client is likelier than 2^-security_bits with the policy's corrupt fraction."""
        check_int("num_clients", num_clients, low=2)
        degree = min(k, num_clients - 1)  # graph.py: k >= n - 1 is the complete graph
        if t > degree:
            return  # no secret can be rebuilt, so none split: the round cannot finish
        corrupt = fraction_count(num_clients, self.corrupt_fraction)
        probability = split_view_probability(num_clients, degree, t, corrupt)
        if not within_bound(num_clients, probability, self.security_bits):
            raise PolicyViolation(
                f"k={k} neighbours and threshold t={t} among n={num_clients} clients: with "
                f"corrupt_fraction={self.corrupt_fraction} ({corrupt} of a client's {num_clients - 1} others "
                f"corrupt) a client is open to a split view with probability {float(probability):.3g}, "
                f"{float(num_clients * probability):.3g} summed over the n clients, above the policy's "
                f"2^-{self.security_bits}"
            )

    def check_participants(self, count: int) -> None:
        if count < self.min_participants:
            raise PolicyViolation(f"{count} participants, below the policy's min_participants={self.min_participants}")

    def check_survivors(self, count: int) -> None:
        if count < self.min_survivors:
            raise PolicyViolation(f"{count} survivors, below the policy's min_survivors={self.min_survivors}")

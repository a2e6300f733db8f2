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
"""

from __future__ import annotations

from dataclasses import dataclass

from mrff_secure.checks import check_int
from mrff_secure.errors import ConfigError, ProtocolViolation
from mrff_secure.secagg.config import DEFAULT_CORRUPT_NEIGHBOURS, SecAggConfig, threshold_for


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
    """

    min_participants: int = 3
    min_neighbours: int = 2
    corrupt_neighbours: int = DEFAULT_CORRUPT_NEIGHBOURS
    min_survivors: int = 3

    def __post_init__(self) -> None:
        for name in ("min_participants", "min_neighbours", "corrupt_neighbours", "min_survivors"):
            check_int(f"policy {name}", getattr(self, name), low=0)
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

    def check_participants(self, count: int) -> None:
        if count < self.min_participants:
            raise PolicyViolation(f"{count} participants, below the policy's min_participants={self.min_participants}")

    def check_survivors(self, count: int) -> None:
        if count < self.min_survivors:
            raise PolicyViolation(f"{count} survivors, below the policy's min_survivors={self.min_survivors}")

"""The stages of a secure-aggregation round, shared by the client and server state machines."""

from __future__ import annotations

from enum import Enum


class Stage(Enum):
    """advertise keys -> reveal seed -> share keys -> masked input -> consistency check -> unmask -> done
    (or aborted).

    ADVERTISE_KEYS: each client sends its keys, its credential and commitments to its graph-seed
    contribution and its self-mask seed. REVEAL_SEED: once the participant set is fixed, each client
    opens its graph-seed commitment; the neighbour graph follows from every opening, so nobody who
    chose a bundle could know the graph it would give.
    """

    ADVERTISE_KEYS = 0
    REVEAL_SEED = 1
    SHARE_KEYS = 2
    MASKED_INPUT = 3
    CONSISTENCY_CHECK = 4
    UNMASK = 5
    DONE = 6
    ABORTED = 7


class ShareKind(Enum):
    """Which of a peer's two secrets a share reveals; a client reveals at most one kind per peer."""

    SELF_MASK = 0  # b_v: revealed only for a peer that survived
    KEY = 1  # the mask-agreement private key of v: revealed only for a peer that dropped

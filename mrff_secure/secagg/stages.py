"""The stages of a secure-aggregation round, shared by the client and server state machines."""

from __future__ import annotations

from enum import Enum


class Stage(Enum):
    """advertise keys -> share keys -> masked input -> consistency check -> unmask -> done (or aborted)."""

    ADVERTISE_KEYS = 0
    SHARE_KEYS = 1
    MASKED_INPUT = 2
    CONSISTENCY_CHECK = 3
    UNMASK = 4
    DONE = 5
    ABORTED = 6


class ShareKind(Enum):
    """Which of a peer's two secrets a share reveals; a client reveals at most one kind per peer."""

    SELF_MASK = 0  # b_v: revealed only for a peer that survived
    KEY = 1  # the mask-agreement private key of v: revealed only for a peer that dropped

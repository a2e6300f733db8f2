"""DPConfig: the one frozen, validated configuration object of the differential-privacy layer."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from mrff_secure.checks import check_choice, check_int, check_number
from mrff_secure.errors import ConfigError

MODES = ("off", "local", "distributed")
LOCAL_MECHANISMS = ("gaussian",)
DISTRIBUTED_MECHANISMS = ("discrete_gaussian", "skellam")
DEFAULT_MECHANISM = {"off": "none", "local": "gaussian", "distributed": "discrete_gaussian"}
# Kairouz, Liu, Steinke (2021) use beta = exp(-1/2) for conditional randomized rounding.
DEFAULT_ROUNDING_BETA = math.exp(-0.5)


def default_delta(n_users: int) -> float:
    """The default delta, 1 / n^1.1 for n users (strictly below 1/n, as add/remove DP needs)."""
    check_int("the number of users (to derive delta)", n_users, low=2)
    return 1.0 / float(n_users) ** 1.1


def min_survivors(n_clients: int, max_dropout_fraction: float) -> int:
    """n_min = ceil(n * (1 - f)): the fewest clients whose noise shares the sum is guaranteed to hold."""
    check_int("n_clients", n_clients, low=1)
    check_number("max_dropout_fraction", max_dropout_fraction, low=0.0, high=1.0, high_open=True)
    # The small epsilon keeps e.g. 10 * (1 - 0.3) = 7.000000000000001 from rounding up to 8.
    return max(1, math.ceil(n_clients * (1.0 - max_dropout_fraction) - 1e-9))


@dataclass(frozen=True)
class DPConfig:
    """Differential-privacy settings of a training run.

    mode: "off" (no clipping, no noise, epsilon reported as infinite), "local" (every client adds
    the full Gaussian noise z*C to its own upload, the paper's Table 2), or "distributed" (each
    client adds an integer share under secure aggregation so that the sum carries std z*C).
    Exactly one of ``noise_multiplier`` (z >= 0) and ``target_epsilon`` is set when DP is on;
    ``delta=None`` means 1/n^1.1 for n users, resolved by :meth:`resolve_delta`.
    """

    mode: str = "off"
    clip: float = 1.0
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float | None = None
    mechanism: str | None = None
    max_dropout_fraction: float = 0.0
    rounding_beta: float = DEFAULT_ROUNDING_BETA

    def __post_init__(self) -> None:
        check_choice("DPConfig.mode", self.mode, MODES)
        check_number("DPConfig.clip (C)", self.clip, low=0.0, low_open=True)
        if self.noise_multiplier is not None:
            check_number("DPConfig.noise_multiplier (z)", self.noise_multiplier, low=0.0)
        if self.target_epsilon is not None:
            check_number("DPConfig.target_epsilon", self.target_epsilon, low=0.0, low_open=True)
        if self.delta is not None:
            check_number("DPConfig.delta", self.delta, low=0.0, high=1.0, low_open=True, high_open=True)
        frac = check_number(
            "DPConfig.max_dropout_fraction", self.max_dropout_fraction, low=0.0, high=1.0, high_open=True
        )
        check_number("DPConfig.rounding_beta", self.rounding_beta, low=0.0, high=1.0, high_open=True)

        if self.mode == "off":
            if self.noise_multiplier not in (None, 0, 0.0):
                raise ConfigError(f"DPConfig.noise_multiplier={self.noise_multiplier!r} but mode='off' adds no noise")
            if self.target_epsilon is not None:
                raise ConfigError(f"DPConfig.target_epsilon={self.target_epsilon!r} cannot be met with mode='off'")
        else:
            if (self.noise_multiplier is None) == (self.target_epsilon is None):
                raise ConfigError(
                    "DPConfig needs exactly one of noise_multiplier and target_epsilon when mode="
                    f"{self.mode!r}, got noise_multiplier={self.noise_multiplier!r}, "
                    f"target_epsilon={self.target_epsilon!r}"
                )
        if self.mode != "distributed" and frac != 0.0:
            raise ConfigError(
                f"DPConfig.max_dropout_fraction={self.max_dropout_fraction!r} only applies to "
                f"mode='distributed', not {self.mode!r}"
            )
        allowed = {
            "off": ("none",),
            "local": LOCAL_MECHANISMS,
            "distributed": DISTRIBUTED_MECHANISMS,
        }[self.mode]
        if self.mechanism is not None and self.mechanism not in allowed:
            raise ConfigError(
                f"DPConfig.mechanism={self.mechanism!r} is not valid for mode={self.mode!r}; choose one of {allowed}"
            )

    @property
    def enabled(self) -> bool:
        """True when the mode adds noise (local or distributed)."""
        return self.mode != "off"

    @property
    def mechanism_name(self) -> str:
        """The mechanism in use: the explicit choice, or the mode's default."""
        return self.mechanism if self.mechanism is not None else DEFAULT_MECHANISM[self.mode]

    def resolve_delta(self, n_users: int) -> float:
        """The configured delta, or the default 1/n^1.1 for ``n_users`` users."""
        return self.delta if self.delta is not None else default_delta(n_users)

    def min_survivors(self, n_clients: int) -> int:
        """Worst-case number of noise shares in a round of ``n_clients`` (distributed mode)."""
        return min_survivors(n_clients, self.max_dropout_fraction)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (round-trips through :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DPConfig":
        """Build from :meth:`to_dict` output; unknown keys are an error naming them."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown DPConfig keys: {unknown}")
        return cls(**data)

"""A network client's own privacy policy: what it refuses, whatever the server proposes.

The server signs its round proposal, which proves who proposed it, not that it is safe. Before a
client trains or reveals anything it checks the proposal against this policy: secure aggregation
on, the secure-aggregation floors (`SecAggPolicy`: participants, k, the threshold rule
2t - k > c_max, survivors) and the DP floor (allowed modes, least noise multiplier, largest clip,
least minimum group size). In the update phase it also refuses to sign a survivor list shorter than
the `min_survivors` its noise share was sized for (W7 in SECURITY.md). The federated evaluation (a DP
release under the round's distributed noise) gets its held-out scores only if `join_evaluation`, at most
`max_evaluations` times per run, and, with DP off (an exact sum), only if `allow_exact_evaluation`;
otherwise the client sends zeros in it (with its noise share), so the sum stays over the update's survivors.

A policy is read from a JSON file (`mrff client --policy FILE`) whose keys are the field names
below; flags override single fields. Unknown keys are an error, so a typo never weakens a policy.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrff_secure.checks import check_bool, check_int, check_number
from mrff_secure.errors import ConfigError
from mrff_secure.round.spec import DP_MODES, RoundSpec
from mrff_secure.secagg.config import DEFAULT_CORRUPT_NEIGHBOURS, SecAggConfig
from mrff_secure.secagg.policy import PolicyViolation, SecAggPolicy

POLICY_FIELDS = (
    "min_participants",
    "min_neighbours",
    "corrupt_neighbours",
    "min_survivors",
    "allow_plain",
    "dp_modes",
    "min_noise_multiplier",
    "max_clip",
    "min_group_size",
    "join_evaluation",
    "max_evaluations",
    "allow_exact_evaluation",
)


@dataclass(frozen=True)
class ClientPolicy:
    """See the module docstring. Defaults: secure aggregation required, c_max = 2, any DP mode (a
    round with DP off is accepted, and the client says it protects only against an honest-but-curious
    server), noise multiplier >= 0, clip unbounded, minimum group size >= 5."""

    min_participants: int = 3
    min_neighbours: int = 2
    corrupt_neighbours: int = DEFAULT_CORRUPT_NEIGHBOURS
    min_survivors: int = 3
    allow_plain: bool = False
    dp_modes: tuple[str, ...] = DP_MODES
    min_noise_multiplier: float = 0.0
    max_clip: float = math.inf
    min_group_size: int = 5
    join_evaluation: bool = True  # send held-out scores to the federated evaluation (else zeros)
    max_evaluations: int = 5  # send held-out scores to at most this many evaluations per run (then zeros)
    allow_exact_evaluation: bool = False  # DP off: send held-out scores to an exact (noiseless) evaluation
    secagg: SecAggPolicy = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dp_modes", tuple(self.dp_modes))
        unknown = set(self.dp_modes) - set(DP_MODES)
        if unknown or not self.dp_modes:
            raise ConfigError(f"policy dp_modes must be a non-empty subset of {DP_MODES}, got {list(self.dp_modes)}")
        check_number("policy min_noise_multiplier", self.min_noise_multiplier, low=0.0)
        if self.max_clip != math.inf:  # the default: no bound on the clip
            check_number("policy max_clip", self.max_clip, low=0.0, low_open=True)
        check_int("policy min_group_size", self.min_group_size, low=2)
        check_bool("policy allow_plain", self.allow_plain)
        check_bool("policy join_evaluation", self.join_evaluation)
        check_int("policy max_evaluations", self.max_evaluations, low=0)
        check_bool("policy allow_exact_evaluation", self.allow_exact_evaluation)
        object.__setattr__(
            self,
            "secagg",
            SecAggPolicy(
                min_participants=self.min_participants,
                min_neighbours=self.min_neighbours,
                corrupt_neighbours=self.corrupt_neighbours,
                min_survivors=self.min_survivors,
            ),
        )

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_file(cls, path: Path) -> "ClientPolicy":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the client policy {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"client policy {path} must be a JSON object")
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "policy") -> "ClientPolicy":
        unknown = set(data) - set(POLICY_FIELDS)
        if unknown:
            raise ConfigError(f"{source}: unknown policy keys {sorted(unknown)} (known: {list(POLICY_FIELDS)})")
        values = dict(data)
        if values.get("max_clip") is None:
            values.pop("max_clip", None)
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"{source}: {exc}") from exc

    def with_overrides(self, **changes: Any) -> "ClientPolicy":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in POLICY_FIELDS}
        out["dp_modes"] = list(self.dp_modes)
        out["max_clip"] = None if math.isinf(self.max_clip) else self.max_clip
        return out

    # ------------------------------------------------------------------ checks
    def check_round(self, *, secure: bool, spec: RoundSpec) -> None:
        """Refuse a proposal weaker than the policy (raises PolicyViolation naming the parameter)."""
        if not secure and not self.allow_plain:
            raise PolicyViolation(
                "the server proposes plain (unmasked) aggregation; the policy requires secure "
                "aggregation (allow_plain is false)"
            )
        if spec.dp_mode not in self.dp_modes:
            raise PolicyViolation(
                f"the server proposes DP mode {spec.dp_mode!r}; the policy allows {list(self.dp_modes)}"
            )
        if spec.dp_mode != "off":
            if spec.noise_multiplier < self.min_noise_multiplier:
                raise PolicyViolation(
                    f"the server proposes noise multiplier {spec.noise_multiplier}, below the policy's "
                    f"min_noise_multiplier={self.min_noise_multiplier}"
                )
            if spec.clip > self.max_clip:
                raise PolicyViolation(
                    f"the server proposes clip {spec.clip}, above the policy's max_clip={self.max_clip}"
                )
        elif self.min_noise_multiplier > 0:
            raise PolicyViolation(
                f"the server proposes DP off; the policy requires noise multiplier >= {self.min_noise_multiplier}"
            )
        if spec.min_group_size < self.min_group_size:
            raise PolicyViolation(
                f"the server proposes min_group_size {spec.min_group_size}, below the policy's {self.min_group_size}"
            )

    def check_evaluation(self, *, noisy: bool, scored: int) -> None:
        """Refuse (PolicyViolation) to send held-out scores to this evaluation: opted out, `scored` evaluations of
        this run already got them (max_evaluations), or it is exact (DP off) and allow_exact_evaluation is false."""
        if not self.join_evaluation:
            raise PolicyViolation("the policy keeps held-out scores out of the federated evaluation (join_evaluation)")
        if scored >= self.max_evaluations:
            raise PolicyViolation(f"{scored} evaluations of this run already have our scores (max_evaluations)")
        if not noisy and not self.allow_exact_evaluation:
            raise PolicyViolation("the evaluation carries no DP noise and the policy has allow_exact_evaluation false")

    def session_policy(self, config: SecAggConfig, *, noise_survivors: int = 0) -> SecAggPolicy:
        """The secure-aggregation policy of one session. `noise_survivors` (distributed DP): the number
        of survivors the client's noise share was sized for; the client signs no shorter survivor list."""
        if noise_survivors > config.num_clients:
            raise PolicyViolation(
                f"the noise share is sized for {noise_survivors} survivors, more than the "
                f"{config.num_clients} clients the session admits: the sum could never carry it"
            )
        return dataclasses.replace(self.secagg, min_survivors=max(self.secagg.min_survivors, noise_survivors))

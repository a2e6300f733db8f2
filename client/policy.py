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

Safe by default (SECURITY.md, "The client's defaults"): distributed DP required, noise multiplier >= 0.5,
at least 3 honest noise shares beyond the c_max colluding survivors, an epsilon cap of 10 at delta 1e-5
over every release of the user's data (the client's ledger, client/ledger.py), at most 2 sessions of a
round that end before anything is sent. A policy weaker than any of these is refused unless
`accept_weaker` is set (`--accept-weaker-privacy`), and then the client warns, naming each weaker
setting, on every round it plays.
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
from mrff_secure.secagg.sizing import DEFAULT_CORRUPT_FRACTION, DEFAULT_SECURITY_BITS

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
    "max_epsilon",
    "delta",
    "min_honest_shares",
    "max_aborted_sessions",
    "accept_weaker",
    "corrupt_fraction",
    "security_bits",
    "max_evaluations",
    "allow_exact_evaluation",
)
SAFE_DP_MODES = ("distributed",)
SAFE_MIN_NOISE_MULTIPLIER = 0.5
SAFE_MAX_EPSILON = 10.0
SAFE_DELTA = 1e-5
SAFE_MIN_HONEST_SHARES = 3
SAFE_MAX_ABORTED_SESSIONS = 2


@dataclass(frozen=True)
class ClientPolicy:
    """See the module docstring. Defaults: secure aggregation required, c_max = 2, distributed DP with noise
    multiplier >= 0.5 and >= 3 honest noise shares, epsilon <= 10 at delta 1e-5 over the ledger, clip
    unbounded, minimum group size >= 5, at most 2 sessions of a round that end before anything is sent."""

    min_participants: int = 3
    min_neighbours: int = 2
    corrupt_neighbours: int = DEFAULT_CORRUPT_NEIGHBOURS
    min_survivors: int = 3
    allow_plain: bool = False
    dp_modes: tuple[str, ...] = SAFE_DP_MODES
    min_noise_multiplier: float = SAFE_MIN_NOISE_MULTIPLIER
    max_clip: float = math.inf
    min_group_size: int = 5
    join_evaluation: bool = True  # send held-out scores to the federated evaluation (else zeros)
    max_epsilon: float = SAFE_MAX_EPSILON  # the ledger's cap over every release of this user's data
    delta: float = SAFE_DELTA  # the delta the ledger accounts at
    min_honest_shares: int = SAFE_MIN_HONEST_SHARES  # noise survivors beyond the c_max colluding ones
    max_aborted_sessions: int = SAFE_MAX_ABORTED_SESSIONS  # per round, ended before anything was sent
    accept_weaker: bool = False  # settings weaker than the safe defaults are refused unless this is set
    corrupt_fraction: float = DEFAULT_CORRUPT_FRACTION  # (k, t) must keep a split view unlikely at this fraction
    security_bits: int = DEFAULT_SECURITY_BITS  # ... below 2^-bits over the round
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
        if self.max_epsilon != math.inf:  # inf: no cap (weaker than the default: needs accept_weaker)
            check_number("policy max_epsilon", self.max_epsilon, low=0.0, low_open=True)
        check_number("policy delta", self.delta, low=0.0, high=1.0, low_open=True, high_open=True)
        check_int("policy min_honest_shares", self.min_honest_shares, low=1)
        check_int("policy max_aborted_sessions", self.max_aborted_sessions, low=0)
        check_bool("policy accept_weaker", self.accept_weaker)
        weaker = self.weaker_settings()
        if weaker and not self.accept_weaker:
            raise ConfigError(
                "this client policy is weaker than the safe defaults: "
                + "; ".join(weaker)
                + ". Lowering them takes --accept-weaker-privacy (policy accept_weaker: true), and the client "
                "then warns on every round"
            )
        object.__setattr__(
            self,
            "secagg",
            SecAggPolicy(
                min_participants=self.min_participants,
                min_neighbours=self.min_neighbours,
                corrupt_neighbours=self.corrupt_neighbours,
                min_survivors=self.min_survivors,
                corrupt_fraction=self.corrupt_fraction,
                security_bits=self.security_bits,
            ),
        )

    def weaker_settings(self) -> list[str]:
        """Each setting weaker than the safe defaults, with the default it lowers (empty: none)."""
        out = []
        if set(self.dp_modes) - set(SAFE_DP_MODES):
            out.append(f"dp_modes {list(self.dp_modes)} admits more than {list(SAFE_DP_MODES)}")
        for name, safe, lower_is_weaker in (
            ("min_noise_multiplier", SAFE_MIN_NOISE_MULTIPLIER, True),
            ("max_epsilon", SAFE_MAX_EPSILON, False),
            ("delta", SAFE_DELTA, False),
            ("min_honest_shares", SAFE_MIN_HONEST_SHARES, True),
            ("max_aborted_sessions", SAFE_MAX_ABORTED_SESSIONS, False),
            ("min_group_size", 5, True),
            ("corrupt_neighbours", DEFAULT_CORRUPT_NEIGHBOURS, True),
            ("corrupt_fraction", DEFAULT_CORRUPT_FRACTION, True),
            ("security_bits", DEFAULT_SECURITY_BITS, True),
        ):
            value = getattr(self, name)
            if (value < safe) if lower_is_weaker else (value > safe):
                out.append(f"{name}={value:g} (safe default {safe:g})")
        if self.allow_plain:
            out.append("allow_plain: true (unmasked uploads accepted)")
        if self.allow_exact_evaluation:
            out.append("allow_exact_evaluation: true (held-out scores in an exact evaluation, outside epsilon)")
        return out

    # ------------------------------------------------------------------ loading
    @staticmethod
    def read_file(path: Path) -> dict[str, Any]:
        """A policy file's fields, unchecked (see `from_dict`)."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the client policy {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"client policy {path} must be a JSON object")
        return data

    @classmethod
    def from_file(cls, path: Path) -> "ClientPolicy":
        return cls.from_dict(cls.read_file(path), source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "policy") -> "ClientPolicy":
        unknown = set(data) - set(POLICY_FIELDS)
        if unknown:
            raise ConfigError(f"{source}: unknown policy keys {sorted(unknown)} (known: {list(POLICY_FIELDS)})")
        values = dict(data)
        for unbounded in ("max_clip", "max_epsilon"):  # null: no bound
            if unbounded in values and values[unbounded] is None:
                values[unbounded] = math.inf
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
        out["max_epsilon"] = None if math.isinf(self.max_epsilon) else self.max_epsilon
        return out

    # ------------------------------------------------------------------ checks
    def check_round(self, *, secure: bool, spec: RoundSpec) -> None:
        """Refuse a proposal weaker than the policy (raises PolicyViolation naming the parameter).

        The training parameters (local steps, optimizer, the round's lr, the decoupled weight decay) are not
        privacy parameters: under DP the update's delta part is clipped to `clip` in the encoding
        (`round.encoding`), after training, so the sensitivity of the release is C whatever they are; `RoundSpec`
        only range-checks them (finite, lr > 0, weight_decay >= 0, lr x weight_decay < 1)."""
        if not secure and not self.allow_plain:
            raise PolicyViolation(
                "the server proposes plain (unmasked) aggregation; the policy requires secure "
                "aggregation (allow_plain is false)"
            )
        if spec.dp_mode not in self.dp_modes:
            raise PolicyViolation(
                f"the server proposes DP mode {spec.dp_mode!r}; the policy allows {list(self.dp_modes)}"
            )
        if spec.dp_mode == "distributed":
            honest = spec.noise_survivors - self.corrupt_neighbours
            if honest < self.min_honest_shares:
                raise PolicyViolation(
                    f"the server sizes the noise for {spec.noise_survivors} survivors: with c_max="
                    f"{self.corrupt_neighbours} colluding ones that leaves {honest} honest noise shares, below the "
                    f"policy's min_honest_shares={self.min_honest_shares}"
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

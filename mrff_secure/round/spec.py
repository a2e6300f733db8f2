"""The round's vocabulary and its settings, each named once.

- `Phase`: the sums of a round (the group counts, the update, the federated evaluation), numbered as
  on the wire.
- `ThreatModel`: which view of a round the server (the adversary) has; attacks state the views they
  may read (`require_view`).
- `SecureAggregation`: how a simulated round sums its clients' uploads.
- `RoundSpec`: what every participant of a networked round must agree on besides the model (the
  server signs it; each client checks it against its own policy).
- `PrivacySettings`: the privacy choices of a simulated training run.

Minimum group size: a group sum over one user is that user's update, so secure rounds zero the slots
of groups below `min_group_size` (default 5, never below 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

from mrff_secure.checks import check_bool, check_choice, check_int, check_number
from mrff_secure.dp import DPConfig
from mrff_secure.errors import ConfigError
from mrff_secure.wire.v1 import coordinator_pb2 as pb

DEFAULT_MIN_GROUP_SIZE = 5
DP_MODES = ("off", "local", "distributed")
NOISE_SAMPLING = ("per_client", "aggregate")
MECHANISMS = ("discrete_gaussian", "skellam")


class Phase(IntEnum):
    """The sums of one round, numbered as the wire numbers them (proto `Phase`)."""

    COUNTS = pb.COUNTS  # the group one-hots alone
    UPDATE = pb.UPDATE  # the update vectors, small groups zeroed
    EVALUATION = pb.EVALUATION  # the held-out scores (federation.evaluation_sum), a DP release when DP is on

    @property
    def label(self) -> str:
        """The phase's name in records, flags and messages: "counts", "update", "evaluation"."""
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> Phase:
        for phase in cls:
            if phase.label == label:
                return phase
        raise ConfigError(f"unknown phase {label!r}; known: {[p.label for p in cls]}")


class ThreatModel(StrEnum):
    """Which view of a round the server has (the attacks suite's threat models).

    - ``plain``: each client's raw update, identified (no secure aggregation, no noise).
    - ``secagg``: only the group-wise sums of a round (secure aggregation, no noise).
    - ``secagg+dp``: those sums with distributed discrete noise.
    - ``local-dp``: each client's noisy update, identified (the paper's Table 2).
    - ``malicious-server``: the active attacks against the real client code (they drive the
      protocol; they read no simulation view).
    """

    PLAIN = "plain"
    SECAGG = "secagg"
    SECAGG_DP = "secagg+dp"
    LOCAL_DP = "local-dp"
    MALICIOUS_SERVER = "malicious-server"

    @classmethod
    def of_modes(cls, *, dp_mode: str, secure_aggregation: bool, individual_view: bool = True) -> ThreatModel:
        """The view a run's server has, from its DP mode ("off", "local", "distributed") and whether it
        aggregates securely (`individual_view`: a plain run's observer sees identified uploads)."""
        check_choice("dp mode", dp_mode, DP_MODES)
        if dp_mode == "local":
            return cls.LOCAL_DP
        if dp_mode == "distributed":
            return cls.SECAGG_DP
        return cls.SECAGG if secure_aggregation or not individual_view else cls.PLAIN

    @classmethod
    def of(cls, privacy: PrivacySettings | None, *, plain_individual_view: bool) -> ThreatModel:
        """The model a simulation's observer lives in, from the run's privacy settings."""
        if privacy is None:
            return cls.of_modes(dp_mode="off", secure_aggregation=False, individual_view=plain_individual_view)
        return cls.of_modes(
            dp_mode=privacy.dp.mode, secure_aggregation=privacy.secure, individual_view=plain_individual_view
        )

    @property
    def individual_view(self) -> bool:
        """The view holds each client's identified upload."""
        return self in INDIVIDUAL_VIEWS

    @property
    def dp(self) -> bool:
        """The view carries DP noise (a claim the audit can test)."""
        return self in (ThreatModel.SECAGG_DP, ThreatModel.LOCAL_DP)


INDIVIDUAL_VIEWS = (ThreatModel.PLAIN, ThreatModel.LOCAL_DP)
"""The models whose view holds each client's (identified) upload."""
SUM_VIEWS = (ThreatModel.SECAGG, ThreatModel.SECAGG_DP)
"""The models whose view holds only the round's sums."""


class ThreatModelError(ConfigError):
    """An attack was handed a view of a threat model it may not read."""


def require_view(threat_model: str, allowed: tuple[str, ...], attack: str) -> None:
    """Refuse a view of another threat model than `allowed`, naming the attack and both."""
    if threat_model not in tuple(ThreatModel):
        raise ThreatModelError(f"unknown threat model {threat_model!r}; known: {tuple(m.value for m in ThreatModel)}")
    if threat_model not in allowed:
        raise ThreatModelError(f"{attack} reads views of {tuple(str(a) for a in allowed)}, not of {threat_model!r}")


class SecureAggregation(StrEnum):
    """How a simulated round sums its clients' uploads.

    ``off``: no secure aggregation. ``fast``: the modular sum of the clients' ring vectors (what the
    protocol outputs; the command line calls it ``on``). ``inmemory``: the real secure-aggregation
    state machines in one process (small rounds).
    """

    OFF = "off"
    FAST = "fast"
    INMEMORY = "inmemory"

    @classmethod
    def from_option(cls, value: str) -> SecureAggregation:
        """The command line's spelling (``off``, ``on``, ``inmemory``) -> the member."""
        options = {"off": cls.OFF, "on": cls.FAST, "inmemory": cls.INMEMORY}
        if value not in options:
            raise ConfigError(f"secure aggregation must be one of {tuple(options)}, got {value!r}")
        return options[value]


def check_training_range(lr: float, weight_decay: float) -> None:
    """Refuse a learning rate or decoupled weight decay outside its sane range (ConfigError naming it): each
    finite, lr > 0, weight_decay >= 0 and lr x weight_decay < 1, so that a step's decay shrinks every weight
    toward 0 without flipping its sign (the factor 1 - lr x weight_decay stays in (0, 1])."""
    check_number("lr", lr, low=0.0, low_open=True)
    check_number("weight_decay", weight_decay, low=0.0)
    if not lr * weight_decay < 1.0:
        raise ConfigError(
            f"lr x weight_decay must be below 1 (a decay step would flip the weights' sign), got lr {lr!r} x "
            f"weight_decay {weight_decay!r} = {lr * weight_decay!r}"
        )


def check_min_group_size(min_group_size: int) -> None:
    """Refuse a minimum group size that lets a group sum reveal one user (below 2)."""
    check_int("min_group_size (a group of one leaks its update)", min_group_size, low=2)


@dataclass(frozen=True)
class RoundSpec:
    """What every participant of a networked round must agree on besides the model (sent signed by the
    server). Every field but `weight_decay` (0: none) is required: `mrff_secure.app.options` owns the defaults.

    `lr` is the round's learning rate (the server evaluates the run's schedule, `FederationConfig.client_lr`) and
    `weight_decay` the clients' decoupled decay per local step. Neither changes a DP guarantee: the clip bounds
    the released update whatever they are, so they are only range-checked here (`check_training_range`), which
    is what a client does with a signed but malformed value: it refuses the round, naming the value.
    """

    local_steps: int
    optimizer: str
    lr: float
    dp_mode: str
    clip: float
    noise_multiplier: float
    min_survivors: int  # distributed mode: each client's noise is sized for this many survivors
    min_group_size: int
    mechanism: str  # secure rounds: the integer noise of the distributed mode
    modulus_bits: int  # secure rounds: the ring Z_{2^b} of the secure sums
    count_cap: int  # the example count is uploaded as min(count, cap) / cap
    weight_decay: float = 0.0  # the clients' decoupled weight decay per local step

    def __post_init__(self) -> None:
        check_choice("dp mode", self.dp_mode, DP_MODES)
        check_number("clip", self.clip, low=0.0, low_open=True)
        check_training_range(self.lr, self.weight_decay)
        check_number("noise_multiplier", self.noise_multiplier, low=0.0)
        for name in ("local_steps", "min_survivors", "count_cap"):
            check_int(name, getattr(self, name), low=1)
        check_min_group_size(self.min_group_size)
        check_choice("mechanism", self.mechanism, MECHANISMS)
        check_int("modulus_bits", self.modulus_bits, low=8, high=62)

    @property
    def noise_survivors(self) -> int:
        """The survivors each client's noise share is sized for (0: no noise share)."""
        return self.min_survivors if self.dp_mode == "distributed" else 0


@dataclass(frozen=True)
class PrivacySettings:
    """The privacy choices of a training run (validated).

    secure_aggregation: see `SecureAggregation`.
    noise_sampling (secure mode): "per_client" (every client draws its share; the faithful
    default) or "aggregate" (fast path only: clients encode without noise and the ring sum gets
    one draw of the summed shares; exact in distribution for Skellam, within the D_inf bound tau
    of Kairouz et al. 2021 for the discrete Gaussian).
    count_cap: the example count is uploaded as min(count, cap) / cap (None: the sequence length).
    min_group_size: None = the federation's min_group_size when it is above 1, else 5 with secure
    aggregation and 1 without; never below 2 when secure.
    insecure_reproducible_noise: a DEBUGGING switch, off by default: draw the DP noise from the run
    seed instead of the operating system's entropy. Anyone who knows the seed can then remove the
    noise; every output of such a run says "not private".
    clip_from_private_data: the operator declares that C was chosen by looking at private data
    (e.g. measured update norms): the choice itself is then released outside the guarantee.
    """

    dp: DPConfig = field(default_factory=DPConfig)
    secure_aggregation: SecureAggregation = SecureAggregation.OFF
    modulus_bits: int | None = None  # the ring Z_{2^b} of the secure sums: required with secure aggregation
    noise_sampling: str = "per_client"
    count_cap: int | None = None
    min_group_size: int | None = None
    insecure_reproducible_noise: bool = False
    clip_from_private_data: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.dp, DPConfig):
            raise ConfigError(f"PrivacySettings.dp must be a DPConfig, got {type(self.dp).__name__}")
        if self.secure_aggregation not in tuple(SecureAggregation):
            raise ConfigError(
                f"secure_aggregation must be one of {tuple(m.value for m in SecureAggregation)}, got {self.secure_aggregation!r}"
            )
        object.__setattr__(self, "secure_aggregation", SecureAggregation(self.secure_aggregation))
        if self.dp.mode == "distributed" and not self.secure:
            raise ConfigError("distributed DP needs secure aggregation: set secure_aggregation to 'fast' or 'inmemory'")
        if self.dp.mode == "local" and self.secure:
            raise ConfigError(
                "local DP runs without secure aggregation here (each noisy upload is seen); "
                f"got secure_aggregation={self.secure_aggregation.value!r}"
            )
        if self.modulus_bits is None and self.secure:
            raise ConfigError("secure aggregation needs modulus_bits (the ring of the secure sums)")
        if self.modulus_bits is not None:
            check_int("modulus_bits", self.modulus_bits, low=8, high=62)
        check_choice("noise_sampling", self.noise_sampling, NOISE_SAMPLING)
        if self.noise_sampling == "aggregate" and self.secure_aggregation is not SecureAggregation.FAST:
            raise ConfigError("noise_sampling='aggregate' is a shortcut of the fast secure sum only")
        if self.count_cap is not None:
            check_int("count_cap", self.count_cap, low=1)
        for name in ("insecure_reproducible_noise", "clip_from_private_data"):
            check_bool(name, getattr(self, name))
        if self.min_group_size is not None:
            check_int("min_group_size", self.min_group_size, low=1)
            if self.secure:
                check_min_group_size(self.min_group_size)

    @property
    def secure(self) -> bool:
        return self.secure_aggregation is not SecureAggregation.OFF

    @property
    def plain(self) -> bool:
        """DP off and no secure aggregation: the simulation's original path."""
        return not self.dp.enabled and not self.secure

    def resolved_min_group_size(self, federation_min_group_size: int = 1) -> int:
        """The minimum group size in force (see the class docstring); ConfigError below 2 when secure."""
        if self.min_group_size is not None:
            return self.min_group_size
        if federation_min_group_size > 1:
            if self.secure:
                check_min_group_size(federation_min_group_size)
            return federation_min_group_size
        return DEFAULT_MIN_GROUP_SIZE if self.secure else 1

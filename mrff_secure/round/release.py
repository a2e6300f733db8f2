"""What one round releases about one user (`RoundRelease`: public parameters only) and its RDP curve.

A round's releases (both phases under secure aggregation) are described together, with the count
part's sensitivity taken from the layout (blocks with group one-hots, the capped example count).

Adjacency (stated with every epsilon):

- replace-one, wherever the server sees identified uploads (local DP; plain): one user's upload
  replaced by any other. Delta parts differ by <= 2C, one-hots by sqrt(2) per block, example
  counts by <= 1: L2 sensitivity sqrt(4 C^2 + 2 B + 1) (B = blocks with groups).
- zero-out, under secure aggregation (Kairouz, McMahan et al. ICML 2021): one user's contribution
  replaced by zeros (who took part is visible, what they sent is not). Phase 2 (delta <= C,
  example count <= 1, no one-hots): sqrt(C^2 + 1); phase 1 (one-hots): sqrt(B). The replace-one
  figure under secure aggregation (sensitivities doubled at most) is given beside it: about twice
  the epsilon where epsilon is small, up to four times where it is large.

The distributed modes' curve is the RDP bound of the distributed discrete Gaussian / Skellam
(Kairouz, Liu, Steinke 2021; Agarwal, Kairouz, Liu 2021) over the round's integer plans (scale,
padded lengths, n_min) from `round.encoding.secure_round_plans`, both phases.

Colluding survivors (`colluding_survivors`, c): survivors that are the server's accomplices add noise the
server knows and can subtract, so a release is accounted with the noise of the n_min - c honest shares
only (W17 in SECURITY.md); c = 0 is the honest-but-curious accounting. A release can describe one phase
of a round (`phases`: "counts" or "update", each accounted when it is released, so a round aborted after
phase 1 still costs its counts) or both ("both", the default).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mrff_secure.checks import check_int, check_number
from mrff_secure.dp.accounting import DISCRETE_ORDERS, ddg_rdp, skellam_rdp
from mrff_secure.dp.config import DEFAULT_ROUNDING_BETA, DISTRIBUTED_MECHANISMS
from mrff_secure.dp.discretize import rounded_l1_bound, rounded_l2_bound
from mrff_secure.dp.distributed import DistributedPlan
from mrff_secure.dp.mechanisms import GRID_SLACK
from mrff_secure.dp.sensitivity import compose_noise_multipliers
from mrff_secure.errors import ConfigError, PrivacyError
from mrff_secure.round.encoding import SecureRoundPlans, secure_round_plans
from mrff_secure.round.spec import RoundSpec
from mrff_secure.round.update_vector import UpdateLayout

RELEASE_MODES = ("off", "local", "distributed")
RELEASE_PHASES = ("both", "counts", "update")
REPLACE_ONE = "replace-one"
ZERO_OUT = "zero-out"
ADJACENCY_TEXT = {
    REPLACE_ONE: "replace-one: one user's upload replaced by any other (the server sees identified uploads)",
    ZERO_OUT: "zero-out: one user's contribution replaced by zeros (secure aggregation; who took part is visible)",
}


def participants_per_round(num_users: int, client_fraction: float) -> int:
    """Clients per round as the simulation samples them: all, or max(1, round(users * fraction))."""
    return num_users if client_fraction >= 1.0 else max(1, int(round(num_users * client_fraction)))


@dataclass(frozen=True)
class RoundRelease:
    """The public description of one training round, as the accountant needs it.

    dp_mode: "off", "local" or "distributed"; secure_aggregation: the server sees only sums.
    num_blocks / num_groups: the layout's group one-hots (0 / 0 without groups); delta_size: the
    clipped part's length; participants: clients per round; n_min: survivors the distributed noise
    shares are sized for; mechanism: "discrete_gaussian" or "skellam" (distributed) - local mode
    always uses the grid discrete Gaussian. modulus_bits, count_cap, rounding_beta and
    single_noise_draw decide the integer plans (distributed). colluding_survivors and phases: see the
    module docstring.
    """

    dp_mode: str
    secure_aggregation: bool
    clip: float
    noise_multiplier: float
    num_blocks: int
    num_groups: int
    delta_size: int
    participants: int
    modulus_bits: int | None  # the ring of the secure sums (None without secure aggregation)
    count_cap: int
    n_min: int | None = None
    mechanism: str | None = None
    rounding_beta: float = DEFAULT_ROUNDING_BETA
    single_noise_draw: bool = False
    colluding_survivors: int = 0
    phases: str = "both"

    def __post_init__(self) -> None:
        if self.dp_mode not in RELEASE_MODES:
            raise ConfigError(f"dp_mode must be one of {RELEASE_MODES}, got {self.dp_mode!r}")
        if self.dp_mode == "local" and self.secure_aggregation:
            raise ConfigError("local DP runs without secure aggregation (each noisy upload is seen)")
        if self.dp_mode == "distributed" and not self.secure_aggregation:
            raise ConfigError("distributed DP needs secure aggregation")
        check_number("clip", self.clip, low=0.0, low_open=True)
        check_number("noise_multiplier", self.noise_multiplier, low=0.0)
        if self.dp_mode == "off" and self.noise_multiplier != 0:
            raise ConfigError(f"noise_multiplier={self.noise_multiplier!r} but DP is off")
        for name, low in (
            ("num_blocks", 0),
            ("num_groups", 0),
            ("delta_size", 1),
            ("participants", 1),
            ("count_cap", 1),
        ):
            check_int(name, getattr(self, name), low=low)
        if (self.num_blocks == 0) != (self.num_groups == 0):
            raise ConfigError(f"num_blocks={self.num_blocks}, num_groups={self.num_groups}: both 0 or both > 0")
        if self.secure_aggregation:
            check_int("modulus_bits (secure aggregation)", self.modulus_bits, low=2)
        check_int("colluding_survivors", self.colluding_survivors, low=0)
        if self.phases not in RELEASE_PHASES:
            raise ConfigError(f"phases must be one of {RELEASE_PHASES}, got {self.phases!r}")
        if self.phases != "both" and not self.secure_aggregation:
            raise ConfigError(f"phases={self.phases!r}: only secure aggregation releases its phases apart")
        if self.dp_mode == "distributed" and self.mechanism not in DISTRIBUTED_MECHANISMS:
            raise ConfigError(f"distributed mechanism must be one of {DISTRIBUTED_MECHANISMS}, got {self.mechanism!r}")

    @property
    def adjacency(self) -> str:
        return ZERO_OUT if self.secure_aggregation else REPLACE_ONE

    @property
    def mechanism_name(self) -> str:
        if self.dp_mode == "local":
            return "grid_discrete_gaussian"
        if self.dp_mode == "distributed":
            return str(self.mechanism)
        return "none"

    def gaussian_parts(self, adjacency: str | None = None) -> list[tuple[float, float]]:
        """[(L2 sensitivity, noise std)] of the round's releases, float units, under ``adjacency``."""
        adjacency = adjacency or self.adjacency
        c, z, b = float(self.clip), float(self.noise_multiplier), self.num_blocks
        if self.dp_mode == "local":
            # one upload [delta | one-hots | count / cap], snapped to the grid (slack GRID_SLACK * C)
            return [(math.sqrt(4 * c * c + 2 * b + 1) + GRID_SLACK * c, z * c)]
        factor = 2.0 if adjacency == REPLACE_ONE else 1.0
        parts = [(math.sqrt(factor**2 * c * c + 1.0), z * c)]  # phase 2: delta part and example count
        if b:
            parts.append((math.sqrt(factor * b), z * math.sqrt(b)))  # phase 1: one-hots (sqrt(2B) replace-one)
        return parts

    def accounted_noise_multiplier(self, adjacency: str | None = None) -> float:
        """The one Gaussian multiplier equivalent to the round's releases (0 without noise)."""
        if self.noise_multiplier == 0:
            return 0.0
        return compose_noise_multipliers(self.gaussian_parts(adjacency))

    def plans(self) -> SecureRoundPlans | None:
        """The round's integer plans (secure aggregation only), exactly as the clients encode."""
        if not self.secure_aggregation or self.modulus_bits is None:  # __post_init__: secure implies a modulus
            return None
        return secure_round_plans(
            delta_size=self.delta_size,
            num_blocks=self.num_blocks,
            num_groups=self.num_groups,
            dp_mode="distributed" if self.dp_mode == "distributed" else "off",
            mechanism=self.mechanism,
            clip=self.clip,
            noise_multiplier=self.noise_multiplier,
            n_clients=self.participants,
            n_min=self.n_min if self.n_min is not None else self.participants,
            modulus_bits=self.modulus_bits,
            count_cap=self.count_cap,
            rounding_beta=self.rounding_beta,
            single_noise_draw=self.single_noise_draw,
        )

    def with_noise_multiplier(self, z: float) -> RoundRelease:
        return RoundRelease(**{**self.__dict__, "noise_multiplier": float(z)})

    def phase(self, phases: str) -> RoundRelease:
        """The same round, describing only `phases` ("counts" or "update") of its releases."""
        return RoundRelease(**{**self.__dict__, "phases": phases})

    @property
    def honest_shares(self) -> int:
        """Noise shares the accounting counts on: the n_min survivors less the colluding ones."""
        n_min = self.n_min if self.n_min is not None else self.participants
        return n_min - self.colluding_survivors

    @property
    def noisy(self) -> bool:
        """The round carries DP noise (else it has no guarantee: epsilon is infinite)."""
        return self.dp_mode != "off" and self.noise_multiplier > 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (a checkpoint's accountant history); `RoundRelease(**d)` rebuilds and validates.
        The fields added later (colluding_survivors, phases) are left out at their defaults, so histories
        written before them read the same."""
        out = asdict(self)
        for name, default in (("colluding_survivors", 0), ("phases", "both")):
            if out[name] == default:
                del out[name]
        return out


def network_round_release(
    spec: RoundSpec, layout: UpdateLayout, participants: int, *, colluding_survivors: int
) -> RoundRelease:
    """What one networked round (secure aggregation, both phases) releases about a user, from its public
    parameters: the server's ledger and each client's ledger describe a round with this one function,
    counting the noise of the survivors less `colluding_survivors` (the threat model's c_max)."""
    distributed = spec.dp_mode == "distributed"
    return RoundRelease(
        dp_mode=spec.dp_mode,
        secure_aggregation=True,
        clip=spec.clip,
        noise_multiplier=spec.noise_multiplier if distributed else 0.0,
        num_blocks=layout.num_blocks if layout.num_groups else 0,
        num_groups=layout.num_groups,
        delta_size=layout.delta_size,
        participants=participants,
        n_min=spec.min_survivors if distributed else participants,
        mechanism=spec.mechanism if distributed else None,
        modulus_bits=spec.modulus_bits,
        count_cap=spec.count_cap,
        colluding_survivors=colluding_survivors if distributed else 0,
    )


def discrete_round_rdp(
    plan: DistributedPlan,
    *,
    orders: tuple[float, ...] = DISCRETE_ORDERS,
    sensitivity_factor: float = 1.0,
    colluding_survivors: int = 0,
) -> np.ndarray:
    """RDP curve of one release under ``plan`` (zero-out; factor 2 bounds replace-one by the triangle inequality),
    counting the noise of the plan.n_min - colluding_survivors honest shares only (none left: infinite)."""
    honest = plan.n_min - colluding_survivors
    if honest < 1:
        return np.full(len(orders), np.inf)
    d2 = sensitivity_factor * rounded_l2_bound(
        scaled_norm=plan.l2_bound * plan.scale, dim=plan.padded_dim, beta=plan.beta
    )
    d1 = sensitivity_factor * rounded_l1_bound(l2_bound=d2 / sensitivity_factor, dim=plan.padded_dim)
    total_std = plan.noise_multiplier * plan.clip * plan.scale
    if total_std == 0.0:
        return np.full(len(orders), np.inf)
    if plan.mechanism == "discrete_gaussian":
        return ddg_rdp(
            orders=orders,
            l2_sensitivity=d2,
            l1_sensitivity=d1,
            share_sigma=total_std / math.sqrt(plan.n_min),
            n_shares=honest,
            dim=plan.padded_dim,
        )
    honest_variance = total_std**2 * honest / plan.n_min
    return skellam_rdp(orders=orders, l2_sensitivity=d2, l1_sensitivity=d1, total_variance=honest_variance)


def round_rdp_curve(release: RoundRelease, *, replace_one: bool = False) -> np.ndarray:
    """The RDP curve (at DISCRETE_ORDERS) of a distributed release, the phases it describes, with the honest
    shares only; zero-out adjacency, or replace-one (sensitivities doubled: the triangle inequality)."""
    plans = release.plans()
    if plans is None:
        raise PrivacyError("a round without secure aggregation has no discrete RDP curve")
    factor = 2.0 if replace_one else 1.0
    colluding = release.colluding_survivors
    curve = np.zeros(len(DISCRETE_ORDERS))
    if release.phases in ("both", "update"):
        curve = curve + discrete_round_rdp(plans.update, sensitivity_factor=factor, colluding_survivors=colluding)
    if plans.counts is not None and release.phases in ("both", "counts"):
        curve = curve + discrete_round_rdp(plans.counts, sensitivity_factor=factor, colluding_survivors=colluding)
    return curve

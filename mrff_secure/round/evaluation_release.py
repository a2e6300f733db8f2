"""What one federated evaluation releases about one user (`EvaluationRelease`: public parameters only), its
integer plan and its RDP curve.

The evaluation vector (`federation.evaluation_sum.client_vector`), floats, one client:

    per split (val, test): a one-hot of (label, score bin) over 2 x BINS bins | its log-loss / LOSS_CAP in [0, 1]
    then one count: 1 (it scored its held-out items), 0 (it sends zeros: its policy keeps them out)

L2 bound of one client's vector (zero-out adjacency: its vector replaced by zeros): per split at most
1^2 + 1^2, plus the count's 1^2, so sqrt(2 x 2 + 1) = sqrt(5) = L2_BOUND (replace-one: at most twice).

It goes through the same pipeline as a round's phases (`dp.distributed`: the whole vector clipped to
L2_BOUND, which never binds an honest vector, randomized Hadamard rotation under the public seed of the
round's evaluation phase, scaling, conditional randomized rounding, a discrete Gaussian or Skellam noise
share, mod 2^b) with the round's mechanism and noise multiplier z, sized for the round's n_min survivors:
the decoded sum carries noise of std z x L2_BOUND on every coordinate (float units), one release whose
RDP curve is `discrete_round_rdp` of its plan (the bound of Kairouz, Liu, Steinke 2021 as for the
training phases). With DP off the same pipeline runs without noise: the sum is exact (and unaccounted:
epsilon infinite), so a client sends its scores there only if its policy explicitly allows it.

Everything here is computed from the round's public parameters only (the mechanism, z, modulus bits, the
participants and n_min), by the server and by each client alike.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mrff_secure.checks import check_int, check_number
from mrff_secure.dp.accounting import DISCRETE_ORDERS
from mrff_secure.dp.config import DEFAULT_ROUNDING_BETA, DISTRIBUTED_MECHANISMS
from mrff_secure.dp.distributed import (
    DistributedPlan,
    max_scale,
    max_share_variance,
    next_power_of_two,
    plan_distributed,
)
from mrff_secure.errors import ConfigError, PrivacyError
from mrff_secure.round.encoding import SHARE_TAIL_SIGMAS
from mrff_secure.round.release import ADJACENCY_TEXT, REPLACE_ONE, ZERO_OUT, discrete_round_rdp
from mrff_secure.round.spec import RoundSpec
from mrff_secure.secagg.config import max_abs_for

SPLITS = ("val", "test")
BINS = 128  # score bins per label
PER_SPLIT = 2 * BINS + 1  # the (label, bin) one-hot and the scaled log-loss
VECTOR_LENGTH = len(SPLITS) * PER_SPLIT + 1  # and one count
PADDED_LENGTH = next_power_of_two(VECTOR_LENGTH)  # the secure sum's vector length
L2_BOUND = math.sqrt(2 * len(SPLITS) + 1)  # one client's vector, zero-out: sqrt(5)
EVALUATION_MODES = ("off", "distributed")
KIND = "evaluation"  # an accountant history entry's kind


@dataclass(frozen=True)
class EvaluationRelease:
    """The public description of one federated evaluation, as the accountant needs it.

    dp_mode: "off" (exact) or "distributed"; participants: the clients the secure sum is sized for (the
    round's); n_min: the survivors each noise share is sized for (the round's; 1 with DP off); mechanism:
    "discrete_gaussian" or "skellam" (distributed); modulus_bits: the ring (the round's).
    """

    dp_mode: str
    noise_multiplier: float
    participants: int
    n_min: int
    modulus_bits: int
    mechanism: str | None = None
    rounding_beta: float = DEFAULT_ROUNDING_BETA
    colluding_survivors: int = 0  # accounted with the noise of the n_min - c honest shares only (W17)

    def __post_init__(self) -> None:
        if self.dp_mode not in EVALUATION_MODES:
            raise ConfigError(f"an evaluation's dp_mode must be one of {EVALUATION_MODES}, got {self.dp_mode!r}")
        check_number("noise_multiplier", self.noise_multiplier, low=0.0)
        if self.dp_mode == "off" and self.noise_multiplier != 0:
            raise ConfigError(f"noise_multiplier={self.noise_multiplier!r} but the evaluation's DP is off")
        check_int("participants", self.participants, low=3)
        check_int("n_min", self.n_min, low=1, high=self.participants)
        check_int("modulus_bits", self.modulus_bits, low=2)
        check_int("colluding_survivors", self.colluding_survivors, low=0)
        if self.dp_mode == "distributed" and self.mechanism not in DISTRIBUTED_MECHANISMS:
            raise ConfigError(f"distributed mechanism must be one of {DISTRIBUTED_MECHANISMS}, got {self.mechanism!r}")

    @property
    def noisy(self) -> bool:
        """The evaluation carries DP noise (else the sum is exact: epsilon infinite)."""
        return self.dp_mode == "distributed" and self.noise_multiplier > 0

    @property
    def adjacency(self) -> str:
        return ZERO_OUT

    @property
    def mechanism_name(self) -> str:
        return str(self.mechanism) if self.dp_mode == "distributed" else "none"

    @property
    def max_abs(self) -> int:
        """The per-client integer bound the evaluation's secure sum is sized for (guard bits included)."""
        return max_abs_for(self.participants, self.modulus_bits, vector_length=PADDED_LENGTH)

    @property
    def noise_std(self) -> float:
        """Std of the noise on each coordinate of the decoded sum (float units: a histogram bin, a count)."""
        return self.noise_multiplier * L2_BOUND

    def plan(self) -> DistributedPlan:
        """The integer plan every client encodes with and the server decodes with (computed once per release)."""
        return _plan_of(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (an accountant history entry); `EvaluationRelease(**d)` rebuilds and validates."""
        return asdict(self)

    def describe(self) -> dict[str, Any]:
        """What the evaluation released, for the audit record and the run's files."""
        return {
            **self.to_dict(),
            "l2_sensitivity": L2_BOUND,
            "noise_std_per_coordinate": self.noise_std,
            "adjacency": self.adjacency,
            "adjacency_meaning": ADJACENCY_TEXT[ZERO_OUT],
            "in_epsilon": self.noisy,
        }


@functools.lru_cache(maxsize=64)
def _plan_of(release: EvaluationRelease) -> DistributedPlan:
    """`EvaluationRelease.plan`, cached: the scale search runs once per release."""
    z, n, n_min, mech = float(release.noise_multiplier), release.participants, release.n_min, release.mechanism
    mechanism = "discrete_gaussian" if mech is None else mech

    def planned(scale: float | None = None) -> DistributedPlan:
        return plan_distributed(
            mechanism=mechanism,
            dim=VECTOR_LENGTH,
            n_clients=n,
            n_min=n_min,
            clip=L2_BOUND,
            noise_multiplier=z,
            modulus_bits=release.modulus_bits,
            beta=release.rounding_beta,
            scale=scale,
        )

    auto = planned()
    # as for a round's phases: a client's |coordinate| <= rounded L2 bound + its share's tail < max_abs
    share_std = z * L2_BOUND / math.sqrt(n_min)
    cap = (release.max_abs - math.sqrt(auto.padded_dim)) / (auto.l2_bound + SHARE_TAIL_SIGMAS * share_std)
    cap = min(cap, max_scale(l2_bound=auto.l2_bound, noise_std=z * L2_BOUND, n_min=n_min, mechanism=mechanism))
    cap = min(cap, math.sqrt(max_share_variance(mechanism) * n_min) / (z * L2_BOUND)) if z > 0 else cap
    if cap <= 0:
        raise ConfigError(f"a {release.modulus_bits}-bit modulus leaves no room for an evaluation of {n} clients")
    return auto if auto.scale <= cap else planned(cap)


def evaluation_release(spec: RoundSpec, participants: int, *, colluding_survivors: int = 0) -> EvaluationRelease:
    """The evaluation release of a round with public settings `spec` and `participants` clients: the round's
    mechanism, noise multiplier, n_min and modulus (DP off: exact, n_min 1), accounted with the noise of the
    n_min - `colluding_survivors` honest shares (the threat model's c_max). Server and clients alike."""
    distributed = spec.dp_mode == "distributed"
    if spec.dp_mode not in EVALUATION_MODES:
        raise ConfigError(f"a federated evaluation runs under secure aggregation, not with DP mode {spec.dp_mode!r}")
    return EvaluationRelease(
        dp_mode=spec.dp_mode,
        noise_multiplier=float(spec.noise_multiplier) if distributed else 0.0,
        participants=participants,
        n_min=spec.min_survivors if distributed else 1,
        modulus_bits=spec.modulus_bits,
        mechanism=spec.mechanism if distributed else None,
        colluding_survivors=colluding_survivors if distributed else 0,
    )


def evaluation_rdp_curve(release: EvaluationRelease, *, replace_one: bool = False) -> np.ndarray:
    """The RDP curve (at DISCRETE_ORDERS) of one evaluation: the discrete mechanism's bound over its plan (zero-out;
    replace-one doubles the sensitivity), counting the n_min - colluding_survivors honest shares only. Infinite at
    every order when it carries no noise (or no honest share)."""
    if not release.noisy:
        return np.full(len(DISCRETE_ORDERS), np.inf)
    return discrete_round_rdp(
        release.plan(),
        sensitivity_factor=2.0 if replace_one else 1.0,
        colluding_survivors=release.colluding_survivors,
    )


def check_evaluation_survivors(release: EvaluationRelease, survivors: int) -> None:
    """A noisy evaluation sum over fewer survivors than its noise was sized for is never decoded."""
    if release.noisy and survivors < release.n_min:
        raise PrivacyError(
            f"the evaluation sum has {survivors} survivors, fewer than the {release.n_min} its noise was sized for"
        )


__all__ = [
    "BINS",
    "EvaluationRelease",
    "KIND",
    "L2_BOUND",
    "PADDED_LENGTH",
    "REPLACE_ONE",
    "SPLITS",
    "VECTOR_LENGTH",
    "check_evaluation_survivors",
    "evaluation_rdp_curve",
    "evaluation_release",
]

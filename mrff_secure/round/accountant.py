"""One accounting for every command: what a round releases about one user, and what that costs.

`mrff privacy`, `mrff train` (`PrivacyPipeline`) and the coordinator describe a round with a
`RoundRelease` (public parameters only: mode, mechanism, C, z, the model's layout, participants,
n_min, modulus) and call :func:`account_rounds` (or :func:`calibrate_noise_multiplier` for a
target epsilon), so that a calibrated z spends exactly what the run then reports.

A round's releases (both phases under secure aggregation) are accounted together, with the count
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

Sampling: no amplification by sampling is claimed. The server learns who took part in every round
(local uploads are identified; secure aggregation has a participant list) and the simulation draws
a fixed-size subset, not a Poisson sample. The headline accounts a user who takes part in EVERY
round; a typical user's figure (q * T rounds) is shown beside it, labelled as such.

Headline: the proven bound of the mechanism actually used.
- local: the grid discrete Gaussian (`mechanisms.GridDiscreteGaussian`): its RDP is at most the
  continuous Gaussian's at the same sensitivity (including the grid's slack), converted by opacus'
  ``get_privacy_spent``, every round at q = 1.
- distributed: the RDP bounds of the distributed discrete Gaussian / Skellam (Kairouz, Liu,
  Steinke 2021; Agarwal, Kairouz, Liu 2021) over the round's integer plans (scale, padded
  lengths, n_min) from `round.encoding.secure_round_plans`, both phases.
- DP off: infinite (never 0).
The continuous Gaussian's PRV and RDP figures ("gaussian_limit") are shown for reference only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mrff_secure.dp.accounting import (
    DISCRETE_ORDERS,
    Epsilons,
    ddg_rdp,
    gaussian_epsilons,
    json_epsilon,
    rdp_epsilon,
    rdp_to_epsilon,
    skellam_rdp,
)
from mrff_secure.dp.calibration import Z_MAX, search_noise_multiplier
from mrff_secure.dp.config import DEFAULT_ROUNDING_BETA, DISTRIBUTED_MECHANISMS
from mrff_secure.dp.discretize import rounded_l1_bound, rounded_l2_bound
from mrff_secure.dp.distributed import DistributedPlan
from mrff_secure.dp.mechanisms import GRID_SLACK
from mrff_secure.dp.sensitivity import compose_noise_multipliers
from mrff_secure.errors import ConfigError, PrivacyError
from mrff_secure.round.encoding import SecureRoundPlans, secure_round_plans

RELEASE_MODES = ("off", "local", "distributed")
REPLACE_ONE = "replace-one"
ZERO_OUT = "zero-out"
ADJACENCY_TEXT = {
    REPLACE_ONE: "replace-one: one user's upload replaced by any other (the server sees identified uploads)",
    ZERO_OUT: "zero-out: one user's contribution replaced by zeros (secure aggregation; who took part is visible)",
}
SAMPLING_TEXT = ("no amplification by sampling: the server learns who takes part in a round and the simulation draws "
                 "a fixed-size subset (not Poisson); the headline accounts a user who takes part in every round")
CALIBRATION_RTOL = 1e-4
WEAK_EPSILON = 10.0  # above this the report warns: a weak guarantee


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
    single_noise_draw decide the integer plans (distributed).
    """

    dp_mode: str
    secure_aggregation: bool
    clip: float
    noise_multiplier: float
    num_blocks: int
    num_groups: int
    delta_size: int
    participants: int
    n_min: int | None = None
    mechanism: str | None = None
    modulus_bits: int = 48
    count_cap: int = 1
    rounding_beta: float = DEFAULT_ROUNDING_BETA
    single_noise_draw: bool = False

    def __post_init__(self) -> None:
        if self.dp_mode not in RELEASE_MODES:
            raise ConfigError(f"dp_mode must be one of {RELEASE_MODES}, got {self.dp_mode!r}")
        if self.dp_mode == "local" and self.secure_aggregation:
            raise ConfigError("local DP runs without secure aggregation (each noisy upload is seen)")
        if self.dp_mode == "distributed" and not self.secure_aggregation:
            raise ConfigError("distributed DP needs secure aggregation")
        for name in ("clip", "noise_multiplier"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.clip <= 0:
            raise ConfigError(f"clip must be > 0, got {self.clip!r}")
        if self.dp_mode == "off" and self.noise_multiplier != 0:
            raise ConfigError(f"noise_multiplier={self.noise_multiplier!r} but DP is off")
        for name, low in (("num_blocks", 0), ("num_groups", 0), ("delta_size", 1), ("participants", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if (self.num_blocks == 0) != (self.num_groups == 0):
            raise ConfigError(f"num_blocks={self.num_blocks}, num_groups={self.num_groups}: both 0 or both > 0")
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
        if not self.secure_aggregation:
            return None
        return secure_round_plans(
            delta_size=self.delta_size, num_blocks=self.num_blocks, num_groups=self.num_groups,
            dp_mode="distributed" if self.dp_mode == "distributed" else "off", mechanism=self.mechanism,
            clip=self.clip, noise_multiplier=self.noise_multiplier, n_clients=self.participants,
            n_min=self.n_min if self.n_min is not None else self.participants, modulus_bits=self.modulus_bits,
            count_cap=self.count_cap, rounding_beta=self.rounding_beta, single_noise_draw=self.single_noise_draw)

    def with_noise_multiplier(self, z: float) -> "RoundRelease":
        return RoundRelease(**{**self.__dict__, "noise_multiplier": float(z)})


def discrete_round_rdp(plan: DistributedPlan, *, orders: tuple[float, ...] = DISCRETE_ORDERS, sensitivity_factor: float = 1.0) -> np.ndarray:
    """RDP curve of one release under ``plan`` (zero-out; factor 2 bounds replace-one by the triangle inequality)."""
    d2 = sensitivity_factor * rounded_l2_bound(scaled_norm=plan.l2_bound * plan.scale, dim=plan.padded_dim,
                                               beta=plan.beta)
    d1 = sensitivity_factor * rounded_l1_bound(l2_bound=d2 / sensitivity_factor, dim=plan.padded_dim)
    total_std = plan.noise_multiplier * plan.clip * plan.scale
    if total_std == 0.0:
        return np.full(len(orders), np.inf)
    if plan.mechanism == "discrete_gaussian":
        return ddg_rdp(orders=orders, l2_sensitivity=d2, l1_sensitivity=d1,
                       share_sigma=total_std / math.sqrt(plan.n_min), n_shares=plan.n_min, dim=plan.padded_dim)
    return skellam_rdp(orders=orders, l2_sensitivity=d2, l1_sensitivity=d1, total_variance=total_std**2)


def _round_curve(release: RoundRelease, factor: float) -> np.ndarray:
    plans = release.plans()
    if plans is None:
        raise PrivacyError("a round without secure aggregation has no discrete RDP curve")
    curve = discrete_round_rdp(plans.update, sensitivity_factor=factor)
    if plans.counts is not None:
        curve = curve + discrete_round_rdp(plans.counts, sensitivity_factor=factor)
    return curve


def round_rdp_curve(release: RoundRelease, *, replace_one: bool = False) -> np.ndarray:
    """The RDP curve (at DISCRETE_ORDERS) of one round of a distributed release, both phases; zero-out
    adjacency, or replace-one (sensitivities doubled). For callers whose rounds differ (the coordinator)."""
    return _round_curve(release, 2.0 if replace_one else 1.0)


def _headline(release: RoundRelease, rounds: int, delta: float, *, adjacency: str | None = None,
              curve: np.ndarray | None = None) -> float:
    """The proven epsilon of ``rounds`` rounds (see the module docstring)."""
    if rounds == 0:
        return 0.0
    if release.dp_mode == "off" or release.noise_multiplier == 0:
        return math.inf
    if release.dp_mode == "local":
        return rdp_epsilon(history=[(release.accounted_noise_multiplier(), 1.0, rounds)], delta=delta)
    if curve is None:
        factor = 2.0 if (adjacency or release.adjacency) == REPLACE_ONE else 1.0
        curve = _round_curve(release, factor)
    if not np.all(np.isfinite(curve)):
        return math.inf
    return rdp_to_epsilon(orders=DISCRETE_ORDERS, rdp=curve * rounds, delta=delta)


@dataclass(frozen=True)
class PrivacyAccount:
    """What ``rounds`` rounds of a `RoundRelease` cost one user who takes part in every round."""

    epsilon: float
    delta: float
    rounds: int
    adjacency: str
    bound: str
    mechanism: str
    accounted_noise_multiplier: float
    gaussian_limit: Epsilons
    epsilon_replace_one: float | None = None  # secure aggregation: the same release under replace-one
    epsilon_per_round: float | None = None
    typical_rounds: int | None = None
    epsilon_typical: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready: every epsilon a float or "inf" (never null, never 0.0 for no guarantee). The Gaussian
        limit's ``epsilon_prv`` is the RDP bound where PRV was out of range (``accountant`` "rdp", the
        reason in ``prv_note`` and in ``notes``)."""
        j = json_epsilon
        limit = self.gaussian_limit
        notes = list(self.notes)
        if limit.prv_note and not any(limit.prv_note in n for n in notes):
            notes.append(f"Gaussian limit (reference only, at the accounted multiplier): {limit.prv_note}")
        out = {
            "epsilon": j(self.epsilon), "delta": self.delta, "rounds_accounted": self.rounds,
            "adjacency": self.adjacency, "adjacency_meaning": ADJACENCY_TEXT[self.adjacency],
            "epsilon_bound": self.bound, "mechanism": self.mechanism,
            "accounted_noise_multiplier": self.accounted_noise_multiplier,
            "gaussian_limit": {"epsilon_prv": j(limit.headline), "epsilon_rdp": j(limit.rdp),
                               "accountant": limit.accountant, "prv_note": limit.prv_note,
                               "meaning": "the continuous Gaussian at the same sensitivity and std, every round: "
                                          "reference only, not the guarantee of the mechanism used"},
            "epsilon_per_round": j(self.epsilon_per_round),
            "sampling": SAMPLING_TEXT,
            "notes": notes,
        }
        if self.epsilon_replace_one is not None:
            out["epsilon_replace_one"] = j(self.epsilon_replace_one)
        if self.typical_rounds is not None:
            out["typical_user"] = {"rounds": self.typical_rounds, "epsilon": j(self.epsilon_typical),
                                   "meaning": "a user sampled in q*T rounds (the expected number), beside the "
                                              "headline; not a guarantee for every user"}
        return out


def account_rounds(release: RoundRelease, *, rounds: int, delta: float, sample_rate: float = 1.0) -> PrivacyAccount:
    """The epsilon of ``rounds`` rounds of ``release`` for a user in every round (the one accountant).

    sample_rate (the fraction of clients per round) only adds the labelled typical-user figure at
    max(1, round(q * rounds)) rounds; it never amplifies the headline.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise PrivacyError(f"rounds must be an integer >= 0, got {rounds!r}")
    if not 0.0 < sample_rate <= 1.0:
        raise PrivacyError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    z_acc = release.accounted_noise_multiplier()
    curve = None
    if release.dp_mode == "distributed" and release.noise_multiplier > 0:
        curve = _round_curve(release, 1.0)
    eps = _headline(release, rounds, delta, curve=curve)
    limit = gaussian_epsilons(history=[(z_acc, 1.0, rounds)], delta=delta)
    notes: list[str] = []
    if release.dp_mode == "off":
        bound = "none: DP is off (no noise, no guarantee)"
        notes.append("DP off: no clipping noise, no guarantee; epsilon is infinite (never 0)")
    elif release.dp_mode == "local":
        bound = ("RDP of the grid discrete Gaussian (at most the continuous Gaussian's; Canonne, Kamath, Steinke 2020) "
                 "with replace-one sensitivity sqrt(4C^2 + 2B + 1) + 2^-20 C, every round, opacus conversion")
        notes.append("the discrete Gaussian sampler's acceptance test is computed in float64, not exact arithmetic")
    else:
        bound = (f"RDP of the distributed {release.mechanism} (integer mechanism as encoded: scale, rounding, "
                 "n_min shares), both phases per round, every round")
    replace_one = None
    if release.secure_aggregation:
        replace_one = _headline(release, rounds, delta, adjacency=REPLACE_ONE) if release.dp_mode == "distributed" \
            else math.inf
    per_round = _headline(release, 1, delta, curve=curve)
    typical_rounds = typical = None
    if sample_rate < 1.0 and rounds:
        typical_rounds = max(1, round(sample_rate * rounds))
        typical = _headline(release, typical_rounds, delta, curve=curve)
    return PrivacyAccount(
        epsilon=eps, delta=float(delta), rounds=rounds, adjacency=release.adjacency, bound=bound,
        mechanism=release.mechanism_name, accounted_noise_multiplier=z_acc, gaussian_limit=limit,
        epsilon_replace_one=replace_one, epsilon_per_round=per_round, typical_rounds=typical_rounds,
        epsilon_typical=typical, notes=tuple(notes))


@dataclass(frozen=True)
class Calibration:
    """A calibrated noise multiplier, the headline epsilon it spends, and what the search had to say."""

    noise_multiplier: float
    epsilon: float
    target_epsilon: float
    notes: tuple[str, ...] = ()


def _round_up(z: float, digits: int = 6) -> float:
    """z rounded up to ``digits`` significant digits (so that the printed z is the z accounted)."""
    if z <= 0 or not math.isfinite(z):
        return z
    exponent = math.floor(math.log10(z)) - digits + 1
    unit = 10.0**exponent
    return float(f"{math.ceil(z / unit - 1e-9) * unit:.{digits}g}")


def calibrate_release(release: RoundRelease, *, target_epsilon: float, rounds: int, delta: float) -> Calibration:
    """The smallest z (to CALIBRATION_RTOL, rounded up to 6 significant digits) whose headline epsilon over
    ``rounds`` rounds is <= target: the proven bound of the mechanism used (local: the grid discrete
    Gaussian's RDP; distributed: the discrete Gaussian's / Skellam's RDP over the integer plans, rebuilt
    for every z as the clients would), never its Gaussian limit. So accounting the returned z gives at
    most the target, and close to it (z to 1e-4 relative).

    ``release``'s own noise_multiplier is ignored. z is searched in [Z_MIN, Z_MAX] (every call a closed
    form, the search bounded in time): a target that even Z_MAX misses is refused (ConfigError naming
    --target-epsilon); a target above what Z_MIN spends is answered with Z_MIN and a note.
    """
    if release.dp_mode == "off":
        raise ConfigError("a target epsilon needs DP (local or distributed)")
    if isinstance(target_epsilon, bool) or not isinstance(target_epsilon, (int, float)) \
            or not math.isfinite(target_epsilon) or target_epsilon <= 0:
        raise PrivacyError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise PrivacyError(f"rounds must be an integer >= 1, got {rounds!r}")
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0.0 < delta < 1.0:
        raise PrivacyError(f"delta must be in (0, 1), got {delta!r}")
    target = float(target_epsilon)
    unusable: list[str] = []

    def eps(z: float) -> float:
        try:
            value = _headline(release.with_noise_multiplier(z), rounds, delta)
        except PrivacyError as exc:  # e.g. a share too fine for the modulus: treat as unusable
            unusable.append(str(exc))
            return math.inf
        return math.inf if math.isnan(value) else value

    # start: the Gaussian whose accounted multiplier (linear in z) spends the target, by its RDP closed form
    ratio = release.with_noise_multiplier(1.0).accounted_noise_multiplier()
    log_inv = math.log(1.0 / delta)
    a = -math.sqrt(2.0 * log_inv) + math.sqrt(2.0 * log_inv + 2.0 * target)
    start = math.sqrt(rounds) / a / ratio if a > 0 and ratio > 0 else 1.0
    try:
        found = search_noise_multiplier(eps, target_epsilon=target, start=start, rtol=CALIBRATION_RTOL)
    except PrivacyError as exc:
        bound = "discrete bound" if release.dp_mode == "distributed" else "RDP bound"
        why = (f"the integer plan is unusable up to z = {Z_MAX:g} ({unusable[-1]})" if unusable and "spends inf" in str(exc)
               else f"even z = {Z_MAX:g} spends more ({exc})")
        raise ConfigError(f"--target-epsilon {target:g} cannot be reached over {rounds} rounds at delta {delta:.3g} "
                          f"under the {release.mechanism_name} {bound}: {why}; raise --target-epsilon or --delta, "
                          "or lower --rounds") from exc
    z, e = found.noise_multiplier, found.epsilon
    notes: list[str] = []
    if found.status == "at_min":
        notes.append(found.note(target, "headline epsilon") or "")
    elif found.status == "time_budget":
        notes.append(found.note(target) or "")
    rounded = _round_up(z)
    if rounded != z and rounded <= Z_MAX:
        e_rounded = eps(rounded)
        if e_rounded <= target:
            z, e = rounded, e_rounded
    if not e <= target:  # unreachable: the search only returns z it saw spend <= target
        raise PrivacyError(f"calibration failed to reach epsilon {target:g} (z = {z:g} spends {e:.4g})")
    return Calibration(noise_multiplier=z, epsilon=e, target_epsilon=target, notes=tuple(n for n in notes if n))


def calibrate_noise_multiplier(release: RoundRelease, *, target_epsilon: float, rounds: int, delta: float) -> float:
    """z of :func:`calibrate_release` (its headline epsilon over ``rounds`` rounds is <= target, and close)."""
    return calibrate_release(release, target_epsilon=target_epsilon, rounds=rounds, delta=delta).noise_multiplier


def privacy_warnings(*, epsilon: float, delta: float, noise_multiplier: float, n_users: int | None = None,
                     weak_epsilon: float = WEAK_EPSILON) -> list[str]:
    """The warnings every privacy report carries: no noise, a weak epsilon (> 10), delta >= 1/n for n users."""
    out: list[str] = []
    if noise_multiplier == 0:
        out.append("no noise (z = 0): no privacy guarantee, epsilon is inf")
    elif math.isnan(epsilon) or epsilon > weak_epsilon:
        shown = "inf" if math.isnan(epsilon) or math.isinf(epsilon) else f"{epsilon:.4g}"
        out.append(f"epsilon {shown} > {weak_epsilon:g}: a weak guarantee (an attacker's odds of telling whether a "
                   f"user took part can grow by up to e^{shown})")
    if n_users is not None and n_users >= 1 and delta >= 1.0 / n_users:
        out.append(f"delta {delta:.3g} >= 1/n = {1.0 / n_users:.3g} (n = {n_users} users): a mechanism that publishes "
                   "one random user's data in full meets this delta; use delta < 1/n (default 1/n^1.1)")
    return out


class RunAccountant:
    """The thin stateful side of :func:`account_rounds`: the rounds released so far and their epsilon.

    The per-round discrete RDP curve is computed once, so recording a round is cheap.
    """

    def __init__(self, release: RoundRelease, *, delta: float, sample_rate: float = 1.0) -> None:
        if not (isinstance(delta, (int, float)) and 0.0 < delta < 1.0):
            raise PrivacyError(f"delta must be in (0, 1), got {delta!r}")
        self.release, self.delta, self.sample_rate = release, float(delta), float(sample_rate)
        self.rounds = 0
        self._curve = (_round_curve(release, 1.0)
                       if release.dp_mode == "distributed" and release.noise_multiplier > 0 else None)

    def epsilon(self, rounds: int | None = None) -> float:
        """The headline epsilon after ``rounds`` rounds (default: those recorded)."""
        return _headline(self.release, self.rounds if rounds is None else rounds, self.delta, curve=self._curve)

    def record_round(self) -> float:
        """One more round released; returns the headline epsilon so far."""
        self.rounds += 1
        return self.epsilon()

    def account(self) -> PrivacyAccount:
        return account_rounds(self.release, rounds=self.rounds, delta=self.delta, sample_rate=self.sample_rate)

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state for checkpoints: the rounds recorded (the release is the run's configuration)."""
        return {"version": 1, "rounds": self.rounds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rounds = state.get("rounds") if isinstance(state, dict) else None
        if not isinstance(state, dict) or state.get("version") != 1 or isinstance(rounds, bool) \
                or not isinstance(rounds, int) or rounds < 0:
            raise PrivacyError("unsupported accountant state (expected {'version': 1, 'rounds': n >= 0})")
        self.rounds = rounds

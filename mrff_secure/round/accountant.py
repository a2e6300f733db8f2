"""What rounds cost one user: the accountant of a run (a history of round releases and federated evaluations, in
the shape of opacus' accountants), the account it reports, and the calibration of z to a target epsilon.

`mrff privacy`, `mrff train` (`PrivacyPipeline`) and the coordinator describe each round with a
`round.release.RoundRelease` and account the history of their rounds here, so that a calibrated z
spends exactly what the run then reports; a client's own ledger accounts its releases the same way.

Sampling: no amplification by sampling is claimed. The server learns who took part in every round
(local uploads are identified; secure aggregation has a participant list) and the simulation draws
a fixed-size subset, not a Poisson sample. The headline accounts a user who takes part in EVERY
round; a typical user's figure (q * T rounds) is shown beside it, labelled as such.

Headline: the proven bound of the mechanism actually used.
- local: the grid discrete Gaussian (`dp.mechanisms.GridDiscreteGaussian`): its RDP is at most the
  continuous Gaussian's at the same sensitivity (including the grid's slack), converted by opacus'
  ``get_privacy_spent``, every round at q = 1.
- distributed: the RDP curves of the rounds' integer plans (`round.release.round_rdp_curve`) and of the
  federated evaluations' (`round.evaluation_release.evaluation_rdp_curve`), summed over the history and
  converted once.
- DP off (or z = 0) in any round: infinite (never 0).
The continuous Gaussian's PRV and RDP figures ("gaussian_limit") are shown for reference only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mrff_secure.checks import check_int, check_number
from mrff_secure.dp.accounting import (
    DISCRETE_ORDERS,
    Epsilons,
    gaussian_epsilons,
    json_epsilon,
    rdp_epsilon,
    rdp_to_epsilon,
)
from mrff_secure.dp.calibration import Z_MAX, search_noise_multiplier
from mrff_secure.errors import ConfigError, PrivacyError
from mrff_secure.round.evaluation_release import KIND as EVALUATION_KIND
from mrff_secure.round.evaluation_release import EvaluationRelease, evaluation_rdp_curve
from mrff_secure.round.release import ADJACENCY_TEXT, RoundRelease, round_rdp_curve

SAMPLING_TEXT = (
    "no amplification by sampling: the server learns who takes part in a round and the simulation draws "
    "a fixed-size subset (not Poisson); the headline accounts a user who takes part in every round"
)
CALIBRATION_RTOL = 1e-4
WEAK_EPSILON = 10.0  # above this the report warns: a weak guarantee
STATE_VERSION = 3  # version 3: each history entry names its kind ("round" or "evaluation"); 2 still loads
ROUND_KIND = "round"

Release = RoundRelease | EvaluationRelease  # a history entry's release: a training round or a federated evaluation
History = Sequence[tuple[Release, int]]


def release_rdp_curve(release: Release, replace_one: bool = False) -> np.ndarray:
    """The RDP curve (at DISCRETE_ORDERS) of one distributed release: a round's two phases or one evaluation."""
    if isinstance(release, EvaluationRelease):
        return evaluation_rdp_curve(release, replace_one=replace_one)
    return round_rdp_curve(release, replace_one=replace_one)


def release_kind(release: Release) -> str:
    return EVALUATION_KIND if isinstance(release, EvaluationRelease) else ROUND_KIND


def history_epsilon(
    history: History,
    *,
    delta: float,
    replace_one: bool = False,
    curve_of: Callable[[Release, bool], np.ndarray] | None = None,
) -> float:
    """The proven epsilon of a history [(release, times)] of rounds and evaluations (see the module docstring).
    `curve_of(release, replace_one)` gives a distributed release's RDP curve (default: `release_rdp_curve`;
    accountants cache it)."""
    spent = [(release, rounds) for release, rounds in history if rounds]
    if not spent:
        return 0.0
    if any(not release.noisy for release, _ in spent):
        return math.inf
    modes = {release.dp_mode for release, _ in spent}
    if modes == {"local"}:
        local = [(r, n) for r, n in spent if isinstance(r, RoundRelease)]
        if len(local) != len(spent):
            raise PrivacyError("a local-DP history has no federated evaluation release")
        return rdp_epsilon(history=[(r.accounted_noise_multiplier(), 1.0, n) for r, n in local], delta=delta)
    if modes != {"distributed"}:
        raise PrivacyError(f"a history mixes DP modes {sorted(modes)}: account each run on its own")
    curve = curve_of or release_rdp_curve
    total = np.zeros(len(DISCRETE_ORDERS))
    for release, rounds in spent:
        total = total + curve(release, replace_one) * rounds
    if not np.all(np.isfinite(total)):
        return math.inf
    return rdp_to_epsilon(orders=DISCRETE_ORDERS, rdp=total, delta=delta)


def _headline(
    release: RoundRelease,
    rounds: int,
    delta: float,
    *,
    replace_one: bool = False,
    curve_of: Callable[[Release, bool], np.ndarray] | None = None,
) -> float:
    """The proven epsilon of ``rounds`` rounds of one release."""
    return history_epsilon([(release, rounds)], delta=delta, replace_one=replace_one, curve_of=curve_of)


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
            "epsilon": j(self.epsilon),
            "delta": self.delta,
            "rounds_accounted": self.rounds,
            "adjacency": self.adjacency,
            "adjacency_meaning": ADJACENCY_TEXT[self.adjacency],
            "epsilon_bound": self.bound,
            "mechanism": self.mechanism,
            "accounted_noise_multiplier": self.accounted_noise_multiplier,
            "gaussian_limit": {
                "epsilon_prv": j(limit.headline),
                "epsilon_rdp": j(limit.rdp),
                "accountant": limit.accountant,
                "prv_note": limit.prv_note,
                "meaning": "the continuous Gaussian at the same sensitivity and std, every round: "
                "reference only, not the guarantee of the mechanism used",
            },
            "epsilon_per_round": j(self.epsilon_per_round),
            "sampling": SAMPLING_TEXT,
            "notes": notes,
        }
        if self.epsilon_replace_one is not None:
            out["epsilon_replace_one"] = j(self.epsilon_replace_one)
        if self.typical_rounds is not None:
            out["typical_user"] = {
                "rounds": self.typical_rounds,
                "epsilon": j(self.epsilon_typical),
                "meaning": "a user sampled in q*T rounds (the expected number), beside the "
                "headline; not a guarantee for every user",
            }
        return out


def account_rounds(release: RoundRelease, *, rounds: int, delta: float, sample_rate: float = 1.0) -> PrivacyAccount:
    """The epsilon of ``rounds`` rounds of ``release`` for a user in every round (the one accountant).

    sample_rate (the fraction of clients per round) only adds the labelled typical-user figure at
    max(1, round(q * rounds)) rounds; it never amplifies the headline.
    """
    check_int("rounds", rounds, low=0, error=PrivacyError)
    check_number("sample_rate", sample_rate, low=0.0, high=1.0, low_open=True, error=PrivacyError)
    z_acc = release.accounted_noise_multiplier()
    cached: dict[bool, np.ndarray] = {}

    def curve(r: Release, replace: bool) -> np.ndarray:
        if replace not in cached:
            cached[replace] = release_rdp_curve(r, replace)
        return cached[replace]

    eps = _headline(release, rounds, delta, curve_of=curve)
    limit = gaussian_epsilons(history=[(z_acc, 1.0, rounds)], delta=delta)
    notes: list[str] = []
    if release.dp_mode == "off":
        bound = "none: DP is off (no noise, no guarantee)"
        notes.append("DP off: no clipping noise, no guarantee; epsilon is infinite (never 0)")
    elif release.dp_mode == "local":
        bound = (
            "RDP of the grid discrete Gaussian (at most the continuous Gaussian's; Canonne, Kamath, Steinke 2020) "
            "with replace-one sensitivity sqrt(4C^2 + 2B + 1) + 2^-20 C, every round, opacus conversion"
        )
        notes.append("the discrete Gaussian sampler's acceptance test is computed in float64, not exact arithmetic")
    else:
        bound = (
            f"RDP of the distributed {release.mechanism} (integer mechanism as encoded: scale, rounding, "
            "n_min shares), both phases per round, every round"
        )
    replace_one = None
    if release.secure_aggregation:
        replace_one = (
            _headline(release, rounds, delta, replace_one=True) if release.dp_mode == "distributed" else math.inf
        )
    per_round = _headline(release, 1, delta, curve_of=curve)
    typical_rounds = typical = None
    if sample_rate < 1.0 and rounds:
        typical_rounds = max(1, round(sample_rate * rounds))
        typical = _headline(release, typical_rounds, delta, curve_of=curve)
    return PrivacyAccount(
        epsilon=eps,
        delta=float(delta),
        rounds=rounds,
        adjacency=release.adjacency,
        bound=bound,
        mechanism=release.mechanism_name,
        accounted_noise_multiplier=z_acc,
        gaussian_limit=limit,
        epsilon_replace_one=replace_one,
        epsilon_per_round=per_round,
        typical_rounds=typical_rounds,
        epsilon_typical=typical,
        notes=tuple(notes),
    )


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


def calibrate_release(
    release: RoundRelease,
    *,
    target_epsilon: float,
    rounds: int,
    delta: float,
    evaluation: EvaluationRelease | None = None,
    evaluations: int = 0,
) -> Calibration:
    """The smallest z (to CALIBRATION_RTOL, rounded up to 6 significant digits) whose headline epsilon over
    ``rounds`` rounds is <= target: the proven bound of the mechanism used (local: the grid discrete
    Gaussian's RDP; distributed: the discrete Gaussian's / Skellam's RDP over the integer plans, rebuilt
    for every z as the clients would), never its Gaussian limit. So accounting the returned z gives at
    most the target, and close to it (z to 1e-4 relative).

    ``evaluation`` / ``evaluations``: a run that also releases this many federated evaluations (at the same z)
    is calibrated so that its rounds and its evaluations together spend at most the target.

    ``release``'s own noise_multiplier is ignored. z is searched in [Z_MIN, Z_MAX] (every call a closed
    form, the search bounded in time): a target that even Z_MAX misses is refused (ConfigError naming
    --target-epsilon); a target above what Z_MIN spends is answered with Z_MIN and a note.
    """
    if release.dp_mode == "off":
        raise ConfigError("a target epsilon needs DP (local or distributed)")
    check_number("target_epsilon", target_epsilon, low=0.0, low_open=True, error=PrivacyError)
    check_int("rounds", rounds, low=1, error=PrivacyError)
    check_number("delta", delta, low=0.0, high=1.0, low_open=True, high_open=True, error=PrivacyError)
    target = float(target_epsilon)
    unusable: list[str] = []

    def eps(z: float) -> float:
        try:
            history: list[tuple[Release, int]] = [(release.with_noise_multiplier(z), rounds)]
            if evaluation is not None and evaluations > 0:
                history.append((dataclasses.replace(evaluation, noise_multiplier=z), evaluations))
            value = history_epsilon(history, delta=delta)
        except (PrivacyError, ConfigError) as exc:  # e.g. a share too fine for the modulus: treat as unusable
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
        why = (
            f"the integer plan is unusable up to z = {Z_MAX:g} ({unusable[-1]})"
            if unusable and "spends inf" in str(exc)
            else f"even z = {Z_MAX:g} spends more ({exc})"
        )
        raise ConfigError(
            f"--target-epsilon {target:g} cannot be reached over {rounds} rounds at delta {delta:.3g} "
            f"under the {release.mechanism_name} {bound}: {why}; raise --target-epsilon or --delta, "
            "or lower --rounds"
        ) from exc
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


def run_noise_multiplier(
    template: RoundRelease, *, noise_multiplier: float | None, target_epsilon: float | None, rounds: int, delta: float
) -> float:
    """A run's z: 0 without DP, the one given, or the one calibrated (`calibrate_noise_multiplier`) so that
    ``rounds`` rounds of ``template`` spend ``target_epsilon``."""
    if template.dp_mode == "off":
        return 0.0
    if noise_multiplier is not None:
        return float(noise_multiplier)
    if target_epsilon is None:
        raise PrivacyError("DP needs a noise multiplier or a target epsilon")
    return calibrate_noise_multiplier(template, target_epsilon=target_epsilon, rounds=max(rounds, 1), delta=delta)


def privacy_warnings(
    *,
    epsilon: float,
    delta: float,
    noise_multiplier: float,
    n_users: int | None = None,
    weak_epsilon: float = WEAK_EPSILON,
) -> list[str]:
    """The warnings every privacy report carries: no noise, a weak epsilon (> 10), delta >= 1/n for n users."""
    out: list[str] = []
    if noise_multiplier == 0:
        out.append("no noise (z = 0): no privacy guarantee, epsilon is inf")
    elif math.isnan(epsilon) or epsilon > weak_epsilon:
        shown = "inf" if math.isnan(epsilon) or math.isinf(epsilon) else f"{epsilon:.4g}"
        out.append(
            f"epsilon {shown} > {weak_epsilon:g}: a weak guarantee (an attacker's odds of telling whether a "
            f"user took part can grow by up to e^{shown})"
        )
    if n_users is not None and n_users >= 1 and delta >= 1.0 / n_users:
        out.append(
            f"delta {delta:.3g} >= 1/n = {1.0 / n_users:.3g} (n = {n_users} users): a mechanism that publishes "
            "one random user's data in full meets this delta; use delta < 1/n (default 1/n^1.1)"
        )
    return out


class RoundAccountant:
    """The accountant of a run: the history of its releases [(release, times)], training rounds (`RoundRelease`)
    and federated evaluations (`EvaluationRelease`), in the shape of opacus' accountants (consecutive equal
    releases share one entry), their epsilon converted once from the summed RDP curves, and a JSON-able
    `state_dict` for checkpoints. Used by the simulation and the coordinator."""

    def __init__(self, *, delta: float, sample_rate: float = 1.0) -> None:
        check_number("delta", delta, low=0.0, high=1.0, low_open=True, high_open=True, error=PrivacyError)
        check_number("sample_rate", sample_rate, low=0.0, high=1.0, low_open=True, error=PrivacyError)
        self.delta, self.sample_rate = float(delta), float(sample_rate)
        self.history: list[tuple[Release, int]] = []
        self._curves: dict[tuple[Release, bool], np.ndarray] = {}

    def step(self, *, release: Release) -> float:
        """One more release (a round, or a federated evaluation); returns the headline epsilon so far."""
        if self.history and self.history[-1][0] == release:
            self.history[-1] = (release, self.history[-1][1] + 1)
        else:
            self.history.append((release, 1))
        return self.epsilon()

    @property
    def rounds(self) -> int:
        """Training rounds accounted (evaluations not counted: see `evaluations`)."""
        return sum(rounds for release, rounds in self.history if isinstance(release, RoundRelease))

    @property
    def evaluations(self) -> int:
        """Federated evaluations accounted."""
        return sum(times for release, times in self.history if isinstance(release, EvaluationRelease))

    @property
    def noiseless_rounds(self) -> int:
        """Rounds released without noise (any one makes epsilon infinite)."""
        return sum(
            rounds for release, rounds in self.history if isinstance(release, RoundRelease) and not release.noisy
        )

    @property
    def noiseless_evaluations(self) -> int:
        """Evaluations released exactly (DP off: any one makes epsilon infinite)."""
        return sum(t for release, t in self.history if isinstance(release, EvaluationRelease) and not release.noisy)

    def _curve(self, release: Release, replace_one: bool) -> np.ndarray:
        key = (release, replace_one)
        if key not in self._curves:
            self._curves[key] = release_rdp_curve(release, replace_one)
        return self._curves[key]

    def epsilon(self, *, replace_one: bool = False, extra: Sequence[Release] = ()) -> float:
        """The headline epsilon of the history (replace_one: the same releases under replace-one adjacency);
        `extra`: releases not made yet, added to it (what the history would cost with them)."""
        history = list(self.history) + [(release, 1) for release in extra] if extra else self.history
        return history_epsilon(history, delta=self.delta, replace_one=replace_one, curve_of=self._curve)

    def account(self) -> PrivacyAccount:
        """The account of a history of one release (`account_rounds`): the simulation's rounds."""
        releases = {release for release, _ in self.history}
        only = releases.pop() if len(releases) == 1 else None
        if not isinstance(only, RoundRelease):
            raise PrivacyError(
                "account() describes a history of one release, a round; this one has "
                f"{len(releases) + (only is not None)} releases, or an evaluation (use epsilon())"
            )
        return account_rounds(only, rounds=self.rounds, delta=self.delta, sample_rate=self.sample_rate)

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: delta, sample rate and the history (each entry's kind, its release's public fields, how
        many times it was released)."""
        return {
            "version": STATE_VERSION,
            "delta": self.delta,
            "sample_rate": self.sample_rate,
            "history": [
                {"kind": release_kind(release), "release": release.to_dict(), "rounds": rounds}
                for release, rounds in self.history
            ],
        }

    def load_state_dict(self, state: dict[str, Any], *, release_of_counted_rounds: RoundRelease | None = None) -> None:
        """Restore `state_dict`'s state; PrivacyError naming what is wrong (the history is revalidated).

        release_of_counted_rounds: a run whose every round has one release may also restore the state of
        checkpoints written before the accountant kept a history (version 1: only a round count). Version 2 (rounds
        only, no kinds) loads as a history of rounds."""
        if release_of_counted_rounds is not None and isinstance(state, dict) and state.get("version") == 1:
            rounds = check_int("the accountant state's rounds", state.get("rounds"), low=0, error=PrivacyError)
            self.history = [(release_of_counted_rounds, rounds)] if rounds else []
            return
        try:
            if not isinstance(state, dict) or state.get("version") not in (2, STATE_VERSION):
                raise ValueError(f"expected version 2 or {STATE_VERSION}")
            history: list[tuple[Release, int]] = []
            for entry in state["history"]:
                rounds = check_int("rounds", entry["rounds"], low=1, error=PrivacyError)
                kind = entry.get("kind", ROUND_KIND) if state["version"] == STATE_VERSION else ROUND_KIND
                if kind == ROUND_KIND:
                    history.append((RoundRelease(**entry["release"]), rounds))
                elif kind == EVALUATION_KIND:
                    history.append((EvaluationRelease(**entry["release"]), rounds))
                else:
                    raise ValueError(f"unknown history entry kind {kind!r}")
            delta, sample_rate = float(state["delta"]), float(state["sample_rate"])
        except (KeyError, TypeError, ValueError, ConfigError, PrivacyError) as exc:
            raise PrivacyError(f"unreadable accountant state: {exc}") from exc
        if delta != self.delta:
            raise PrivacyError(f"the accountant state is for delta {delta}, this run's is {self.delta}")
        self.sample_rate, self.history = sample_rate, history

"""Calibration from a target (epsilon, delta) to the noise multiplier z.

target -> z: a bracketed search over z in [Z_MIN, Z_MAX] (:func:`search_noise_multiplier`), used by
the one accounting of a round in `round.accountant`. It returns the smallest z found whose epsilon
is <= the target, so accounting the returned z gives at most the target (and close to it). The
search stops at a time budget with the best valid z found so far (and a note). A target no z in
range reaches is refused; a target so large that even Z_MIN spends less is answered with Z_MIN (a
valid bound) and a note. z -> epsilon: `round.accountant.account_rounds`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from mrff_secure.errors import PrivacyError

Z_MIN = 1e-3  # noise std 1/1000 of the clip bound: epsilons in the millions; no calibration goes below
Z_MAX = 1e6  # opacus' own ceiling (MAX_SIGMA)
CALIBRATION_SECONDS = 4.0  # time budget of one calibration; past it, the best valid z so far is returned


@dataclass(frozen=True)
class SearchResult:
    """The outcome of :func:`search_noise_multiplier`.

    noise_multiplier: the smallest z found with epsilon(z) <= target; epsilon: its epsilon;
    status: "converged", "at_min" (even the smallest z spends at most the target: z = that bound), or
    "time_budget" (stopped early: still a valid z, but perhaps larger than needed);
    lower: the largest z seen whose epsilon exceeds the target (None for "at_min"); evaluations: calls made.
    """

    noise_multiplier: float
    epsilon: float
    status: str
    lower: float | None
    evaluations: int

    def note(self, target_epsilon: float, what: str = "epsilon") -> str | None:
        """A sentence for the report's notes where the search did not simply converge."""
        if self.status == "at_min":
            return (
                f"target epsilon {target_epsilon:g} is above the {what} {self.epsilon:.4g} of the smallest noise "
                f"multiplier the calibration considers (z = {self.noise_multiplier:g}): z = "
                f"{self.noise_multiplier:g} is used and its epsilon reported"
            )
        if self.status == "time_budget":
            return (
                f"calibration stopped at its {CALIBRATION_SECONDS:g} s budget after {self.evaluations} accountant "
                f"calls: z = {self.noise_multiplier:.6g} spends {self.epsilon:.4g} <= {target_epsilon:g} (valid), "
                f"the smallest such z is above {self.lower:.6g}"
            )
        return None


def _log_interpolate(lo: float, e_lo: float, hi: float, e_hi: float, target: float) -> float | None:
    """Where log epsilon crosses log target on the line through the bracket's ends (log z axis)."""
    if not (math.isfinite(e_lo) and math.isfinite(e_hi) and e_hi > 0 and e_lo > e_hi):
        return None
    t = (math.log(e_lo) - math.log(target)) / (math.log(e_lo) - math.log(e_hi))
    t = min(max(t, 0.02), 0.98)
    return math.exp(math.log(lo) + t * (math.log(hi) - math.log(lo)))


def search_noise_multiplier(
    eps: Callable[[float], float],
    *,
    target_epsilon: float,
    start: float,
    rtol: float = 1e-4,
    epsilon_tolerance: float | None = None,
    z_min: float = Z_MIN,
    z_max: float = Z_MAX,
    time_budget: float = CALIBRATION_SECONDS,
    first_factor: float = 2.0,
) -> SearchResult:
    """The smallest z in [z_min, z_max] (to ``rtol``, or until target - epsilon <= ``epsilon_tolerance``)
    with eps(z) <= target_epsilon, for an epsilon that falls as z grows (a non-monotone eps only
    loosens the result: the z returned always had eps(z) <= target when evaluated).

    The bracket grows from ``start`` by factors f, f^2, f^4, ... (f = ``first_factor``: a few calls even
    for a far start), then log-log interpolation with a probe just across each guess narrows it
    (usually 3-9 calls in all), with a bisection step wherever that did not halve the bracket; past
    ``time_budget`` seconds the best valid z so far is returned ("time_budget"). PrivacyError when even
    z_max spends more than the target.
    """
    deadline = time.monotonic() + time_budget
    calls = 0

    def f(z: float) -> float:
        nonlocal calls
        calls += 1
        value = eps(z)
        return math.inf if math.isnan(value) else value

    z = min(max(start if math.isfinite(start) and start > 0 else 1.0, z_min), z_max)
    e = f(z)
    factor = float(first_factor)
    # the bracket [lower, upper] is open on one side until the first doubling crosses the target
    lower: float | None
    upper: float | None
    if e <= target_epsilon:
        upper, e_hi, lower, e_lo = z, e, None, math.inf
        while upper > z_min:
            cand = max(upper / factor, z_min)
            e_c = f(cand)
            if e_c > target_epsilon:
                lower, e_lo = cand, e_c
                break
            upper, e_hi = cand, e_c
            factor *= factor
        if lower is None:
            return SearchResult(upper, e_hi, "at_min", None, calls)
    else:
        lower, e_lo, upper, e_hi = z, e, None, math.inf
        while lower < z_max:
            cand = min(lower * factor, z_max)
            e_c = f(cand)
            if e_c <= target_epsilon:
                upper, e_hi = cand, e_c
                break
            lower, e_lo = cand, e_c
            factor *= factor
        if upper is None:
            raise PrivacyError(f"cannot reach epsilon {target_epsilon:g}: even z = {z_max:g} spends {e_lo:.4g}")
    lo: float = lower
    hi: float = upper

    def done() -> bool:
        if hi / lo <= 1.0 + rtol:
            return True
        return epsilon_tolerance is not None and target_epsilon - e_hi <= epsilon_tolerance

    def take(p: float) -> bool:
        """Evaluate p inside the bracket and move one end to it; True when p spends at most the target."""
        nonlocal lo, e_lo, hi, e_hi
        e_p = f(p)
        if e_p <= target_epsilon:
            hi, e_hi = p, e_p
            return True
        lo, e_lo = p, e_p
        return False

    while not done():
        if time.monotonic() > deadline:
            return SearchResult(hi, e_hi, "time_budget", lo, calls)
        width = math.log(hi / lo)
        guess = _log_interpolate(lo, e_lo, hi, e_hi, target_epsilon)
        if guess is not None and lo < guess < hi:
            below = take(guess)
            # a probe just across the guess (rtol / 2 away): where the guess was good, it closes the bracket
            probe = guess / (1.0 + rtol / 2.0) if below else guess * (1.0 + rtol / 2.0)
            if not done() and lo < probe < hi:
                take(probe)
        if not done() and math.log(hi / lo) > 0.5 * width:  # interpolation did not halve it: bisect once
            take(math.sqrt(lo * hi))
    return SearchResult(hi, e_hi, "converged", lo, calls)

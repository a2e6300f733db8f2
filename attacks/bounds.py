"""Empirical epsilon lower bounds from a membership test (Jagielski et al. 2020; Nasr et al. 2021).

A mechanism that is (epsilon, delta)-DP makes any test's rates satisfy TPR <= e^epsilon FPR + delta
(and TNR <= e^epsilon FNR + delta). From a test's counts on canaries, Clopper-Pearson bounds on the
rates give a lower bound on epsilon that holds with the stated confidence. Both directions are
tried and the larger taken, so each of the four rates gets alpha / 4 (Bonferroni): the result holds
with probability >= 1 - alpha. The threshold must be chosen on other canaries than those it is
evaluated on (`split_half_bound`), never as the best of a grid on the same ones.

Also here: Gaussian DP conversions (`gdp_delta`, `gdp_epsilon`, `gdp_mu`); the one-run audits, which use
all m canaries at once (`one_run_epsilon_bound`: Steinke, Nasr, Jagielski 2023 with delta > 0;
`fdp_one_run_mu_bound`: Mahloujifar, Melis, Chaudhuri 2024 on Gaussian and (epsilon, delta) curves);
`max_certifiable`, what m canaries can certify at best; and two mechanism checks against known quantities
(`variance_shortfall_test`, `known_shift_test`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import special, stats

from mrff_secure.checks import check_number
from mrff_secure.errors import ConfigError


def clopper_pearson(successes: int, trials: int, alpha: float) -> tuple[float, float]:
    """One-sided bounds at level alpha each: (lower, upper) on the success probability."""
    if trials < 0 or not 0 <= successes <= trials:
        raise ConfigError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    check_number("alpha", alpha, low=0.0, high=1.0, low_open=True, high_open=True)
    lower = 0.0 if successes == 0 else float(stats.beta.ppf(alpha, successes, trials - successes + 1))
    upper = 1.0 if successes == trials else float(stats.beta.ppf(1 - alpha, successes + 1, trials - successes))
    return lower, upper


def _one_direction(hits: int, positives: int, false_hits: int, negatives: int, delta: float, alpha: float) -> float:
    rate_lo, _ = clopper_pearson(hits, positives, alpha)
    _, false_hi = clopper_pearson(false_hits, negatives, alpha)
    if rate_lo <= delta or false_hi <= 0.0:
        return 0.0
    return max(0.0, math.log((rate_lo - delta) / false_hi))


def epsilon_lower_bound(tp: int, fn: int, fp: int, tn: int, *, delta: float, alpha: float = 0.05) -> float:
    """The (1 - alpha)-confidence lower bound on epsilon from a test's confusion counts."""
    if min(tp, fn, fp, tn) < 0 or tp + fn == 0 or fp + tn == 0:
        raise ConfigError(f"need canaries of both kinds, got tp={tp} fn={fn} fp={fp} tn={tn}")
    a = alpha / 4
    return max(_one_direction(tp, tp + fn, fp, fp + tn, delta, a), _one_direction(tn, tn + fp, fn, fn + tp, delta, a))


def _counts(scores: np.ndarray, included: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    guess = scores > threshold
    return (
        int((guess & included).sum()),
        int((~guess & included).sum()),
        int((guess & ~included).sum()),
        int((~guess & ~included).sum()),
    )


def split_half_bound(
    scores: np.ndarray, included: np.ndarray, *, delta: float, alpha: float = 0.05, seed: int = 0
) -> dict[str, Any]:
    """Choose the threshold on a random half of the canaries, bound epsilon on the other half.

    Returns the bound, the threshold, the evaluation half's counts and `max_certifiable`: the bound
    the same half would give if the test separated it perfectly (no claim above it can be refuted).
    """
    scores, included = np.asarray(scores, dtype=np.float64), np.asarray(included, dtype=bool)
    if scores.shape != included.shape or scores.ndim != 1:
        raise ConfigError("scores and included must be 1-D of one length")
    order = np.random.default_rng(seed).permutation(scores.size)
    choose, evaluate = order[: scores.size // 2], order[scores.size // 2 :]
    if included[evaluate].all() or not included[evaluate].any():
        raise ConfigError("the evaluation half holds canaries of one kind only: use more canaries")
    best, threshold = -math.inf, float(np.median(scores))
    for candidate in np.unique(scores[choose]):
        tp, fn, fp, tn = _counts(scores[choose], included[choose], candidate)
        point = max(
            math.log((tp + 0.5) / (tp + fn + 1.0)) - math.log((fp + 0.5) / (fp + tn + 1.0)),
            math.log((tn + 0.5) / (tn + fp + 1.0)) - math.log((fn + 0.5) / (fn + tp + 1.0)),
        )
        if point > best:
            best, threshold = point, float(candidate)
    tp, fn, fp, tn = _counts(scores[evaluate], included[evaluate], threshold)
    positives, negatives = tp + fn, fp + tn
    return {
        "epsilon_lower_bound": epsilon_lower_bound(tp, fn, fp, tn, delta=delta, alpha=alpha),
        "max_certifiable": epsilon_lower_bound(positives, 0, 0, negatives, delta=delta, alpha=alpha),
        "threshold": threshold,
        "confidence": 1 - alpha,
        "evaluated": {"tp": tp, "fn": fn, "fp": fp, "tn": tn},
    }


def claimed_tradeoff(fpr: float, *, epsilon: float, delta: float) -> float:
    """The largest TPR an (epsilon, delta)-DP mechanism allows at `fpr` (both inequalities of DP)."""
    if epsilon > 700.0:  # e^epsilon overflows; the curve is 1 at any FPR > 0 long before
        return 1.0 if fpr > 0 or delta > 0 else 0.0
    return min(1.0, math.exp(epsilon) * fpr + delta, 1.0 - math.exp(-epsilon) * (1.0 - fpr - delta))


def tradeoff_check(
    scores: np.ndarray,
    included: np.ndarray,
    *,
    epsilon: float,
    delta: float,
    fprs: Sequence[float] = (0.01, 0.05, 0.1),
    alpha: float = 0.05,
    seed: int = 0,
) -> dict:
    """R3: at each target FPR, the threshold is the (1 - FPR) quantile of the excluded canaries' scores of
    one random half; on the other half the lower bound on TPR must not exceed the claimed trade-off
    curve at the upper bound on FPR (Clopper-Pearson, alpha split over 2 rates x the FPR targets)."""
    scores, included = np.asarray(scores, dtype=np.float64), np.asarray(included, dtype=bool)
    order = np.random.default_rng(seed + 1).permutation(scores.size)
    choose, evaluate = order[: scores.size // 2], order[scores.size // 2 :]
    a = alpha / (2 * len(fprs))
    points, violated = [], False
    out_a = scores[choose][~included[choose]]
    for target in fprs:
        threshold = float(np.quantile(out_a, 1.0 - target)) if out_a.size else math.inf
        tp, fn, fp, tn = _counts(scores[evaluate], included[evaluate], threshold)
        tpr_lo, _ = clopper_pearson(tp, tp + fn, a)
        _, fpr_hi = clopper_pearson(fp, fp + tn, a)
        allowed = claimed_tradeoff(fpr_hi, epsilon=epsilon, delta=delta)
        points.append(
            {
                "target_fpr": target,
                "threshold": threshold,
                "tpr_lower": tpr_lo,
                "fpr_upper": fpr_hi,
                "claimed_max_tpr": allowed,
                "violated": tpr_lo > allowed,
            }
        )
        violated |= tpr_lo > allowed
    return {"verdict": "fails" if violated else "holds", "points": points, "confidence": 1 - alpha}


def one_run_bound(scores: np.ndarray, included: np.ndarray, *, guess_fraction: float = 0.2, beta: float = 0.05) -> dict:
    """The one-run audit of Steinke, Nasr, Jagielski (NeurIPS 2023), delta = 0 form, as a second opinion:
    guess "in" for the top `guess_fraction` of scores and "out" for the bottom one (fixed in advance);
    under epsilon-DP the correct guesses are dominated by Binomial(r, e^eps / (1 + e^eps)), so the
    largest epsilon at which v or more correct guesses still has probability >= beta is the bound.
    It ignores delta: informational, not a verdict (`one_run_epsilon_bound` is the delta > 0 form)."""
    scores, included = np.asarray(scores, dtype=np.float64), np.asarray(included, dtype=bool)
    k = max(1, int(guess_fraction * scores.size))
    order = np.argsort(scores, kind="stable")
    correct = int(included[order[-k:]].sum() + (~included[order[:k]]).sum())
    guesses = 2 * k

    def tail(eps: float) -> float:  # P[Bin(guesses, p_eps) >= correct]
        p = 1.0 / (1.0 + math.exp(-eps))
        return float(stats.binom.sf(correct - 1, guesses, p))

    if tail(0.0) >= beta:
        bound = 0.0
    else:
        lo, hi = 0.0, 50.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if tail(mid) < beta else (lo, mid)
        bound = lo
    return {
        "epsilon_lower_bound": bound,
        "guesses": guesses,
        "correct": correct,
        "confidence": 1 - beta,
        "note": "delta = 0 form (Steinke, Nasr, Jagielski 2023): informational",
    }


# ------------------------------------------------------------------ Gaussian differential privacy
#
# mu-GDP (Dong, Roth, Su 2019): telling the two neighbours apart is no easier than telling N(0, 1) from
# N(mu, 1). It is (epsilon, delta)-DP exactly for delta(epsilon) = Phi(-epsilon/mu + mu/2)
# - e^epsilon Phi(-epsilon/mu - mu/2), for every epsilon >= 0.


def _check_mu(mu: float) -> float:
    if isinstance(mu, bool) or not isinstance(mu, (int, float)) or math.isnan(mu) or mu < 0:
        raise ConfigError(f"mu must be a number >= 0 (inf allowed), got {mu!r}")
    return float(mu)


def gdp_delta(mu: float, epsilon: float) -> float:
    """delta(epsilon) of mu-GDP, in log space: no overflow for epsilon up to 1e4 and beyond."""
    mu = _check_mu(mu)
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or math.isnan(epsilon) or epsilon < 0:
        raise ConfigError(f"epsilon must be a number >= 0 (inf allowed), got {epsilon!r}")
    if mu == 0.0 or epsilon == math.inf:
        return 0.0
    if mu == math.inf:
        return 1.0
    x = mu / 2 - epsilon / mu
    log_first = float(special.log_ndtr(x))
    if log_first == -math.inf:
        return 0.0
    gap = epsilon + float(special.log_ndtr(x - mu)) - log_first  # log(second term / first term) < 0
    if gap >= 0.0:
        return 0.0
    return max(0.0, math.exp(log_first) * -math.expm1(gap))


def _check_delta(delta: float, *, low_open: bool = False) -> float:
    return check_number("delta", delta, low=0.0, high=1.0, low_open=low_open)


def gdp_epsilon(mu: float, delta: float) -> float:
    """The smallest epsilon at which mu-GDP is (epsilon, delta)-DP (bisection; inf at delta = 0, mu > 0)."""
    mu, delta = _check_mu(mu), _check_delta(delta)
    if delta >= gdp_delta(mu, 0.0):
        return 0.0
    if delta == 0.0 or mu == math.inf:
        return math.inf
    lo, hi = 0.0, 1.0
    while gdp_delta(mu, hi) > delta:
        lo, hi = hi, 2 * hi
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if gdp_delta(mu, mid) > delta else (lo, mid)
    return hi


def gdp_mu(epsilon: float, delta: float) -> float:
    """The mu whose epsilon at `delta` is `epsilon` (inf when delta = 0; inf when delta = 1 is not met)."""
    epsilon = check_number("epsilon", epsilon, low=0.0)
    delta = _check_delta(delta)
    if delta == 0.0:
        return 0.0 if epsilon == 0.0 else math.inf  # only mu = 0 is pure DP
    if delta >= 1.0:
        return math.inf
    lo, hi = 0.0, 1.0
    while gdp_delta(hi, epsilon) < delta:
        lo, hi = hi, 2 * hi
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if gdp_delta(mid, epsilon) < delta else (lo, mid)
    return lo


# ------------------------------------------------------------------ one-run audits (guessing games)
#
# Both audits (Steinke, Nasr, Jagielski 2023; Mahloujifar, Melis, Chaudhuri 2024) need: m canaries, each
# included independently with probability 1/2, and guesses that depend on the release only (never on
# which canaries were included). Here: "in" for the top half of the guesses by score, "out" for the
# bottom half. The number of guesses r is fixed in advance; with several candidate r the bound is the
# largest over them, each at alpha / (number of candidates) (Bonferroni), so it still holds with
# probability >= 1 - alpha.

DEFAULT_GUESS_FRACTIONS = (0.1, 0.25, 0.5, 1.0)


def _scores_and_labels(scores: np.ndarray, included: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(included)
    if scores.ndim != 1 or labels.shape != scores.shape:
        raise ConfigError(f"scores and included must be 1-D of one length, got {scores.shape} and {labels.shape}")
    if scores.size < 2:
        raise ConfigError(f"need at least 2 canaries, got {scores.size}")
    if not np.isfinite(scores).all():
        raise ConfigError("scores must be finite")
    if labels.dtype != bool:
        if not np.isin(labels, (0, 1)).all():
            raise ConfigError("included must hold booleans (or 0/1)")
        labels = labels.astype(bool)
    return scores, labels


def _guess_counts(m: int, guesses: int | Sequence[int] | None) -> list[int]:
    """The candidate total numbers of guesses (each in [2, m]), fixed before the labels are read."""
    if guesses is None:
        candidates = sorted({max(2, min(m, round(f * m))) for f in DEFAULT_GUESS_FRACTIONS})
    else:
        raw = [guesses] if isinstance(guesses, int) else list(guesses)
        if not raw:
            raise ConfigError("guesses must name at least one number of guesses")
        candidates = []
        for r in raw:
            if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or not 2 <= r <= m:
                raise ConfigError(f"each number of guesses must be an int in [2, {m}], got {r!r}")
            candidates.append(int(r))
        candidates = sorted(set(candidates))
    return candidates


def _correct_guesses(scores: np.ndarray, included: np.ndarray, guesses: int) -> int:
    """Correct guesses when the top guesses // 2 scores are called "in" and the bottom rest "out"."""
    order = np.argsort(scores, kind="stable")
    top, bottom = guesses // 2, guesses - guesses // 2
    return int(included[order[scores.size - top :]].sum() + (~included[order[:bottom]]).sum())


def one_run_p_value(epsilon: float, delta: float, *, canaries: int, guesses: int, correct: int) -> float:
    """Steinke, Nasr, Jagielski (2023), Theorem with delta > 0: if the mechanism is (epsilon, delta)-DP with
    respect to each of m canaries, P[>= v correct of r guesses] <= P[Bin(r, q) >= v]
    + 2 m delta max_{1 <= i <= v} P[v - i <= Bin(r, q) < v] / i, with q = e^epsilon / (1 + e^epsilon)."""
    m, r, v = _check_counts(canaries, guesses, correct)
    epsilon, delta = check_number("epsilon", epsilon, low=0.0), _check_delta(delta)
    if v == 0:
        return 1.0
    q = 1.0 / (1.0 + math.exp(-epsilon)) if epsilon < 700 else 1.0
    tail = float(stats.binom.sf(v - 1, r, q))
    if delta == 0.0:
        return min(1.0, tail)
    below = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)  # P[Bin = v-1], P[Bin = v-2], ..., P[Bin = 0]
    window = float(np.max(np.cumsum(below) / np.arange(1, v + 1)))
    return min(1.0, tail + 2 * m * delta * window)


@functools.lru_cache(maxsize=4096)
def _one_run_epsilon(m: int, r: int, v: int, delta: float, alpha: float) -> float:
    """The largest epsilon (to 1e-6) found rejected: one_run_p_value(epsilon) <= alpha; 0 when none is."""

    def rejected(eps: float) -> bool:
        return one_run_p_value(eps, delta, canaries=m, guesses=r, correct=v) <= alpha

    if not rejected(0.0):
        return 0.0
    lo, hi = 0.0, 1.0
    while rejected(hi):
        lo, hi = hi, 2 * hi
        if hi > 1e4:
            return lo
    while hi - lo > 1e-6:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rejected(mid) else (lo, mid)
    return lo  # rejected: at most the supremum of the rejected epsilons, hence valid


def _check_counts(canaries: int, guesses: int, correct: int) -> tuple[int, int, int]:
    for name, value in (("canaries", canaries), ("guesses", guesses), ("correct", correct)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ConfigError(f"{name} must be an int, got {value!r}")
    if not 0 <= correct <= guesses <= canaries or guesses < 1:
        raise ConfigError(
            f"need 0 <= correct <= guesses <= canaries and guesses >= 1, got {correct}, {guesses}, {canaries}"
        )
    return int(canaries), int(guesses), int(correct)


def one_run_epsilon_from_counts(
    *, canaries: int, guesses: int, correct: int, delta: float, alpha: float = 0.05
) -> float:
    """The one-run epsilon lower bound from counts: guesses fixed before the labels were read."""
    m, r, v = _check_counts(canaries, guesses, correct)
    alpha = check_number("alpha", alpha, low=0.0, high=1.0, low_open=True, high_open=True)
    return _one_run_epsilon(m, r, v, _check_delta(delta), alpha)


def one_run_epsilon_bound(
    scores: np.ndarray,
    included: np.ndarray,
    *,
    delta: float,
    alpha: float = 0.05,
    guesses: int | Sequence[int] | None = None,
) -> dict[str, Any]:
    """The one-run epsilon lower bound with delta > 0 (Steinke, Nasr, Jagielski, NeurIPS 2023).

    `guesses`: the total number of guesses r (top r // 2 scores guessed "in", bottom r - r // 2 "out"),
    or several candidates (the bound is the largest, each at alpha / candidates), or None for
    r = 10%, 25%, 50% and 100% of the canaries. Holds with probability >= 1 - alpha when each canary
    was included independently with probability 1/2. `max_certifiable`: the bound if every guess were
    correct (the best candidate then): no claim above it can be refuted with these canaries."""
    scores, labels = _scores_and_labels(scores, included)
    delta = _check_delta(delta)
    alpha = check_number("alpha", alpha, low=0.0, high=1.0, low_open=True, high_open=True)
    m = scores.size
    counts = _guess_counts(m, guesses)
    level = alpha / len(counts)
    candidates = []
    for r in counts:
        v = _correct_guesses(scores, labels, r)
        candidates.append({"guesses": r, "correct": v, "epsilon_lower_bound": _one_run_epsilon(m, r, v, delta, level)})
    best = max(candidates, key=lambda c: c["epsilon_lower_bound"])
    return {
        "epsilon_lower_bound": best["epsilon_lower_bound"],
        "guesses": best["guesses"],
        "correct": best["correct"],
        "confidence": 1 - alpha,
        "delta": delta,
        "max_certifiable": max(_one_run_epsilon(m, r, r, delta, level) for r in counts),
        "candidates": candidates,
        "alpha_per_candidate": level,
    }


# ------------------------------------------------------------------ f-DP one-run audit
#
# Mahloujifar, Melis, Chaudhuri ("Auditing f-differential privacy in one run", 2024). Let W be the correct
# guesses among r guesses on m canaries, p_w = P[W = w], A_i = sum_{w >= i} p_w w / r (W >= i and a random
# one of the guesses is right) and B_i = sum_{w >= i} p_w (r - w) / r (W >= i and it is wrong). Flipping
# the chosen canary turns "W >= i, right" into "W >= i - 1, wrong" on the same release; f-DP for each
# canary (an event of probability x on one side has at least g(x) on the other, g the inverse of the
# blow-up x -> 1 - f(x), convex) and Jensen over the m canaries give
#     h_{i-1} >= g(r_i)   with r_i = r A_i / m, h_i = r B_i / m
# (mu-GDP: g(y) = Phi(Phi^-1(y) - mu); (eps, delta)-DP: max(0, e^-eps (y - delta), 1 - delta - e^eps (1 - y))).
# The least total probability sum_w p_w = m (r_0 + h_0) / r that
# carries P[W >= v] = tau puts tau at w = v and, going down, the least p_i each constraint needs; when
# it exceeds 1, P[W >= v] < tau. Rejecting at tau = alpha gives a test of level alpha.


def _gaussian_inverse_blowup(mus: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    def g(y: np.ndarray) -> np.ndarray:
        return np.asarray(special.ndtr(special.ndtri(np.clip(y, 0.0, 1.0)) - mus))

    return g


def _approximate_dp_inverse_blowup(epsilons: np.ndarray, delta: float) -> Callable[[np.ndarray], np.ndarray]:
    shrink, log_grow = np.exp(-epsilons), np.minimum(epsilons, 700.0)

    def g(y: np.ndarray) -> np.ndarray:
        y = np.clip(y, 0.0, 1.0)
        with np.errstate(divide="ignore"):  # log(0) = -inf: the term is then 1 - delta
            upper = 1.0 - delta - np.exp(np.minimum(log_grow + np.log1p(-y), 1.0))
        return np.maximum(0.0, np.maximum(shrink * (y - delta), upper))

    return g


def _fdp_least_mass(g: Callable[[np.ndarray], np.ndarray], m: int, r: int, v: int, tau: np.ndarray) -> np.ndarray:
    """The least total probability m (r_0 + h_0) / r of a distribution of W with P[W >= v] = tau."""
    right, wrong = tau * v / m, tau * (r - v) / m
    for i in range(v - 1, -1, -1):
        needed = np.maximum(wrong, g(right))
        # Both only grow, and r_0 + h_0 > 1 >= r / m already rejects: capping at 2 keeps every decision
        # and keeps the numbers finite.
        right = np.minimum(right + (i / (r - i)) * (needed - wrong), 2.0)
        wrong = np.minimum(needed, 2.0)
    return np.asarray(m * (right + wrong) / r)


def fdp_tail_bound(mu: float, *, canaries: int, guesses: int, correct: int) -> float:
    """An upper bound (to 1e-9) on P[>= correct of the guesses are right] for a mu-GDP mechanism."""
    m, r, v = _check_counts(canaries, guesses, correct)
    if v == 0:
        return 1.0
    g = _gaussian_inverse_blowup(np.array([_check_mu(mu)]))
    lo, hi = 0.0, 1.0
    if _fdp_least_mass(g, m, r, v, np.array([1.0]))[0] <= 1.0:
        return 1.0
    while hi - lo > 1e-9:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _fdp_least_mass(g, m, r, v, np.array([mid]))[0] <= 1.0 else (lo, mid)
    return hi


_MARGIN = 1e-9  # a rejection needs the least mass above 1 + _MARGIN: rounding never rejects


def _largest_rejected(
    family: Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]], m: int, r: int, v: int, alpha: float
) -> float:
    """The largest parameter found whose curve the observation rejects at level alpha (0 when none is):
    a point of the rejected set, so at most its supremum. Doubling, then three rounds of a 33-point grid."""

    def rejected(params: np.ndarray) -> np.ndarray:
        tau = np.full(params.shape, alpha)
        return np.asarray(_fdp_least_mass(family(params), m, r, v, tau) > 1.0 + _MARGIN)

    if v == 0 or not rejected(np.array([0.0]))[0]:
        return 0.0
    lo, hi = 0.0, 1.0
    while rejected(np.array([hi]))[0]:
        lo, hi = hi, 2 * hi
        if hi > 1e4:
            return lo
    for _ in range(3):
        grid = np.linspace(lo, hi, 33)
        hits = np.flatnonzero(rejected(grid))
        if hits.size == 0:
            break
        k = int(hits[-1])
        lo, hi = float(grid[k]), float(grid[min(k + 1, grid.size - 1)])
    return lo


@functools.lru_cache(maxsize=4096)
def _fdp_mu(m: int, r: int, v: int, alpha: float) -> float:
    return _largest_rejected(_gaussian_inverse_blowup, m, r, v, alpha)


@functools.lru_cache(maxsize=4096)
def _fdp_epsilon(m: int, r: int, v: int, delta: float, alpha: float) -> float:
    return _largest_rejected(lambda eps: _approximate_dp_inverse_blowup(eps, delta), m, r, v, alpha)


def fdp_mu_from_counts(*, canaries: int, guesses: int, correct: int, alpha: float = 0.05) -> float:
    """The f-DP one-run mu lower bound from counts: guesses fixed before the labels were read."""
    m, r, v = _check_counts(canaries, guesses, correct)
    alpha = check_number("alpha", alpha, low=0.0, high=1.0, low_open=True, high_open=True)
    return _fdp_mu(m, r, v, alpha)


def fdp_one_run_mu_bound(
    scores: np.ndarray,
    included: np.ndarray,
    *,
    alpha: float = 0.05,
    delta: float | None = None,
    guesses: int | Sequence[int] | None = None,
) -> dict[str, Any]:
    """The one-run f-DP audit (Mahloujifar, Melis, Chaudhuri 2024) for Gaussian trade-off curves: the
    largest mu whose mu-GDP the correct guesses reject at level alpha (guesses as in
    `one_run_epsilon_bound`, several candidates at alpha / candidates each).

    With `delta`: `epsilon_lower_bound_at_delta` = gdp_epsilon(mu_lower_bound, delta), the epsilon of the
    rejected Gaussian curve: a bound on the mechanism's epsilon(delta) when its trade-off curve is
    Gaussian (as a Gaussian mechanism's is). `epsilon_lower_bound_any_mechanism` needs no such
    assumption: the same audit run on the (epsilon, delta)-DP curve itself."""
    scores, labels = _scores_and_labels(scores, included)
    alpha = check_number("alpha", alpha, low=0.0, high=1.0, low_open=True, high_open=True)
    m = scores.size
    counts = _guess_counts(m, guesses)
    level = alpha / len(counts)
    candidates = []
    for r in counts:
        v = _correct_guesses(scores, labels, r)
        candidates.append({"guesses": r, "correct": v, "mu_lower_bound": _fdp_mu(m, r, v, level)})
    best = max(candidates, key=lambda c: c["mu_lower_bound"])
    out: dict[str, Any] = {
        "mu_lower_bound": best["mu_lower_bound"],
        "guesses": best["guesses"],
        "correct": best["correct"],
        "confidence": 1 - alpha,
        "max_certifiable_mu": max(_fdp_mu(m, r, r, level) for r in counts),
        "candidates": candidates,
        "alpha_per_candidate": level,
    }
    if delta is not None:
        delta = _check_delta(delta)
        out["delta"] = delta
        out["epsilon_lower_bound_at_delta"] = gdp_epsilon(best["mu_lower_bound"], delta)
        out["epsilon_lower_bound_any_mechanism"] = max(
            _fdp_epsilon(m, c["guesses"], c["correct"], delta, level) for c in candidates
        )
    return out


def max_certifiable(
    m: int, *, delta: float, alpha: float = 0.05, guesses: int | Sequence[int] | None = None
) -> dict[str, float]:
    """The largest epsilon each bound can certify with m canaries, half of them in, if the attack were
    perfect (every guess right): a claim above it is "not refutable at m", never "passes".

    split_half: Clopper-Pearson on the evaluation half (`split_half_bound`); one_run: Steinke et al. with
    delta; fdp_mu: the f-DP one-run mu, fdp_epsilon_at_delta its Gaussian epsilon at delta and
    fdp_epsilon_any_mechanism the f-DP audit of the (epsilon, delta) curve itself. One-run bounds use
    the candidates of `guesses` (default as in `one_run_epsilon_bound`), each at alpha / candidates."""
    if isinstance(m, bool) or not isinstance(m, int) or m < 4:
        raise ConfigError(f"m must be an int >= 4, got {m!r}")
    delta = _check_delta(delta)
    alpha = check_number("alpha", alpha, low=0.0, high=1.0, low_open=True, high_open=True)
    evaluated = m - m // 2
    positives = evaluated // 2
    counts = _guess_counts(m, guesses)
    level = alpha / len(counts)
    mu = max(_fdp_mu(m, r, r, level) for r in counts)
    return {
        "split_half": epsilon_lower_bound(positives, 0, 0, evaluated - positives, delta=delta, alpha=alpha),
        "one_run": max(_one_run_epsilon(m, r, r, delta, level) for r in counts),
        "fdp_mu": mu,
        "fdp_epsilon_at_delta": gdp_epsilon(mu, delta),
        "fdp_epsilon_any_mechanism": max(_fdp_epsilon(m, r, r, delta, level) for r in counts),
    }


# ------------------------------------------------------------------ mechanism checks with known quantities


def variance_shortfall_test(residuals: np.ndarray, *, claimed_std: float, alpha: float = 0.05) -> dict[str, Any]:
    """Residuals that should be iid N(0, claimed_std^2): the one-sided chi-square test of a variance below
    the claim (the mean is known to be 0, so sum(x^2) / claimed_std^2 ~ chi2(n)); it fails only when there
    is less noise than claimed. `detectable_shortfall`: the relative std shortfall 1 - std_true /
    claimed_std that this test catches with 95% power at this alpha and n."""
    x = np.asarray(residuals, dtype=np.float64).ravel()
    if x.size < 1:
        raise ConfigError("variance_shortfall_test needs at least one residual")
    if not np.isfinite(x).all():
        raise ConfigError("residuals must be finite")
    claimed_std = check_number("claimed_std", claimed_std, low=0.0, low_open=True)
    alpha = check_number("alpha", alpha, low=0.0, high=1.0, low_open=True, high_open=True)
    n = x.size
    statistic = float(np.sum(np.square(x / claimed_std)))
    p_value = float(special.chdtr(n, statistic))  # the chi2(n) cdf
    critical, at_power = float(special.chdtri(n, 1 - alpha)), float(special.chdtri(n, 0.05))  # its quantiles
    return {
        "verdict": "fails" if p_value < alpha else "holds",
        "samples": n,
        "variance_ratio": statistic / n,
        "p_value": p_value,
        "alpha": alpha,
        "detectable_shortfall": 1.0 - math.sqrt(critical / at_power),
    }


def known_shift_test(
    scores: np.ndarray, included: np.ndarray, *, claimed_mu: float, alpha: float = 0.05
) -> dict[str, Any]:
    """Canary scores normalised so that, under the claim, out ~ N(0, 1) and in ~ N(mu, 1) with
    mu <= claimed_mu: the one-sided z-test (unit variance known under the claim) that the separation
    mean_in - mean_out exceeds claimed_mu. Fails when p < alpha, i.e. when the lower limit exceeds the
    claim. `detectable_mu_ratio`: the smallest mu_true / claimed_mu caught with 95% power at these
    counts and alpha (with unit variance; less noise than claimed only makes it easier)."""
    values, labels = _scores_and_labels(scores, included)
    claimed_mu = check_number("claimed_mu", claimed_mu, low=0.0)
    alpha = check_number("alpha", alpha, low=0.0, high=1.0, low_open=True, high_open=True)
    inside, outside = values[labels], values[~labels]
    if inside.size == 0 or outside.size == 0:
        raise ConfigError("known_shift_test needs included and excluded canaries")
    estimate = float(inside.mean() - outside.mean())
    se = math.sqrt(1 / inside.size + 1 / outside.size)
    z_alpha = -float(special.ndtri(alpha))
    p_value = float(special.ndtr((claimed_mu - estimate) / se))
    return {
        "verdict": "fails" if p_value < alpha else "holds",
        "estimate": estimate,
        "lower_limit": estimate - z_alpha * se,
        "upper_limit": estimate + z_alpha * se,
        "claimed_mu": claimed_mu,
        "p_value": p_value,
        "alpha": alpha,
        "included": int(inside.size),
        "excluded": int(outside.size),
        "detectable_mu_ratio": (
            1.0 + (z_alpha - float(special.ndtri(0.05))) * se / claimed_mu if claimed_mu > 0 else math.inf
        ),
    }

"""Empirical epsilon lower bounds from a membership test (Jagielski et al. 2020; Nasr et al. 2021).

A mechanism that is (epsilon, delta)-DP makes any test's rates satisfy TPR <= e^epsilon FPR + delta
(and TNR <= e^epsilon FNR + delta). From a test's counts on canaries, Clopper-Pearson bounds on the
rates give a lower bound on epsilon that holds with the stated confidence. Both directions are
tried and the larger taken, so each of the four rates gets alpha / 4 (Bonferroni): the result holds
with probability >= 1 - alpha. The threshold must be chosen on other canaries than those it is
evaluated on (`split_half_bound`), never as the best of a grid on the same ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

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
    It ignores delta (the run's delta > 0 would lower it slightly): informational, not a verdict."""
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

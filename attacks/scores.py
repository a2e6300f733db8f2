"""Scores of a binary attack: AUC, TPR at a fixed FPR, F1 at a threshold; one place for all attacks."""

from __future__ import annotations

from typing import Any

import numpy as np

from mrff_secure.metrics import auc


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    """The largest TPR over thresholds whose FPR is <= fpr (ties count as one threshold)."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    negatives = np.sort(scores[~labels])[::-1]
    if negatives.size == 0 or labels.sum() == 0:
        return float("nan")
    allowed = int(np.floor(fpr * negatives.size))  # false positives we may accept
    # threshold strictly above the (allowed+1)-th highest negative score
    bar = negatives[allowed] if allowed < negatives.size else -np.inf
    return float((scores[labels] > bar).mean())


def binary_scores(labels: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """auc and tpr_at_1pct_fpr (floats, nan without both classes), positives and negatives (ints): a JSON record."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.all() or not labels.any():
        return {
            "auc": float("nan"),
            "tpr_at_1pct_fpr": float("nan"),
            "positives": int(labels.sum()),
            "negatives": int((~labels).sum()),
        }
    return {
        "auc": float(auc(labels.astype(np.float64), scores)),
        "tpr_at_1pct_fpr": tpr_at_fpr(labels, scores, 0.01),
        "positives": int(labels.sum()),
        "negatives": int((~labels).sum()),
    }


def f1(labels: np.ndarray, predicted: np.ndarray) -> float:
    labels, predicted = np.asarray(labels, dtype=bool), np.asarray(predicted, dtype=bool)
    tp = int((labels & predicted).sum())
    denominator = int(labels.sum()) + int(predicted.sum())
    return 1.0 if denominator == 0 else 2.0 * tp / denominator


def auc_standard_error(auc_value: float, positives: int, negatives: int) -> float:
    """Hanley and McNeil (1982): the standard error of an AUC from its positives and negatives
    (independent pairs assumed; a lower bound on the error where scores are shared across users)."""
    a = float(auc_value)
    if not (0.0 <= a <= 1.0) or positives < 1 or negatives < 1:
        return float("nan")
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    variance = (a * (1 - a) + (positives - 1) * (q1 - a * a) + (negatives - 1) * (q2 - a * a)) / (positives * negatives)
    return float(max(variance, 0.0) ** 0.5)


def accuracy_standard_error(accuracy: float, trials: int) -> float:
    """Binomial standard error of an accuracy over `trials` independent guesses."""
    if trials < 1:
        return float("nan")
    return float((accuracy * (1 - accuracy) / trials) ** 0.5)

"""Scores of a binary attack: AUC, TPR at a fixed FPR, F1 at a threshold; one place for all attacks."""

from __future__ import annotations

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


def binary_scores(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.all() or not labels.any():
        return {"auc": float("nan"), "tpr_at_1pct_fpr": float("nan"), "positives": int(labels.sum()),
                "negatives": int((~labels).sum())}
    return {"auc": float(auc(labels.astype(np.float64), scores)), "tpr_at_1pct_fpr": tpr_at_fpr(labels, scores, 0.01),
            "positives": int(labels.sum()), "negatives": int((~labels).sum())}


def f1(labels: np.ndarray, predicted: np.ndarray) -> float:
    labels, predicted = np.asarray(labels, dtype=bool), np.asarray(predicted, dtype=bool)
    tp = int((labels & predicted).sum())
    denominator = int(labels.sum()) + int(predicted.sum())
    return 1.0 if denominator == 0 else 2.0 * tp / denominator

"""Evaluation metrics: AUC (rank statistic, ties averaged), LogLoss, DeLong confidence interval for AUC."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm, rankdata

from mrff_secure.errors import ConfigError

LOGLOSS_EPS = 1e-7


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=np.float64).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ConfigError(f"labels {labels.shape} and scores {scores.shape} differ in length")
    if not np.isin(labels, (0.0, 1.0)).all():
        raise ConfigError("labels must be 0 or 1")
    return labels, scores


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    labels, scores = _check(labels, scores)
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy with probabilities clipped to [1e-7, 1 - 1e-7]."""
    labels, probs = _check(labels, probs)
    p = np.clip(probs, LOGLOSS_EPS, 1 - LOGLOSS_EPS)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def auc_confidence_interval(labels: np.ndarray, scores: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(auc, low, high) with DeLong's variance estimate (DeLong et al. 1988)."""
    labels, scores = _check(labels, scores)
    pos, neg = scores[labels == 1], scores[labels == 0]
    m, n = len(pos), len(neg)
    if m < 2 or n < 2:
        return auc(labels, scores), float("nan"), float("nan")
    all_ranks = rankdata(np.concatenate([pos, neg]))
    v10 = (all_ranks[:m] - rankdata(pos)) / n  # structural components of positives
    v01 = 1.0 - (all_ranks[m:] - rankdata(neg)) / m
    value = float(v10.mean())
    var = v10.var(ddof=1) / m + v01.var(ddof=1) / n
    half = norm.ppf(0.5 + level / 2) * math.sqrt(var)
    return value, max(0.0, value - half), min(1.0, value + half)


def fit_temperature(labels: np.ndarray, probs: np.ndarray) -> float:
    """The temperature T > 0 minimizing LogLoss of sigmoid(logit(p) / T) on (labels, probs).

    Post-hoc calibration (Guo et al. 2017): fitted on validation predictions, applied
    to test predictions. Rank order, hence AUC, is unchanged.
    """
    from scipy.optimize import minimize_scalar

    labels, probs = _check(labels, probs)
    logits = _logit(probs)
    result = minimize_scalar(
        lambda log_t: log_loss(labels, _sigmoid(logits / np.exp(log_t))), bounds=(-4.0, 4.0), method="bounded"
    )
    return float(np.exp(result.x))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    return _sigmoid(_logit(np.asarray(probs, dtype=np.float64)) / temperature)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, LOGLOSS_EPS, 1 - LOGLOSS_EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))

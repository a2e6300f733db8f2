"""Federated evaluation through the secure sum: each client's held-out score as integers, the sum as AUC and LogLoss.

Each client scores its own held-out item of each split (validation, test) with the model it received
and its private part, and inputs, per split: a one-hot of (label, score bin) over 2 x BINS bins, its
log-loss in fixed point (clipped at LOSS_CAP nats) and a 1 (it was counted). The secure sum of these
vectors is all the server learns: per split, the histogram of held-out scores by label over the
clients that took part, the total log-loss and their number. From it, the AUC with the scores
quantised to BINS bins (pairs in one bin count one half, so the error is at most half the fraction of
pairs that share a bin) and the mean LogLoss (to 2^-LOSS_FRACTION_BITS nats per client).

This release is an exact aggregate of private held-out data: it is NOT covered by the run's epsilon,
and every output that carries it says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mrff_secure.errors import ConfigError

SPLITS = ("val", "test")
BINS = 128
LOSS_CAP = 16.0  # nats: -log(1e-7)
LOSS_FRACTION_BITS = 10
PER_SPLIT = 2 * BINS + 2
LENGTH = len(SPLITS) * PER_SPLIT
MAX_ABS = int(LOSS_CAP * 2**LOSS_FRACTION_BITS)  # the largest entry one client may input
OUTSIDE_THE_GUARANTEE = (
    "federated evaluation: the exact secure sum of every client's held-out score histogram "
    "(by label, 128 bins), log-loss and count, per split; an exact aggregate of private held-out "
    "data NOT covered by epsilon: two evaluations over survivor sets differing in one client "
    "reveal that client's held-out labels and score bins"
)


def client_vector(scores: dict[str, tuple[float, int]]) -> np.ndarray:
    """One client's input: `scores[split] = (probability of a click, label 0/1)` for each split."""
    out = np.zeros(LENGTH, dtype=np.int64)
    for i, split in enumerate(SPLITS):
        probability, label = scores[split]
        if not (isinstance(label, (int, np.integer)) and label in (0, 1)):
            raise ConfigError(f"{split} label must be 0 or 1, got {label!r}")
        p = float(probability)
        if not math.isfinite(p):
            p = 0.5  # a non-finite score is no information: the middle bin, log(2)
        p = min(max(p, 0.0), 1.0)
        base = i * PER_SPLIT
        out[base + label * BINS + min(int(p * BINS), BINS - 1)] = 1
        likelihood = p if label == 1 else 1.0 - p
        loss = LOSS_CAP if likelihood <= math.exp(-LOSS_CAP) else -math.log(likelihood)
        out[base + 2 * BINS] = int(round(min(loss, LOSS_CAP) * 2**LOSS_FRACTION_BITS))
        out[base + 2 * BINS + 1] = 1
    return out


@dataclass(frozen=True)
class SplitEvaluation:
    clients: int
    auc: float  # nan when one label is absent
    log_loss: float
    positives: int
    negatives: int

    def to_json(self) -> dict:
        return {
            "clients": self.clients,
            "auc": None if math.isnan(self.auc) else round(self.auc, 6),
            "log_loss": None if math.isnan(self.log_loss) else round(self.log_loss, 6),
            "positives": self.positives,
            "negatives": self.negatives,
        }


def binned_auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """AUC of score histograms: P(score_pos > score_neg) + P(same bin) / 2."""
    p, n = float(positives.sum()), float(negatives.sum())
    if p == 0 or n == 0:
        return float("nan")
    below = np.concatenate([[0.0], np.cumsum(negatives, dtype=np.float64)[:-1]])
    return float((positives * (below + negatives / 2.0)).sum() / (p * n))


def decode(summed: np.ndarray) -> dict[str, SplitEvaluation]:
    """The evaluation of each split from the sum of the clients' vectors (checked for consistency)."""
    summed = np.asarray(summed, dtype=np.int64)
    if summed.shape != (LENGTH,):
        raise ConfigError(f"an evaluation sum has {LENGTH} entries, got shape {summed.shape}")
    out = {}
    for i, split in enumerate(SPLITS):
        block = summed[i * PER_SPLIT : (i + 1) * PER_SPLIT]
        negatives, positives = block[:BINS], block[BINS : 2 * BINS]
        count = int(block[2 * BINS + 1])
        if (block[: 2 * BINS] < 0).any() or int(block[: 2 * BINS].sum()) != count or block[2 * BINS] < 0:
            raise ConfigError(
                f"the {split} evaluation sum is inconsistent (histogram total {int(block[: 2 * BINS].sum())}"
                f" for {count} clients): a client's input was malformed"
            )
        loss = float(block[2 * BINS]) / 2**LOSS_FRACTION_BITS / count if count else float("nan")
        out[split] = SplitEvaluation(
            count, binned_auc(positives, negatives), loss, int(positives.sum()), int(negatives.sum())
        )
    return out

"""Federated evaluation through the secure sum: each client's held-out scores as one bounded vector, the noisy
sum as AUC and LogLoss.

Each client scores its own held-out item of each split (validation, test) with the model it received and
its private part, and inputs (`client_vector`), per split: a one-hot of (label, score bin) over 2 x BINS bins
and its log-loss divided by LOSS_CAP (clipped to [0, 1]); then a count of 1. A client whose policy keeps its
held-out items out sends `ZERO_VECTOR` (count 0) with its noise share, so the sum is always over exactly
the update phase's survivors. One client's vector has L2 norm at most sqrt(5)
(`round.evaluation_release.L2_BOUND`). It is encoded like a round's phases, with the round's mechanism and
noise multiplier z and its noise share sized for the round's n_min (`encode`); the server decodes the
noisy sum (`decode`) and learns, per split, the histogram of scores by label, the total log-loss and the
number of clients that scored, each coordinate with Gaussian-like noise of std sigma = z sqrt(5)
(`EvaluationRelease.noise_std`). This release is accounted in the run's epsilon (the server's ledger,
one `EvaluationRelease` per evaluation); with DP off it is exact and carries no guarantee
(`OUTSIDE_THE_GUARANTEE`), and a client sends its scores there only if its policy allows it.

Decoding: the AUC is computed from the noisy histograms as they are (every bin unbiased) and clipped to
[0, 1]; the label masses are clipped at 0 (never NaN: `auc` is None when a label's noisy mass is <= 0); the
scores are quantised to BINS bins (pairs in one bin count one half: at most half the fraction of pairs that
share a bin); the LogLoss is the noisy total loss times LOSS_CAP over the noisy count (rounded; None below
1), clipped to [0, LOSS_CAP]. The noise's error: each label's total carries noise of std sigma sqrt(BINS)
(about 11.3 sigma), the count sigma, the total loss LOSS_CAP sigma nats; the AUC's error is of the order of
sigma sqrt(BINS) / min(positives, negatives) (`auc_error_scale`), so it is small only when both labels have
many more clients than that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mrff_secure.dp.distributed import DistributedEncoder
from mrff_secure.errors import ConfigError, PrivacyError
from mrff_secure.round.encoding import decode_sum
from mrff_secure.round.evaluation_release import (
    BINS,
    L2_BOUND,
    PADDED_LENGTH,
    PER_SPLIT,
    SPLITS,
    VECTOR_LENGTH,
    EvaluationRelease,
    check_evaluation_survivors,
)

LOSS_CAP = 16.0  # nats: -log(1e-7); a client's log-loss is clipped to it, then divided by it
LENGTH = VECTOR_LENGTH
COUNT_INDEX = VECTOR_LENGTH - 1
ZERO_VECTOR = np.zeros(VECTOR_LENGTH, dtype=np.float64)  # a client that keeps its held-out items out
OUTSIDE_THE_GUARANTEE = (
    "federated evaluation with DP off: the exact secure sum of every client's held-out score histogram "
    "(by label, 128 bins), log-loss and count, per split, NOT covered by any epsilon: two evaluations over "
    "survivor sets differing in one client reveal that client's held-out labels and score bins"
)
IN_THE_GUARANTEE = (
    "federated evaluation under distributed DP: every coordinate of the sum of held-out score histograms, "
    "log-losses and counts carries discrete noise of std z * sqrt(5) (one client's L2 sensitivity sqrt(5)); "
    "each evaluation is a release in the run's epsilon"
)

__all__ = [
    "BINS",
    "COUNT_INDEX",
    "IN_THE_GUARANTEE",
    "L2_BOUND",
    "LENGTH",
    "LOSS_CAP",
    "OUTSIDE_THE_GUARANTEE",
    "PADDED_LENGTH",
    "SPLITS",
    "ZERO_VECTOR",
    "SplitEvaluation",
    "auc_error_scale",
    "binned_auc",
    "client_vector",
    "decode",
    "decode_ring",
    "encode",
    "guarantee_text",
]


def guarantee_text(release: EvaluationRelease) -> str:
    """What an evaluation under `release` is: inside the run's epsilon (noisy), or outside any guarantee (exact)."""
    return IN_THE_GUARANTEE if release.noisy else OUTSIDE_THE_GUARANTEE


def client_vector(scores: dict[str, tuple[float, int]]) -> np.ndarray:
    """One client's input (float64, VECTOR_LENGTH): `scores[split] = (probability of a click, label 0/1)`."""
    out = np.zeros(VECTOR_LENGTH, dtype=np.float64)
    for i, split in enumerate(SPLITS):
        probability, label = scores[split]
        if not (isinstance(label, (int, np.integer)) and label in (0, 1)):
            raise ConfigError(f"{split} label must be 0 or 1, got {label!r}")
        p = float(probability)
        if not math.isfinite(p):
            p = 0.5  # a non-finite score is no information: the middle bin, log(2)
        p = min(max(p, 0.0), 1.0)
        base = i * PER_SPLIT
        out[base + label * BINS + min(int(p * BINS), BINS - 1)] = 1.0
        likelihood = p if label == 1 else 1.0 - p
        loss = LOSS_CAP if likelihood <= math.exp(-LOSS_CAP) else -math.log(likelihood)
        out[base + 2 * BINS] = min(loss, LOSS_CAP) / LOSS_CAP
    out[COUNT_INDEX] = 1.0
    return out


def encode(
    release: EvaluationRelease, vector: np.ndarray, *, rotation_seed: int, rng: np.random.Generator
) -> np.ndarray:
    """One client's residues mod 2^b (int64, PADDED_LENGTH): its vector with its noise share (the release's plan)."""
    x = np.asarray(vector, dtype=np.float64)
    if x.shape != (VECTOR_LENGTH,) or not np.all(np.isfinite(x)):
        raise PrivacyError(f"an evaluation vector has {VECTOR_LENGTH} finite entries, got shape {x.shape}")
    if np.linalg.norm(x) > L2_BOUND * (1 + 1e-12):
        raise PrivacyError(f"an evaluation vector has L2 norm {float(np.linalg.norm(x)):.6g} > {L2_BOUND:.6g}")
    return DistributedEncoder(release.plan(), rotation_seed=rotation_seed).encode(x, rng=rng)


@dataclass(frozen=True)
class SplitEvaluation:
    clients: int  # the (noisy, rounded) number of clients that scored
    auc: float | None  # None when one label's (clipped) mass is 0
    log_loss: float | None  # None when no client scored
    positives: float  # the (noisy, clipped) histogram masses
    negatives: float

    def to_json(self) -> dict:
        return {
            "clients": self.clients,
            "auc": None if self.auc is None else round(self.auc, 6),
            "log_loss": None if self.log_loss is None else round(self.log_loss, 6),
            "positives": round(self.positives, 3),
            "negatives": round(self.negatives, 3),
        }


def binned_auc(positives: np.ndarray, negatives: np.ndarray) -> float | None:
    """AUC of score histograms: P(score_pos > score_neg) + P(same bin) / 2, clipped to [0, 1]; None when a label's
    total mass is not positive. Noisy histograms are used as they are (each bin unbiased; clipping every bin at 0
    would add about 0.4 sigma to each of the BINS bins of a label)."""
    p, n = float(positives.sum()), float(negatives.sum())
    if p <= 0 or n <= 0:
        return None
    below = np.concatenate([[0.0], np.cumsum(negatives, dtype=np.float64)[:-1]])
    return float(min(max((positives * (below + negatives / 2.0)).sum() / (p * n), 0.0), 1.0))


def auc_error_scale(release: EvaluationRelease, positives: float, negatives: float) -> float:
    """The order of the AUC's noise error: sigma sqrt(BINS) / min(positives, negatives) (inf if a label is absent)."""
    smaller = min(positives, negatives)
    return math.inf if smaller <= 0 else release.noise_std * math.sqrt(BINS) / smaller


def decode(summed: np.ndarray, *, exact: bool = False) -> dict[str, SplitEvaluation]:
    """The evaluation of each split from the decoded (float) sum of the clients' vectors (see the module docstring).
    exact (DP off): the histogram is rounded to integers and must add up to the count (a malformed input is
    refused); noisy: the AUC is computed from the noisy histograms, the masses and the AUC clipped to their ranges."""
    total = np.asarray(summed, dtype=np.float64)
    if total.shape != (VECTOR_LENGTH,) or not np.all(np.isfinite(total)):
        raise ConfigError(f"an evaluation sum has {VECTOR_LENGTH} finite entries, got shape {total.shape}")
    count = max(int(np.rint(total[COUNT_INDEX])), 0)
    out = {}
    for i, split in enumerate(SPLITS):
        block = total[i * PER_SPLIT : (i + 1) * PER_SPLIT]
        histogram = np.rint(block[: 2 * BINS]) if exact else block[: 2 * BINS]
        if exact and (np.any(histogram < 0) or int(histogram.sum()) != count):
            raise ConfigError(
                f"the {split} evaluation sum is inconsistent (histogram total {int(histogram.sum())} for {count} "
                "clients): a client's input was malformed"
            )
        negatives, positives = histogram[:BINS], histogram[BINS:]
        loss = None
        if count > 0:
            loss = min(max(float(block[2 * BINS]) * LOSS_CAP / count, 0.0), LOSS_CAP)
        out[split] = SplitEvaluation(
            count,
            binned_auc(positives, negatives),
            loss,
            max(float(positives.sum()), 0.0),
            max(float(negatives.sum()), 0.0),
        )
    return out


def decode_ring(
    release: EvaluationRelease, ring_sum: np.ndarray, *, survivors: int, rotation_seed: int
) -> dict[str, SplitEvaluation]:
    """Server: the evaluation sum's residues over `survivors` clients -> each split's evaluation (refused below the
    survivors its noise was sized for)."""
    check_evaluation_survivors(release, survivors)
    summed = decode_sum(release.plan(), ring_sum, survivors=survivors, rotation_seed=rotation_seed)
    return decode(summed, exact=not release.noisy)

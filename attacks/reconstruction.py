"""Interaction reconstruction: which item-attribute values each user interacted with (FedMF-style).

Adversary: the server, with the view of its threat model (a `RowRecorder`), the public item catalogue
and the noise level of the view (public: z * C under local DP) and nothing else.

Score of (user, row): a likelihood test of "untouched" (the row is pure Gaussian noise of known
per-coordinate std sigma in every round) against "touched" (a step on top of it). Over R rounds of
`dim` coordinates the row's values split into two independent parts (Cochran): the signed sum S,
with A = |S|^2 / (R sigma^2) ~ chi2(dim) under the null (a step pushed the same way every round adds
up here), and the spread around the mean, B = (energy - |S|^2 / R) / sigma^2 ~ chi2((R - 1) dim) (steps
whose signs change from round to round show here). Fisher's method joins their p-values:
-2 (log p_A + log p_B) ~ chi2(4) under the null, exactly, so the decision "touched" at p < ALPHA has
a false-positive rate of ALPHA on untouched rows. The score is -log of the joint p-value.
sigma: `noise_std` when given; otherwise estimated from the padding rows, which no one can touch (pure
noise); a noise-free view (sigma 0) scores by energy, and any moved row counts as touched.

Metrics over (real user, non-padding row) pairs: F1 of the touched rows at that threshold, AUC and
TPR at 1% and 0.1% FPR. Because popular values are touched by most users, a score that knows nothing
about the user still beats random guessing; the population baseline (each row scored by the fraction
of users who touch it, the most favourable population-level score) is reported beside it, and
`advantage_auc` = attack AUC - baseline AUC is the per-user leak (rule R4 of attacks/grid.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import special, stats

from attacks.recorder import RowRecorder
from attacks.rows import touched_rows
from attacks.scores import binary_scores, f1, tpr_at_fpr
from mrff_secure.checks import check_number
from mrff_secure.data.client_data import ClientData
from mrff_secure.round.spec import INDIVIDUAL_VIEWS, SUM_VIEWS, require_view

ALPHA = 0.01  # nominal false-positive rate of the "touched" decision on untouched rows
FISHER_DOF = 4  # two independent p-values


def view_noise_std(recorder: RowRecorder, noise_std: float | None, users: int) -> tuple[float, str]:
    """(sigma, where it came from): `noise_std` if given, else the root mean square value of the first
    `users` users' padding rows (canaries, which follow them, may put values there)."""
    if noise_std is not None:
        check_number("noise_std", noise_std, low=0.0)
        return float(noise_std), "given"
    rows = recorder.rows
    seen = recorder.rounds_seen[:users]
    coordinates = float(seen.sum()) * rows.dim * rows.padding_rows.size
    if coordinates == 0:
        return 0.0, "padding rows (none seen)"
    return float(np.sqrt(recorder.energy[:users, rows.padding_rows].sum() / coordinates)), "padding rows"


def chi2_logsf(x: np.ndarray, dof: np.ndarray | float) -> np.ndarray:
    """log P(chi2(dof) > x), finite where scipy's underflows to -inf (far in the tail: the leading terms of
    the upper incomplete gamma function's expansion), so that scores keep their order there."""
    x = np.asarray(x, dtype=np.float64)
    exact = stats.chi2.logsf(x, dof)
    half = np.asarray(dof, dtype=np.float64) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        tail = -x / 2.0 + (half - 1.0) * np.log(np.maximum(x, 1e-300) / 2.0) - special.gammaln(half)
    return np.where(np.isfinite(exact), exact, tail)


def row_log_p(recorder: RowRecorder, sigma: float, users: int | None = None) -> np.ndarray:
    """(users, num_rows) log p-value of "this row is pure noise of std sigma" (Fisher's join of the signed
    sum's and the spread's chi-square tests); users never seen get 0 (p = 1). sigma must be > 0."""
    check_number("sigma", sigma, low=0.0, low_open=True)
    users = recorder.num_users if users is None else users
    rounds = recorder.rounds_seen[:users].astype(np.float64)[:, None]  # (users, 1)
    dim = recorder.rows.dim
    signed_energy = np.square(recorder.signed_sum[:users]).sum(-1)  # |S|^2
    safe_rounds = np.maximum(rounds, 1.0)
    a = signed_energy / (safe_rounds * sigma**2)
    b = np.maximum(recorder.energy[:users] - signed_energy / safe_rounds, 0.0) / sigma**2
    log_pa = chi2_logsf(a, dim)
    spread_dof = np.broadcast_to((rounds - 1.0) * dim, b.shape)
    spread = spread_dof > 0  # one round: no spread, the signed sum's test alone
    log_pb = np.where(spread, chi2_logsf(b, np.maximum(spread_dof, 1.0)), 0.0)
    joint = np.where(spread, chi2_logsf(-2.0 * (log_pa + log_pb), FISHER_DOF), log_pa)
    return np.where(rounds > 0, joint, 0.0)


def row_evidence(recorder: RowRecorder, users: int, noise_std: float | None = None) -> tuple[np.ndarray, float, str]:
    """(users, num_rows) evidence that a row was touched (higher = more), the threshold of the ALPHA test on
    it, and a note on sigma: -log p at sigma > 0; the energy (threshold 0) in a noise-free view."""
    sigma, source = view_noise_std(recorder, noise_std, users)
    if sigma > 0:
        return -row_log_p(recorder, sigma, users), float(-np.log(ALPHA)), f"sigma {sigma:.6g} ({source})"
    return recorder.energy[:users].copy(), 0.0, f"sigma 0 ({source}): noise-free view"


def reconstruct_rows(recorder: RowRecorder, data: ClientData, *, noise_std: float | None = None) -> dict[str, Any]:
    """Run the attack for the first `data.num_users` users of the recorder (canaries, if any, follow them).
    `noise_std`: the per-coordinate std of the noise in each round's view (z * C under local DP; None:
    estimated from the padding rows)."""
    require_view(recorder.threat_model or "", INDIVIDUAL_VIEWS + SUM_VIEWS, "interaction reconstruction")
    users = data.num_users
    rows = recorder.rows
    evidence, threshold, note = row_evidence(recorder, users, noise_std)
    truth = touched_rows(data, rows)
    real = np.ones(rows.num_rows, dtype=bool)
    real[rows.padding_rows] = False
    labels, scores = truth[:, real].ravel(), evidence[:, real].ravel()
    result = binary_scores(labels, scores)
    result["tpr_at_0.1pct_fpr"] = tpr_at_fpr(labels, scores, 0.001) if 0 < labels.sum() < labels.size else np.nan
    result["f1"] = f1(labels, scores > threshold)
    result["threshold"] = threshold
    result["alpha"] = ALPHA if threshold > 0 else 0.0
    result["false_positive_rate"] = float((scores[~labels] > threshold).mean()) if (~labels).any() else np.nan
    result["noise"] = note
    popularity = np.broadcast_to(truth.mean(0)[None, real], truth[:, real].shape).ravel()
    baseline = binary_scores(labels, popularity)
    result["baseline_auc"] = baseline["auc"]
    result["advantage_auc"] = result["auc"] - baseline["auc"]
    return result

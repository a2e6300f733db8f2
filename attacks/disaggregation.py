"""Disaggregation across rounds (after Lam et al. ICML 2021, "Gradient disaggregation"): with client
sampling below 1 the server knows who took part in each secure sum (the participation matrix P,
rounds x users), and the sums over different subsets of users can be taken apart again.

Adversary: the server under `secagg` or `secagg+dp`, with the participant lists and every round's sum
(read from `RowRecorder.sum_energy`: the energy of every item-attribute row in each round's sum).
Model: a user's contribution to row r is about the same in every round it takes part (Adam, fresh each
round, moves a touched row by about lr per coordinate; an untouched row not at all), so the norm of
row r in round t's sum is about b_r + sum over users u of P[t, u] * a[u, r], with a >= 0 and b >= 0 the
noise floor. Least squares: for every row, non-negative least squares of its per-round norms (divided
by their mean) on [1, P]; the score of (user u, row r) is a[u, r]. A few users explain a row touched by
a few, which is where a sum can betray one (all other users' coefficients are 0: they are ordered
among themselves by the simple score below, scaled to stay under any coefficient).

Beside it, as the earlier and simpler attack (`in_out`): (mean energy of row r in the sums of u's
rounds - mean in the other rounds) / (mean energy of row r over all rounds).

Metric: AUC over (user, rare row) pairs, rare = touched by at most RARE_USERS users (the population
baseline is near chance there), with TPR at 1% and 0.1% FPR, and all rows reported beside it. It
needs rounds without the user, so it applies only when the client fraction is below 1; DP noise on
every coordinate is what stops it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import nnls

from attacks.recorder import RowRecorder
from attacks.rows import touched_rows
from attacks.scores import binary_scores, tpr_at_fpr
from mrff_secure.data.client_data import ClientData
from mrff_secure.round.spec import SUM_VIEWS, require_view

RARE_USERS = 5
TIE_BREAK = 1e-6  # weight of the in/out score under the least-squares coefficients


def in_out_scores(energy: np.ndarray, took_part: np.ndarray) -> np.ndarray:
    """(users, rows): the mean energy of each row in the user's rounds minus in the others, over its mean."""
    rounds, rounds_in = took_part.shape[0], took_part.sum(0)
    scale = energy.mean(0) + 1e-30
    inside = took_part.T.astype(np.float64) @ energy / np.maximum(rounds_in, 1)[:, None]
    outside = (~took_part).T.astype(np.float64) @ energy / np.maximum(rounds - rounds_in, 1)[:, None]
    return np.asarray((inside - outside) / scale[None, :])


def least_squares_scores(energy: np.ndarray, took_part: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """(users, rows): for every row in `columns`, the non-negative least-squares coefficients of the users
    (the columns of P) and an intercept (the noise floor) fitted to the row's per-round norms over their
    mean; 0 for the rows not in `columns`."""
    norms = np.sqrt(np.maximum(energy, 0.0))
    design = np.hstack([np.ones((took_part.shape[0], 1)), took_part.astype(np.float64)])
    coefficients = np.zeros((took_part.shape[1], energy.shape[1]))
    for row in np.flatnonzero(columns):
        mean = norms[:, row].mean()
        if mean > 0:
            solution, _ = nnls(design, norms[:, row] / mean)
            coefficients[:, row] = solution[1:]
    return coefficients


def _score(truth: np.ndarray, scores: np.ndarray, popularity: np.ndarray) -> dict[str, Any]:
    labels, flat = truth.ravel(), scores.ravel()
    entry = binary_scores(labels, flat)
    entry["tpr_at_0.1pct_fpr"] = tpr_at_fpr(labels, flat, 0.001)
    entry["baseline_auc"] = binary_scores(labels, popularity.ravel())["auc"]
    entry["advantage_auc"] = entry["auc"] - entry["baseline_auc"]
    return entry


def disaggregate(recorder: RowRecorder, data: ClientData) -> dict:
    """{"applicable", "users", "rounds", "all_rows", "rare_rows", "rare_users", "in_out"}: the least-squares
    attack on all (user, row) pairs and on the rare rows ({auc, tpr_at_1pct_fpr, tpr_at_0.1pct_fpr,
    baseline_auc, advantage_auc, positives, negatives, rows}, or {applicable: False, rows}); "in_out"
    holds the same two entries for the in/out attack."""
    require_view(recorder.threat_model or "", SUM_VIEWS, "disaggregation across rounds")
    if not recorder.sum_energy:
        return {"applicable": False, "reason": "no sum view recorded"}
    energy = np.stack(recorder.sum_energy)  # (rounds, rows)
    took_part = np.stack(recorder.participation)[:, : data.num_users]  # (rounds, users)
    rounds, rounds_in = took_part.shape[0], took_part.sum(0)
    usable = (rounds_in > 0) & (rounds_in < rounds)
    if not usable.any():
        return {"applicable": False, "reason": "no user was both in and out of some rounds (client fraction 1)"}
    rows = recorder.rows
    real = np.ones(rows.num_rows, dtype=bool)
    real[rows.padding_rows] = False
    truth_all = touched_rows(data, rows)
    touchers = truth_all.sum(0)
    truth = truth_all[usable]
    simple = in_out_scores(energy, took_part)
    fitted = least_squares_scores(energy, took_part, real)
    # users without a coefficient keep the in/out order, below every positive coefficient
    spread = np.abs(simple[:, real]).max() if real.any() else 0.0
    combined = fitted + TIE_BREAK * simple / max(float(spread), 1e-30)
    result: dict = {"applicable": True, "users": int(usable.sum()), "rounds": int(rounds), "in_out": {}}
    for name, columns in (("all_rows", real), ("rare_rows", real & (touchers > 0) & (touchers <= RARE_USERS))):
        labels = truth[:, columns]
        if not columns.any() or labels.all() or not labels.any():
            result[name] = result["in_out"][name] = {"applicable": False, "rows": int(columns.sum())}
            continue
        popularity = np.broadcast_to(truth_all.mean(0)[None, columns], labels.shape)
        for target, scores in ((result, combined), (result["in_out"], simple)):
            target[name] = {**_score(labels, scores[usable][:, columns], popularity), "rows": int(columns.sum())}
    result["rare_users"] = RARE_USERS
    return result

"""Disaggregation across rounds (Lam et al. ICML 2021, in its simplest form): with client sampling
below 1 the server knows who took part in each secure sum, and comparing the sums of the rounds a
user was in with those it was not in isolates that user's rows.

Adversary: the server under `secagg` or `secagg+dp`, with the participant lists and every round's
sum. Score of (user u, row r) = (mean energy of row r in the sums of u's rounds - mean in the other
rounds) / (mean energy of row r over all rounds). A row touched by one user lights up exactly when
that user takes part; a row most users touch lights up in every round whoever takes part, so the
attack can only ever find the rare ones.

Metric: AUC over (user, rare row) pairs, rare = touched by at most RARE_USERS users (the pairs where
a sum can betray one user; the population baseline is near chance there), with all rows reported
beside it. It needs rounds without the user, so it applies only when the client fraction is below 1;
DP noise on every coordinate is what stops it.
"""

from __future__ import annotations

import numpy as np

from attacks.recorder import RowRecorder
from attacks.rows import touched_rows
from attacks.scores import binary_scores
from mrff_secure.data.client_data import ClientData
from mrff_secure.round.spec import SUM_VIEWS, require_view

RARE_USERS = 5


def disaggregate(recorder: RowRecorder, data: ClientData) -> dict:
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
    scale = energy.mean(0) + 1e-30
    inside = took_part.T.astype(np.float64) @ energy / np.maximum(rounds_in, 1)[:, None]
    outside = (~took_part).T.astype(np.float64) @ energy / np.maximum(rounds - rounds_in, 1)[:, None]
    scores = ((inside - outside) / scale[None, :])[usable]
    real = np.ones(rows.num_rows, dtype=bool)
    real[rows.padding_rows] = False
    truth_all = touched_rows(data, rows)
    touchers = truth_all.sum(0)
    truth = truth_all[usable]
    result: dict = {"applicable": True, "users": int(usable.sum()), "rounds": int(rounds)}
    for name, columns in (("all_rows", real), ("rare_rows", real & (touchers > 0) & (touchers <= RARE_USERS))):
        labels = truth[:, columns].ravel()
        if not columns.any() or labels.all() or not labels.any():
            result[name] = {"applicable": False, "rows": int(columns.sum())}
            continue
        entry = binary_scores(labels, scores[:, columns].ravel())
        popularity = np.broadcast_to(truth_all.mean(0)[None, columns], truth[:, columns].shape).ravel()
        entry["baseline_auc"] = binary_scores(labels, popularity)["auc"]
        entry["advantage_auc"] = entry["auc"] - entry["baseline_auc"]
        entry["rows"] = int(columns.sum())
        result[name] = entry
    result["rare_users"] = RARE_USERS
    return result

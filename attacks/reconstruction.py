"""Interaction reconstruction: which item-attribute values each user interacted with (FedMF-style).

Adversary: the server, with the view of its threat model (a `RowRecorder`), the public item catalogue
and nothing else. Score of (user, row) = the row's energy in what the server saw of the user
(`recorder`). The decision threshold comes from a public null: the padding rows, which no one can
touch (the 99th percentile of their energies; exactly 0 without noise, so any touched row counts).

Metrics over (real user, non-padding row) pairs: F1 of the touched rows at that threshold, AUC and
TPR at 1% FPR. Because popular values are touched by most users, a score that knows nothing about
the user still beats random guessing; the population baseline (each row scored by the fraction of
users who touch it, the most favourable population-level score) is reported beside it, and
`advantage_auc` = attack AUC - baseline AUC is the per-user leak (rule R4 of attacks/grid.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attacks.recorder import RowRecorder
from attacks.rows import touched_rows
from attacks.scores import binary_scores, f1
from mrff_secure.data.client_data import ClientData
from mrff_secure.round.spec import INDIVIDUAL_VIEWS, SUM_VIEWS, require_view

NULL_QUANTILE = 0.99


def reconstruct_rows(recorder: RowRecorder, data: ClientData) -> dict[str, Any]:
    """Run the attack for the first `data.num_users` users of the recorder (canaries, if any, follow them)."""
    require_view(recorder.threat_model or "", INDIVIDUAL_VIEWS + SUM_VIEWS, "interaction reconstruction")
    users = data.num_users
    rows = recorder.rows
    energy = recorder.energy[:users]
    truth = touched_rows(data, rows)
    real = np.ones(rows.num_rows, dtype=bool)
    real[rows.padding_rows] = False
    null = energy[:, rows.padding_rows].ravel()
    threshold = float(np.quantile(null, NULL_QUANTILE)) if null.size else 0.0
    labels, scores = truth[:, real].ravel(), energy[:, real].ravel()
    result = binary_scores(labels, scores)
    result["f1"] = f1(labels, scores > threshold)
    result["threshold"] = threshold
    popularity = np.broadcast_to(truth.mean(0)[None, real], truth[:, real].shape).ravel()
    baseline = binary_scores(labels, popularity)
    result["baseline_auc"] = baseline["auc"]
    result["advantage_auc"] = result["auc"] - baseline["auc"]
    return result

"""Interaction-level membership inference (IMIA, Yuan et al. WWW 2023): was item i in user u's history?

Adversary: the server, with its threat model's view (`RowRecorder`) and the public item catalogue.
Score of (u, i) = the smallest energy among item i's attribute rows in what the server saw of u (an
item was used only if all of its rows were touched).

Members: the distinct items of u's training sequence and targets. Non-members: items u never saw
(not in training, validation or test), drawn with probability proportional to their popularity in
training (so that "popular" is not mistaken for "member"), as many as u has members, and only items
whose attribute rows are not exactly those of one of u's members: in a model that sees items only
through their attributes, such an item is indistinguishable from a member by construction (the
number excluded is reported). The population baseline scores (u, i) by item i's popularity.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attacks.recorder import RowRecorder
from attacks.rows import user_item_matrix
from attacks.scores import binary_scores
from mrff_secure.data.client_data import ClientData
from mrff_secure.round.spec import INDIVIDUAL_VIEWS, SUM_VIEWS, require_view


def item_membership(recorder: RowRecorder, data: ClientData, *, seed: int = 0) -> dict[str, Any]:
    require_view(recorder.threat_model or "", INDIVIDUAL_VIEWS + SUM_VIEWS, "interaction membership inference")
    rng = np.random.default_rng(seed)
    rows = recorder.rows
    item_rows = rows.item_matrix(data.item_attributes)  # (items, num_rows)
    members = user_item_matrix(data)  # (users, items)
    popularity = members.sum(0).astype(np.float64)
    popularity[0] = 0.0
    _, signature = np.unique(item_rows, axis=0, return_inverse=True)  # items with the same rows share an id
    signature = signature.reshape(-1)
    seen = members.copy()
    for name in ("val_seq", "test_seq"):
        values = getattr(data, name)
        user_rows, positions = np.nonzero(values != 0)
        seen[user_rows, values[user_rows, positions]] = True
    seen[np.arange(data.num_users), data.val_item] = True
    seen[np.arange(data.num_users), data.test_item] = True
    # score of (u, i): min over i's rows of u's energy, via a masked min
    labels, scores, baseline, excluded = [], [], [], 0
    for u in range(data.num_users):
        member_items = np.flatnonzero(members[u])
        member_items = member_items[member_items != 0]
        if member_items.size == 0:
            continue
        candidates = np.flatnonzero(~seen[u])
        candidates = candidates[candidates != 0]
        clash = np.isin(signature[candidates], signature[member_items])
        excluded += int(clash.sum())
        candidates = candidates[~clash]
        weights = popularity[candidates] + 1.0
        if candidates.size == 0:
            continue
        take = min(member_items.size, candidates.size)
        non_members = rng.choice(candidates, size=take, replace=False, p=weights / weights.sum())
        items = np.concatenate([member_items, non_members])
        energy = np.where(item_rows[items], recorder.energy[u][None, :], np.inf).min(1)
        labels.append(np.r_[np.ones(member_items.size, bool), np.zeros(take, bool)])
        scores.append(energy)
        baseline.append(popularity[items])
    labels_all, scores_all = np.concatenate(labels), np.concatenate(scores)
    result = binary_scores(labels_all, scores_all)
    base = binary_scores(labels_all, np.concatenate(baseline))
    result["baseline_auc"] = base["auc"]
    result["advantage_auc"] = result["auc"] - base["auc"]
    result["non_members_excluded_as_indistinguishable"] = excluded
    return result

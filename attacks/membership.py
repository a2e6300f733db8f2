"""Interaction-level membership inference (IMIA, Yuan et al. WWW 2023): was item i in user u's history?

Adversary: the server, with its threat model's view (`RowRecorder`), the public item catalogue and the
noise level of the view (public: z * C under local DP). Row evidence (`reconstruction.row_evidence`):
-log p of the known-noise likelihood test of "untouched" (signed sums and spread over rounds); in a
noise-free plain view, how hard Adam pulled the row (`recorder.step_pull`, a row used by many items is
pulled harder); in a noise-free sum view, the energy. Score of (u, i) = the smallest evidence among
item i's attribute rows (an item was used only if all of its rows were touched).

Calibration (LiRA / RMIA style): the attack's score is the mean of two ranks,
- per user: the score's rank among the user's own scores over public reference items (random
  catalogue items): "how does this item stand among the items this user could have had";
- per item: the score's rank among the same item's scores over observed users (up to REFERENCE_USERS
  at random: their updates only, never their data): "how does this user stand on this item".
`variants` reports the uncalibrated score and each rank alone. No shadow users: the reference users
are the observed population (members of the item among them blunt the per-item rank).

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

from attacks.reconstruction import row_evidence
from attacks.recorder import RowRecorder
from attacks.rows import user_item_matrix
from attacks.scores import binary_scores, tpr_at_fpr
from mrff_secure.data.client_data import ClientData
from mrff_secure.round.spec import INDIVIDUAL_VIEWS, SUM_VIEWS, ThreatModel, require_view

REFERENCE_ITEMS = 200  # public catalogue items per user for the per-user calibration
REFERENCE_USERS = 400  # observed users per item for the per-item calibration
CHUNK = 1 << 20  # scores gathered per block (memory)


def item_row_index(item_rows: np.ndarray) -> np.ndarray:
    """(items, num_rows) bool -> (items, k) the row numbers of each item, padded with -1."""
    counts = item_rows.sum(1)
    index = np.full((item_rows.shape[0], max(int(counts.max()), 1)), -1, dtype=np.int64)
    items, rows = np.nonzero(item_rows)
    slot = np.arange(items.size) - np.searchsorted(items, items)
    index[items, slot] = rows
    return index


def pair_scores(evidence: np.ndarray, index: np.ndarray, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Score of each (users[k], items[k]): the smallest evidence among the item's rows (-inf: no rows)."""
    out = np.empty(users.size)
    step = max(1, CHUNK // index.shape[1])
    for lo in range(0, users.size, step):
        u, rows = users[lo : lo + step], index[items[lo : lo + step]]
        values = np.where(rows >= 0, evidence[u[:, None], np.maximum(rows, 0)], np.inf)
        out[lo : lo + step] = values.min(1)
    out[~np.isfinite(out)] = -np.inf
    return out


def _rank(score: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Row-wise: the share of reference[k] below score[k] (ties count half)."""
    below = (reference < score[:, None]).mean(1)
    ties = (reference == score[:, None]).mean(1)
    return below + 0.5 * ties


def item_membership(
    recorder: RowRecorder, data: ClientData, *, seed: int = 0, noise_std: float | None = None
) -> dict[str, Any]:
    """`noise_std`: the per-coordinate std of the noise in each round's view (z * C under local DP; None:
    estimated from the padding rows, see `reconstruction.row_evidence`)."""
    require_view(recorder.threat_model or "", INDIVIDUAL_VIEWS + SUM_VIEWS, "interaction membership inference")
    rng = np.random.default_rng(seed)
    rows = recorder.rows
    item_rows = rows.item_matrix(data.item_attributes)  # (items, num_rows)
    index = item_row_index(item_rows)
    users = data.num_users
    evidence, _, note = row_evidence(recorder, users, noise_std)
    if note.startswith("sigma 0") and recorder.threat_model == ThreatModel.PLAIN and recorder.pull[:users].any():
        evidence, note = recorder.pull[:users], note + "; Adam's pull"
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
    seen[np.arange(users), data.val_item] = True
    seen[np.arange(users), data.test_item] = True
    pair_users, pair_items, labels_list, excluded = [], [], [], 0
    for u in range(users):
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
        pair_items.append(np.concatenate([member_items, non_members]))
        pair_users.append(np.full(member_items.size + take, u))
        labels_list.append(np.r_[np.ones(member_items.size, bool), np.zeros(take, bool)])
    pu, pi, labels = np.concatenate(pair_users), np.concatenate(pair_items), np.concatenate(labels_list)
    raw = pair_scores(evidence, index, pu, pi)
    # calibration against public reference items (per user) and the other observed users (per item)
    catalogue = np.arange(1, data.num_items)
    reference_items = rng.choice(catalogue, size=min(REFERENCE_ITEMS, catalogue.size), replace=False)
    user_reference = pair_scores(
        evidence, index, np.repeat(np.arange(users), reference_items.size), np.tile(reference_items, users)
    ).reshape(users, reference_items.size)
    per_user = _rank(raw, user_reference[pu])
    reference_users = rng.choice(users, size=min(REFERENCE_USERS, users), replace=False)
    distinct, where = np.unique(pi, return_inverse=True)
    item_reference = pair_scores(
        evidence, index, np.tile(reference_users, distinct.size), np.repeat(distinct, reference_users.size)
    ).reshape(distinct.size, reference_users.size)
    per_item = _rank(raw, item_reference[where.reshape(-1)])
    variants = {}
    for name, variant in (("uncalibrated", raw), ("per_user", per_user), ("per_item", per_item)):
        variants[name] = binary_scores(labels, variant)
        variants[name]["tpr_at_0.1pct_fpr"] = tpr_at_fpr(labels, variant, 0.001)
    scores = (per_user + per_item) / 2
    result = binary_scores(labels, scores)
    result["tpr_at_0.1pct_fpr"] = tpr_at_fpr(labels, scores, 0.001)
    result["row_evidence"] = note
    result["variants"] = variants
    base = binary_scores(labels, popularity[pi])
    result["baseline_auc"] = base["auc"]
    result["advantage_auc"] = result["auc"] - base["auc"]
    result["non_members_excluded_as_indistinguishable"] = excluded
    return result

"""The data's ceiling for interaction membership inference: what an attacker who knows exactly which
item-attribute rows each user touched could score, whatever the view.

A model that sees items only through their attribute rows cannot tell a member item from a non-member
item whose rows the user touched through other items; this oracle measures how often that happens. It
runs the membership attack itself (`attacks.membership.item_membership`: the same members, the same
popularity-matched non-members, the same score, min over an item's rows) on a perfect view instead of a
recorded one:
- rows: energy 1 on every row the user's training items touch, 0 elsewhere (an item scores 1 when all of
  its rows were touched);
- counts: energy = how many gradient contributions the row got in the user's training data (occurrences
  as input in the training sequence plus as target), the most a noiseless row energy could tell.
R0's membership bar is only meaningful below these ceilings.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attacks.membership import item_membership
from attacks.recorder import RowRecorder
from attacks.rows import ItemRows, touched_rows
from mrff_secure.data.client_data import ClientData
from mrff_secure.round.spec import ThreatModel


def row_numbering(data: ClientData) -> ItemRows:
    """The item-attribute rows numbered as `ItemRows` numbers them (the offsets in an update vector, which
    the oracle never reads, are left at 0)."""
    table = data.item_attributes
    return ItemRows(tuple(0 for _ in table.vocab_sizes), tuple(table.vocab_sizes), 1)


def touch_counts(data: ClientData, rows: ItemRows) -> np.ndarray:
    """(users, num_rows) int: gradient contributions of every row, i.e. for each of the user's training
    positions (items of `train_seq` and of `train_target`, padding excluded) the rows of that item."""
    item_rows = rows.item_matrix(data.item_attributes).astype(np.int64)  # (items, num_rows)
    occurrences = np.zeros((data.num_users, data.num_items), dtype=np.int64)
    for values in (data.train_seq, data.train_target):
        users, positions = np.nonzero(values != 0)
        np.add.at(occurrences, (users, values[users, positions]), 1)
    return occurrences @ item_rows


def _perfect_view(rows: ItemRows, energy: np.ndarray) -> RowRecorder:
    view = RowRecorder(rows, energy.shape[0])
    view.threat_model = ThreatModel.PLAIN
    view.energy = energy.astype(np.float64)
    return view


def membership_ceiling(data: ClientData, *, seed: int = 0) -> dict[str, Any]:
    """{"oracle_auc_rows", "oracle_auc_counts"} and the full membership results of both oracles
    (`rows`, `counts`), with the same non-members as `item_membership(..., seed=seed)` draws."""
    rows = row_numbering(data)
    by_rows = item_membership(_perfect_view(rows, touched_rows(data, rows)), data, seed=seed)
    by_counts = item_membership(_perfect_view(rows, touch_counts(data, rows)), data, seed=seed)
    return {
        "oracle_auc_rows": by_rows["auc"],
        "oracle_auc_counts": by_counts["auc"],
        "rows": by_rows,
        "counts": by_counts,
    }

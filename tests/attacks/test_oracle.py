"""The membership ceiling: an oracle that knows the touched rows is perfect exactly when items have rows
of their own, and limited by shared attribute rows otherwise."""

from __future__ import annotations

import dataclasses

import numpy as np

from attacks.membership import item_membership
from attacks.oracle import _perfect_view, membership_ceiling, row_numbering, touch_counts
from attacks.rows import touched_rows
from mrff_secure.data import make_synthetic
from mrff_secure.data.client_data import AttributeTable

DATA = dict(num_users=60, num_items=120, maxlen=12, min_interactions=5, max_interactions=12, seed=3)


def test_touch_counts_count_every_training_position():
    data = make_synthetic(**DATA)
    rows = row_numbering(data)
    counts = touch_counts(data, rows)
    assert np.array_equal(counts > 0, touched_rows(data, rows))
    user = 5
    items = np.r_[data.train_seq[user], data.train_target[user]]
    items = items[items != 0]
    item_rows = rows.item_matrix(data.item_attributes)
    assert np.array_equal(counts[user], item_rows[items].sum(0))
    assert counts[user].sum() == items.size * len(data.item_attributes.vocab_sizes)


def test_the_oracle_is_perfect_when_every_item_has_its_own_row():
    data = make_synthetic(**DATA)
    ids = np.arange(data.num_items, dtype=np.int64)[:, None]
    ids[0] = data.num_items  # padding item -> padding value (last)
    own_rows = AttributeTable(("item_id",), (data.num_items + 1,), ((0, 1),), ids)
    unique = dataclasses.replace(data, item_attributes=own_rows)
    ceiling = membership_ceiling(unique)
    assert ceiling["oracle_auc_rows"] == 1.0 and ceiling["oracle_auc_counts"] == 1.0


def test_shared_attribute_rows_cap_the_oracle_and_it_scores_the_attacks_pairs():
    data = make_synthetic(**DATA)
    ceiling = membership_ceiling(data, seed=1)
    assert 0.5 < ceiling["oracle_auc_rows"] < 0.99
    assert ceiling["oracle_auc_rows"] < ceiling["oracle_auc_counts"] < 1.0
    assert ceiling["oracle_auc_rows"] == ceiling["rows"]["auc"]
    # both oracles score the membership attack's own pairs (same seed: same members and non-members)
    for key in ("positives", "negatives", "non_members_excluded_as_indistinguishable", "baseline_auc"):
        assert ceiling["rows"][key] == ceiling["counts"][key]
    view = _perfect_view(row_numbering(data), touched_rows(data, row_numbering(data)))
    assert item_membership(view, data, seed=1)["auc"] == ceiling["oracle_auc_rows"]

"""Rare attribute values planted in the synthetic data: touched by exactly the intended users, and
nothing else moves (0 rare values gives the dataset of earlier versions, to the byte)."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from attacks.rows import user_item_matrix
from mrff_secure.data import make_synthetic
from mrff_secure.errors import ConfigError

SMALL = dict(num_users=50, num_items=80, maxlen=12, seed=7)
# sha256 of every field of make_synthetic(**SMALL) and make_synthetic(), pinned before rare values existed
PINNED_SMALL = "fbc2e56727f8bf40a57792ee4ea3b63fe1071d82625335d85f4e275dca07b6be"
PINNED_DEFAULT = "4f3eb04590ed917342d884a110e9c75a7cd6ee279a88d32e7dc1428cec5e5030"
RARE = dict(num_users=60, num_items=200, maxlen=12, min_interactions=5, max_interactions=12, seed=3)


def _update(h, value) -> None:
    if isinstance(value, np.ndarray):
        h.update(f"{value.dtype}|{value.shape}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            h.update(field.name.encode())
            _update(h, getattr(value, field.name))
    else:
        h.update(repr(value).encode())


def digest(data) -> str:
    h = hashlib.sha256()
    _update(h, data)
    return h.hexdigest()


def test_no_rare_values_is_the_dataset_of_earlier_versions():
    assert digest(make_synthetic(**SMALL)) == PINNED_SMALL
    assert digest(make_synthetic(**SMALL, rare_values=0)) == PINNED_SMALL
    assert digest(make_synthetic()) == PINNED_DEFAULT
    assert digest(make_synthetic(**RARE, rare_values=3)) != digest(make_synthetic(**RARE))


def _value_touchers(data):
    """(users, subcategory values) bool: which users' training items carry each sub-category value."""
    table = data.item_attributes
    field = table.field_names.index("subcategory")
    column = table.spans[field][0]
    onehot = np.zeros((table.num_rows, table.vocab_sizes[field]), dtype=bool)
    onehot[np.arange(table.num_rows), table.tokens[:, column]] = True
    onehot[0] = False
    return (user_item_matrix(data).astype(np.int64) @ onehot.astype(np.int64)) > 0, field


@pytest.mark.parametrize("rare_values, users_per_value", [(10, 1), (4, 3)])
def test_each_planted_value_is_touched_by_exactly_the_intended_users(rare_values, users_per_value):
    plain = make_synthetic(**RARE)
    data = make_synthetic(**RARE, rare_values=rare_values, rare_value_users=users_per_value)
    touchers, field = _value_touchers(data)
    ordinary = plain.item_attributes.vocab_sizes[field] - 1
    assert data.item_attributes.vocab_sizes[field] == ordinary + rare_values + 1
    counts = touchers.sum(0)
    assert (counts[ordinary : ordinary + rare_values] == users_per_value).all()
    assert counts[-1] == 0  # padding
    # no other user even sees a planted item (validation and test included)
    planted = np.flatnonzero(data.item_attributes.tokens[1:, field] >= ordinary) + 1
    assert planted.size == rare_values * users_per_value
    seen_by = [
        {
            u
            for u in range(data.num_users)
            if item
            in np.r_[
                data.train_seq[u],
                data.train_target[u],
                data.val_seq[u],
                data.test_seq[u],
                data.val_item[u],
                data.test_item[u],
            ]
        }
        for item in planted
    ]
    assert all(len(users) == 1 for users in seen_by)
    # interactions, labels and the other attributes are those of the same seed without rare values
    for name in ("train_seq", "train_target", "train_label", "test_item", "test_label", "ground_truth_groups"):
        assert np.array_equal(getattr(data, name), getattr(plain, name))
    others = [c for c in range(data.item_attributes.tokens.shape[1]) if c != field]
    assert np.array_equal(data.item_attributes.tokens[:, others], plain.item_attributes.tokens[:, others])
    assert np.array_equal(data.user_attributes.tokens, plain.user_attributes.tokens)


def test_too_many_rare_values_is_a_clear_error():
    with pytest.raises(ConfigError, match="cannot plant 500 rare value"):
        make_synthetic(**RARE, rare_values=500)
    with pytest.raises(ConfigError, match="rare_values >= 0"):
        make_synthetic(**SMALL, rare_values=-1)

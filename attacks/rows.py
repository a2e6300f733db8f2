"""Where a user's interactions show in an update: the rows of the item-attribute embedding tables.

The model embeds an item as the concatenation of one row per attribute field (`AttributeEmbedding`,
parameters ``items.tables.<field>``, shape (vocab, dim), the last row padding). A user's local step
gives a non-zero gradient to exactly the rows of the attribute values of the items in its training
sequence and targets, and Adam (fresh each round) moves each such coordinate by about lr: so a raw
update shows which attribute values the user touched. Rows are numbered globally, field after field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mrff_secure.data.client_data import AttributeTable, ClientData
from mrff_secure.errors import ConfigError
from mrff_secure.round.update_vector import UpdateLayout

ITEM_TABLE_PREFIX = "items.tables."


@dataclass(frozen=True)
class ItemRows:
    """The item-attribute rows inside the update vector: one (start, vocab, dim) per field."""

    starts: tuple[int, ...]  # offset of each field's table in the update vector
    vocab_sizes: tuple[int, ...]  # rows per field, padding row last
    dim: int

    @staticmethod
    def from_layout(layout: UpdateLayout, table: AttributeTable) -> "ItemRows":
        offsets, offset = {}, 0
        for name, shape in zip(layout.shared_names, layout.shared_shapes):
            offsets[name] = (offset, shape)
            offset += math.prod(shape)
        starts, dims = [], set()
        for field, vocab in enumerate(table.vocab_sizes):
            name = f"{ITEM_TABLE_PREFIX}{field}"
            if name not in offsets or offsets[name][1][0] != vocab:
                raise ConfigError(f"the update layout has no item table {name!r} of {vocab} rows")
            starts.append(offsets[name][0])
            dims.add(offsets[name][1][1])
        if len(dims) != 1:
            raise ConfigError(f"item tables of different widths {sorted(dims)}")
        return ItemRows(tuple(starts), tuple(table.vocab_sizes), dims.pop())

    @property
    def num_rows(self) -> int:
        return sum(self.vocab_sizes)

    @property
    def field_offsets(self) -> np.ndarray:
        """Global row number of each field's first row."""
        return np.concatenate([[0], np.cumsum(self.vocab_sizes)[:-1]]).astype(np.int64)

    @property
    def padding_rows(self) -> np.ndarray:
        """Global numbers of the padding rows: never touched by anyone (a public null)."""
        return self.field_offsets + np.asarray(self.vocab_sizes) - 1

    def take(self, vectors: np.ndarray) -> np.ndarray:
        """(..., layout.size) update vectors -> (..., num_rows, dim) item-attribute rows."""
        parts = [
            vectors[..., s : s + v * self.dim].reshape(*vectors.shape[:-1], v, self.dim)
            for s, v in zip(self.starts, self.vocab_sizes)
        ]
        return np.concatenate(parts, axis=-2)

    def item_matrix(self, table: AttributeTable) -> np.ndarray:
        """(items, num_rows) bool: the non-padding attribute rows of every item (row 0, padding, has none)."""
        matrix = np.zeros((table.num_rows, self.num_rows), dtype=bool)
        for field, ((lo, hi), vocab) in enumerate(zip(table.spans, table.vocab_sizes)):
            values = table.tokens[:, lo:hi]
            items, cols = np.nonzero(values != vocab - 1)
            matrix[items, self.field_offsets[field] + values[items, cols]] = True
        matrix[0] = False
        return matrix


def user_item_matrix(data: ClientData) -> np.ndarray:
    """(users, items) bool: the items of each user's training sequence and targets."""
    matrix = np.zeros((data.num_users, data.num_items), dtype=bool)
    for name in ("train_seq", "train_target"):
        values = getattr(data, name)
        users, cols = np.nonzero(values != 0)
        matrix[users, values[users, cols]] = True
    return matrix


def touched_rows(data: ClientData, rows: ItemRows) -> np.ndarray:
    """Ground truth, (users, num_rows) bool: the rows each user's training items touch."""
    item_matrix = rows.item_matrix(data.item_attributes)
    truth = np.zeros((data.num_users, rows.num_rows), dtype=bool)
    for user in range(data.num_users):
        items = np.unique(np.concatenate([data.train_seq[user], data.train_target[user]]))
        truth[user] = item_matrix[items[items != 0]].any(0)
    return truth

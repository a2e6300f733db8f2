"""The per-user data every dataset loader produces: attribute tables and leave-one-out sequences."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from mrff_secure.errors import DataFormatError


@dataclass(frozen=True)
class AttributeTable:
    """Categorical attributes of users or items.

    `tokens` is (rows, total_width) int64. Field i occupies columns `spans[i]`
    (width 1 for a token field, k for a token_seq field padded with its
    padding index). Every field's padding index is `vocab_sizes[i] - 1`; its
    embedding is the mean over the non-padding tokens.
    """

    field_names: tuple[str, ...]
    vocab_sizes: tuple[int, ...]
    spans: tuple[tuple[int, int], ...]
    tokens: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.field_names)
        if not (len(self.vocab_sizes) == len(self.spans) == n) or n == 0:
            raise DataFormatError(
                f"attribute table needs one vocab size and span per field, got {n} fields, "
                f"{len(self.vocab_sizes)} vocab sizes, {len(self.spans)} spans"
            )
        if self.tokens.ndim != 2 or self.tokens.dtype != np.int64:
            raise DataFormatError(
                f"attribute tokens must be a 2-D int64 array, got {self.tokens.dtype} {self.tokens.shape}"
            )
        if self.spans[-1][1] != self.tokens.shape[1]:
            raise DataFormatError(
                f"spans end at column {self.spans[-1][1]} but the table has {self.tokens.shape[1]} columns"
            )
        for name, vocab, (lo, hi) in zip(self.field_names, self.vocab_sizes, self.spans):
            block = self.tokens[:, lo:hi]
            if block.size and (block.min() < 0 or block.max() >= vocab):
                raise DataFormatError(
                    f"attribute '{name}' has token ids outside [0, {vocab - 1}] (min {block.min()}, max {block.max()})"
                )

    @property
    def num_fields(self) -> int:
        return len(self.field_names)

    @property
    def num_rows(self) -> int:
        return int(self.tokens.shape[0])


class AttributeSource(Protocol):
    """What a model is built from: the attribute tables of a `ClientData` or of the public schema (`PublicSchema`)."""

    @property
    def item_attributes(self) -> AttributeTable: ...

    @property
    def user_attributes(self) -> AttributeTable: ...


@dataclass(frozen=True)
class ClientData:
    """Everything the federation needs, one row per user (= client).

    Item id 0 is padding. Training: at position j the model sees
    `train_seq[:, :j+1]` and predicts the click on `train_target[:, j]`
    (label `train_label`); `train_target == 0` marks padding. Validation scores
    `val_item` after `val_seq`; test scores `test_item` after `test_seq`
    (= training sequence plus the validation item).
    """

    name: str
    user_attributes: AttributeTable  # one row per user
    item_attributes: AttributeTable  # row 0 = padding item
    train_seq: np.ndarray  # (users, maxlen) int64
    train_target: np.ndarray  # (users, maxlen) int64
    train_label: np.ndarray  # (users, maxlen) float32
    val_seq: np.ndarray  # (users, maxlen) int64
    val_item: np.ndarray  # (users,) int64
    val_label: np.ndarray  # (users,) float32
    test_seq: np.ndarray  # (users, maxlen) int64
    test_item: np.ndarray  # (users,) int64
    test_label: np.ndarray  # (users,) float32
    num_train_interactions: int
    user_ids: np.ndarray  # (users,) the dataset's own user ids, in row order
    ground_truth_groups: np.ndarray | None = None  # (users,) planted groups (synthetic only)

    @property
    def num_users(self) -> int:
        return int(self.train_seq.shape[0])

    @property
    def maxlen(self) -> int:
        return int(self.train_seq.shape[1])

    @property
    def num_items(self) -> int:
        """Number of item rows including the padding row 0."""
        return self.item_attributes.num_rows

    def subset(self, rows: np.ndarray) -> "ClientData":
        """The same data restricted to the given user rows (for tests and quick runs)."""
        rows = np.asarray(rows, dtype=np.int64)
        ua = self.user_attributes
        return ClientData(
            name=self.name,
            user_attributes=AttributeTable(ua.field_names, ua.vocab_sizes, ua.spans, ua.tokens[rows]),
            item_attributes=self.item_attributes,
            train_seq=self.train_seq[rows],
            train_target=self.train_target[rows],
            train_label=self.train_label[rows],
            val_seq=self.val_seq[rows],
            val_item=self.val_item[rows],
            val_label=self.val_label[rows],
            test_seq=self.test_seq[rows],
            test_item=self.test_item[rows],
            test_label=self.test_label[rows],
            num_train_interactions=int((self.train_target[rows] != 0).sum()),
            user_ids=self.user_ids[rows],
            ground_truth_groups=None if self.ground_truth_groups is None else self.ground_truth_groups[rows],
        )

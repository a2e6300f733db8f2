"""The paper's leave-one-out split: last item test, second last validation, the rest training."""

from __future__ import annotations

from typing import TypedDict

import numpy as np

from mrff_secure.errors import DataFormatError

MIN_INTERACTIONS = 3  # training needs >= 1 item, plus validation and test


class SplitSequences(TypedDict):
    """The sequence arrays of `ClientData` and its `num_train_interactions` (see `ClientData` for shapes)."""

    train_seq: np.ndarray
    train_target: np.ndarray
    train_label: np.ndarray
    val_seq: np.ndarray
    val_item: np.ndarray
    val_label: np.ndarray
    test_seq: np.ndarray
    test_item: np.ndarray
    test_label: np.ndarray
    num_train_interactions: int


def left_pad(values: np.ndarray, maxlen: int, pad: float | int = 0) -> np.ndarray:
    """The last `maxlen` values, left-padded with `pad`."""
    out = np.full(maxlen, pad, dtype=values.dtype)
    tail = values[-maxlen:]
    if len(tail):
        out[maxlen - len(tail) :] = tail
    return out


def leave_one_out(
    user_order: np.ndarray,
    users: np.ndarray,
    items: np.ndarray,
    labels: np.ndarray,
    timestamps: np.ndarray,
    maxlen: int,
    source: str,
) -> SplitSequences:
    """Split interactions per user by (user, timestamp) with a stable sort (ties keep file order).

    `users` must be row indices 0..U-1 (in `user_order`'s numbering). Returns the
    sequence arrays of `ClientData` and its `num_train_interactions`. A user with fewer than 3 interactions is an
    error naming the source, since it cannot have train, validation and test items.
    """
    num_users = len(user_order)
    order = np.lexsort((timestamps, users))  # lexsort is stable: ties keep file order
    users, items, labels = users[order], items[order], labels[order]
    counts = np.bincount(users, minlength=num_users)
    short = np.flatnonzero(counts < MIN_INTERACTIONS)
    if len(short):
        raise DataFormatError(
            f"{source}: {len(short)} user(s) have fewer than {MIN_INTERACTIONS} interactions "
            f"(e.g. user {user_order[short[0]]} has {counts[short[0]]}); leave-one-out needs "
            "train, validation and test items"
        )
    starts = np.concatenate([[0], np.cumsum(counts)])
    out: dict[str, np.ndarray] = {
        "train_seq": np.zeros((num_users, maxlen), np.int64),
        "train_target": np.zeros((num_users, maxlen), np.int64),
        "train_label": np.zeros((num_users, maxlen), np.float32),
        "val_seq": np.zeros((num_users, maxlen), np.int64),
        "val_item": np.zeros(num_users, np.int64),
        "val_label": np.zeros(num_users, np.float32),
        "test_seq": np.zeros((num_users, maxlen), np.int64),
        "test_item": np.zeros(num_users, np.int64),
        "test_label": np.zeros(num_users, np.float32),
    }
    num_train = 0
    for u in range(num_users):
        seq = items[starts[u] : starts[u + 1]]
        lab = labels[starts[u] : starts[u + 1]].astype(np.float32)
        train, train_lab = seq[:-2], lab[:-2]
        num_train += len(train)
        out["train_seq"][u] = left_pad(train[:-1], maxlen)
        out["train_target"][u] = left_pad(train[1:], maxlen)
        out["train_label"][u] = left_pad(train_lab[1:], maxlen, 0.0)
        out["val_seq"][u] = left_pad(train, maxlen)
        out["val_item"][u], out["val_label"][u] = seq[-2], lab[-2]
        out["test_seq"][u] = left_pad(seq[:-1], maxlen)
        out["test_item"][u], out["test_label"][u] = seq[-1], lab[-1]
    return SplitSequences(
        train_seq=out["train_seq"],
        train_target=out["train_target"],
        train_label=out["train_label"],
        val_seq=out["val_seq"],
        val_item=out["val_item"],
        val_label=out["val_label"],
        test_seq=out["test_seq"],
        test_item=out["test_item"],
        test_label=out["test_label"],
        num_train_interactions=num_train,
    )

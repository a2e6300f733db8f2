"""A seeded synthetic dataset with planted user groups: the embedded default (no download).

Each user belongs to one of `num_groups` hidden groups. Items have a category,
a sub-category and a type. A user's click probability on an item is
sigmoid(group affinity for the item's category + personal taste for its type +
a bonus when the previous item was clicked and shares the category - offset),
so a model that finds the groups and the sequence effect predicts better.
One user attribute is a noisy copy of the group (the ground truth is kept in
`ClientData.ground_truth_groups`).

`rare_values` > 0 plants that many rare sub-category values (real data has them: in KuaiSAR-R 40
attribute values are touched by exactly one user): each is given to `rare_value_users` items, each of
which only one user (a different one per item of the value) ever interacts with, and in its training part; so the
value's embedding row is touched by exactly `rare_value_users` users, the case where a secure sum over
few clients can betray one. The planted values are numbered after the ordinary sub-categories; the
interactions, labels and every other attribute are those of the same seed without them (0, the
default, gives exactly the dataset of earlier versions).
"""

from __future__ import annotations

import numpy as np

from mrff_secure.data.client_data import AttributeTable, ClientData
from mrff_secure.data.split import SplitSequences, leave_one_out
from mrff_secure.errors import ConfigError


def make_synthetic(
    num_users: int = 400,
    num_items: int = 600,
    num_groups: int = 4,
    min_interactions: int = 12,
    max_interactions: int = 60,
    maxlen: int = 30,
    seed: int = 0,
    rare_values: int = 0,
    rare_value_users: int = 1,
) -> ClientData:
    if num_users < 2 or num_items < 2 or num_groups < 1:
        raise ConfigError(
            f"synthetic data needs >= 2 users, >= 2 items, >= 1 group; got {num_users}, {num_items}, {num_groups}"
        )
    if not 3 <= min_interactions <= max_interactions:
        raise ConfigError(f"need 3 <= min_interactions <= max_interactions, got {min_interactions}, {max_interactions}")
    if rare_values < 0 or rare_value_users < 1:
        raise ConfigError(f"need rare_values >= 0 and rare_value_users >= 1, got {rare_values}, {rare_value_users}")
    rng = np.random.default_rng(seed)
    num_categories, num_subcategories, num_types = 8, 24, 3

    # Items (row 0 = padding): category, sub-category (nested in category), type.
    category = rng.integers(0, num_categories, num_items)
    subcategory = category * (num_subcategories // num_categories) + rng.integers(
        0, num_subcategories // num_categories, num_items
    )
    item_type = rng.integers(0, num_types, num_items)
    item_vocab = (num_categories + 1, num_subcategories + 1, num_types + 1)
    item_tokens = np.zeros((num_items + 1, 3), np.int64)
    item_tokens[1:] = np.stack([category, subcategory, item_type], axis=1)
    item_tokens[0] = np.array(item_vocab) - 1
    items = AttributeTable(("category", "subcategory", "type"), item_vocab, ((0, 1), (1, 2), (2, 3)), item_tokens)

    # Users: hidden group; attributes = noisy group copy, age band, activity level.
    groups = rng.integers(0, num_groups, num_users)
    noisy_group = np.where(rng.random(num_users) < 0.7, groups, rng.integers(0, num_groups, num_users))
    age_band = rng.integers(0, 5, num_users)
    activity = rng.integers(0, 4, num_users)
    user_vocab = (num_groups + 1, 6, 5)
    users = AttributeTable(
        ("segment", "age_band", "activity"),
        user_vocab,
        ((0, 1), (1, 2), (2, 3)),
        np.stack([noisy_group, age_band, activity], axis=1).astype(np.int64),
    )

    affinity = rng.normal(0.0, 1.6, (num_groups, num_categories))  # group x category
    type_taste = rng.normal(0.0, 0.6, (num_users, num_types))
    popularity = rng.zipf(1.6, num_items).astype(np.float64)
    popularity = np.minimum(popularity, 50.0) / np.minimum(popularity, 50.0).sum()

    lengths = rng.integers(min_interactions, max_interactions + 1, num_users)
    all_users, all_items, all_labels, all_times = [], [], [], []
    for u in range(num_users):
        # A user browses mostly items of the categories its group likes.
        pref = np.exp(affinity[groups[u]][category]) * popularity
        seq = rng.choice(num_items, size=lengths[u], p=pref / pref.sum()) + 1
        prev_click, prev_cat = False, -1
        for item in seq:
            cat = category[item - 1]
            logit = affinity[groups[u], cat] + type_taste[u, item_type[item - 1]] - 0.8
            if prev_click and cat == prev_cat:
                logit += 1.0
            click = rng.random() < 1.0 / (1.0 + np.exp(-logit))
            prev_click, prev_cat = click, cat
            all_labels.append(int(click))
        all_users.append(np.full(lengths[u], u))
        all_items.append(seq)
        all_times.append(np.arange(lengths[u], dtype=np.float64))
    seqs = leave_one_out(
        np.arange(num_users),
        np.concatenate(all_users),
        np.concatenate(all_items),
        np.array(all_labels),
        np.concatenate(all_times),
        maxlen,
        "synthetic",
    )
    name = f"synthetic(seed={seed})"
    if rare_values:
        items = _plant_rare_values(
            items, seqs, np.concatenate(all_users), np.concatenate(all_items), rare_values, rare_value_users, seed
        )
        name = f"synthetic(seed={seed}, rare_values={rare_values}x{rare_value_users})"
    return ClientData(
        name=name,
        user_attributes=users,
        item_attributes=items,
        user_ids=np.arange(num_users, dtype=np.int64),
        ground_truth_groups=groups.astype(np.int64),
        **seqs,
    )


def _plant_rare_values(
    items: AttributeTable,
    seqs: SplitSequences,
    users: np.ndarray,
    interacted: np.ndarray,
    rare_values: int,
    rare_value_users: int,
    seed: int,
) -> AttributeTable:
    """`items` with `rare_values` new sub-category values, each on `rare_value_users` items that one
    user each (different users; a user may own several values) interacts with, in its training part,
    and nobody else at all."""
    distinct = np.unique(np.stack([users, interacted], axis=1), axis=0)  # (user, item) pairs
    per_item = np.bincount(distinct[:, 1], minlength=items.num_rows)
    trained = np.zeros((len(seqs["train_seq"]), items.num_rows), dtype=bool)
    for values in (seqs["train_seq"], seqs["train_target"]):
        rows, cols = np.nonzero(values != 0)
        trained[rows, values[rows, cols]] = True
    candidates = [  # (user, item): items only that user interacts with, in its training part
        (int(user), int(item)) for user, item in distinct if per_item[item] == 1 and trained[user, item]
    ]
    rng = np.random.default_rng([seed, 0x4A5E])  # its own stream: the rest of the dataset is unchanged
    rng.shuffle(candidates)
    planted: list[list[int]] = []  # per rare value: its items, one per user
    for _ in range(rare_values):
        owners: set[int] = set()
        chosen: list[int] = []
        for pair in list(candidates):
            if len(chosen) == rare_value_users:
                break
            if pair[0] not in owners:
                owners.add(pair[0])
                chosen.append(pair[1])
                candidates.remove(pair)
        if len(chosen) < rare_value_users:
            raise ConfigError(
                f"cannot plant {rare_values} rare value(s) touched by {rare_value_users} user(s) each: only "
                f"{len(planted)} fit ({sum(per_item == 1)} items have a single user); use more items, fewer "
                "rare values or fewer users per value"
            )
        planted.append(chosen)
    field = items.field_names.index("subcategory")
    column = items.spans[field][0]
    ordinary = items.vocab_sizes[field] - 1  # values 0..ordinary-1, padding = ordinary
    tokens = items.tokens.copy()
    for value, chosen in enumerate(planted):
        tokens[chosen, column] = ordinary + value
    vocab = list(items.vocab_sizes)
    vocab[field] = ordinary + rare_values + 1
    tokens[0, column] = vocab[field] - 1  # row 0 (padding item) keeps the padding value, now last
    return AttributeTable(items.field_names, tuple(vocab), items.spans, tokens)

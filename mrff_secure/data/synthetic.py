"""A seeded synthetic dataset with planted user groups: the embedded default (no download).

Each user belongs to one of `num_groups` hidden groups. Items have a category,
a sub-category and a type. A user's click probability on an item is
sigmoid(group affinity for the item's category + personal taste for its type +
a bonus when the previous item was clicked and shares the category - offset),
so a model that finds the groups and the sequence effect predicts better.
One user attribute is a noisy copy of the group (the ground truth is kept in
`ClientData.ground_truth_groups`).
"""

from __future__ import annotations

import numpy as np

from mrff_secure.data.client_data import AttributeTable, ClientData
from mrff_secure.data.split import leave_one_out
from mrff_secure.errors import ConfigError


def make_synthetic(
    num_users: int = 400,
    num_items: int = 600,
    num_groups: int = 4,
    min_interactions: int = 12,
    max_interactions: int = 60,
    maxlen: int = 30,
    seed: int = 0,
) -> ClientData:
    if num_users < 2 or num_items < 2 or num_groups < 1:
        raise ConfigError(
            f"synthetic data needs >= 2 users, >= 2 items, >= 1 group; got {num_users}, {num_items}, {num_groups}"
        )
    if not 3 <= min_interactions <= max_interactions:
        raise ConfigError(f"need 3 <= min_interactions <= max_interactions, got {min_interactions}, {max_interactions}")
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
    return ClientData(
        name=f"synthetic(seed={seed})",
        user_attributes=users,
        item_attributes=items,
        user_ids=np.arange(num_users, dtype=np.int64),
        ground_truth_groups=groups.astype(np.int64),
        **seqs,
    )

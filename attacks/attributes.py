"""User-attribute inference: a user's private attributes from the user-facing columns of a shared layer.

The prediction MLP's first layer (`predict.layers.0.weight`, shape (P, 2 hidden + user_dim)) takes
the user vector as its last `user_dim` inputs, so its gradient there is exactly rank one, G u^T, and
Adam's first step from a fresh state moves it by about -lr sign(G) sign(u)^T: one user's update shows
the sign pattern of its user vector, up to one global sign. The user vector is private, but it
starts as a lookup of the user's attributes in tables drawn from the run's public seed
(`initial_user_vectors` with seed + 1), and it moves little per round. So the server tabulates each
attribute value's starting embedding (the templates) and, field by field, picks the value whose
template correlates best with the recovered direction (the global sign chosen jointly over fields).

Adversary: the server, with the view of its threat model, the public seed, the attribute vocabularies.
Evidence kept per user (`UserColumnRecorder`): the sum over rounds of M^T M for the (P, user_dim)
block M it saw of that user (noise adds a multiple of the identity in expectation, so the top
eigenvector averages it out). Under a sum view every participant gets the sum's block (the server
cannot tell users apart): the prediction is the same for all, at best the majority value.
Metric: accuracy per field against the majority-value baseline, and the mean advantage.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mrff_secure.config import ModelConfig
from mrff_secure.data.client_data import AttributeTable, ClientData
from mrff_secure.errors import ConfigError
from mrff_secure.federation.simulation import ServerView
from mrff_secure.model.layers import initial_user_vectors
from mrff_secure.round.spec import INDIVIDUAL_VIEWS, SUM_VIEWS, require_view
from mrff_secure.round.update_vector import UpdateLayout

USER_FACING_WEIGHT = "predict.layers.0.weight"


class UserColumnRecorder:
    """Per user, sum over rounds of M^T M, M = the user-facing columns of the prediction layer it uploaded."""

    def __init__(self, layout: UpdateLayout, user_dim: int, num_users: int) -> None:
        offset = 0
        for name, shape in zip(layout.shared_names, layout.shared_shapes):
            if name == USER_FACING_WEIGHT:
                break
            offset += math.prod(shape)
        else:
            raise ConfigError(f"the update layout has no {USER_FACING_WEIGHT!r}")
        self.offset, self.shape, self.user_dim = offset, shape, user_dim
        if shape[1] < user_dim:
            raise ConfigError(f"{USER_FACING_WEIGHT} has {shape[1]} inputs, fewer than the user vector's {user_dim}")
        self.gram = np.zeros((num_users, user_dim, user_dim))
        self.threat_model: str | None = None

    def _block(self, vectors: np.ndarray) -> np.ndarray:
        rows, cols = self.shape
        weight = vectors[..., self.offset : self.offset + rows * cols].reshape(*vectors.shape[:-1], rows, cols)
        return weight[..., cols - self.user_dim :]  # (..., P, user_dim)

    def on_round(self, view: ServerView) -> None:
        self.threat_model = view.threat_model
        participants = np.asarray(view.participants, dtype=np.int64)
        if view.individual_updates is not None:
            block = self._block(view.individual_updates.detach().double().numpy())
            self.gram[participants] += np.einsum("cpi,cpj->cij", block, block)
        else:
            block = self._block(view.summed_update.detach().double().numpy())
            self.gram[participants] += (block.T @ block)[None]


def attribute_templates(table: AttributeTable, model: ModelConfig, seed: int) -> list[np.ndarray]:
    """Per field, (values without padding, attribute_dim): each value's starting user embedding, as the
    simulation draws it (`initial_user_vectors(..., seed + 1)`), from public parameters only."""
    rows = max(table.vocab_sizes) - 1
    tokens = np.zeros((rows, table.tokens.shape[1]), dtype=np.int64)
    for (lo, hi), vocab in zip(table.spans, table.vocab_sizes):
        tokens[:, lo:hi] = vocab - 1  # padding
        tokens[:, lo] = np.minimum(np.arange(rows), vocab - 1)
    probe = AttributeTable(table.field_names, table.vocab_sizes, table.spans, tokens)
    vectors = initial_user_vectors(probe, model.attribute_dim, torch.Generator().manual_seed(seed + 1)).numpy()
    dim = model.attribute_dim
    return [vectors[: vocab - 1, f * dim : (f + 1) * dim] for f, vocab in enumerate(table.vocab_sizes)]


def _first_values(table: AttributeTable) -> np.ndarray:
    """(users, fields): each field's first token (the attribute value of a token field)."""
    return np.stack([table.tokens[:, lo] for lo, _ in table.spans], axis=1)


def _best_values(templates: list[np.ndarray], direction: np.ndarray, dim: int) -> tuple[float, list[int]]:
    """(summed best scores, each field's best-matching value) of one sign of a user's direction."""
    picks, total = [], 0.0
    for f, template in enumerate(templates):
        segment = direction[f * dim : (f + 1) * dim]
        scores = template @ segment / np.maximum(np.linalg.norm(template, axis=1), 1e-12)
        picks.append(int(np.argmax(scores)))
        total += float(scores.max())
    return total, picks


def infer_attributes(recorder: UserColumnRecorder, data: ClientData, model: ModelConfig, *, seed: int) -> dict:
    require_view(recorder.threat_model or "", INDIVIDUAL_VIEWS + SUM_VIEWS, "user-attribute inference")
    table = data.user_attributes
    templates = attribute_templates(table, model, seed)
    dim = model.attribute_dim
    truth = _first_values(table)
    users = data.num_users
    guesses = np.zeros((users, len(templates)), dtype=np.int64)
    for u in range(users):
        values, vectors = np.linalg.eigh(recorder.gram[u])
        direction = vectors[:, -1]  # up to sign
        best = _best_values(templates, direction, dim)
        flipped = _best_values(templates, -1.0 * direction, dim)
        if flipped[0] > best[0]:
            best = flipped
        guesses[u] = best[1]
    fields = {}
    for f, name in enumerate(table.field_names):
        counts = np.bincount(truth[:users, f], minlength=table.vocab_sizes[f])
        accuracy = float((guesses[:, f] == truth[:users, f]).mean())
        majority = float(counts.max() / users)
        fields[name] = {"accuracy": accuracy, "majority_baseline": majority, "advantage": accuracy - majority}
    advantages = [v["advantage"] for v in fields.values()]
    return {
        "fields": fields,
        "mean_accuracy": float(np.mean([v["accuracy"] for v in fields.values()])),
        "mean_advantage": float(np.mean(advantages)),
        "max_advantage": float(np.max(advantages)),
    }

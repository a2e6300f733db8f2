"""Group-membership inference: which group each user was routed to in each round and block
(what secure aggregation must hide: the update vector's shape is the same for every group).

Adversary: the server, with its threat model's view. In an individual view the guess for (user,
round, block) is the argmax of the user's (noisy, under local DP) one-hot part; in a sum view the
server has only the counts, so its best guess for everyone is the round's largest group. Truth: the
routes the clients actually took, read from their plain vectors before any noise
(`GroupRecorder.transform`, chained into the simulation's update_transform; it never modifies them).
Metric: accuracy over (user, round, block) against the majority baseline (each round's true largest
group), and the advantage.
"""

from __future__ import annotations

import numpy as np
import torch

from mrff_secure.federation.simulation import ServerView
from mrff_secure.round.spec import INDIVIDUAL_VIEWS, SUM_VIEWS, require_view
from mrff_secure.round.update_vector import UpdateLayout


class GroupRecorder:
    def __init__(self, layout: UpdateLayout, num_users: int) -> None:
        self.layout, self.num_users = layout, num_users
        self.blocks, self.groups = layout.num_blocks, layout.num_groups
        self._truth: dict[int, dict[int, np.ndarray]] = {}  # round -> row -> (blocks,) true groups
        self.guesses: list[tuple[int, np.ndarray, np.ndarray]] = []  # (round, rows, (rows, blocks) guesses)
        self.threat_model: str | None = None

    def _one_hots(self, vectors: np.ndarray) -> np.ndarray:
        start = self.layout.delta_size
        return vectors[..., start : start + self.layout.count_size].reshape(
            *vectors.shape[:-1], self.blocks, self.groups
        )

    def transform(self, vectors: torch.Tensor, round_index: int, rows: np.ndarray) -> torch.Tensor:
        if self.groups:
            routes = self._one_hots(vectors.detach().double().numpy()).argmax(-1)
            bucket = self._truth.setdefault(round_index, {})
            for row, route in zip(np.asarray(rows), routes):
                bucket[int(row)] = route
        return vectors

    def on_round(self, view: ServerView) -> None:
        self.threat_model = view.threat_model
        if not self.groups:
            return
        participants = np.asarray(view.participants, dtype=np.int64)
        if view.individual_updates is not None:
            guesses = self._one_hots(view.individual_updates.detach().double().numpy()).argmax(-1)
        else:
            counts = view.group_counts.detach().double().numpy().reshape(self.blocks, self.groups)
            guesses = np.broadcast_to(counts.argmax(-1), (participants.size, self.blocks))
        self.guesses.append((view.round_index, participants, np.asarray(guesses)))


def infer_groups(recorder: GroupRecorder, num_real_users: int) -> dict:
    require_view(recorder.threat_model or "", INDIVIDUAL_VIEWS + SUM_VIEWS, "group-membership inference")
    if not recorder.groups:
        return {"applicable": False, "reason": "the model has no groups"}
    correct = total = baseline = 0
    for round_index, participants, guesses in recorder.guesses:
        truth = recorder._truth.get(round_index, {})
        keep = [i for i, p in enumerate(participants) if p < num_real_users and int(p) in truth]
        if not keep:
            continue
        true = np.stack([truth[int(participants[i])] for i in keep])  # (users, blocks)
        guessed = guesses[keep]
        correct += int((true == guessed).sum())
        total += true.size
        for b in range(recorder.blocks):
            baseline += int(np.bincount(true[:, b], minlength=recorder.groups).max())
    accuracy, majority = correct / total, baseline / total
    return {
        "applicable": True,
        "accuracy": accuracy,
        "majority_baseline": majority,
        "advantage": accuracy - majority,
        "guesses": total,
    }

"""Group-membership inference: which group each user was routed to in each round and block
(what secure aggregation must hide: the update vector's shape is the same for every group).

Adversary: the server, with its threat model's view. In an individual view the guess for (user,
round, block) is the argmax of the user's (noisy, under local DP) one-hot part. In a sum view the
server has only each round's group counts (noisy under DP) and who took part. With full participation
its best guess for everyone is the round's largest group. With client sampling it can difference the
counts (`count_differencing`): a user's one-hot adds to its group's count in every round it takes part,
so, if a user keeps its group, counts[t, g] = sum over users u of P[t, u] * Y[u, g] with P the
participation matrix (rounds x users) and Y the users' one-hots; least squares for Y (the minimum-norm
deviation from the average group shares, which is exact where P has full column rank), then the
argmax of each user's row is the guess for all its rounds. It applies when some user was both in and
out of some rounds. Truth: the
routes the clients actually took, read from their plain vectors before any noise
(`GroupRecorder.transform`, chained into the simulation's update_transform; it never modifies them).
Metric: accuracy over (user, round, block) against the majority baseline (each round's true largest
group), and the advantage.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mrff_secure.federation.simulation import ServerView
from mrff_secure.round.spec import INDIVIDUAL_VIEWS, SUM_VIEWS, require_view
from mrff_secure.round.update_vector import UpdateLayout

DIFFERENCING_FOLDS = 5


class GroupRecorder:
    def __init__(self, layout: UpdateLayout, num_users: int) -> None:
        self.layout, self.num_users = layout, num_users
        self.blocks, self.groups = layout.num_blocks, layout.num_groups
        self._truth: dict[int, dict[int, np.ndarray]] = {}  # round -> row -> (blocks,) true groups
        self.guesses: list[tuple[int, np.ndarray, np.ndarray]] = []  # (round, rows, (rows, blocks) guesses)
        self.counts: list[tuple[np.ndarray, np.ndarray]] = []  # sum views: (rows, (blocks, groups) counts seen)
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
            self.counts.append((participants, counts))
        self.guesses.append((view.round_index, participants, np.asarray(guesses)))


def _deviations(took_part: np.ndarray, counts: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """(users, blocks * groups): least squares (minimum norm) of the counts' departures from the average
    shares on the participation matrix."""
    residual = (counts - took_part.sum(1)[:, None, None] * shares[None]).reshape(took_part.shape[0], -1)
    deviation, *_ = np.linalg.lstsq(took_part, residual, rcond=None)
    return np.asarray(deviation)


def difference_counts(recorder: GroupRecorder, folds: int = DIFFERENCING_FOLDS) -> dict[str, Any] | None:
    """Count differencing, or None where no user was both in and out of some rounds (nothing to difference).

    {"guesses": round -> (participants, blocks) guesses, the argmax of the round's group shares plus the
    user's least-squares deviation from the average shares; "fits": whether the model "each user keeps
    its group" predicts the counts of held-out rounds (`folds`-fold over rounds) better than the average
    shares alone, which the server can check without any truth; "held_out_error", "shares_error"}."""
    if not recorder.counts:
        return None
    rounds = len(recorder.counts)
    took_part = np.zeros((rounds, recorder.num_users))
    for t, (participants, _) in enumerate(recorder.counts):
        took_part[t, participants] = 1.0
    rounds_in = took_part.sum(0)
    if not ((rounds_in > 0) & (rounds_in < rounds)).any():
        return None
    counts = np.stack([c for _, c in recorder.counts])  # (rounds, blocks, groups)
    sizes = np.maximum(took_part.sum(1), 1.0)[:, None, None]
    shares = counts.sum(0) / max(took_part.sum(), 1.0)  # (blocks, groups): the average group shares
    held_out_error = shares_error = 0.0
    for fold in range(min(folds, rounds)):
        test = np.arange(rounds) % folds == fold
        train_shares = counts[~test].sum(0) / max(took_part[~test].sum(), 1.0)
        deviation = _deviations(took_part[~test], counts[~test], train_shares)
        base = took_part[test].sum(1)[:, None] * train_shares.reshape(1, -1)
        target = counts[test].reshape(int(test.sum()), -1)
        held_out_error += float(np.square(target - base - took_part[test] @ deviation).sum())
        shares_error += float(np.square(target - base).sum())
    deviation = _deviations(took_part, counts, shares).reshape(recorder.num_users, recorder.blocks, recorder.groups)
    guesses = {
        round_index: ((counts[t] / sizes[t])[None] + deviation[participants]).argmax(-1)
        for t, ((participants, _), (round_index, _, _)) in enumerate(zip(recorder.counts, recorder.guesses))
    }
    return {
        "guesses": guesses,
        "fits": held_out_error < shares_error,
        "held_out_error": held_out_error,
        "shares_error": shares_error,
    }


def _score(recorder: GroupRecorder, num_real_users: int, by_round: dict[int, np.ndarray] | None) -> dict:
    """Accuracy over (user, round, block) of the recorded per-round guesses, or of `by_round` (round ->
    (participants, blocks) guesses) when given, against the majority baseline."""
    correct = total = baseline = 0
    for round_index, participants, guesses in recorder.guesses:
        truth = recorder._truth.get(round_index, {})
        keep = [i for i, p in enumerate(participants) if p < num_real_users and int(p) in truth]
        if not keep:
            continue
        true = np.stack([truth[int(participants[i])] for i in keep])  # (users, blocks)
        guessed = (guesses if by_round is None else by_round[round_index])[keep]
        correct += int((true == guessed).sum())
        total += true.size
        for b in range(recorder.blocks):
            baseline += int(np.bincount(true[:, b], minlength=recorder.groups).max())
    accuracy, majority = correct / total, baseline / total
    return {"accuracy": accuracy, "majority_baseline": majority, "advantage": accuracy - majority, "guesses": total}


def infer_groups(recorder: GroupRecorder, num_real_users: int) -> dict:
    """{"applicable", "method", "accuracy", "majority_baseline", "advantage", "guesses"} of the attack the
    server would pick from its view alone; under a sum view "largest_group" and "count_differencing"
    ({"applicable", ..., "fits"}) side by side, and count differencing is picked where it applies and
    predicts held-out rounds' counts better than the average shares."""
    require_view(recorder.threat_model or "", INDIVIDUAL_VIEWS + SUM_VIEWS, "group-membership inference")
    if not recorder.groups:
        return {"applicable": False, "reason": "the model has no groups"}
    if recorder.threat_model not in SUM_VIEWS:
        return {"applicable": True, "method": "individual one-hots", **_score(recorder, num_real_users, None)}
    largest = _score(recorder, num_real_users, None)
    found = difference_counts(recorder)
    if found is None:
        differencing: dict = {"applicable": False, "reason": "no user was both in and out of some rounds"}
        chosen = "largest group"
    else:
        differencing = {
            "applicable": True,
            **_score(recorder, num_real_users, found["guesses"]),
            **{k: found[k] for k in ("fits", "held_out_error", "shares_error")},
        }
        chosen = "count differencing" if found["fits"] else "largest group"
    best = differencing if chosen == "count differencing" else largest
    return {
        "applicable": True,
        "method": chosen,
        **{k: best[k] for k in largest},
        "largest_group": largest,
        "count_differencing": differencing,
    }

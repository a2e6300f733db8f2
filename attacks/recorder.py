"""An observer that keeps, round by round, the slice of the server's view the row attacks read.

For every (user, item-attribute row) it keeps running sums over rounds, never per-round copies:
- `energy`: the sum of the squared norm of the row in what the server saw of the user;
- `signed_sum`: the sum of the row vectors themselves, (users, rows, dim): a row pushed the same way in
  every round adds up (R times the step) while noise only grows as sqrt(R);
- `pull` (plain views only): how strongly each touched row was pulled, read from Adam's step (below).
Under an individual view (`plain`, `local-dp`) that is the user's own upload; under a sum view
(`secagg`, `secagg+dp`) the server has only the round's sum, so every participant of the round gets
the sum (the server cannot tell them apart).

Adam, fresh each round, moves a coordinate by lr * g / (|g| + eps): about lr whatever the gradient,
but short of lr by about lr * eps / |g|. In a noise-free view the shortfall reads |g|: `pull` sums
log(|step| / (lr - |step|)) ~ log(|g| / eps) over a row's moved coordinates and rounds, lr read as
the median over the round's clients of each one's largest step. A row used by many of the user's items is pulled harder.
Memory: (users, rows, dim) floats, whatever the model size.
"""

from __future__ import annotations

import numpy as np

from attacks.rows import ItemRows
from mrff_secure.errors import ConfigError
from mrff_secure.federation.simulation import ServerView
from mrff_secure.round.spec import ThreatModel

FLOAT32_RESOLUTION = 1e-7  # relative: a shortfall below lr * this is rounding, not signal


def step_pull(rows: np.ndarray) -> np.ndarray:
    """(clients, num_rows, dim) noise-free Adam steps -> (clients, num_rows) sum over moved coordinates of
    log(|step| / (lr - |step|)), lr = the median over clients of each one's largest |step| (robust to a few
    uploads that are not Adam steps, such as canaries); a row no coordinate of which moved scores 0."""
    size = np.abs(rows)
    if size.size == 0:
        return np.zeros(rows.shape[:-1])
    lr = float(np.median(size.reshape(size.shape[0], -1).max(1)))
    if lr == 0.0:
        return np.zeros(rows.shape[:-1])
    shortfall = np.maximum(lr - size, lr * FLOAT32_RESOLUTION)
    moved = size > 0
    return np.where(moved, np.log(np.where(moved, size, 1.0) / shortfall), 0.0).sum(-1)


class RowRecorder:
    def __init__(self, rows: ItemRows, num_users: int) -> None:
        self.rows = rows
        self.num_users = num_users
        self.threat_model: str | None = None
        self.energy = np.zeros((num_users, rows.num_rows), dtype=np.float64)
        self.signed_sum = np.zeros((num_users, rows.num_rows, rows.dim), dtype=np.float64)
        self.pull = np.zeros((num_users, rows.num_rows), dtype=np.float64)  # plain views only (noise-free)
        self.rounds_seen = np.zeros(num_users, dtype=np.int64)
        self.rounds = 0
        self.individual_views = 0  # rounds whose view held individual updates (R4 evidence)
        self.sum_energy: list[np.ndarray] = []  # per round of a sum view: (num_rows,) energies of the sum
        self.participation: list[np.ndarray] = []  # per round: (num_users,) bool, who took part

    def on_round(self, view: ServerView) -> None:
        if self.threat_model is None:
            self.threat_model = view.threat_model
        elif view.threat_model != self.threat_model:
            raise ConfigError(f"one recorder saw views of {self.threat_model!r} and {view.threat_model!r}")
        participants = np.asarray(view.participants, dtype=np.int64)
        if view.individual_updates is not None:
            uploads = view.individual_updates.detach().to("cpu").double().numpy()
            rows = self.rows.take(uploads)  # (clients, num_rows, dim)
            self.energy[participants] += np.square(rows).sum(-1)
            self.signed_sum[participants] += rows
            if view.threat_model == ThreatModel.PLAIN:
                self.pull[participants] += step_pull(rows)
            self.individual_views += 1
        else:
            summed = self.rows.take(view.summed_update.detach().to("cpu").double().numpy())  # (num_rows, dim)
            row_energy = np.square(summed).sum(-1)
            self.energy[participants] += row_energy[None, :]
            self.signed_sum[participants] += summed[None, :, :]
            self.sum_energy.append(row_energy)
        took_part = np.zeros(self.num_users, dtype=bool)
        took_part[participants] = True
        self.participation.append(took_part)
        self.rounds_seen[participants] += 1
        self.rounds += 1

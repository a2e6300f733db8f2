"""An observer that keeps, round by round, the slice of the server's view the row attacks read.

It keeps energies, not vectors: for every (user, item-attribute row) the sum over rounds of the
squared norm of that row in what the server saw of the user. Under an individual view (`plain`,
`local-dp`) that is the user's own upload; under a sum view (`secagg`, `secagg+dp`) the server has
only the round's sum, so every participant of the round gets the sum's energy (the server cannot
tell them apart). Noise adds the same expected energy to every row, touched or not, so ranking by
energy averages noise out over rounds (signal grows with R, the noise's spread with sqrt(R)).
Memory: (users, rows) floats, whatever the model size.
"""

from __future__ import annotations

import numpy as np

from attacks.rows import ItemRows
from mrff_secure.errors import ConfigError
from mrff_secure.federation.simulation import ServerView


class RowRecorder:
    def __init__(self, rows: ItemRows, num_users: int) -> None:
        self.rows = rows
        self.num_users = num_users
        self.threat_model: str | None = None
        self.energy = np.zeros((num_users, rows.num_rows), dtype=np.float64)
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
            self.individual_views += 1
        else:
            summed = self.rows.take(view.summed_update.detach().to("cpu").double().numpy())  # (num_rows, dim)
            row_energy = np.square(summed).sum(-1)
            self.energy[participants] += row_energy[None, :]
            self.sum_energy.append(row_energy)
        took_part = np.zeros(self.num_users, dtype=bool)
        took_part[participants] = True
        self.participation.append(took_part)
        self.rounds_seen[participants] += 1
        self.rounds += 1

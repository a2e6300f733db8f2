"""User-level membership inference with canary clients: the claim check of a DP cell.

Setup (Andrew et al. ICLR 2024, one-shot estimate for FL): m canary clients join the
population (`with_canaries`: copies of random real users, appended after them). Each is included
with probability 1/2, drawn from OS entropy and kept sealed until the audit ends. Every canary takes
part in every round (client fraction 1), so neither the participant list nor the counts reveal
inclusion. An included canary uploads C u_k on the delta part instead of its own delta (u_k: unit
vectors with random signs on disjoint random supports in the shared parameters, so <u_j, u_k> = 0);
an excluded one uploads zeros there. Its count part is its own, in both cases. The canaries enter
through `FederatedSimulation(update_transform=audit.transform)`, i.e. before clipping, noise and
encoding: they go through the real privacy path.

Statistic: T_k = (1/R) sum_r <release_r, u_k> / C, where release_r is, in an individual view, the
canary's own upload and, in a sum view, the round's sum minus the other (non-canary) clients' true
clipped contribution (the strong adversary DP protects against, who knows everyone else's data).
Under the claimed mechanism T_k ~ N(1 or 0, z^2 / R): the separation mu = sqrt(R) / z.

Outputs: AUC of T, the split-half Clopper-Pearson epsilon lower bound (R1), and the mechanism check
mu_hat = (mean_in - mean_out) / sd with a 95% interval against the claimed mu (R2): a noise half as
large as claimed doubles mu_hat, which m = 100 canaries detect.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

import numpy as np
import torch

from attacks.bounds import one_run_bound, split_half_bound
from attacks.scores import binary_scores
from mrff_secure.checks import check_number
from mrff_secure.data.client_data import ClientData
from mrff_secure.errors import ConfigError
from mrff_secure.federation.simulation import ServerView
from mrff_secure.round.spec import INDIVIDUAL_VIEWS, SUM_VIEWS, require_view
from mrff_secure.round.update_vector import UpdateLayout

MAX_SUPPORT = 64


def with_canaries(data: ClientData, num_canaries: int, *, seed: int = 0) -> ClientData:
    """The data with `num_canaries` extra users (copies of random real users) appended as rows n..n+m-1."""
    if num_canaries < 2:
        raise ConfigError(f"a canary audit needs at least 2 canaries, got {num_canaries}")
    sources = np.random.default_rng(seed).integers(0, data.num_users, num_canaries)
    return data.subset(np.concatenate([np.arange(data.num_users), sources]))


class CanaryAudit:
    """The canaries of one cell: inserts them (`transform`), reads each round's view (`on_round`)."""

    def __init__(
        self,
        layout: UpdateLayout,
        *,
        first_row: int,
        num_canaries: int,
        clip: float,
        clip_uploads: bool,
        seed: int | None = None,
    ) -> None:
        check_number("clip", clip, low=0.0, low_open=True)
        if layout.shared_size < 2 * num_canaries:
            raise ConfigError(
                f"{num_canaries} canaries need disjoint supports: the shared part has only "
                f"{layout.shared_size} coordinates"
            )
        self.layout, self.first_row, self.m, self.clip = layout, first_row, num_canaries, float(clip)
        self.clip_uploads = clip_uploads  # DP modes clip every delta part to C before noise
        self.seed = secrets.randbits(64) if seed is None else seed
        rng = np.random.default_rng(self.seed)
        support = max(1, min(MAX_SUPPORT, layout.shared_size // num_canaries))
        coords = rng.permutation(layout.shared_size)[: support * num_canaries].reshape(num_canaries, support)
        self.coords = torch.as_tensor(coords)
        self.signs = torch.as_tensor(rng.choice([-1.0, 1.0], size=coords.shape) / math.sqrt(support))
        self.included = rng.random(num_canaries) < 0.5  # sealed: read only through result()
        self.threat_model: str | None = None
        self._others: dict[int, np.ndarray] = {}  # round -> (m,) projections of the non-canary clients' sum
        self._statistic = np.zeros(num_canaries)
        self.rounds = 0

    def _project(self, deltas: torch.Tensor) -> torch.Tensor:
        """(clients, delta_size) -> (clients, m): <delta, u_k> for every canary k."""
        return (deltas[:, self.coords].to(torch.float64) * self.signs).sum(-1)

    def transform(self, vectors: torch.Tensor, round_index: int, rows: np.ndarray) -> torch.Tensor:
        rows = np.asarray(rows)
        canary = (rows >= self.first_row) & (rows < self.first_row + self.m)
        deltas = vectors[:, : self.layout.delta_size]
        others = deltas[torch.as_tensor(~canary)].to(torch.float64)
        if self.clip_uploads and others.shape[0]:
            norms = torch.linalg.vector_norm(others, dim=1, keepdim=True)
            others = others * torch.clamp(self.clip / norms.clamp(min=1e-300), max=1.0)
        projection = self._project(others).sum(0).numpy() if others.shape[0] else np.zeros(self.m)
        self._others[round_index] = self._others.get(round_index, np.zeros(self.m)) + projection
        if not canary.any():
            return vectors
        out = vectors.clone()
        for j in np.flatnonzero(canary):
            k = int(rows[j]) - self.first_row
            out[j, : self.layout.delta_size] = 0.0
            if self.included[k]:
                out[j, self.coords[k]] = (self.clip * self.signs[k]).to(out.dtype)
        return out

    def on_round(self, view: ServerView) -> None:
        require_view(view.threat_model, INDIVIDUAL_VIEWS + SUM_VIEWS, "canary audit")
        self.threat_model = view.threat_model
        participants = np.asarray(view.participants)
        position = {int(p): i for i, p in enumerate(participants)}
        missing = [k for k in range(self.m) if self.first_row + k not in position]
        if missing:
            raise ConfigError(
                f"canaries {missing[:5]} did not take part in round {view.round_index}: a canary "
                "audit needs every canary in every round (client fraction 1)"
            )
        if view.individual_updates is not None:
            uploads = view.individual_updates[[position[self.first_row + k] for k in range(self.m)]]
            own = self._project(uploads[:, : self.layout.delta_size]).numpy()  # (m, m)
            release = np.diagonal(own).copy()
        else:
            total = self._project(view.summed_update[None, : self.layout.delta_size])[0].numpy()
            release = total - self._others.pop(view.round_index, np.zeros(self.m))
        self._statistic += release / self.clip
        self.rounds += 1

    def result(self, *, noise_multiplier: float, delta: float, alpha: float = 0.05) -> dict[str, Any]:
        """Unseal: AUC, the epsilon lower bound and the mechanism check (see the module docstring)."""
        if self.rounds == 0:
            raise ConfigError("the canary audit saw no round")
        scores = self._statistic / self.rounds
        included = self.included
        out: dict[str, Any] = {
            "canaries": self.m,
            "included": int(included.sum()),
            "rounds": self.rounds,
            "threat_model": self.threat_model,
            "sealed_seed": str(self.seed),
        }
        out.update({f"canary_{k}": v for k, v in binary_scores(included, scores).items()})
        out["bound"] = split_half_bound(scores, included, delta=delta, alpha=alpha, seed=self.seed % (2**32))
        out["one_run"] = one_run_bound(scores, included)
        out["scores"], out["included"] = scores.tolist(), included.tolist()  # unsealed: the audit is over
        inside, outside = scores[included], scores[~included]
        sd = math.sqrt(0.5 * (inside.var(ddof=1) + outside.var(ddof=1))) if min(inside.size, outside.size) > 1 else 0.0
        claimed_mu = math.sqrt(self.rounds) / noise_multiplier if noise_multiplier > 0 else math.inf
        if sd > 0:
            mu_hat = (inside.mean() - outside.mean()) / sd
            se = math.sqrt(1 / inside.size + 1 / outside.size + mu_hat**2 / (2 * (inside.size + outside.size - 2)))
            interval = (mu_hat - 1.96 * se, mu_hat + 1.96 * se)
            measured_z = math.sqrt(self.rounds) * sd  # per-round noise std in units of C
        else:
            mu_hat, interval, measured_z = math.inf, (math.inf, math.inf), 0.0
        out["mechanism"] = {
            "mu_hat": mu_hat,
            "mu_hat_95": list(interval),
            "claimed_mu": claimed_mu,
            "measured_noise_multiplier": measured_z,
            "claimed_noise_multiplier": noise_multiplier,
        }
        return out

"""The server's step of a round: from the (decoded) sum of the update vectors and the group counts to the
averaged model, then the server optimizer's step. Used by the simulation and the coordinator alike.

Shared parts are divided by the number of uploads; group slots by the group counts the server holds
(phase 1 under secure aggregation, noisy under DP), 0 where the group is suppressed (the FFN stays);
next round's balance-loss fractions are the counts over the clients they were counted among.

Which group counts the server divides by, per privacy mode (the simulation passes them in):
- local mode: there is no secure aggregation, so a count phase in the clear would reveal every
  client's group with no noise at all. The server therefore uses the NOISY counts, the sum of the
  noisy one-hots it received, for averaging (a group keeps its FFN when its noisy count is below
  max(min_group_size, 1, 3 z C sqrt(n)), three stds of the count noise) and for the next round's
  balance-loss fractions (clamped at 0): post-processing of the DP uploads, no extra privacy
  cost. The shared part is divided by the number of uploads (public: the server sees who uploaded).
- secure mode: the two-phase round. Phase 1 secure-sums the one-hots alone with its own noise
  (std z*sqrt(blocks)); the server rounds the decoded counts to integers, suppresses the groups
  below min_group_size and divides group sums by these same phase-1 counts. Phase 2 secure-sums
  the full vectors with the suppressed slots zeroed and the one-hot coordinates zeroed (W5:
  otherwise phase-1 minus phase-2 counts would reveal the groups of clients that dropped in
  between); its count part is the example count alone, sensitivity 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mrff_secure.errors import ConfigError
from mrff_secure.round.update_vector import UpdateLayout

LOCAL_COUNT_SIGMAS = 3.0  # local mode: a group FFN moves only when its noisy count clears 3 noise stds


@dataclass(frozen=True)
class AggregateStep:
    """The averaged model of a round (before the server optimizer) and next round's group fractions."""

    averaged: dict[str, torch.Tensor]
    group_fractions: torch.Tensor | None  # (blocks, groups); None without groups


def aggregate_round(
    global_params: dict[str, torch.Tensor],
    layout: UpdateLayout,
    summed: torch.Tensor,
    *,
    uploads: int,
    counts: torch.Tensor,
    suppressed: torch.Tensor | None,
    counted_clients: int,
) -> AggregateStep:
    """The averaged model from a round's summed update vector (layout.size,): shared parts over `uploads`,
    group slots over `counts` (blocks, groups) with the `suppressed` slots kept; fractions = counts /
    counted_clients (the clients the counts were summed over)."""
    if not layout.num_groups:
        return AggregateStep(apply_sum(global_params, layout, summed, uploads, counts), None)
    averaging = counts.masked_fill(suppressed, 0.0) if suppressed is not None else counts
    return AggregateStep(apply_sum(global_params, layout, summed, uploads, averaging), counts / counted_clients)


def apply_sum(
    global_params: dict[str, torch.Tensor],
    layout: UpdateLayout,
    summed: torch.Tensor,
    num_participants: int,
    group_counts: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """New global parameters: shared += sum / participants; group += group sum / group count.

    `group_counts` (blocks, groups) are the counts used for averaging (from the
    count phase); a group with count 0 (or suppressed, whose sum is zero) keeps its FFN.
    """
    shared_sums, group_sums, _, _ = layout.split(summed)
    out = dict(global_params)
    for name, total in shared_sums.items():
        out[name] = global_params[name] + total / num_participants
    for block, names in enumerate(layout.group_names):
        counts = group_counts[block]  # (groups,)
        for name in names:
            total = group_sums[name]  # (groups, *shape)
            scale = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
            out[name] = global_params[name] + total * scale.view(-1, *([1] * (total.dim() - 1)))
    return out


def local_count_floor(*, min_group_size: int, noise_std: float, uploads: int) -> float:
    """Local DP: the smallest noisy count a group FFN is updated with, max(min_group_size, 1, 3 sigma).

    sigma = noise_std * sqrt(uploads) is the std of the noise in a summed count (public: z, C and n are
    known). Below three sigmas a count is indistinguishable from noise, and dividing a noise-dominated
    slot sum by it would move the FFN by noise of order 1/count per coordinate.
    """
    return max(float(min_group_size), 1.0, LOCAL_COUNT_SIGMAS * noise_std * math.sqrt(uploads))


def apply_decoded(
    global_params: dict[str, torch.Tensor],
    layout: UpdateLayout,
    summed: np.ndarray,
    *,
    survivors: int,
    phase1_survivors: int,
    counts: np.ndarray,
    suppressed: np.ndarray,
) -> tuple[AggregateStep, float]:
    """The coordinator's step from a decoded phase-2 sum (float, layout.size): `aggregate_round` over the
    update phase's survivors with the phase-1 counts (fractions over the phase-1 survivors). Also returns
    the summed example counts (scaled to [0, 1] each, noisy under DP)."""
    dtype = next(iter(global_params.values())).dtype
    total = torch.as_tensor(np.asarray(summed, dtype=np.float64), dtype=dtype)
    if total.shape != (layout.size,):
        raise ConfigError(f"decoded sum has shape {tuple(total.shape)}, layout expects ({layout.size},)")
    group_counts = torch.as_tensor(np.asarray(counts), dtype=dtype)
    mask = torch.as_tensor(np.asarray(suppressed, dtype=bool)) if layout.num_groups else None
    step = aggregate_round(
        dict(global_params),
        layout,
        total,
        uploads=survivors,
        counts=group_counts,
        suppressed=mask,
        counted_clients=phase1_survivors,
    )
    return step, float(total[-1])


SERVER_ADAM_BETA2 = 0.99
SERVER_ADAM_EPS = 1e-3  # Reddi et al.'s tau: the adaptivity floor


class ServerOptimizer:
    """The server's step from the averaged model (`apply_sum`'s result) to the next global model.

    avg (the paper): x <- x + lr * (mean - x); lr 1 is the mean itself, exactly.
    avgm (FedAvgM, Hsu et al. 2019): m <- beta m + (mean - x); x <- x + lr m.
    adam (FedAdam, Reddi et al. 2021): m <- b1 m + (1 - b1) d; v <- b2 v + (1 - b2) d^2;
    x <- x + lr m / (sqrt(v) + tau), with d = mean - x and no bias correction, as in the paper.
    It acts only on what the server already holds (the decoded sums), so it changes no privacy guarantee.
    """

    def __init__(self, kind: str, lr: float, momentum: float) -> None:
        self.kind, self.lr, self.momentum = kind, lr, momentum
        self.first: dict[str, torch.Tensor] = {}
        self.second: dict[str, torch.Tensor] = {}

    def step(self, current: dict[str, torch.Tensor], averaged: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.kind == "avg" and self.lr == 1.0:
            return averaged
        out = {}
        for name, x in current.items():
            change = averaged[name] - x
            if self.kind == "avg":
                out[name] = x + self.lr * change
                continue
            m = self.first.get(name, torch.zeros_like(x))
            if self.kind == "avgm":
                m = self.momentum * m + change
                out[name] = x + self.lr * m
            else:
                m = self.momentum * m + (1 - self.momentum) * change
                v = (
                    SERVER_ADAM_BETA2 * self.second.get(name, torch.zeros_like(x))
                    + (1 - SERVER_ADAM_BETA2) * change * change
                )
                self.second[name] = v
                out[name] = x + self.lr * m / (v.sqrt() + SERVER_ADAM_EPS)
            self.first[name] = m
        return out

    def state_arrays(self, current: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The optimizer's state for a checkpoint, 'server_m/<name>' and 'server_v/<name>' (zeros before the
        first step, which is the same state); nothing for avg."""
        arrays = {}
        if self.kind in ("avgm", "adam"):
            arrays.update({f"server_m/{n}": self.first.get(n, torch.zeros_like(x)) for n, x in current.items()})
        if self.kind == "adam":
            arrays.update({f"server_v/{n}": self.second.get(n, torch.zeros_like(x)) for n, x in current.items()})
        return arrays

    def load_state_arrays(self, arrays: dict[str, torch.Tensor]) -> None:
        self.first = {k[len("server_m/") :]: v for k, v in arrays.items() if k.startswith("server_m/")}
        self.second = {k[len("server_v/") :]: v for k, v in arrays.items() if k.startswith("server_v/")}

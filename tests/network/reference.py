"""The in-memory reference of a networked run with dropouts: the same per-client functions
(mrff_secure.federation.client_update and mrff_secure.round) and the same secagg state machines,
driven in one process by mrff_secure.round.inmemory.run_round instead of over gRPC.

Clients are assumed to run with --insecure-reproducible-noise and --client-seed CLIENT_SEED, so
their rounding and noise come from numpy's default_rng([CLIENT_SEED, round, phase, user]). Runs
without dropouts are compared with FederatedSimulation itself (test_secure_round.py); this
reference exists for what the simulation does not model: clients that vanish mid-round.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np
import torch

from mrff_secure.config import ModelConfig
from mrff_secure.data.client_data import ClientData
from mrff_secure.dp.config import min_survivors
from mrff_secure.federation.client_update import build_global, initial_private, torch_seed, train_user
from mrff_secure.round.aggregate import apply_decoded
from mrff_secure.round.encoding import (
    counts_upload,
    decode_counts,
    decode_sum,
    plan_configs,
    round_plans,
    update_upload,
)
from mrff_secure.round.inmemory import run_round
from mrff_secure.round.participant import group_one_hots, rotation_seed, suppressed_groups, update_vectors
from mrff_secure.round.spec import RoundSpec
from mrff_secure.round.update_vector import UpdateLayout
from mrff_secure.secagg.encoding import from_ring
from mrff_secure.secagg.stages import Stage
from mrff_secure.wire import tensors

Drops = Mapping[int, Mapping[str, set[int]]]  # round -> phase name -> users that vanish at MASKED_INPUT
COUNTS, UPDATE = 1, 2


def run_reference(
    data: ClientData,
    model_config: ModelConfig,
    spec: RoundSpec,
    *,
    seed: int,
    client_seed: int,
    rounds: int,
    users: list[int],
    max_dropout_fraction: float = 0.3,
    drops: Drops | None = None,
    options: Mapping[str, int] | None = None,
) -> list[str]:
    """Digest of the global model after each round (hex)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the client processes do
    try:
        model, params = build_global(model_config, data, seed)
        layout = UpdateLayout.from_model(model)
        dtype = next(iter(params.values())).dtype
        fractions = torch.full((layout.num_blocks, layout.num_groups), 1.0 / layout.num_groups, dtype=dtype)
        private = {u: initial_private(model, data, model_config, seed, u) for u in users}
        digests = []
        for r in range(rounds):
            n = len(users)
            round_spec = dataclasses.replace(spec, min_survivors=min_survivors(n, max_dropout_fraction))
            plans = round_plans(round_spec, layout, n)
            counts_config, update_config = plan_configs(plans, n, options=options)
            updates = {
                u: train_user(
                    model,
                    params,
                    private[u],
                    data,
                    u,
                    fractions,
                    round_spec,
                    model_config,
                    torch_seed(client_seed, r, u),
                )
                for u in users
            }
            gone = (drops or {}).get(r, {})
            rng = {(u, p): np.random.default_rng([client_seed, r, p, u]) for u in users for p in (COUNTS, UPDATE)}
            counts_in = {
                u: from_ring(
                    counts_upload(
                        plans,
                        group_one_hots(layout, updates[u].routes)[0].numpy(),
                        rng=rng[u, COUNTS],
                        rotation_seed=rotation_seed(seed, r, COUNTS),
                    ).astype(np.uint64),
                    counts_config.bits,
                )
                for u in users
            }
            phase1 = run_round(
                counts_config,
                round_id=2 * r,
                inputs=counts_in,
                dropouts={Stage.MASKED_INPUT: set(gone.get("counts", set()))},
            )
            counts = decode_counts(
                plans,
                phase1.ring_sum.astype(np.int64),
                survivors=len(phase1.survivors),
                rotation_seed=rotation_seed(seed, r, COUNTS),
            )
            suppressed = suppressed_groups(torch.as_tensor(counts), round_spec.min_group_size)
            vectors = {
                u: update_vectors(
                    layout,
                    updates[u].deltas,
                    updates[u].routes,
                    updates[u].num_examples,
                    suppressed=suppressed,
                    count_cap=round_spec.count_cap,
                )[0]
                .detach()
                .to(torch.float64)
                .numpy()
                for u in phase1.survivors
            }
            update_in = {
                u: from_ring(
                    update_upload(
                        plans, vectors[u], rng=rng[u, UPDATE], rotation_seed=rotation_seed(seed, r, UPDATE)
                    ).astype(np.uint64),
                    update_config.bits,
                )
                for u in phase1.survivors
            }
            phase2 = run_round(
                update_config,
                round_id=2 * r + 1,
                inputs=update_in,
                dropouts={Stage.MASKED_INPUT: set(gone.get("update", set()))},
            )
            summed = decode_sum(
                plans.update,
                phase2.ring_sum.astype(np.int64),
                survivors=len(phase2.survivors),
                rotation_seed=rotation_seed(seed, r, UPDATE),
            )
            applied, _ = apply_decoded(
                params,
                layout,
                summed,
                survivors=len(phase2.survivors),
                phase1_survivors=len(phase1.survivors),
                counts=counts,
                suppressed=suppressed.numpy(),
            )
            params, fractions = applied.averaged, applied.group_fractions
            for u in users:
                private[u] = updates[u].private
            digests.append(tensors.digest(params).hex())
        return digests
    finally:
        torch.set_num_threads(threads)

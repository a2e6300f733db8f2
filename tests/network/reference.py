"""The in-memory reference of a networked run: the same per-client computation
(mrff_secure.federation.client_update) and the same secagg state machines, driven in one
process by mrff_secure.secagg.inmemory.run_round instead of over gRPC."""

from __future__ import annotations

import dataclasses
from typing import Mapping

import torch

from mrff_secure.config import ModelConfig
from mrff_secure.data.client_data import ClientData
from mrff_secure.dp.config import min_survivors
from mrff_secure.federation.client_update import (
    RoundSpec,
    apply_update,
    build_global,
    client_rng,
    counts_input,
    initial_private,
    secagg_configs,
    suppressed_groups,
    torch_seed,
    train_user,
    update_input,
)
from mrff_secure.federation.update_vector import UpdateLayout
from mrff_secure.secagg.inmemory import run_round
from mrff_secure.secagg.stages import Stage
from mrff_secure.wire import tensors

Drops = Mapping[int, Mapping[str, set[int]]]  # round -> phase name -> users that vanish at MASKED_INPUT


def run_reference(data: ClientData, model_config: ModelConfig, spec: RoundSpec, *, seed: int, client_seed: int,
                  rounds: int, users: list[int], max_dropout_fraction: float = 0.3,
                  drops: Drops | None = None) -> list[str]:
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
            counts_config, update_config = secagg_configs(layout, round_spec, n)
            updates = {u: train_user(model, params, private[u], data, u, fractions, round_spec, model_config,
                                     torch_seed(client_seed, r, u)) for u in users}
            gone = (drops or {}).get(r, {})
            counts = run_round(counts_config, round_id=2 * r, inputs={u: counts_input(layout, updates[u]) for u in users},
                               dropouts={Stage.MASKED_INPUT: set(gone.get("counts", set()))})
            suppressed = suppressed_groups(counts.total, layout, round_spec.min_group_size)
            vectors = {u: update_input(layout, updates[u], suppressed, round_spec, client_rng(client_seed, r, u))
                       for u in counts.survivors}
            result = run_round(update_config, round_id=2 * r + 1, inputs=vectors,
                               dropouts={Stage.MASKED_INPUT: set(gone.get("update", set()))})
            applied = apply_update(params, layout, result.total, len(result.survivors), suppressed, round_spec)
            params, fractions = applied.params, applied.group_fractions
            for u in users:
                private[u] = updates[u].private
            digests.append(tensors.digest(params).hex())
        return digests
    finally:
        torch.set_num_threads(threads)


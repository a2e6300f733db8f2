"""The coordinator's checkpoint: one .npz written atomically after every round.

Arrays: the shared and group parameters (`param/<name>`) and the server optimizer's state
(`optimizer/server_m/<name>`, `optimizer/server_v/<name>`: `round.aggregate.ServerOptimizer`; none for
plain averaging), in the same file, so a resumed run continues with the model and the optimizer state of
one and the same round. `__meta__`: UTF-8 JSON (round counters, group fractions, the privacy ledger,
the sampling RNG's seed, the identity directory, digests). Loaded with allow_pickle=False; any damage
raises CheckpointError naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mrff_secure.checkpoint import load_arrays, save_arrays
from mrff_secure.errors import CheckpointError

FORMAT_VERSION = 1
FILENAME = "checkpoint.npz"
OPTIMIZER_PREFIX = "optimizer/"


def save(
    run_dir: Path,
    params: dict[str, torch.Tensor],
    meta: dict[str, Any],
    optimizer_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    arrays = {f"param/{name}": t.detach().cpu().numpy() for name, t in params.items()}
    state = optimizer_state or {}
    arrays.update({OPTIMIZER_PREFIX + name: t.detach().cpu().numpy() for name, t in state.items()})
    return save_arrays(
        Path(run_dir) / FILENAME,
        arrays,
        {**meta, "format": FORMAT_VERSION, "param_order": list(params), "optimizer_order": list(state)},
    )


def load(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    params, meta, _ = load_with_optimizer(run_dir)
    return params, meta


def load_with_optimizer(
    run_dir: Path,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor]]:
    """(parameters, meta, the server optimizer's state: empty for plain averaging or a checkpoint without it)."""
    path = Path(run_dir) / FILENAME
    arrays, meta = load_arrays(path)
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint format {meta.get('format')!r}")
    try:
        params = {name: torch.from_numpy(arrays[f"param/{name}"]) for name in meta["param_order"]}
        optimizer = {
            name: torch.from_numpy(arrays[OPTIMIZER_PREFIX + name]) for name in meta.get("optimizer_order", [])
        }
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is corrupt: missing {exc}") from exc
    return params, meta, optimizer

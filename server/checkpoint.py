"""The coordinator's checkpoint: one .npz written atomically after every round.

Arrays: the shared and group parameters. `__meta__`: UTF-8 JSON (round counters, group
fractions, the privacy ledger, the sampling RNG's seed, the identity directory, digests).
Loaded with allow_pickle=False; any damage raises CheckpointError naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mrff_secure.checkpoint import load_arrays, save_arrays
from mrff_secure.errors import CheckpointError

FORMAT_VERSION = 1
FILENAME = "checkpoint.npz"


def save(run_dir: Path, params: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    arrays = {f"param/{name}": t.detach().cpu().numpy() for name, t in params.items()}
    return save_arrays(
        Path(run_dir) / FILENAME, arrays, {**meta, "format": FORMAT_VERSION, "param_order": list(params)}
    )


def load(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(run_dir) / FILENAME
    arrays, meta = load_arrays(path)
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint format {meta.get('format')!r}")
    try:
        params = {name: torch.from_numpy(arrays[f"param/{name}"]) for name in meta["param_order"]}
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is corrupt: missing {exc}") from exc
    return params, meta

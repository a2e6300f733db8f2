"""The coordinator's checkpoint: one .npz written atomically after every round.

Arrays: the shared and group parameters. `__meta__`: UTF-8 JSON (round counters, group
fractions, the privacy ledger, the sampling RNG's seed, the identity directory, digests).
Loaded with allow_pickle=False; any damage raises CheckpointError naming the file.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrff_secure.atomic import write_bytes_atomic
from mrff_secure.errors import CheckpointError

FORMAT_VERSION = 1
META = "__meta__"
FILENAME = "checkpoint.npz"


def save(run_dir: Path, params: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    arrays = {f"param/{name}": t.detach().cpu().numpy() for name, t in params.items()}
    payload = json.dumps({**meta, "format": FORMAT_VERSION, "param_order": list(params)}, sort_keys=True,
                         allow_nan=False).encode()
    arrays[META] = np.frombuffer(payload, dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path = Path(run_dir) / FILENAME
    write_bytes_atomic(path, buffer.getvalue())
    return path


def load(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(run_dir) / FILENAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(bytes(archive[META]).decode())
            if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
                raise CheckpointError(f"{path}: unsupported checkpoint format")
            params = {name: torch.from_numpy(archive[f"param/{name}"].copy()) for name in meta["param_order"]}
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path} is corrupt or unreadable: {exc}") from exc
    return params, meta

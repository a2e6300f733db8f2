"""Checkpoint files: named numpy arrays plus a JSON header in one .npz, written atomically.

The header is the UTF-8 JSON of a dict stored as the uint8 array `__meta__`. Read with
allow_pickle=False; an empty, cut or otherwise damaged file raises CheckpointError naming it (never
EOFError or a zip error from deep inside numpy).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from mrff_secure.atomic import write_bytes_atomic
from mrff_secure.errors import CheckpointError

META = "__meta__"


def save_arrays(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    if META in arrays:
        raise ValueError(f"{META} is reserved for the header")
    payload = json.dumps(meta, sort_keys=True, allow_nan=False).encode()
    buffer = io.BytesIO()
    # Any: numpy's savez stub has `allow_pickle: bool` beside **kwds, and a dict of arrays cannot show it lacks that key
    named: dict[str, Any] = {**arrays, META: np.frombuffer(payload, dtype=np.uint8)}
    np.savez(buffer, **named)
    write_bytes_atomic(path, buffer.getvalue())
    return Path(path)


def load_arrays(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    if path.stat().st_size == 0 or not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is empty, cut short or corrupt (not an .npz archive); restore it from a backup or start a new run"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(bytes(archive[META]).decode())
            arrays = {name: archive[name].copy() for name in archive.files if name != META}
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(
            f"{path} is empty, cut short or corrupt ({type(exc).__name__}: {exc or 'no data'}); "
            "restore it from a backup or start a new run"
        ) from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its header is not a JSON object")
    return arrays, meta

"""One logical client's files: its identity key and its private parameters, written atomically.

    STATE_DIR/user-<id>/identity.key   Ed25519 private key (PEM, mode 0600), made on first start
    STATE_DIR/user-<id>/credential.bin the identity authority's credential for that key (`mrff certs issue-client`)
    STATE_DIR/user-<id>/private.npz    committed private parameters (user embedding, user FFN)
    STATE_DIR/user-<id>/pending.npz    parameters trained in a round whose outcome is not known yet
    STATE_DIR/user-<id>/ledger.json    every release this client made (client/ledger.py)

A round's private parameters are committed only when the server reports the round completed
(or a later announcement names it as the last completed round); otherwise they are discarded,
so a crash or an aborted round never leaves a half-applied state. npz files are read with
allow_pickle=False; damage raises CheckpointError naming the file. The identity key and the
credential are the PKI's (`mrff_secure.pki.IdentityFiles`, which `mrff certs issue-client` uses too).
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrff_secure.atomic import write_bytes_atomic
from mrff_secure.errors import CheckpointError
from mrff_secure.pki import IdentityFiles

ROUND_KEY = "__round__"


class UserStore(IdentityFiles):
    """One logical client's folder: its identity (`IdentityFiles`) and its private parameters."""

    @property
    def private_path(self) -> Path:
        return self.folder / "private.npz"

    @property
    def ledger_path(self) -> Path:
        """The client's privacy ledger (client/ledger.py)."""
        return self.folder / "ledger.json"

    @property
    def pending_path(self) -> Path:
        return self.folder / "pending.npz"

    @staticmethod
    def _encode(tensors: dict[str, torch.Tensor], round_id: int) -> bytes:
        # Any: numpy's savez stub has `allow_pickle: bool` beside **kwds, which a dict of arrays cannot rule out
        arrays: dict[str, Any] = {f"p/{n}": t.detach().cpu().numpy() for n, t in tensors.items()}
        arrays[ROUND_KEY] = np.asarray([round_id], dtype=np.int64)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @staticmethod
    def _decode(
        path: Path, template: dict[str, tuple[tuple[int, ...], torch.dtype]]
    ) -> tuple[dict[str, torch.Tensor], int]:
        try:
            with np.load(path, allow_pickle=False) as archive:
                names = {k[2:] for k in archive.files if k.startswith("p/")}
                if names != set(template):
                    raise CheckpointError(f"{path} holds parameters {sorted(names)}, expected {sorted(template)}")
                out = {}
                for name, (shape, dtype) in template.items():
                    array = archive[f"p/{name}"]
                    if tuple(array.shape) != tuple(shape) or str(array.dtype) != str(dtype).removeprefix("torch."):
                        raise CheckpointError(f"{path}: {name} is {array.dtype}{array.shape}, expected {dtype}{shape}")
                    out[name] = torch.from_numpy(array.copy())
                round_id = int(archive[ROUND_KEY][0])
        except CheckpointError:
            raise
        except (OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile) as exc:
            raise CheckpointError(f"{path} is corrupt or unreadable: {exc}") from exc
        return out, round_id

    def load_private(self, template: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> dict[str, torch.Tensor] | None:
        """The committed private parameters, or None before the first completed round."""
        if not self.private_path.exists():
            return None
        return self._decode(self.private_path, template)[0]

    def save_pending(self, round_id: int, tensors: dict[str, torch.Tensor]) -> None:
        write_bytes_atomic(self.pending_path, self._encode(tensors, round_id))

    def pending_round(self) -> int | None:
        if not self.pending_path.exists():
            return None
        try:
            with np.load(self.pending_path, allow_pickle=False) as archive:
                return int(archive[ROUND_KEY][0])
        except (OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile):
            return None  # a damaged pending file is simply discarded

    def commit(self, round_id: int) -> bool:
        """Make the pending state of `round_id` the committed one (atomic rename)."""
        if self.pending_round() != round_id:
            return False
        os.replace(self.pending_path, self.private_path)
        return True

    def discard(self) -> None:
        try:
            self.pending_path.unlink()
        except FileNotFoundError:
            pass

    def resolve(self, last_completed_round: int) -> None:
        """On a new announcement: keep the pending state only if its round is the last completed one."""
        pending = self.pending_round()
        if pending is None:
            return
        if pending == last_completed_round:
            self.commit(pending)
        else:
            self.discard()

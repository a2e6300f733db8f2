"""One logical client's files: its identity key and its private parameters, written atomically.

    STATE_DIR/user-<id>/identity.key   Ed25519 private key (PEM, mode 0600), made on first start
    STATE_DIR/user-<id>/credential.bin the identity authority's credential for that key (`mrff certs issue-client`)
    STATE_DIR/user-<id>/private.npz    committed private parameters (user embedding, user FFN)
    STATE_DIR/user-<id>/pending.npz    parameters trained in a round whose outcome is not known yet

A round's private parameters are committed only when the server reports the round completed
(or a later announcement names it as the last completed round); otherwise they are discarded,
so a crash or an aborted round never leaves a half-applied state. npz files are read with
allow_pickle=False; damage raises CheckpointError naming the file.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mrff_secure.atomic import write_bytes_atomic
from mrff_secure.errors import AuthenticationError, CheckpointError, ProtocolViolation
from mrff_secure.secagg.identity import ClientCredential, verify_credential

ROUND_KEY = "__round__"


class UserStore:
    def __init__(self, root: Path, user: int) -> None:
        self.folder = Path(root) / f"user-{user}"
        self.user = user

    @property
    def private_path(self) -> Path:
        return self.folder / "private.npz"

    @property
    def pending_path(self) -> Path:
        return self.folder / "pending.npz"

    @property
    def credential_path(self) -> Path:
        return self.folder / "credential.bin"

    def credential(self, authority_public_key: bytes) -> ClientCredential:
        """This user's credential, checked against the identity authority and our own identity key."""
        path = self.credential_path
        try:
            credential = ClientCredential.from_bytes(path.read_bytes())
        except FileNotFoundError as exc:
            raise CheckpointError(f"{path} is missing: run `mrff certs issue-client` for user {self.user} "
                                  "(the identity authority certifies each client's identity key)") from exc
        except (OSError, ProtocolViolation) as exc:
            raise CheckpointError(f"{path} is not a readable credential: {exc}") from exc
        if credential.client_id != self.user:
            raise CheckpointError(f"{path} is not the identity authority's credential for user {self.user}: it "
                                  f"certifies client {credential.client_id}; run `mrff certs issue-client` for "
                                  f"user {self.user}")
        try:
            certified = verify_credential(authority_public_key, credential, client_id=self.user)
        except AuthenticationError as exc:
            raise CheckpointError(f"{path} is not the identity authority's credential for user {self.user}: it "
                                  "does not verify under the identity authority's key (identity-ca.pub in --certs, "
                                  "or --identity-ca); have it issued by that authority (`mrff certs issue-client`)"
                                  ) from exc
        if not self.identity_path.exists():
            raise CheckpointError(f"{self.identity_path} is missing: the key {path} certifies is gone; make a new "
                                  f"key (`mrff client-key`) and have it certified (`mrff certs issue-client --force`)")
        if certified != self.identity_key().public_key().public_bytes_raw():
            raise CheckpointError(f"{path} certifies another identity key than {self.identity_path}: have this key "
                                  "certified (`mrff certs issue-client`)")
        return credential

    @property
    def identity_path(self) -> Path:
        return self.folder / "identity.key"

    def identity_key(self) -> Ed25519PrivateKey:
        """This user's Ed25519 identity key, made (mode 0600) on first use."""
        path = self.identity_path
        if path.exists():
            try:
                key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except (ValueError, TypeError) as exc:
                raise CheckpointError(f"{path} is not a readable private key: {exc}") from exc
            if not isinstance(key, Ed25519PrivateKey):
                raise CheckpointError(f"{path} is not an Ed25519 key")
            return key
        key = Ed25519PrivateKey.generate()
        write_bytes_atomic(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
        os.chmod(path, 0o600)
        return key

    @staticmethod
    def _encode(tensors: dict[str, torch.Tensor], round_id: int) -> bytes:
        arrays = {f"p/{n}": t.detach().cpu().numpy() for n, t in tensors.items()}
        arrays[ROUND_KEY] = np.asarray([round_id], dtype=np.int64)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @staticmethod
    def _decode(path: Path, template: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> tuple[dict[str, torch.Tensor], int]:
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

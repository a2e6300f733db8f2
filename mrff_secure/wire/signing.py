"""Ed25519 signatures over the signed bodies of the wire protocol (round and phase parameters).

The server signs with its parameter-signing key; clients hold the public key
out of band (`mrff certs` writes both) and refuse any body that does not verify.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mrff_secure.errors import AuthenticationError, ConfigError

DOMAIN = b"mrff-secure/v1/signed-body\x00"


def sign_body(key: Ed25519PrivateKey, body: bytes) -> bytes:
    return key.sign(DOMAIN + body)


def verify_body(public_key: Ed25519PublicKey, body: bytes, signature: bytes) -> None:
    """Raise AuthenticationError (opaque) unless `signature` is the server's signature of `body`."""
    try:
        public_key.verify(bytes(signature), DOMAIN + bytes(body))
    except (InvalidSignature, ValueError) as exc:
        raise AuthenticationError("signed parameters do not verify against the server's signing key") from exc


def load_private_key(path: Path, what: str = "signing key") -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file; `what` names it in the error."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} (the {what}) is not an Ed25519 private key")
    return key


def load_public_key(path: Path, what: str = "signing public key") -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file; `what` names it in the error."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} (the {what}) is not an Ed25519 public key")
    return key


ENROL_DOMAIN = b"mrff-secure/v1/enrol\x00"


def enrol_payload(client_id: int, public_key: bytes) -> bytes:
    """What a client signs at enrolment to prove it holds the identity key it enrols."""
    return ENROL_DOMAIN + int(client_id).to_bytes(4, "big") + bytes(public_key)

"""Ed25519 signatures over the signed bodies of the wire protocol (round and phase parameters).

The server signs with its parameter-signing key; clients hold the public key
out of band (`mrff certs` writes both) and refuse any body that does not verify.
"""

from __future__ import annotations

import hashlib
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


DEPLOYMENT_DOMAIN = b"mrff-secure/v1/deployment-body\x00"  # the enrolment reply's DeploymentBody


def sign_deployment(key: Ed25519PrivateKey, body: bytes) -> bytes:
    """The server's signature of a serialized DeploymentBody (its own domain: never valid as a round body)."""
    return key.sign(DEPLOYMENT_DOMAIN + body)


def verify_deployment(public_key: Ed25519PublicKey, body: bytes, signature: bytes) -> None:
    """Raise AuthenticationError unless `signature` is the server's signature of the DeploymentBody `body`."""
    try:
        public_key.verify(bytes(signature), DEPLOYMENT_DOMAIN + bytes(body))
    except (InvalidSignature, ValueError) as exc:
        raise AuthenticationError("the enrolment reply's deployment does not verify against the server's key") from exc


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


ENROL_DOMAIN = b"mrff-secure/v1/enrol-challenge\x00"
STAGE_DOMAIN = b"mrff-secure/v1/stage-message\x00"
ENROL_NONCE_BYTES = 32


def _run_id_bytes(run_id: str) -> bytes:
    """The run id with its length in front (u16 BE), so no two (run id, rest) pairs sign the same bytes."""
    encoded = run_id.encode("utf-8")
    if len(encoded) > 0xFFFF:
        raise ValueError(f"run id of {len(encoded)} bytes is too long to sign")
    return len(encoded).to_bytes(2, "big") + encoded


def enrol_payload(run_id: str, nonce: bytes, client_id: int, public_key: bytes) -> bytes:
    """What a client signs at enrolment: the server's run id and its fresh challenge nonce, the client id
    and the identity key it enrols. Bound to one run and one challenge, so a recorded proof replays nowhere."""
    if len(nonce) != ENROL_NONCE_BYTES:
        raise ValueError(f"the enrolment nonce must be {ENROL_NONCE_BYTES} bytes, got {len(nonce)}")
    return ENROL_DOMAIN + _run_id_bytes(run_id) + bytes(nonce) + int(client_id).to_bytes(4, "big") + bytes(public_key)


def stage_payload(
    run_id: str,
    phase: int,
    secagg_round_id: int,
    session_nonce: bytes,
    stage: int,
    client_id: int,
    payload: bytes,
) -> bytes:
    """What a client signs with its identity key for each submitted stage message: where it belongs (run,
    phase, secure-aggregation session and its nonce, stage), who sends it, and the SHA-256 of its bytes."""
    return (
        STAGE_DOMAIN
        + _run_id_bytes(run_id)
        + int(phase).to_bytes(4, "big")
        + int(secagg_round_id).to_bytes(8, "big")
        + len(session_nonce).to_bytes(1, "big")
        + bytes(session_nonce)
        + int(stage).to_bytes(4, "big")
        + int(client_id).to_bytes(4, "big")
        + hashlib.sha256(bytes(payload)).digest()
    )

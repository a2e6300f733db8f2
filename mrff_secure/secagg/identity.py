"""Client identity credentials issued by an identity authority that is not the aggregator.

A credential binds one client id to one Ed25519 identity key. The identity
authority (an offline Ed25519 key, `mrff certs issue-client`) signs it once per
client; clients carry it in every key bundle and verify each peer's credential
themselves, so the server can neither invent a participant (sybil) nor re-bind
an id to another key (W1 in SECURITY.md).

A credential expires (W18 in SECURITY.md): the authority signs its expiry time with the binding, and
verification refuses it from that time on, so an old key re-keyed away stops verifying by itself (and
sooner with the authority's revocation list, mrff_secure.pki.RevocationList).

Wire format, version 2 (109 bytes, big-endian): format version (u8 = 2) | client id (u32) | identity public
key (32) | expires at (u64, Unix seconds) | authority signature (64) over DOMAIN | version | client id |
expires at | key. Version 1 (100 bytes, no expiry) is refused with a message saying to re-issue it.
"""

from __future__ import annotations

import datetime as dt
import struct
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mrff_secure.errors import AuthenticationError, ProtocolViolation
from mrff_secure.secagg import primitives

CREDENTIAL_DOMAIN = b"mrff-secure/client-credential/v2\x00"
CREDENTIAL_VERSION = 2
V1_CREDENTIAL_BYTES = 100  # the old format without expiry: refused by name
DEFAULT_VALIDITY_SECONDS = 365 * 24 * 3600
"""A credential's lifetime unless the authority says otherwise (`mrff certs issue-client --valid-days`)."""


class CredentialExpired(AuthenticationError, ProtocolViolation):
    """A genuine credential past its expiry time. Also a ProtocolViolation, so every caller that reports an
    unreadable credential's reason reports this one's (re-issue it)."""


def expiry_text(expires_at: int) -> str:
    try:
        return dt.datetime.fromtimestamp(expires_at, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, ValueError, OSError):
        return f"{expires_at} (Unix seconds)"


@dataclass(frozen=True)
class ClientCredential:
    """The authority's statement "client `client_id` owns identity key `identity_public_key`"."""

    client_id: int
    identity_public_key: bytes
    signature: bytes
    expires_at: int = 0  # Unix seconds; the credential verifies only before this time

    SIZE: ClassVar[int] = 1 + 4 + primitives.PUBLIC_KEY_BYTES + 8 + primitives.SIGNATURE_BYTES

    def signed_payload(self) -> bytes:
        return (
            CREDENTIAL_DOMAIN
            + struct.pack(">BIQ", CREDENTIAL_VERSION, self.client_id, self.expires_at)
            + self.identity_public_key
        )

    def to_bytes(self) -> bytes:
        if not 0 <= self.client_id < 2**32:
            raise ProtocolViolation(f"client id {self.client_id!r} does not fit in u32")
        if not isinstance(self.expires_at, int) or not 0 <= self.expires_at < 2**64:
            raise ProtocolViolation(f"credential expiry {self.expires_at!r} does not fit in u64")
        if (
            len(self.identity_public_key) != primitives.PUBLIC_KEY_BYTES
            or len(self.signature) != primitives.SIGNATURE_BYTES
        ):
            raise ProtocolViolation("credential key or signature has the wrong length")
        return (
            struct.pack(">BI", CREDENTIAL_VERSION, self.client_id)
            + self.identity_public_key
            + struct.pack(">Q", self.expires_at)
            + self.signature
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> "ClientCredential":
        if isinstance(data, (bytes, bytearray)) and len(data) == V1_CREDENTIAL_BYTES:
            raise ProtocolViolation(
                "this is a version-1 client credential (no expiry), no longer accepted: re-issue it with "
                "`mrff certs issue-client`"
            )
        if not isinstance(data, (bytes, bytearray)) or len(data) != cls.SIZE:
            raise ProtocolViolation(
                f"a client credential is {cls.SIZE} bytes, got "
                f"{len(data) if isinstance(data, (bytes, bytearray)) else type(data).__name__}"
            )
        data = bytes(data)
        version, client_id = struct.unpack(">BI", data[:5])
        if version != CREDENTIAL_VERSION:
            raise ProtocolViolation(
                f"client credential format version {version} is not supported (this is version "
                f"{CREDENTIAL_VERSION}): re-issue it with `mrff certs issue-client`"
            )
        key_end = 5 + primitives.PUBLIC_KEY_BYTES
        (expires_at,) = struct.unpack(">Q", data[key_end : key_end + 8])
        return cls(client_id, data[5:key_end], data[key_end + 8 :], expires_at)


def issue_credential(
    authority_key: Ed25519PrivateKey, client_id: int, identity_public_key: bytes, *, expires_at: int | None = None
) -> ClientCredential:
    """Sign (client id -> identity key, until `expires_at`) with the authority's key (done offline, once per
    client). expires_at: Unix seconds (default: DEFAULT_VALIDITY_SECONDS from now)."""
    expiry = int(time.time()) + DEFAULT_VALIDITY_SECONDS if expires_at is None else expires_at
    unsigned = ClientCredential(client_id, bytes(identity_public_key), bytes(primitives.SIGNATURE_BYTES), expiry)
    unsigned.to_bytes()  # validates the id, the expiry and the key length
    return ClientCredential(
        client_id, unsigned.identity_public_key, primitives.sign(authority_key, unsigned.signed_payload()), expiry
    )


def verify_credential(
    authority_public_key: bytes, credential: ClientCredential, *, client_id: int | None = None, now: float | None = None
) -> bytes:
    """Return the certified identity key; raise AuthenticationError unless the authority signed it
    (and, when `client_id` is given, it certifies that id), CredentialExpired from its expiry time on
    (`now`: Unix seconds, default the clock).

    The same peers meet every round, so a verified (authority, credential) signature is remembered for
    the process (exact bytes; only successes are cached); the expiry is checked on every call."""
    if client_id is not None and credential.client_id != client_id:
        raise AuthenticationError("credential is for another client id")
    _verified(bytes(authority_public_key), credential.signature, credential.signed_payload())
    if (time.time() if now is None else now) >= credential.expires_at:
        raise CredentialExpired(
            f"the credential of client {credential.client_id} expired at {expiry_text(credential.expires_at)}: "
            "have it re-issued (`mrff certs issue-client`)"
        )
    return credential.identity_public_key


@lru_cache(maxsize=1 << 16)
def _verified(authority_public_key: bytes, signature: bytes, payload: bytes) -> bool:
    primitives.verify(authority_public_key, signature, payload)  # raises, and failures are not cached
    return True

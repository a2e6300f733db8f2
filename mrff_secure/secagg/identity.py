"""Client identity credentials issued by an identity authority that is not the aggregator.

A credential binds one client id to one Ed25519 identity key. The identity
authority (an offline Ed25519 key, `mrff certs issue-client`) signs it once per
client; clients carry it in every key bundle and verify each peer's credential
themselves, so the server can neither invent a participant (sybil) nor re-bind
an id to another key (W1 in SECURITY.md).

Wire format (100 bytes, big-endian): client id (u32) | identity public key (32) |
authority signature (64) over DOMAIN | version | client id | key.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mrff_secure.errors import AuthenticationError, ProtocolViolation
from mrff_secure.secagg import primitives

CREDENTIAL_DOMAIN = b"mrff-secure/client-credential\x00"


@dataclass(frozen=True)
class ClientCredential:
    """The authority's statement "client `client_id` owns identity key `identity_public_key`"."""

    client_id: int
    identity_public_key: bytes
    signature: bytes

    SIZE: ClassVar[int] = 4 + primitives.PUBLIC_KEY_BYTES + primitives.SIGNATURE_BYTES

    def signed_payload(self) -> bytes:
        return (
            CREDENTIAL_DOMAIN
            + struct.pack(">BI", primitives.PROTOCOL_VERSION, self.client_id)
            + self.identity_public_key
        )

    def to_bytes(self) -> bytes:
        if not 0 <= self.client_id < 2**32:
            raise ProtocolViolation(f"client id {self.client_id!r} does not fit in u32")
        if (
            len(self.identity_public_key) != primitives.PUBLIC_KEY_BYTES
            or len(self.signature) != primitives.SIGNATURE_BYTES
        ):
            raise ProtocolViolation("credential key or signature has the wrong length")
        return struct.pack(">I", self.client_id) + self.identity_public_key + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> "ClientCredential":
        if not isinstance(data, (bytes, bytearray)) or len(data) != cls.SIZE:
            raise ProtocolViolation(
                f"a client credential is {cls.SIZE} bytes, got "
                f"{len(data) if isinstance(data, (bytes, bytearray)) else type(data).__name__}"
            )
        data = bytes(data)
        (client_id,) = struct.unpack(">I", data[:4])
        return cls(client_id, data[4:36], data[36:])


def issue_credential(authority_key: Ed25519PrivateKey, client_id: int, identity_public_key: bytes) -> ClientCredential:
    """Sign (client id -> identity key) with the authority's key (done offline, once per client)."""
    unsigned = ClientCredential(client_id, bytes(identity_public_key), bytes(primitives.SIGNATURE_BYTES))
    unsigned.to_bytes()  # validates the id and the key length
    return ClientCredential(
        client_id, unsigned.identity_public_key, primitives.sign(authority_key, unsigned.signed_payload())
    )


def verify_credential(
    authority_public_key: bytes, credential: ClientCredential, *, client_id: int | None = None
) -> bytes:
    """Return the certified identity key; raise AuthenticationError unless the authority signed it
    (and, when `client_id` is given, it certifies that id).

    Credentials are long-lived and the same peers meet every round, so a verified (authority,
    credential) pair is remembered for the process (exact bytes; only successes are cached)."""
    if client_id is not None and credential.client_id != client_id:
        raise AuthenticationError("credential is for another client id")
    _verified(bytes(authority_public_key), credential.signature, credential.signed_payload())
    return credential.identity_public_key


@lru_cache(maxsize=1 << 16)
def _verified(authority_public_key: bytes, signature: bytes, payload: bytes) -> bool:
    primitives.verify(authority_public_key, signature, payload)  # raises, and failures are not cached
    return True

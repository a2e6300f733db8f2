"""Typed protocol messages with a fixed-width binary encoding.

Every message is a frozen dataclass. Wire format: version (u8) | type tag (u8)
| round id (u64) | body. All integers are big-endian and fixed-width; lists
are a u32 count followed by the items; variable-length bytes are a u32 length
followed by the bytes. Masked vectors are carried bit-packed (see packing.py).
Decoding rejects unknown versions and tags, short or trailing bytes, and
wrong field lengths with ProtocolViolation. No pickle, no dicts on the wire.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, TypeVar

import numpy as np

from mrff_secure.errors import ProtocolViolation
from mrff_secure.secagg.identity import ClientCredential
from mrff_secure.secagg.primitives import PROTOCOL_VERSION, PUBLIC_KEY_BYTES, SIGNATURE_BYTES
from mrff_secure.secagg.shamir import SHARE_VALUE_BYTES, Share

_HEADER = struct.Struct(">BBQ")
_MAX_U32 = 2**32 - 1
_MAX_U64 = 2**64 - 1


class _Writer:
    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, value: int) -> None:
        self._parts.append(struct.pack(">B", value))

    def u32(self, value: int) -> None:
        if not isinstance(value, int) or not 0 <= value <= _MAX_U32:
            raise ProtocolViolation(f"value {value!r} does not fit in u32")
        self._parts.append(struct.pack(">I", value))

    def fixed(self, data: bytes, size: int, what: str) -> None:
        if not isinstance(data, bytes) or len(data) != size:
            raise ProtocolViolation(f"{what} must be {size} bytes")
        self._parts.append(data)

    def blob(self, data: bytes) -> None:
        self.u32(len(data))
        self._parts.append(bytes(data))

    def ids(self, values: tuple[int, ...]) -> None:
        self._parts.append(encode_ids(values))

    def raw(self, data: bytes) -> None:
        """Bytes already encoded and validated by the caller."""
        self._parts.append(data)

    def result(self) -> bytes:
        return b"".join(self._parts)


class _Reader:
    def __init__(self, data: bytes, offset: int) -> None:
        self._data = data
        self._pos = offset

    def _take(self, size: int) -> bytes:
        if size < 0 or self._pos + size > len(self._data):
            raise ProtocolViolation("message is truncated")
        chunk = self._data[self._pos : self._pos + size]
        self._pos += size
        return chunk

    def u8(self) -> int:
        return self._take(1)[0]

    def u32(self) -> int:
        return struct.unpack(">I", self._take(4))[0]

    def fixed(self, size: int) -> bytes:
        return self._take(size)

    def blob(self) -> bytes:
        return self._take(self.u32())

    def count(self, min_item_bytes: int) -> int:
        n = self.u32()
        if n * min_item_bytes > len(self._data) - self._pos:
            raise ProtocolViolation("list count exceeds the message size")
        return n

    def ids(self) -> tuple[int, ...]:
        n = self.count(4)
        return struct.unpack(f">{n}I", self._take(4 * n))

    def finish(self) -> None:
        if self._pos != len(self._data):
            raise ProtocolViolation(f"{len(self._data) - self._pos} trailing bytes after the message")


def _check_u32(*values: int) -> None:
    for value in values:
        if not isinstance(value, int) or not 0 <= value <= _MAX_U32:
            raise ProtocolViolation(f"value {value!r} does not fit in u32")


_U32_PAIR = struct.Struct(">II")
_U32_TRIPLE = struct.Struct(">III")


_INT_TYPES = {int, bool}  # what u32 accepted (isinstance(v, int)); subclasses of int take the slow check


def encode_ids(values: tuple[int, ...]) -> bytes:
    """A list of u32 ids: count | ids, big-endian, packed in one call (each must be an int in [0, 2^32))."""
    if not set(map(type, values)) <= _INT_TYPES:  # struct would accept an object with __index__
        bad = next((v for v in values if not isinstance(v, int)), None)
        if bad is not None:
            raise ProtocolViolation(f"value {bad!r} does not fit in u32")
    try:
        return struct.pack(f">I{len(values)}I", len(values), *values)
    except struct.error:
        bad = next(v for v in values if not 0 <= v <= _MAX_U32)
        raise ProtocolViolation(f"value {bad!r} does not fit in u32") from None


M = TypeVar("M", bound="Message")


class Message:
    """Base of the wire messages: header handling and dispatch by tag."""

    TAG: ClassVar[int] = 0
    round_id: int

    def _write(self, w: _Writer) -> None:
        raise NotImplementedError

    @classmethod
    def _read(cls: type[M], r: _Reader, round_id: int) -> M:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        if not isinstance(self.round_id, int) or not 0 <= self.round_id <= _MAX_U64:
            raise ProtocolViolation(f"round id {self.round_id!r} does not fit in u64")
        w = _Writer()
        self._write(w)
        return _HEADER.pack(PROTOCOL_VERSION, self.TAG, self.round_id) + w.result()

    @classmethod
    def from_bytes(cls: type[M], data: bytes) -> M:
        message = decode(data)
        if not isinstance(message, cls):
            raise ProtocolViolation(f"expected {cls.__name__}, got {type(message).__name__}")
        return message


class ClientMessage(Message):
    """Base of the messages a client sends the server (each stage's submission): each names its sender."""

    client_id: int


def decode(data: bytes) -> Message:
    """Decode any message; raise ProtocolViolation on anything malformed."""
    if not isinstance(data, (bytes, bytearray)) or len(data) < _HEADER.size:
        raise ProtocolViolation("message shorter than its header")
    data = bytes(data)
    version, tag, round_id = _HEADER.unpack_from(data)
    if version != PROTOCOL_VERSION:
        raise ProtocolViolation(f"protocol version {version} is not supported (expected {PROTOCOL_VERSION})")
    cls = _BY_TAG.get(tag)
    if cls is None:
        raise ProtocolViolation(f"unknown message type tag {tag}")
    reader = _Reader(data, _HEADER.size)
    message = cls._read(reader, round_id)
    reader.finish()
    return message


# --- stage 0: advertise keys ------------------------------------------------------------


COMMITMENT_BYTES = 32
ROUND_BODY_DIGEST_BYTES = 32
PURPOSE_GRAPH_SEED = b"graph-seed"
PURPOSE_SELF_MASK_SEED = b"self-mask-seed"


@dataclass(frozen=True)
class AdvertiseKeys(ClientMessage):
    """Client -> server: two fresh X25519 public keys, commitments to the client's graph-seed
    contribution and to its self-mask seed, and its credential from the identity authority; signed
    with the certified identity key over the session context (see `signed_payload`)."""

    TAG: ClassVar[int] = 1
    round_id: int
    client_id: int
    cipher_public_key: bytes  # X25519, encrypts shares in transit
    mask_public_key: bytes  # X25519, derives pairwise masks
    graph_commitment: bytes  # commitment to the 32 bytes revealed at REVEAL_SEED
    self_mask_commitment: bytes  # commitment to b_u, checked by the server after reconstruction
    credential: ClientCredential  # (client id -> identity key), signed by the identity authority
    signature: bytes  # Ed25519 by the identity key over signed_payload(context)
    round_body_digest: bytes  # the round body the client accepted (its context's), in the signed context too (W21)

    def signed_payload(self, context: bytes) -> bytes:
        """What the identity key signs: label | session context | id | keys | commitments."""
        return (
            b"mrff-secagg-keys"
            + context
            + struct.pack(">I", self.client_id)
            + self.cipher_public_key
            + self.mask_public_key
            + self.graph_commitment
            + self.self_mask_commitment
        )

    def digest(self) -> bytes:
        """SHA-256 of the whole encoded bundle: what the participant set fixes."""
        return hashlib.sha256(self.to_bytes()).digest()

    def _write(self, w: _Writer) -> None:
        received: bytes | None = self.__dict__.get("_received_body")
        if received is not None:  # decoded from these bytes: the encoding is canonical, so they are its encoding
            w.raw(received)
            return
        if not isinstance(self.client_id, int) or not 0 <= self.client_id <= _MAX_U32:
            raise ProtocolViolation(f"value {self.client_id!r} does not fit in u32")
        credential = self.credential.to_bytes()
        for data, size, what in (
            (self.round_body_digest, ROUND_BODY_DIGEST_BYTES, "round body digest"),
            (self.cipher_public_key, PUBLIC_KEY_BYTES, "cipher public key"),
            (self.mask_public_key, PUBLIC_KEY_BYTES, "mask public key"),
            (self.graph_commitment, COMMITMENT_BYTES, "graph commitment"),
            (self.self_mask_commitment, COMMITMENT_BYTES, "self-mask commitment"),
            (credential, ClientCredential.SIZE, "credential"),
            (self.signature, SIGNATURE_BYTES, "signature"),
        ):
            if not isinstance(data, bytes) or len(data) != size:
                raise ProtocolViolation(f"{what} must be {size} bytes")
        w.raw(
            _BUNDLE.pack(
                self.client_id,
                self.round_body_digest,
                self.cipher_public_key,
                self.mask_public_key,
                self.graph_commitment,
                self.self_mask_commitment,
                credential,
                self.signature,
            )
        )

    @classmethod
    def _read(cls, r: _Reader, round_id: int) -> "AdvertiseKeys":
        body = r.fixed(_BUNDLE.size)
        client_id, body_digest, cipher_key, mask_key, graph_commitment, self_mask_commitment, credential, signature = (
            _BUNDLE.unpack(body)
        )
        decoded = cls(
            round_id,
            client_id,
            cipher_key,
            mask_key,
            graph_commitment,
            self_mask_commitment,
            ClientCredential.from_bytes(credential),
            signature,
            body_digest,
        )
        decoded.__dict__["_received_body"] = body  # re-sent (server) and hashed (digest) as received
        return decoded


_BUNDLE = struct.Struct(
    f">I{ROUND_BODY_DIGEST_BYTES}s{PUBLIC_KEY_BYTES}s{PUBLIC_KEY_BYTES}s{COMMITMENT_BYTES}s{COMMITMENT_BYTES}s"
    f"{ClientCredential.SIZE}s{SIGNATURE_BYTES}s"
)
_BUNDLE_BYTES = _BUNDLE.size


@dataclass(frozen=True)
class ParticipantEntry:
    """One participant as the participant set fixes it: id, graph commitment, digest of its bundle, and the round
    body digest its bundle carries (so that every client sees, before revealing anything, whether all participants
    accepted the round body it accepted: W21)."""

    client_id: int
    graph_commitment: bytes
    bundle_digest: bytes
    round_body_digest: bytes

    SIZE: ClassVar[int] = 4 + 2 * COMMITMENT_BYTES + ROUND_BODY_DIGEST_BYTES

    @classmethod
    def of(cls, bundle: AdvertiseKeys) -> "ParticipantEntry":
        """The entry of a participant whose key bundle is `bundle`."""
        return cls(bundle.client_id, bundle.graph_commitment, bundle.digest(), bundle.round_body_digest)

    def _write(self, w: _Writer) -> None:
        w.u32(self.client_id)
        w.fixed(self.graph_commitment, COMMITMENT_BYTES, "graph commitment")
        w.fixed(self.bundle_digest, COMMITMENT_BYTES, "bundle digest")
        w.fixed(self.round_body_digest, ROUND_BODY_DIGEST_BYTES, "round body digest")

    @classmethod
    def _read(cls, r: _Reader) -> "ParticipantEntry":
        return cls(r.u32(), r.fixed(COMMITMENT_BYTES), r.fixed(COMMITMENT_BYTES), r.fixed(ROUND_BODY_DIGEST_BYTES))


_ENTRY = struct.Struct(f">I{COMMITMENT_BYTES}s{COMMITMENT_BYTES}s{ROUND_BODY_DIGEST_BYTES}s")
_ENTRY_DTYPE = np.dtype(
    [
        ("client_id", ">u4"),
        ("graph_commitment", "u1", (COMMITMENT_BYTES,)),
        ("bundle_digest", "u1", (COMMITMENT_BYTES,)),
        ("round_body_digest", "u1", (ROUND_BODY_DIGEST_BYTES,)),
    ]
)
assert _ENTRY.size == _ENTRY_DTYPE.itemsize == ParticipantEntry.SIZE


class _EntriesField:
    """The `entries` field of ParticipantSet. A set decoded from bytes keeps its entry table (the n encoded
    entries, one bytes object) and builds the ParticipantEntry objects only if they are asked for: a client
    reads the columns it checks straight from the table (`ParticipantSet.table`), with no object per entry."""

    def __get__(self, obj: Any, owner: Any = None) -> tuple[ParticipantEntry, ...]:
        if obj is None:
            raise AttributeError("entries")  # no default value for the dataclass field
        entries: tuple[ParticipantEntry, ...] | None = obj.__dict__.get("_entries")
        if entries is None:
            entries = tuple(ParticipantEntry(*fields) for fields in _ENTRY.iter_unpack(obj.__dict__["_table"]))
            obj.__dict__["_entries"] = entries
        return entries

    def __set__(self, obj: Any, value: Iterable[ParticipantEntry]) -> None:
        obj.__dict__["_entries"] = tuple(value)
        obj.__dict__.pop("_table", None)


@dataclass(frozen=True)
class ParticipantSet(Message):
    """Server -> clients (stage REVEAL_SEED): the participants, fixed before any seed is revealed.
    Sorted by client id. Entries are not signed by their clients: a client verifies the bundles of
    its own neighbours only (against the digests here), O(k) signatures, not O(n).

    The encoded entry table is kept (decoded: the received bytes; built: encoded once, every field checked),
    so the digest, the id column and single entries cost no re-serialization."""

    TAG: ClassVar[int] = 2
    round_id: int
    entries: _EntriesField = _EntriesField()

    def _entry_table(self) -> bytes:
        """The n encoded entries (n x ParticipantEntry.SIZE bytes)."""
        table: bytes | None = self.__dict__.get("_table")
        if table is None:
            w = _Writer()
            for entry in self.entries:
                entry._write(w)
            table = w.result()
            self.__dict__["_table"] = table
        return table

    @property
    def table(self) -> np.ndarray:
        """The entries as a read-only structured array (n,): client_id (big-endian u32), graph_commitment,
        bundle_digest, round_body_digest (each (32,) uint8)."""
        return np.frombuffer(self._entry_table(), dtype=_ENTRY_DTYPE)

    @property
    def client_ids(self) -> tuple[int, ...]:
        ids: tuple[int, ...] | None = self.__dict__.get("_ids")
        if ids is None:
            ids = tuple(self.table["client_id"].tolist())
            self.__dict__["_ids"] = ids
        return ids

    def entry_at(self, index: int) -> ParticipantEntry:
        """The entry at position `index` (0 <= index < the number of entries)."""
        return ParticipantEntry(*_ENTRY.unpack_from(self._entry_table(), index * _ENTRY.size))

    def graph_commitments(self) -> bytes:
        """Every entry's graph commitment, concatenated in entry order (n x 32 bytes)."""
        return self.table["graph_commitment"].tobytes()

    def digest(self) -> bytes:
        digest: bytes | None = self.__dict__.get("_digest")
        if digest is None:
            digest = hashlib.sha256(self.to_bytes()).digest()
            self.__dict__["_digest"] = digest
        return digest

    def _write(self, w: _Writer) -> None:
        table = self._entry_table()
        w.u32(len(table) // ParticipantEntry.SIZE)
        w.raw(table)

    @classmethod
    def _read(cls, r: _Reader, round_id: int) -> "ParticipantSet":
        n = r.count(ParticipantEntry.SIZE)
        decoded = cls.__new__(cls)
        object.__setattr__(decoded, "round_id", round_id)
        decoded.__dict__["_table"] = r.fixed(n * ParticipantEntry.SIZE)
        return decoded


@dataclass(frozen=True)
class SeedReveal(ClientMessage):
    """Client -> server (stage REVEAL_SEED): the opening of the client's graph commitment."""

    TAG: ClassVar[int] = 10
    round_id: int
    client_id: int
    reveal: bytes

    def _write(self, w: _Writer) -> None:
        w.u32(self.client_id)
        w.fixed(self.reveal, COMMITMENT_BYTES, "seed reveal")

    @classmethod
    def _read(cls, r: _Reader, round_id: int) -> "SeedReveal":
        return cls(round_id, r.u32(), r.fixed(COMMITMENT_BYTES))


@dataclass(frozen=True)
class Neighbourhood(Message):
    """Server -> one client (stage SHARE_KEYS): every participant's reveal (in participant-set
    order: the graph seed needs them all) and the full key bundles of the receiver's neighbours."""

    TAG: ClassVar[int] = 11
    round_id: int
    receiver: int
    reveals: tuple[bytes, ...]
    bundles: tuple[AdvertiseKeys, ...]

    @classmethod
    def for_each(
        cls, round_id: int, reveals: tuple[bytes, ...], bundles: dict[int, tuple[AdvertiseKeys, ...]]
    ) -> dict[int, "Neighbourhood"]:
        """One Neighbourhood per receiver (`bundles`: receiver -> its neighbours' bundles), all carrying the same
        reveals: they are checked and joined once, not once per receiver."""
        block = cls(round_id, 0, reveals, ()).reveal_block()
        hoods = {receiver: cls(round_id, receiver, reveals, theirs) for receiver, theirs in bundles.items()}
        for hood in hoods.values():
            hood.__dict__["_reveal_block"] = block
        return hoods

    def reveal_block(self) -> bytes:
        """Every reveal, concatenated in participant order (n x 32 bytes; a decoded message keeps its bytes)."""
        block: bytes | None = self.__dict__.get("_reveal_block")
        if block is None:
            if not all(isinstance(reveal, bytes) and len(reveal) == COMMITMENT_BYTES for reveal in self.reveals):
                raise ProtocolViolation(f"seed reveal must be {COMMITMENT_BYTES} bytes")
            block = b"".join(self.reveals)
            self.__dict__["_reveal_block"] = block
        return block

    def _write(self, w: _Writer) -> None:
        w.u32(self.receiver)
        w.u32(len(self.reveals))
        w.raw(self.reveal_block())
        w.u32(len(self.bundles))
        for bundle in self.bundles:
            if bundle.round_id != self.round_id:
                raise ProtocolViolation("a neighbour bundle belongs to another round")
            bundle._write(w)

    @classmethod
    def _read(cls, r: _Reader, round_id: int) -> "Neighbourhood":
        receiver = r.u32()
        size = COMMITMENT_BYTES
        block = r.fixed(r.count(size) * size)
        reveals = tuple([block[i : i + size] for i in range(0, len(block), size)])
        bundles = tuple(AdvertiseKeys._read(r, round_id) for _ in range(r.count(_BUNDLE_BYTES)))
        decoded = cls(round_id, receiver, reveals, bundles)
        decoded.__dict__["_reveal_block"] = block
        return decoded


# --- stage 1: share keys -------------------------------------------------------------------


@dataclass(frozen=True)
class SharePayload:
    """Plaintext of one encrypted share: sender | receiver | self-mask share | key share (96 bytes).

    Both shares are evaluated at x = receiver + 1.
    """

    sender: int
    receiver: int
    self_mask_share: bytes
    key_share: bytes

    SIZE: ClassVar[int] = 8 + 2 * SHARE_VALUE_BYTES

    def to_bytes(self) -> bytes:
        _check_u32(self.sender, self.receiver)
        for data, what in ((self.self_mask_share, "self-mask share"), (self.key_share, "key share")):
            if not isinstance(data, bytes) or len(data) != SHARE_VALUE_BYTES:
                raise ProtocolViolation(f"{what} must be {SHARE_VALUE_BYTES} bytes")
        return _SHARE_PAYLOAD.pack(self.sender, self.receiver, self.self_mask_share, self.key_share)

    @classmethod
    def from_bytes(cls, data: bytes) -> "SharePayload":
        if len(data) < _SHARE_PAYLOAD.size:
            raise ProtocolViolation("message is truncated")
        if len(data) > _SHARE_PAYLOAD.size:
            raise ProtocolViolation(f"{len(data) - _SHARE_PAYLOAD.size} trailing bytes after the message")
        return cls(*_SHARE_PAYLOAD.unpack(data))


_SHARE_PAYLOAD = struct.Struct(f">II{SHARE_VALUE_BYTES}s{SHARE_VALUE_BYTES}s")


@dataclass(frozen=True)
class EncryptedShare:
    """One AES-GCM sealed SharePayload from sender to receiver (the server only routes it)."""

    sender: int
    receiver: int
    ciphertext: bytes

    def _write(self, w: _Writer) -> None:
        _check_u32(self.sender, self.receiver, len(self.ciphertext))
        w.raw(_U32_TRIPLE.pack(self.sender, self.receiver, len(self.ciphertext)))
        w.raw(bytes(self.ciphertext))

    @classmethod
    def _read(cls, r: _Reader) -> "EncryptedShare":
        sender, receiver, size = _U32_TRIPLE.unpack(r.fixed(_U32_TRIPLE.size))
        return cls(sender, receiver, r.fixed(size))


@dataclass(frozen=True)
class ShareKeys(ClientMessage):
    """Client -> server: one encrypted share for each neighbour."""

    TAG: ClassVar[int] = 3
    round_id: int
    client_id: int
    shares: tuple[EncryptedShare, ...]

    def _write(self, w: _Writer) -> None:
        w.u32(self.client_id)
        w.u32(len(self.shares))
        for share in self.shares:
            share._write(w)

    @classmethod
    def _read(cls, r: _Reader, round_id: int) -> "ShareKeys":
        client_id = r.u32()
        return cls(round_id, client_id, tuple(EncryptedShare._read(r) for _ in range(r.count(12))))


@dataclass(frozen=True)
class ShareDelivery(Message):
    """Server -> client: the encrypted shares its neighbours addressed to it."""

    TAG: ClassVar[int] = 4
    round_id: int
    receiver: int
    shares: tuple[EncryptedShare, ...]

    def _write(self, w: _Writer) -> None:
        w.u32(self.receiver)
        w.u32(len(self.shares))
        for share in self.shares:
            share._write(w)

    @classmethod
    def _read(cls, r: _Reader, round_id: int) -> "ShareDelivery":
        receiver = r.u32()
        return cls(round_id, receiver, tuple(EncryptedShare._read(r) for _ in range(r.count(12))))


# --- stage 2: masked input -----------------------------------------------------------------


@dataclass(frozen=True)
class MaskedInput(ClientMessage):
    """Client -> server: the masked vector, bit-packed to modulus_bits per value."""

    TAG: ClassVar[int] = 5
    round_id: int
    client_id: int
    modulus_bits: int
    length: int
    payload: bytes

    def _write(self, w: _Writer) -> None:
        w.u32(self.client_id)
        w.u8(self.modulus_bits)
        w.u32(self.length)
        w.blob(self.payload)

    @classmethod
    def _read(cls, r: _Reader, round_id: int) -> "MaskedInput":
        return cls(round_id, r.u32(), r.u8(), r.u32(), r.blob())


# --- stage 3: consistency check ------------------------------------------------------------


@dataclass(frozen=True)
class SurvivorList(Message):
    """Server -> surviving clients: the sorted ids whose masked input the server holds (U3)."""

    TAG: ClassVar[int] = 6
    round_id: int
    survivors: tuple[int, ...]

    def _write(self, w: _Writer) -> None:
        w.ids(self.survivors)

    @classmethod
    def _read(cls, r: _Reader, round_id: int) -> "SurvivorList":
        return cls(round_id, r.ids())


@dataclass(frozen=True)
class ConsistencySignature(ClientMessage):
    """Client -> server: the client's Ed25519 signature of (round, graph seed, survivor list)."""

    TAG: ClassVar[int] = 7
    round_id: int
    client_id: int
    signature: bytes

    def _write(self, w: _Writer) -> None:
        w.u32(self.client_id)
        w.fixed(self.signature, SIGNATURE_BYTES, "signature")

    @classmethod
    def _read(cls, r: _Reader, round_id: int) -> "ConsistencySignature":
        return cls(round_id, r.u32(), r.fixed(SIGNATURE_BYTES))


def consistency_payload(context: bytes, seed: bytes, survivors: tuple[int, ...]) -> bytes:
    """What each surviving client signs: binds the session context, the graph (its seed, which
    covers the participant set) and U3."""
    return b"mrff-secagg-survivors" + context + seed + encode_ids(survivors)


# --- stage 4: unmask ----------------------------------------------------------------------


@dataclass(frozen=True)
class UnmaskRequest(Message):
    """Server -> client: which neighbours survived (send their self-mask share) and which dropped
    (send their key share), with the neighbours' consistency signatures as proof."""

    TAG: ClassVar[int] = 8
    round_id: int
    receiver: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: tuple[ConsistencySignature, ...]

    def _write(self, w: _Writer) -> None:
        w.u32(self.receiver)
        w.ids(self.survivors)
        w.ids(self.dropped)
        w.u32(len(self.signatures))
        for sig in self.signatures:
            if sig.round_id != self.round_id:
                raise ProtocolViolation("a consistency signature belongs to another round")
            sig._write(w)

    @classmethod
    def _read(cls, r: _Reader, round_id: int) -> "UnmaskRequest":
        receiver = r.u32()
        survivors = r.ids()
        dropped = r.ids()
        n = r.count(4 + SIGNATURE_BYTES)
        return cls(
            round_id, receiver, survivors, dropped, tuple(ConsistencySignature._read(r, round_id) for _ in range(n))
        )


@dataclass(frozen=True)
class OwnedShare:
    """A share of the secret of client `owner` (x = the responder's id + 1)."""

    owner: int
    share: Share

    def _write(self, w: _Writer) -> None:
        _check_u32(self.owner, self.share.x)
        if not isinstance(self.share.value, bytes) or len(self.share.value) != SHARE_VALUE_BYTES:
            raise ProtocolViolation(f"share value must be {SHARE_VALUE_BYTES} bytes")
        w.raw(_U32_PAIR.pack(self.owner, self.share.x) + self.share.value)

    @classmethod
    def _read(cls, r: _Reader) -> "OwnedShare":
        owner, x = _U32_PAIR.unpack(r.fixed(_U32_PAIR.size))
        value = r.fixed(SHARE_VALUE_BYTES)
        try:
            return cls(owner, Share(x, value))
        except Exception as exc:  # Share validates x; re-type as a wire error
            raise ProtocolViolation(f"malformed share: {exc}") from exc


@dataclass(frozen=True)
class UnmaskResponse(ClientMessage):
    """Client -> server: self-mask shares of surviving neighbours, key shares of dropped ones."""

    TAG: ClassVar[int] = 9
    round_id: int
    client_id: int
    self_mask_shares: tuple[OwnedShare, ...]
    key_shares: tuple[OwnedShare, ...]

    def _write(self, w: _Writer) -> None:
        w.u32(self.client_id)
        for group in (self.self_mask_shares, self.key_shares):
            w.u32(len(group))
            for item in group:
                item._write(w)

    @classmethod
    def _read(cls, r: _Reader, round_id: int) -> "UnmaskResponse":
        client_id = r.u32()
        item = 8 + SHARE_VALUE_BYTES
        self_mask = tuple(OwnedShare._read(r) for _ in range(r.count(item)))
        keys = tuple(OwnedShare._read(r) for _ in range(r.count(item)))
        return cls(round_id, client_id, self_mask, keys)


_BY_TAG: dict[int, type[Message]] = {
    cls.TAG: cls
    for cls in (
        AdvertiseKeys,
        ParticipantSet,
        SeedReveal,
        Neighbourhood,
        ShareKeys,
        ShareDelivery,
        MaskedInput,
        SurvivorList,
        ConsistencySignature,
        UnmaskRequest,
        UnmaskResponse,
    )
}

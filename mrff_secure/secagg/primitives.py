"""Cryptographic primitives of secure aggregation, as bytes -> bytes functions over `cryptography`.

Nothing here is hand-rolled: X25519 key agreement, HKDF-SHA256 with labelled
`info`, AES-256-CTR as the mask generator, AES-256-GCM for shares in transit
and Ed25519 signatures all come from `cryptography`. Integers in labels and
associated data are big-endian and fixed-width.
"""

from __future__ import annotations

import hashlib
import os
import struct
from typing import Callable

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mrff_secure.errors import AuthenticationError, ProtocolViolation

PROTOCOL_VERSION = 3  # 2: credentials with expiry, the enrolment challenge, signed stage messages; 3: the round body
# in the session context, the key bundle and the participant set (W21)
KEY_BYTES = 32
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
NONCE_BYTES = 12
_DOMAIN = b"mrff-secagg"

# Purposes of derived keys (HKDF info labels). One label, one use.
PURPOSE_SHARE_ENCRYPTION = b"share-encryption"
PURPOSE_PAIRWISE_MASK = b"pairwise-mask"
PURPOSE_SELF_MASK = b"self-mask"

RandomBytes = Callable[[int], bytes]
"""A source of random bytes: os.urandom in production, a seeded keystream in tests."""


def system_random(n: int) -> bytes:
    """The default randomness source: the operating system's CSPRNG."""
    return os.urandom(n)


def keystream_random(seed: bytes) -> RandomBytes:
    """A deterministic randomness seam for known-answer tests: AES-256-CTR keystream of `seed`.

    Never use it in production; it exists so tests can be byte-exact.
    """
    if len(seed) != KEY_BYTES:
        raise ValueError(f"keystream seed must be {KEY_BYTES} bytes, got {len(seed)}")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()

    def draw(n: int) -> bytes:
        return encryptor.update(bytes(n))

    return draw


# --- identity keys and signatures (Ed25519) ---------------------------------------------


def generate_identity_key() -> Ed25519PrivateKey:
    """A long-term Ed25519 identity key of a client."""
    return Ed25519PrivateKey.generate()


def identity_public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def sign(key: Ed25519PrivateKey, message: bytes) -> bytes:
    return key.sign(message)


VERIFIED_KEPT = 1 << 17  # successful verifications a process remembers (32-byte digests, oldest dropped first)
_verified: dict[bytes, None] = {}  # insertion-ordered
_remembering = False


def remember_verified_signatures(enabled: bool = True) -> None:
    """Make `verify` remember its successes for the rest of the process (off by default).

    For a process that hosts many logical clients (`mrff client --users 0-249`): each neighbour's bundle and
    consistency signature is then checked once, not once per logical client that has it as a neighbour. Off
    elsewhere: the in-memory simulation and its benchmarks model one client per device, where no client can
    lean on another's checks."""
    global _remembering
    _remembering = enabled
    if not enabled:
        _verified.clear()


def verify(public_key: bytes, signature: bytes, message: bytes) -> None:
    """Raise AuthenticationError unless `signature` is valid for `message` under `public_key`.

    Where `remember_verified_signatures` turned it on, a success is remembered by the SHA-256 of the exact key,
    signature and message (failures are not): verification is a function of those bytes, so the answer is the
    same."""
    if not _remembering:
        try:
            Ed25519PublicKey.from_public_bytes(bytes(public_key)).verify(bytes(signature), bytes(message))
        except (InvalidSignature, ValueError) as exc:
            raise AuthenticationError("signature did not verify") from exc
        return
    public_key, signature, message = bytes(public_key), bytes(signature), bytes(message)
    memo = hashlib.sha256(struct.pack(">II", len(public_key), len(signature)) + public_key + signature + message)
    key = memo.digest()
    if key in _verified:
        return
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError) as exc:
        raise AuthenticationError("signature did not verify") from exc
    _verified[key] = None
    if len(_verified) > VERIFIED_KEPT:
        try:
            del _verified[next(iter(_verified))]
        except (StopIteration, KeyError, RuntimeError):  # another thread changed it meanwhile: drop nothing now
            pass


# --- key agreement (X25519) and derivation (HKDF-SHA256) ---------------------------------


def generate_agreement_key(random: RandomBytes = system_random) -> X25519PrivateKey:
    """An ephemeral X25519 key; `random` is the seam for known-answer tests."""
    return X25519PrivateKey.from_private_bytes(random(KEY_BYTES))


def agreement_private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes_raw()


def agreement_key_from_bytes(private_bytes: bytes) -> X25519PrivateKey:
    """Rebuild an X25519 key from 32 raw bytes (the server does this for a dropped client's key)."""
    return X25519PrivateKey.from_private_bytes(private_bytes)


def agreement_public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def agree(private_key: X25519PrivateKey, peer_public_key: bytes) -> bytes:
    """The raw X25519 shared secret with a peer; raise ProtocolViolation on a degenerate key."""
    try:
        return private_key.exchange(X25519PublicKey.from_public_bytes(peer_public_key))
    except ValueError as exc:  # wrong length or an all-zero (small-order) shared secret
        raise ProtocolViolation(f"peer agreement key rejected: {exc}") from exc


_FIELD_PRIME = 2**255 - 19
_PROBE_KEY = X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def check_agreement_public_key(public_key: bytes) -> None:
    """Refuse an X25519 public key that is not a canonical encoding of a point of large order.

    A small-order point makes every shared secret all-zero (cryptography raises on it), so a bundle
    carrying one would make every honest neighbour abort (W10): refuse it where it is advertised.
    Non-canonical encodings (top bit set, or u >= 2^255 - 19) are refused too.
    """
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_BYTES:
        raise ProtocolViolation(f"agreement key must be {PUBLIC_KEY_BYTES} bytes")
    u = int.from_bytes(public_key, "little")
    if u >> 255 or u >= _FIELD_PRIME:
        raise ProtocolViolation("agreement key is not a canonical X25519 encoding")
    try:
        _PROBE_KEY.exchange(X25519PublicKey.from_public_bytes(public_key))
    except ValueError as exc:
        raise ProtocolViolation("agreement key is a small-order point") from exc


def _commitment_prefix(purpose: bytes, context: bytes) -> "hashlib._Hash":
    """SHA-256 state after domain | purpose | context: what every commitment of one purpose in one session
    starts with."""
    return hashlib.sha256(_DOMAIN + b"-commit" + struct.pack(">B", len(purpose)) + purpose + context)


def commitment(purpose: bytes, context: bytes, client_id: int, secret: bytes) -> bytes:
    """SHA-256 commitment to a 32-byte random `secret` (hiding because the secret is uniformly random,
    binding by collision resistance), labelled with its purpose, the session context and the client:
    SHA-256(domain | "-commit" | len(purpose) (u8) | purpose | context | client id (u32) | secret)."""
    if len(secret) != KEY_BYTES:
        raise ValueError(f"committed secrets are {KEY_BYTES} bytes, got {len(secret)}")
    digest = _commitment_prefix(purpose, context)
    digest.update(struct.pack(">I", client_id) + secret)
    return digest.digest()


def first_unopened(
    purpose: bytes, context: bytes, client_ids: np.ndarray, secrets: bytes, commitments: bytes
) -> int | None:
    """Check n commitments at once: the position of the first (client_ids[i], secret i) whose `commitment` is
    not commitments[32 i : 32 (i + 1)], or None when every one opens. client_ids: (n,) integers;
    secrets, commitments: n x 32 bytes each. One SHA-256 per commitment, continued from the shared prefix."""
    n = len(client_ids)
    if len(secrets) != n * KEY_BYTES or len(commitments) != n * 32:
        raise ValueError(f"{n} commitments need {n * KEY_BYTES} bytes of secrets and {n * 32} of commitments")
    rows = np.empty((n, 4 + KEY_BYTES), dtype=np.uint8)  # (n, 36): client id (u32, big-endian) | secret
    rows[:, :4] = np.ascontiguousarray(client_ids, dtype=">u4").view(np.uint8).reshape(n, 4)
    rows[:, 4:] = np.frombuffer(secrets, dtype=np.uint8).reshape(n, KEY_BYTES)
    data = rows.tobytes()
    prefix = _commitment_prefix(purpose, context)
    digests = [prefix.copy() for _ in range(n)]
    width = 4 + KEY_BYTES
    hash_type = type(prefix)
    for _ in map(hash_type.update, digests, [data[i : i + width] for i in range(0, n * width, width)]):
        pass
    computed = b"".join(map(hash_type.digest, digests))
    if computed == commitments:
        return None
    return next(i for i in range(n) if computed[32 * i : 32 * (i + 1)] != commitments[32 * i : 32 * (i + 1)])


_ROUND_AND_PAIR = struct.Struct(">QII")


def hkdf_info(purpose: bytes, round_id: int, low_id: int, high_id: int) -> bytes:
    """The labelled HKDF info: domain | version (u8) | len(purpose) (u8) | purpose | round (u64) | id pair
    (2 x u32), big-endian."""
    return b"".join(
        (
            _DOMAIN,
            struct.pack(">BB", PROTOCOL_VERSION, len(purpose)),
            purpose,
            _ROUND_AND_PAIR.pack(round_id, low_id, high_id),
        )
    )


_SHA256 = hashes.SHA256()  # an immutable algorithm descriptor


def derive_key(secret: bytes, *, purpose: bytes, round_id: int, id_a: int, id_b: int) -> bytes:
    """A 256-bit key for one purpose, one round and one unordered pair of clients (HKDF-SHA256)."""
    low, high = (id_a, id_b) if id_a <= id_b else (id_b, id_a)
    return HKDF(algorithm=_SHA256, length=KEY_BYTES, salt=None, info=hkdf_info(purpose, round_id, low, high)).derive(
        secret
    )


# --- mask generator (AES-256-CTR keystream) ------------------------------------------------


def word_dtype(modulus_bits: int) -> np.dtype:
    """The unsigned word that holds ring elements mod 2^bits (uint32 up to 32 bits, else uint64)."""
    return np.dtype("<u4") if modulus_bits <= 32 else np.dtype("<u8")


_zeros = bytes(0)


def _zero_bytes(size: int) -> memoryview:
    """A shared read-only all-zero buffer of at least `size` bytes (the CTR plaintext)."""
    global _zeros
    if len(_zeros) < size:
        _zeros = bytes(size)
    return memoryview(_zeros)[:size]


def expand_mask(key: bytes, length: int, modulus_bits: int) -> np.ndarray:
    """`length` uniform elements of Z_{2^bits} from the AES-256-CTR keystream of a 256-bit key.

    Each key is derived for a single (purpose, round, pair), so the all-zero
    counter block never repeats under a key. Words are little-endian; the top
    bits are cleared, which keeps uniformity because 2^bits divides the word size.
    The keystream is written straight into the result's memory (no copies).
    """
    if len(key) != KEY_BYTES:
        raise ValueError(f"mask key must be {KEY_BYTES} bytes, got {len(key)}")
    dtype = word_dtype(modulus_bits)
    size = length * dtype.itemsize
    buffer = np.empty(size + 15, dtype=np.uint8)  # update_into wants block_size - 1 spare bytes
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    written = encryptor.update_into(_zero_bytes(size), buffer.data)  # the memoryview of `buffer`: written in place
    if written != size:
        raise RuntimeError("short keystream")  # cannot happen with CTR; guards the view below
    words = buffer[:size].view(dtype)  # (length,)
    if modulus_bits < dtype.itemsize * 8:
        words &= dtype.type((1 << modulus_bits) - 1)
    return words


# --- authenticated encryption of shares (AES-256-GCM) ------------------------------------


def _share_ad(sender: int, receiver: int, round_id: int) -> bytes:
    return _DOMAIN + struct.pack(">BQII", PROTOCOL_VERSION, round_id, sender, receiver)


def share_cipher(key: bytes) -> AESGCM:
    """The AES-256-GCM object of one share-encryption key, built once and passed to seal/open_sealed in place of
    the key (a pair's key seals one share and opens one)."""
    return AESGCM(key)


def seal(
    key: bytes | AESGCM,
    plaintext: bytes,
    *,
    sender: int,
    receiver: int,
    round_id: int,
    random: RandomBytes = system_random,
) -> bytes:
    """nonce (12 bytes) | AES-256-GCM ciphertext+tag, with AD = version | round | sender | receiver.
    key: 32 bytes, or share_cipher(key)."""
    nonce = random(NONCE_BYTES)
    cipher = key if isinstance(key, AESGCM) else AESGCM(key)
    return nonce + cipher.encrypt(nonce, plaintext, _share_ad(sender, receiver, round_id))


def open_sealed(key: bytes | AESGCM, sealed: bytes, *, sender: int, receiver: int, round_id: int) -> bytes:
    """Inverse of `seal`; any tampering, wrong key or wrong AD raises one opaque AuthenticationError.
    key: 32 bytes, or share_cipher(key)."""
    if len(sealed) < NONCE_BYTES + 16:
        raise AuthenticationError("ciphertext did not verify")
    cipher = key if isinstance(key, AESGCM) else AESGCM(key)
    try:
        return cipher.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _share_ad(sender, receiver, round_id))
    except InvalidTag as exc:
        raise AuthenticationError("ciphertext did not verify") from exc

"""Crypto primitives: domain separation, mask expansion, authenticated encryption, signatures."""

from __future__ import annotations

import numpy as np
import pytest

from mrff_secure.errors import AuthenticationError, ProtocolViolation
from mrff_secure.secagg import primitives as p


def test_hkdf_domain_separation():
    secret = bytes(range(32))
    base = p.derive_key(secret, purpose=p.PURPOSE_PAIRWISE_MASK, round_id=1, id_a=3, id_b=9)
    assert len(base) == 32
    assert base == p.derive_key(secret, purpose=p.PURPOSE_PAIRWISE_MASK, round_id=1, id_a=9, id_b=3)
    others = {
        p.derive_key(secret, purpose=p.PURPOSE_SELF_MASK, round_id=1, id_a=3, id_b=9),
        p.derive_key(secret, purpose=p.PURPOSE_SHARE_ENCRYPTION, round_id=1, id_a=3, id_b=9),
        p.derive_key(secret, purpose=p.PURPOSE_PAIRWISE_MASK, round_id=2, id_a=3, id_b=9),
        p.derive_key(secret, purpose=p.PURPOSE_PAIRWISE_MASK, round_id=1, id_a=3, id_b=10),
        p.derive_key(secret[::-1], purpose=p.PURPOSE_PAIRWISE_MASK, round_id=1, id_a=3, id_b=9),
    }
    assert base not in others and len(others) == 5


def test_hkdf_info_is_fixed_width_big_endian():
    info = p.hkdf_info(b"x", 0x0102030405060708, 1, 2)
    assert info.endswith(bytes.fromhex("01020304050607080000000100000002"))


@pytest.mark.parametrize("bits", [1, 8, 17, 32, 33, 62])
def test_expand_mask_range_and_determinism(bits):
    key = bytes([7]) * 32
    a = p.expand_mask(key, 1000, bits)
    assert a.dtype == p.word_dtype(bits) and a.shape == (1000,)
    assert int(a.max()) < 2**bits
    assert np.array_equal(a, p.expand_mask(key, 1000, bits))
    assert not np.array_equal(a, p.expand_mask(bytes([8]) * 32, 1000, bits))
    # a prefix of a longer expansion: the keystream is a stream
    assert np.array_equal(a[:10], p.expand_mask(key, 10, bits))


def test_expand_mask_known_answer():
    # AES-256-CTR keystream of the all-zero key and counter, little-endian u32 words
    words = p.expand_mask(bytes(32), 4, 32)
    stream = bytes.fromhex("dc95c078a2408989ad48a21492842087")  # AES-256(0^32, 0^16)
    assert words.tobytes() == stream


def test_expand_mask_rejects_short_key():
    with pytest.raises(ValueError):
        p.expand_mask(bytes(16), 4, 32)


def test_seal_open_roundtrip_and_binding():
    key = bytes(range(32))
    sealed = p.seal(key, b"secret share", sender=1, receiver=2, round_id=5)
    assert p.open_sealed(key, sealed, sender=1, receiver=2, round_id=5) == b"secret share"
    for kwargs in ({"sender": 2, "receiver": 1, "round_id": 5}, {"sender": 1, "receiver": 2, "round_id": 6}):
        with pytest.raises(AuthenticationError):
            p.open_sealed(key, sealed, **kwargs)
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(AuthenticationError):
        p.open_sealed(key, tampered, sender=1, receiver=2, round_id=5)
    with pytest.raises(AuthenticationError):
        p.open_sealed(bytes(32), sealed, sender=1, receiver=2, round_id=5)
    with pytest.raises(AuthenticationError):
        p.open_sealed(key, b"short", sender=1, receiver=2, round_id=5)


def test_signatures():
    key = p.generate_identity_key()
    public = p.identity_public_bytes(key)
    sig = p.sign(key, b"message")
    p.verify(public, sig, b"message")
    with pytest.raises(AuthenticationError):
        p.verify(public, sig, b"messagE")
    with pytest.raises(AuthenticationError):
        p.verify(p.identity_public_bytes(p.generate_identity_key()), sig, b"message")
    with pytest.raises(AuthenticationError):
        p.verify(b"short", sig, b"message")


def test_agreement_is_symmetric_and_rejects_bad_keys():
    a, b = p.generate_agreement_key(), p.generate_agreement_key()
    assert p.agree(a, p.agreement_public_bytes(b)) == p.agree(b, p.agreement_public_bytes(a))
    with pytest.raises(ProtocolViolation):
        p.agree(a, bytes(32))  # small-order point: all-zero shared secret
    with pytest.raises(ProtocolViolation):
        p.agree(a, bytes(31))
    again = p.agreement_key_from_bytes(p.agreement_private_bytes(a))
    assert p.agreement_public_bytes(again) == p.agreement_public_bytes(a)


def test_keystream_random_is_deterministic():
    r1, r2 = p.keystream_random(bytes(32)), p.keystream_random(bytes(32))
    assert r1(5) + r1(7) == r2(12)
    with pytest.raises(ValueError):
        p.keystream_random(b"short")

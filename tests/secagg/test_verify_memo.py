"""primitives.verify remembers successes only: a remembered signature still answers exactly as Ed25519 does."""

from __future__ import annotations

import pytest

from mrff_secure.errors import AuthenticationError
from mrff_secure.secagg import primitives


@pytest.fixture(autouse=True)
def remembering():
    primitives.remember_verified_signatures()
    yield
    primitives.remember_verified_signatures(False)


def test_nothing_is_remembered_unless_a_process_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    primitives.remember_verified_signatures(False)
    key = primitives.generate_identity_key()
    public = primitives.identity_public_bytes(key)
    signature = primitives.sign(key, b"m")
    primitives.verify(public, signature, b"m")
    calls: list[bytes] = []
    real = primitives.Ed25519PublicKey.from_public_bytes

    def counted(data: bytes) -> primitives.Ed25519PublicKey:
        calls.append(data)
        return real(data)

    monkeypatch.setattr(primitives.Ed25519PublicKey, "from_public_bytes", staticmethod(counted))
    primitives.verify(public, signature, b"m")  # the simulation models one client per device: checked again
    assert calls == [public]
    assert primitives._verified == {}


def test_a_success_is_remembered_and_a_changed_byte_still_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    key = primitives.generate_identity_key()
    public = primitives.identity_public_bytes(key)
    message = b"neighbour bundle"
    signature = primitives.sign(key, message)
    primitives.verify(public, signature, message)
    calls: list[bytes] = []
    real = primitives.Ed25519PublicKey.from_public_bytes

    def counted(data: bytes) -> primitives.Ed25519PublicKey:
        calls.append(data)
        return real(data)

    monkeypatch.setattr(primitives.Ed25519PublicKey, "from_public_bytes", staticmethod(counted))
    primitives.verify(public, signature, message)  # remembered: no second Ed25519 check
    assert calls == []
    bad = bytearray(signature)
    bad[0] ^= 1
    with pytest.raises(AuthenticationError):
        primitives.verify(public, bytes(bad), message)
    with pytest.raises(AuthenticationError):
        primitives.verify(public, signature, message + b"!")
    other = primitives.identity_public_bytes(primitives.generate_identity_key())
    with pytest.raises(AuthenticationError):
        primitives.verify(other, signature, message)
    assert len(calls) == 3  # each of those was checked, not answered from memory


def test_a_failure_is_not_remembered() -> None:
    key = primitives.generate_identity_key()
    public = primitives.identity_public_bytes(key)
    signature = primitives.sign(key, b"m")
    for _ in range(2):
        with pytest.raises(AuthenticationError):
            primitives.verify(public, signature, b"n")


def test_the_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(primitives, "VERIFIED_KEPT", 3)
    monkeypatch.setattr(primitives, "_verified", {})
    key = primitives.generate_identity_key()
    public = primitives.identity_public_bytes(key)
    for i in range(10):
        message = b"m%d" % i
        primitives.verify(public, primitives.sign(key, message), message)
    assert len(primitives._verified) == 3

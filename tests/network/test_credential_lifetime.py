"""W18: credentials expire and can be revoked. The authority signs each credential's expiry; verification
refuses it from then on. `mrff certs revoke` (and `issue-client --force`, for the key it replaces) writes
the authority's signed revocation list; a server given it refuses to enrol a revoked (id, key), a client
refuses to start with one. Credentials of the old format (no expiry) are refused with "re-issue"."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import grpc
import pytest
from cryptography.hazmat.primitives import serialization

from mrff_secure.errors import AuthenticationError, CheckpointError, ConfigError, ProtocolViolation
from mrff_secure.pki import (
    AuthorityPaths,
    IdentityFiles,
    RevocationList,
    issue_client_credential,
    load_authority_key,
    revoke,
)
from mrff_secure.secagg import primitives
from mrff_secure.secagg.identity import ClientCredential, CredentialExpired, issue_credential, verify_credential
from mrff_secure.wire import signing
from mrff_secure.wire.v1 import coordinator_pb2_grpc as pb_grpc

from . import enrolment, harness

pytestmark = pytest.mark.timeout(240)


def authority_public(certs) -> bytes:
    return signing.load_public_key(certs / "identity-ca.pub").public_bytes_raw()


def test_a_credential_verifies_until_its_signed_expiry() -> None:
    authority, key = (
        primitives.generate_identity_key(),
        primitives.identity_public_bytes(primitives.generate_identity_key()),
    )
    public = primitives.identity_public_bytes(authority)
    credential = issue_credential(authority, 4, key, expires_at=2_000_000_000)
    assert ClientCredential.from_bytes(credential.to_bytes()) == credential
    assert verify_credential(public, credential, client_id=4, now=1_999_999_999) == key
    with pytest.raises(CredentialExpired, match="client 4 expired at 2033-05-18 03:33:20 UTC.*re-issued"):
        verify_credential(public, credential, client_id=4, now=2_000_000_000)
    # the expiry is signed: pushed later, the credential no longer verifies at all
    data = bytearray(credential.to_bytes())
    data[37:45] = (2_100_000_000).to_bytes(8, "big")
    with pytest.raises(AuthenticationError) as info:
        verify_credential(public, ClientCredential.from_bytes(bytes(data)), now=2_000_000_001)
    assert not isinstance(info.value, CredentialExpired)
    # issued with the default lifetime: valid now, about a year
    fresh = issue_credential(authority, 4, key)
    assert verify_credential(public, fresh, now=time.time()) == key
    assert 364 * 86400 < fresh.expires_at - time.time() <= 365 * 86400


def test_an_old_format_credential_is_refused_with_re_issue(tmp_path, certs) -> None:
    with pytest.raises(
        ProtocolViolation, match="version-1 client credential.*re-issue it with `mrff certs issue-client`"
    ):
        ClientCredential.from_bytes(bytes(100))
    store = IdentityFiles(tmp_path, 3)
    store.identity_key()
    store.credential_path.write_bytes(bytes(100))
    with pytest.raises(CheckpointError, match="re-issue it with `mrff certs issue-client`"):
        store.credential(authority_public(certs))
    # re-issuing over it needs no --force: it is what the message asks for
    authority = AuthorityPaths(harness.authority_of(certs))
    key = store.identity_key().public_key().public_bytes_raw()
    issue_client_credential(authority, 3, key, store.credential_path)
    assert store.credential(authority_public(certs)).identity_public_key == key


def test_the_client_refuses_its_own_expired_credential(tmp_path, certs) -> None:
    authority = AuthorityPaths(harness.authority_of(certs))
    store = IdentityFiles(tmp_path, 8)
    key = store.identity_key().public_key().public_bytes_raw()
    expired = issue_credential(load_authority_key(authority), 8, key, expires_at=int(time.time()) - 60)
    store.credential_path.write_bytes(expired.to_bytes())
    with pytest.raises(CheckpointError, match="expired at .* for user 8"):
        store.credential(authority_public(certs))


def test_revocation_list_is_signed_and_re_keying_revokes_the_old_key(tmp_path, certs) -> None:
    authority = AuthorityPaths(tmp_path / "authority")
    shutil.copytree(harness.authority_of(certs), authority.folder)
    out = tmp_path / "cred.bin"
    old, new = (primitives.identity_public_bytes(primitives.generate_identity_key()) for _ in range(2))
    issue_client_credential(authority, 5, old, out)
    assert not authority.revoked.exists()
    with pytest.raises(ConfigError, match="needs --force"):
        issue_client_credential(authority, 5, new, out)
    issue_client_credential(authority, 5, new, out, force=True)  # re-keyed: the old key is revoked
    listed = RevocationList.load(authority.revoked, authority_public(certs))
    assert listed.covers(5, old) and not listed.covers(5, new) and not listed.covers(6, old)
    other = primitives.identity_public_bytes(primitives.generate_identity_key())
    listed = revoke(authority, [(9, other)], publish_to=[tmp_path])
    assert listed.revoked == {(5, old), (9, other)}
    assert (tmp_path / "revoked.json").read_bytes() == authority.revoked.read_bytes()
    # only the authority's list is believed: another key's signature, or an edited list, is refused
    stranger = primitives.identity_public_bytes(primitives.generate_identity_key())
    with pytest.raises(ConfigError, match="not signed by the identity authority"):
        RevocationList.load(authority.revoked, stranger)
    edited = json.loads(authority.revoked.read_text())
    edited["revoked"] = edited["revoked"][1:]
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    with pytest.raises(ConfigError, match="not signed by the identity authority"):
        RevocationList.load(tmp_path / "edited.json", authority_public(certs))


def _enrol(stub, authority_key, client: int, key, *, expires_at: int | None = None):
    """Enrol through the server's challenge with a credential the authority issues now."""
    public = primitives.identity_public_bytes(key)
    credential = issue_credential(authority_key, client, public, expires_at=expires_at).to_bytes()
    return stub.Enrol(enrolment.enrol_request(stub, key, client, credential), timeout=30)


def test_server_refuses_revoked_and_expired_credentials_and_the_client_refuses_to_start(tmp_path, certs, procs) -> None:
    authority = AuthorityPaths(tmp_path / "authority")
    shutil.copytree(harness.authority_of(certs), authority.folder)
    authority_key = load_authority_key(authority)
    server_certs = tmp_path / "server-certs"
    shutil.copytree(certs, server_certs)
    old_key, new_key = primitives.generate_identity_key(), primitives.generate_identity_key()
    revoke(authority, [(5, primitives.identity_public_bytes(old_key))], publish_to=[server_certs])
    server, address = harness.start_server(tmp_path, server_certs, tmp_path / "run", extra=["--min-clients", "50"])
    procs.append(server)
    channel = grpc.secure_channel(address, harness.client_tls(certs))
    stub = pb_grpc.CoordinatorStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        _enrol(stub, authority_key, 5, old_key)  # a genuine, unexpired credential of a revoked key
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED and "revoked client 5" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        _enrol(stub, authority_key, 6, new_key, expires_at=int(time.time()) - 1)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED and "expired at" in info.value.details()
    assert _enrol(stub, authority_key, 5, new_key).session_token  # the re-issued key joins
    channel.close()

    # a client holding the revoked key refuses to start, naming the revocation (CERTS/revoked.json)
    state = tmp_path / "state"
    store = IdentityFiles(state, 5)
    store.folder.mkdir(parents=True)
    store.identity_path.write_bytes(
        old_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    store.credential_path.write_bytes(
        issue_credential(authority_key, 5, primitives.identity_public_bytes(old_key)).to_bytes()
    )
    args = ["client", "--address", address, "--users", "5", "--certs", str(server_certs), "--state-dir", str(state)]
    done = subprocess.run(
        [sys.executable, "-m", "mrff_secure.app.cli", *args, *harness.DATA_ARGS],
        capture_output=True,
        text=True,
        cwd=harness.ROOT,
        env=harness._env(),
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "revoked user 5's identity key" in done.stderr

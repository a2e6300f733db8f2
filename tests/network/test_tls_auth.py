"""Only clients that trust the server's CA, hold a credential from the identity authority for their
own id and key, and (with --mtls) present a client certificate can join; clients refuse a server
whose signed parameters do not verify, and refuse to start without a credential of their authority."""

from __future__ import annotations

import grpc
import pytest

from mrff_secure.secagg import primitives
from mrff_secure.wire import limits, signing
from mrff_secure.wire.v1 import coordinator_pb2 as pb
from mrff_secure.wire.v1 import coordinator_pb2_grpc as pb_grpc
from mrff_secure.secagg.identity import issue_credential
from server.certs import make_dev_pki
from . import harness

pytestmark = pytest.mark.timeout(240)


def enrol(address: str, credentials, authority_folder, client: int = 900, *, credential_id: int | None = None):
    """Enrol a fresh key as `client`, with a credential from the authority in `authority_folder` (None: none)
    issued for `credential_id` (default: the same id)."""
    channel = (grpc.secure_channel(address, credentials) if credentials is not None
               else grpc.insecure_channel(address))
    key = primitives.generate_identity_key()
    public = primitives.identity_public_bytes(key)
    credential = b""
    if authority_folder is not None:
        authority = signing.load_private_key(authority_folder / "identity-ca.key")
        credential = issue_credential(authority, client if credential_id is None else credential_id, public).to_bytes()
    request = pb.EnrolRequest(protocol_version=limits.PROTOCOL_VERSION, client_id=client, identity_public_key=public,
                              proof=primitives.sign(key, signing.enrol_payload(client, public)), credential=credential)
    try:
        return pb_grpc.CoordinatorStub(channel).Enrol(request, timeout=5)
    finally:
        channel.close()


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_tls_credentials_and_signed_parameters(tmp_path, certs, procs) -> None:
    stranger = make_dev_pki(tmp_path / "stranger").folder  # another CA, identity authority and signing key
    run_dir = tmp_path / "run"
    server, address = harness.start_server(tmp_path, certs, run_dir, extra=[
        "--rounds", "1", "--min-clients", "3", "--train-timeout", "5", "--stage-timeout", "5"])
    procs.append(server)
    good_ca = grpc.ssl_channel_credentials((certs / "ca.crt").read_bytes())
    wrong_ca = grpc.ssl_channel_credentials((stranger / "ca.crt").read_bytes())

    assert code_of(lambda: enrol(address, wrong_ca, certs)) == grpc.StatusCode.UNAVAILABLE  # certificate refused
    assert code_of(lambda: enrol(address, None, certs)) == grpc.StatusCode.UNAVAILABLE  # plaintext to a TLS port
    # W1: the server binds no id to a key without the identity authority's credential for exactly that pair
    assert code_of(lambda: enrol(address, good_ca, None)) == grpc.StatusCode.PERMISSION_DENIED
    assert code_of(lambda: enrol(address, good_ca, stranger)) == grpc.StatusCode.PERMISSION_DENIED
    assert code_of(lambda: enrol(address, good_ca, certs, client=902, credential_id=903)) == \
        grpc.StatusCode.PERMISSION_DENIED
    assert enrol(address, good_ca, certs, client=901).session_token  # the right CA and credential do join
    refusals = [r for r in harness.audit_records(run_dir) if r["type"] == "rejected" and r["method"] == "Enrol"]
    assert len(refusals) == 3 and all(r["status"] == "PERMISSION_DENIED" for r in refusals)

    # Started together to save time. Clients 2-4 hold another signing key: they refuse the round the
    # server announces (901 above never answers and is dropped with them). Client 1 trusts another
    # identity authority than the one that certified it: it refuses to start.
    no_ca = harness.start_clients(tmp_path, certs, address, "0", name="wrong-ca",
                                  extra=["--ca", str(stranger / "ca.crt"), "--retry-timeout", "3"])
    other_authority = harness.start_clients(tmp_path, certs, address, "1", name="other-authority",
                                            extra=["--identity-ca", str(stranger / "identity-ca.pub")])
    forged = harness.start_clients(tmp_path, certs, address, "2-4", name="wrong-signing-key",
                                   extra=["--signing-pub", str(stranger / "signing.pub")])
    procs += [no_ca, other_authority, forged]
    assert no_ca.wait(timeout=90) == 2
    assert "unreachable" in no_ca.stderr() and "CA certificate" in no_ca.stderr()
    assert other_authority.wait(timeout=90) == 2
    assert "is not the identity authority's credential for user 1" in other_authority.stderr()
    assert forged.wait(timeout=120) == 2
    assert "refusing the server" in forged.stderr() and "do not verify" in forged.stderr()
    assert server.wait(timeout=120) == 0, server.stderr()
    rounds = harness.round_records(run_dir)
    assert len(rounds) == 1 and rounds[0]["type"] == "round_aborted"  # nobody trusted it: nothing released


def test_a_client_without_a_credential_refuses_to_start(tmp_path, certs) -> None:
    state = tmp_path / "bare-state"
    proc = harness.Proc(["client", "--server", "127.0.0.1:9", "--users", "3", "--certs", str(certs),
                         "--state-dir", str(state), "--retry-timeout", "2"] + harness.DATA_ARGS, tmp_path / "bare.log")
    assert proc.wait(timeout=60) == 2
    assert "credential.bin is missing: run `mrff certs issue-client` for user 3" in proc.stderr()
    proc.stop()


def test_issue_client_refuses_to_rebind_an_id_without_force(tmp_path, certs) -> None:
    import subprocess
    import sys

    from cryptography.hazmat.primitives import serialization

    def pub(name: str):
        path = tmp_path / name
        key = primitives.generate_identity_key()
        path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
        return path

    out = tmp_path / "cred.bin"

    def issue(key_file, *extra):
        return subprocess.run([sys.executable, "-m", "mrff_secure.cli", "certs", "issue-client", "--certs", str(certs),
                               "--client-id", "5", "--identity-pub", str(key_file), "--out", str(out), *extra],
                              capture_output=True, text=True, cwd=harness.ROOT, env=harness._env(), timeout=60)

    first, second = pub("a.pem"), pub("b.pem")
    assert issue(first).returncode == 0
    assert issue(first).returncode == 0  # the same binding again is fine
    refused = issue(second)
    assert refused.returncode == 2 and "needs --force" in refused.stderr
    assert issue(second, "--force").returncode == 0


def test_mutual_tls_requires_a_client_certificate(tmp_path, certs, procs) -> None:
    server, address = harness.start_server(tmp_path, certs, tmp_path / "run", extra=["--mtls", "--min-clients", "50"])
    procs.append(server)
    ca = (certs / "ca.crt").read_bytes()
    without = grpc.ssl_channel_credentials(ca)
    with_cert = grpc.ssl_channel_credentials(ca, (certs / "client.key").read_bytes(), (certs / "client.crt").read_bytes())
    assert code_of(lambda: enrol(address, without, certs)) == grpc.StatusCode.UNAVAILABLE
    assert enrol(address, with_cert, certs).session_token

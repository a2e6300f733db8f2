"""Only clients that trust the server's CA, hold the enrolment token and (with --mtls) present a
client certificate can join; clients refuse a server whose signed parameters do not verify."""

from __future__ import annotations

import grpc
import pytest

from mrff_secure.secagg import primitives
from mrff_secure.wire import limits, signing
from mrff_secure.wire.v1 import coordinator_pb2 as pb
from mrff_secure.wire.v1 import coordinator_pb2_grpc as pb_grpc
from server.certs import make_dev_pki, read_token
from . import harness

pytestmark = pytest.mark.timeout(240)


def enrol(address: str, credentials, token: str | None, client: int = 900):
    channel = (grpc.secure_channel(address, credentials) if credentials is not None
               else grpc.insecure_channel(address))
    key = primitives.generate_identity_key()
    public = primitives.identity_public_bytes(key)
    request = pb.EnrolRequest(protocol_version=limits.PROTOCOL_VERSION, client_id=client, identity_public_key=public,
                              proof=primitives.sign(key, signing.enrol_payload(client, public)))
    metadata = () if token is None else ((limits.META_ENROL_TOKEN, token),)
    try:
        return pb_grpc.CoordinatorStub(channel).Enrol(request, metadata=metadata, timeout=5)
    finally:
        channel.close()


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_tls_token_and_signed_parameters(tmp_path, certs, procs) -> None:
    stranger = make_dev_pki(tmp_path / "stranger").folder  # another CA, another token, another signing key
    run_dir = tmp_path / "run"
    server, address = harness.start_server(tmp_path, certs, run_dir, extra=[
        "--rounds", "1", "--min-clients", "3", "--train-timeout", "5", "--stage-timeout", "5"])
    procs.append(server)
    good_ca = grpc.ssl_channel_credentials((certs / "ca.crt").read_bytes())
    wrong_ca = grpc.ssl_channel_credentials((stranger / "ca.crt").read_bytes())
    token = read_token(certs / "enrol.token")

    assert code_of(lambda: enrol(address, wrong_ca, token)) == grpc.StatusCode.UNAVAILABLE  # certificate refused
    assert code_of(lambda: enrol(address, None, token)) == grpc.StatusCode.UNAVAILABLE  # plaintext to a TLS port
    assert code_of(lambda: enrol(address, good_ca, None)) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(lambda: enrol(address, good_ca, token + "x")) == grpc.StatusCode.UNAUTHENTICATED
    assert enrol(address, good_ca, token, client=901).session_token  # the right CA and token do join

    # Started together to save time. Clients 2-4 hold another signing key: they refuse the round the
    # server announces (901 above never answers and is dropped with them).
    no_ca = harness.start_clients(tmp_path, certs, address, "0", name="wrong-ca",
                                  extra=["--ca", str(stranger / "ca.crt"), "--retry-timeout", "3"])
    no_token = harness.start_clients(tmp_path, certs, address, "1", name="wrong-token",
                                     extra=["--token-file", str(stranger / "enrol.token")])
    forged = harness.start_clients(tmp_path, certs, address, "2-4", name="wrong-signing-key",
                                   extra=["--signing-pub", str(stranger / "signing.pub")])
    procs += [no_ca, no_token, forged]
    assert no_ca.wait(timeout=90) == 2
    assert "unreachable" in no_ca.stderr() and "CA certificate" in no_ca.stderr()
    assert no_token.wait(timeout=90) == 2
    assert "enrolment refused: UNAUTHENTICATED" in no_token.stderr()
    assert forged.wait(timeout=120) == 2
    assert "refusing the server" in forged.stderr() and "do not verify" in forged.stderr()
    assert server.wait(timeout=120) == 0, server.stderr()
    rounds = harness.round_records(run_dir)
    assert len(rounds) == 1 and rounds[0]["type"] == "round_aborted"  # nobody trusted it: nothing released


def test_mutual_tls_requires_a_client_certificate(tmp_path, certs, procs) -> None:
    server, address = harness.start_server(tmp_path, certs, tmp_path / "run", extra=["--mtls", "--min-clients", "50"])
    procs.append(server)
    ca = (certs / "ca.crt").read_bytes()
    token = read_token(certs / "enrol.token")
    without = grpc.ssl_channel_credentials(ca)
    with_cert = grpc.ssl_channel_credentials(ca, (certs / "client.key").read_bytes(), (certs / "client.crt").read_bytes())
    assert code_of(lambda: enrol(address, without, token)) == grpc.StatusCode.UNAVAILABLE
    assert enrol(address, with_cert, token).session_token

"""W18: enrolment is a challenge and a response bound to the server's run id and a fresh nonce. A recorded
enrolment replays neither into the same run nor into another run of a server trusting the same identity
authority; each replay is refused with PERMISSION_DENIED and audited, while a fresh enrolment still joins.
The client learns the run id it enrolled in (Transport.enrolled_run_id)."""

from __future__ import annotations

import threading

import grpc
import pytest

from client.transport import Connection, Transport
from mrff_secure.pki import AuthorityPaths, load_authority_key
from mrff_secure.secagg import primitives
from mrff_secure.secagg.identity import issue_credential
from mrff_secure.wire import limits, signing
from mrff_secure.wire.v1 import coordinator_pb2 as pb
from mrff_secure.wire.v1 import coordinator_pb2_grpc as pb_grpc

from . import enrolment, harness

pytestmark = pytest.mark.timeout(120)
VICTIM = 42


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_a_recorded_enrolment_replays_neither_into_the_same_run_nor_into_another(tmp_path, certs, procs) -> None:
    waiting = ["--rounds", "1", "--min-clients", "50"]  # the servers wait for clients that never come
    run_a, run_b = tmp_path / "run-a", tmp_path / "run-b"
    server_a, address_a = harness.start_server(tmp_path, certs, run_a, extra=waiting, name="server-a")
    procs.append(server_a)
    server_b, address_b = harness.start_server(tmp_path, certs, run_b, extra=waiting, name="server-b")
    procs.append(server_b)
    credentials = harness.client_tls(certs)  # mutual TLS, the servers' default
    channel_a = grpc.secure_channel(address_a, credentials)
    channel_b = grpc.secure_channel(address_b, credentials)
    stub_a, stub_b = pb_grpc.CoordinatorStub(channel_a), pb_grpc.CoordinatorStub(channel_b)
    key = primitives.generate_identity_key()
    authority = load_authority_key(AuthorityPaths(harness.authority_of(certs)))
    credential = issue_credential(authority, VICTIM, primitives.identity_public_bytes(key)).to_bytes()

    recorded = enrolment.enrol_request(stub_a, key, VICTIM, credential)
    assert stub_a.Enrol(recorded, timeout=10).session_token  # the genuine enrolment joins
    assert code_of(lambda: stub_a.Enrol(recorded, timeout=10)) == grpc.StatusCode.PERMISSION_DENIED  # same run
    assert code_of(lambda: stub_b.Enrol(recorded, timeout=10)) == grpc.StatusCode.PERMISSION_DENIED  # another run
    # the recorded proof with a fresh nonce of run B: the proof signs run A's id and nonce
    fresh_b = enrolment.challenge(stub_b, VICTIM)
    spliced = pb.EnrolRequest()
    spliced.CopyFrom(recorded)
    spliced.challenge_nonce = fresh_b.nonce
    assert code_of(lambda: stub_b.Enrol(spliced, timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
    # the old form of the protocol (a proof over the id and key alone, no challenge) is refused
    unchallenged = pb.EnrolRequest()
    unchallenged.CopyFrom(recorded)
    unchallenged.ClearField("challenge_nonce")
    assert code_of(lambda: stub_b.Enrol(unchallenged, timeout=10)) == grpc.StatusCode.PERMISSION_DENIED

    # a challenge for an impossible id, or one that does not parse, is refused and audited too
    assert code_of(lambda: enrolment.challenge(stub_b, 2**31)) == grpc.StatusCode.INVALID_ARGUMENT
    raw = channel_b.unary_unary("/mrff_secure.v1.Coordinator/EnrolChallenge")
    assert code_of(lambda: raw(b"\xff\xff\xff", timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
    challenges = [
        r for r in harness.audit_records(run_b) if r["type"] == "rejected" and r["method"] == "EnrolChallenge"
    ]
    assert len(challenges) == 2, challenges

    for run_dir, count in ((run_a, 1), (run_b, 3)):
        refusals = [r for r in harness.audit_records(run_dir) if r["type"] == "rejected" and r["method"] == "Enrol"]
        assert len(refusals) == count, refusals
    replayed = [r for r in harness.audit_records(run_a) if r["type"] == "rejected"][0]
    assert replayed["status"] == "PERMISSION_DENIED" and "unknown, used or expired" in replayed["reason"]

    # a fresh enrolment of the same key works in both runs, and a client learns which run it enrolled in
    assert stub_b.Enrol(enrolment.enrol_request(stub_b, key, VICTIM, credential), timeout=10).session_token
    run_id_a = next(r["run_id"] for r in harness.audit_records(run_a) if r["type"] == "run_started")
    run_id_b = next(r["run_id"] for r in harness.audit_records(run_b) if r["type"] == "run_started")
    assert run_id_a != run_id_b
    for address, run_id in ((address_a, run_id_a), (address_b, run_id_b)):
        connection = Connection(
            target=address,
            credentials=credentials,
            signing_key=signing.load_public_key(certs / "signing.pub"),
            authority_public_key=primitives.identity_public_bytes(authority),
            retry_timeout=10.0,
        )

        def answer(run: str, nonce: bytes) -> pb.EnrolRequest:
            proof = primitives.sign(
                key, signing.enrol_payload(run, nonce, VICTIM, primitives.identity_public_bytes(key))
            )
            return pb.EnrolRequest(
                protocol_version=limits.PROTOCOL_VERSION,
                client_id=VICTIM,
                identity_public_key=primitives.identity_public_bytes(key),
                proof=proof,
                credential=credential,
                challenge_nonce=nonce,
            )

        transport = Transport(VICTIM, connection, stop=threading.Event(), enrol_request=answer)
        try:
            assert transport.enrolled_run_id is None
            assert transport.enrol() == run_id and transport.enrolled_run_id == run_id
        finally:
            transport.close()
    channel_a.close()
    channel_b.close()

"""W18: every stage message carries a signature by the sender's enrolled identity key over (run id, phase,
secagg round id, session nonce, stage, client id, SHA-256 of the payload); the server checks it before it
parses the payload. Over real loopback: someone holding the victim's session (a stolen token) but not its
identity key submits a MaskedInput in the victim's name, unsigned, signed by an outsider's key, by another
enrolled client's key, or with the victim's signature of another message: each is refused UNAUTHENTICATED
and audited, nothing of it is summed, and the round completes without the victim."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from client.receipts import check_receipts
from mrff_secure.pki import AuthorityPaths, IdentityFiles, load_authority_key
from mrff_secure.secagg import messages, packing, primitives
from mrff_secure.secagg.client import ClientSession
from mrff_secure.secagg.config import SecAggConfig
from mrff_secure.secagg.context import SessionContext, round_body_digest, run_context_id
from mrff_secure.secagg.identity import issue_credential
from mrff_secure.secagg.policy import SecAggPolicy
from mrff_secure.wire import limits, signing
from mrff_secure.wire.v1 import coordinator_pb2 as pb
from mrff_secure.wire.v1 import coordinator_pb2_grpc as pb_grpc

from . import enrolment, harness

pytestmark = pytest.mark.timeout(240)
VICTIM = 500


def _fetch(stub, meta, round_id: int, phase: int, stage: int) -> pb.FetchReply:
    while True:
        reply = stub.Fetch(
            pb.FetchRequest(round_id=round_id, phase=phase, stage=stage, wait_ms=5000), metadata=meta, timeout=60
        )
        if not reply.pending:
            return reply


def test_a_masked_input_in_the_victims_name_without_its_key_is_refused_and_the_round_goes_on(
    tmp_path, certs, procs
) -> None:
    run_dir = tmp_path / "run"
    extra = ["--rounds", "1", "--min-clients", "5", "--min-group-size", "2", "--stage-timeout", "8"]
    server, address = harness.start_server(tmp_path, certs, run_dir, extra=extra + ["--threshold", "3"])
    procs.append(server)
    channel = grpc.secure_channel(address, harness.client_tls(certs))
    stub = pb_grpc.CoordinatorStub(channel)
    authority = load_authority_key(AuthorityPaths(harness.authority_of(certs)))
    key = primitives.generate_identity_key()
    credential = issue_credential(authority, VICTIM, primitives.identity_public_bytes(key))
    session_token = stub.Enrol(
        enrolment.enrol_request(stub, key, VICTIM, credential.to_bytes()), timeout=10
    ).session_token
    meta = ((limits.META_CLIENT, str(VICTIM)), (limits.META_SESSION, session_token.hex()))
    clients = harness.start_clients(
        tmp_path, certs, address, "0-3", extra=["--corrupt-neighbours", "1", "--min-group-size", "2"]
    )  # 5 clients, k = 4, t = 3: they withstand 1 colluding neighbour
    procs.append(clients)

    reply = stub.GetRound(pb.GetRoundRequest(after_round=-1, wait_ms=60000), metadata=meta, timeout=90)
    body = pb.RoundBody.FromString(reply.round.body)
    assert VICTIM in body.participants
    r, params = body.round_id, body.counts_secagg
    config = SecAggConfig(
        num_clients=params.num_clients,
        vector_length=params.vector_length,
        max_abs=params.max_abs,
        modulus_bits=params.modulus_bits,
        num_neighbours=params.num_neighbours,
        threshold=params.threshold,
    )
    sid = params.secagg_round_id
    context = SessionContext(
        run_context_id(body.run_id),
        pb.COUNTS,
        sid,
        bytes(params.session_nonce),
        round_body_digest(body.SerializeToString(deterministic=True)),
    )
    session = ClientSession(
        config,
        context=context,
        client_id=VICTIM,
        identity_key=key,
        credential=credential,
        authority_public_key=primitives.identity_public_bytes(authority),
        policy=SecAggPolicy(corrupt_neighbours=1),
    )

    def send(stage: int, message: messages.Message) -> None:  # the victim's own, correctly signed
        stub.Submit(
            enrolment.signed_submit(key, body, VICTIM, pb.COUNTS, stage, message.to_bytes()), metadata=meta, timeout=30
        )

    send(pb.ADVERTISE_KEYS, session.advertise_keys())
    send(
        pb.REVEAL_SEED,
        session.reveal_seed(
            messages.ParticipantSet.from_bytes(_fetch(stub, meta, r, pb.COUNTS, pb.REVEAL_SEED).payload)
        ),
    )
    send(
        pb.SHARE_KEYS,
        session.share_keys(messages.Neighbourhood.from_bytes(_fetch(stub, meta, r, pb.COUNTS, pb.SHARE_KEYS).payload)),
    )
    _fetch(stub, meta, r, pb.COUNTS, pb.MASKED_INPUT)  # the masked-input stage is open

    # The thief holds the victim's session token, not its identity key.
    zeros = np.zeros(config.vector_length, dtype=np.uint64)
    forged = messages.MaskedInput(sid, VICTIM, config.bits, config.vector_length, packing.pack(zeros, config.bits))
    payload = forged.to_bytes()
    another_client = IdentityFiles(tmp_path / "state", 0).identity_key()  # an enrolled participant's key
    outsider = primitives.generate_identity_key()
    attempts = [
        pb.SubmitRequest(round_id=r, phase=pb.COUNTS, stage=pb.MASKED_INPUT, payload=payload),  # unsigned
        enrolment.signed_submit(outsider, body, VICTIM, pb.COUNTS, pb.MASKED_INPUT, payload),
        enrolment.signed_submit(another_client, body, VICTIM, pb.COUNTS, pb.MASKED_INPUT, payload),
    ]
    # the victim's genuine signature of its share-keys message, replayed onto the forged payload
    genuine = enrolment.signed_submit(key, body, VICTIM, pb.COUNTS, pb.MASKED_INPUT, b"another message")
    attempts.append(
        pb.SubmitRequest(
            round_id=r, phase=pb.COUNTS, stage=pb.MASKED_INPUT, payload=payload, signature=genuine.signature
        )
    )
    for request in attempts:
        with pytest.raises(grpc.RpcError) as info:
            stub.Submit(request, metadata=meta, timeout=30)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, info.value.details()
        assert f"client {VICTIM}" in info.value.details()
    channel.close()

    assert server.wait(timeout=180) == 0, server.stderr()
    assert clients.wait(timeout=60) == 0, clients.stderr()
    records = harness.audit_records(run_dir)
    refused = [r for r in records if r["type"] == "rejected" and r["method"] == "Submit"]
    assert sum(r.get("count", 1) for r in refused if r["client"] == VICTIM and r["status"] == "UNAUTHENTICATED") == 4
    reasons = " ".join(r["reason"] for r in refused)
    assert "is not signed by client 500" in reasons and "does not verify under the identity key" in reasons
    rounds = harness.round_records(run_dir)
    assert len(rounds) == 1 and rounds[0]["type"] == "round", rounds
    assert rounds[0]["phases"]["counts"]["dropouts"]["masked_input"] == [VICTIM]  # nothing of the forgery counted
    assert rounds[0]["phases"]["counts"]["survivors"] == [0, 1, 2, 3]
    assert rounds[0]["phases"]["update"]["survivors"] == [0, 1, 2, 3]
    # W20: each real client kept a receipt of every signed chain head it was announced, and the log has them all
    server_key = signing.load_public_key(certs / "signing.pub")
    report = check_receipts(run_dir / "audit.jsonl", server_key, [tmp_path / "state"])
    assert report.ok and report.checked >= 8, report  # 4 clients x (round 0, the end of the run)

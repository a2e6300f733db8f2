"""Over 1,000 malformed or hostile messages against a real server process: every one is refused
with a specific gRPC status (never OK, INTERNAL or UNKNOWN) and an audit-log entry, and the
server then completes a normal round, without the hostile participant and without releasing a
partial sum.

Before the round: garbage bytes, mutated requests, missing/foreign/mismatched credentials, wrong
sessions, bad enrolment proofs, identity conflicts, oversized messages, wrong rounds. During
the round, as a sampled participant: a bad key signature, messages in another client's name,
for the wrong phase, stage or secagg round, of the wrong type, replays, vectors of the wrong
length or modulus; then it stalls, and the round goes on without it.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

import grpc
import numpy as np
import pytest

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

pytestmark = pytest.mark.timeout(300)

SERVICE = "/mrff_secure.v1.Coordinator/"
METHODS = ("Enrol", "GetRound", "Submit", "Fetch")
ACCEPTABLE = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
HOSTILE = 500


class Fuzzer:
    def __init__(self, address: str, certs) -> None:
        credentials = harness.client_tls(certs)
        self.channel = grpc.secure_channel(address, credentials, options=limits.client_options())
        self.stub = pb_grpc.CoordinatorStub(self.channel)
        self.raw = {m: self.channel.unary_unary(SERVICE + m) for m in METHODS}
        self.codes: Counter = Counter()
        self.sent = 0
        self.rng = random.Random(1234)
        self.key = primitives.generate_identity_key()
        self.public = primitives.identity_public_bytes(self.key)
        self.authority = signing.load_private_key(harness.authority_of(certs) / "identity-ca.key")
        self.authority_public = primitives.identity_public_bytes(self.authority)
        self.credential = issue_credential(self.authority, HOSTILE, self.public)  # a certified, hostile client
        self.session = b""
        self.body = pb.RoundBody()  # the round it takes part in (signed submissions)

    def meta(self, client: int = HOSTILE, session: bytes | None = None):
        return (
            (limits.META_CLIENT, str(client)),
            (limits.META_SESSION, (self.session if session is None else session).hex()),
        )

    def expect_refused(self, call, *allowed: grpc.StatusCode) -> grpc.StatusCode:
        """Send one hostile message; it must be refused with a clear status."""
        self.sent += 1
        try:
            call()
        except grpc.RpcError as exc:
            code = exc.code()
            assert code in ACCEPTABLE, (code, exc.details())
            assert exc.details(), code
            if allowed:
                assert code in allowed, (code, exc.details())
            self.codes[code] += 1
            return code
        raise AssertionError("a hostile message was accepted")

    def enrol_request(
        self, client=HOSTILE, key=None, public=None, version=limits.PROTOCOL_VERSION, proof=None, credential=None
    ):
        """A request answering a fresh challenge; `proof`: (key, client id) that sign it instead (a wrong proof)."""
        proof_key, proof_client = proof if proof is not None else (None, None)
        return enrolment.enrol_request(
            self.stub,
            key or self.key,
            client,
            self.credential.to_bytes() if credential is None else credential,
            public=public or self.public,
            proof_key=proof_key,
            proof_client=proof_client,
            version=version,
        )

    def garbage(self) -> bytes:
        size = self.rng.choice([1, 3, 17, 64, 300, 2000])
        return bytes(self.rng.getrandbits(8) for _ in range(size))


def before_round(f: Fuzzer) -> None:
    token_meta = ()
    # 1. garbage bytes to every method, with and without credentials
    for i in range(300):
        method = METHODS[i % 4]
        meta = token_meta if method == "Enrol" else f.meta(client=i, session=bytes(32))
        f.expect_refused(lambda: f.raw[method](f.garbage(), metadata=meta, timeout=10))
    # 2. enrolment (W1) without a credential, with one from another authority, for another id or another key
    foreign = primitives.generate_identity_key()
    stranger = primitives.generate_identity_key()
    no_credential = [
        b"",
        bytes(100),
        f.credential.to_bytes()[:-1],
        issue_credential(foreign, HOSTILE, f.public).to_bytes(),
        issue_credential(f.authority, HOSTILE + 1, f.public).to_bytes(),
        issue_credential(f.authority, HOSTILE, primitives.identity_public_bytes(stranger)).to_bytes(),
    ]
    for i in range(60):
        request = f.enrol_request(credential=no_credential[i % len(no_credential)])
        f.expect_refused(lambda: f.stub.Enrol(request, timeout=10), grpc.StatusCode.PERMISSION_DENIED)
    # 3. bad enrolment content: an older or newer version, key size, proof by another key, proof for another id
    other = primitives.generate_identity_key()
    bad = [
        lambda: f.enrol_request(version=limits.PROTOCOL_VERSION - 1),  # a client of the previous protocol
        lambda: f.enrol_request(version=limits.PROTOCOL_VERSION + 1),
        lambda: f.enrol_request(public=b"\x01" * 31),
        lambda: f.enrol_request(proof=(other, HOSTILE)),
        lambda: f.enrol_request(proof=(f.key, HOSTILE + 1)),
        lambda: f.enrol_request(client=2**31),
    ]
    for i in range(100):
        request = bad[i % len(bad)]()  # each answers a fresh challenge: a used one is refused before the proof
        f.expect_refused(
            lambda: f.stub.Enrol(request, metadata=token_meta, timeout=10),
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.UNAUTHENTICATED,
        )
    # 4. mutated valid requests (flipped bytes) to Enrol
    valid = f.enrol_request().SerializeToString()
    for _ in range(100):
        data = bytearray(valid)
        for _ in range(f.rng.randint(1, 4)):
            data[f.rng.randrange(len(data))] ^= 1 << f.rng.randrange(8)
        f.expect_refused(lambda: f.raw["Enrol"](bytes(data), metadata=token_meta, timeout=10))
    # 5. now enrol for real, and hit session checks and round checks
    f.session = f.stub.Enrol(f.enrol_request(), metadata=token_meta, timeout=10).session_token
    for i in range(100):
        f.expect_refused(
            lambda: f.stub.GetRound(
                pb.GetRoundRequest(after_round=-1, wait_ms=0), metadata=f.meta(session=bytes(32)), timeout=10
            ),
            grpc.StatusCode.UNAUTHENTICATED,
        )
    for i in range(100):
        request = pb.SubmitRequest(
            round_id=f.rng.randrange(2**40),
            phase=f.rng.choice([0, 1, 2, 9]),
            stage=f.rng.randrange(8),
            payload=f.garbage(),
        )
        f.expect_refused(lambda: f.stub.Submit(request, metadata=f.meta(), timeout=10), grpc.StatusCode.OUT_OF_RANGE)
    for i in range(100):
        request = pb.FetchRequest(round_id=f.rng.randrange(1, 2**40), phase=1, stage=f.rng.randrange(8), wait_ms=0)
        f.expect_refused(lambda: f.stub.Fetch(request, metadata=f.meta(), timeout=10), grpc.StatusCode.OUT_OF_RANGE)
    # 6. mutated valid Submit requests from the enrolled client
    valid = pb.SubmitRequest(round_id=0, phase=1, stage=1, payload=b"\x01\x01" + bytes(40)).SerializeToString()
    for _ in range(60):
        data = bytearray(valid)
        for _ in range(f.rng.randint(1, 4)):
            data[f.rng.randrange(len(data))] ^= 1 << f.rng.randrange(8)
        f.expect_refused(lambda: f.raw["Submit"](bytes(data), metadata=f.meta(), timeout=10))
    # 7. a second identity key for an enrolled id: even with a credential the authority issued for it (re-keyed),
    # the server keeps the first binding of the run
    rekeyed = issue_credential(f.authority, HOSTILE, primitives.identity_public_bytes(other)).to_bytes()
    for i in range(20):
        f.expect_refused(
            lambda: f.stub.Enrol(
                f.enrol_request(key=other, public=primitives.identity_public_bytes(other), credential=rekeyed),
                metadata=token_meta,
                timeout=10,
            ),
            grpc.StatusCode.PERMISSION_DENIED,
        )
    # 8. oversized: far over the run's computed receive cap (server/message_caps.py)
    for i in range(4):
        request = pb.SubmitRequest(round_id=0, phase=1, stage=1, payload=bytes((1 << 20) + 10 + i))
        f.expect_refused(
            lambda: f.stub.Submit(request, metadata=f.meta(), timeout=30), grpc.StatusCode.RESOURCE_EXHAUSTED
        )


def submit(f: Fuzzer, round_id: int, phase: int, stage: int, message_bytes: bytes, *allowed):
    """A hostile message, signed with the fuzzer's identity key as a client signs (so the refusal is for what
    the message says)."""
    request = enrolment.signed_submit(f.key, f.body, HOSTILE, phase, stage, message_bytes, round_id=round_id)
    return f.expect_refused(lambda: f.stub.Submit(request, metadata=f.meta(), timeout=30), *allowed)


def fetch(f: Fuzzer, round_id: int, phase: int, stage: int) -> pb.FetchReply:
    while True:
        reply = f.stub.Fetch(
            pb.FetchRequest(round_id=round_id, phase=phase, stage=stage, wait_ms=5000), metadata=f.meta(), timeout=60
        )
        if not reply.pending:
            return reply


def during_round(f: Fuzzer, certs) -> None:
    reply = f.stub.GetRound(pb.GetRoundRequest(after_round=-1, wait_ms=30000), metadata=f.meta(), timeout=60)
    assert not reply.pending
    signing.verify_body(signing.load_public_key(certs / "signing.pub"), reply.round.body, reply.round.signature)
    body = f.body = pb.RoundBody.FromString(reply.round.body)
    assert HOSTILE in body.participants
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
        client_id=HOSTILE,
        identity_key=f.key,
        credential=f.credential,
        authority_public_key=f.authority_public,
        policy=SecAggPolicy(corrupt_neighbours=1),
    )
    advert = session.advertise_keys()
    forged = dataclasses.replace(advert, signature=bytes(64))
    in_name_of_0 = dataclasses.replace(advert, client_id=0)
    other_round = dataclasses.replace(advert, round_id=sid + 7)
    wrong_type = messages.ConsistencySignature(sid, HOSTILE, bytes(64))
    for i in range(10):
        submit(f, r, pb.COUNTS, pb.ADVERTISE_KEYS, forged.to_bytes(), grpc.StatusCode.UNAUTHENTICATED)
        submit(f, r, pb.COUNTS, pb.ADVERTISE_KEYS, in_name_of_0.to_bytes(), grpc.StatusCode.PERMISSION_DENIED)
        submit(f, r, pb.COUNTS, pb.ADVERTISE_KEYS, other_round.to_bytes(), grpc.StatusCode.OUT_OF_RANGE)
        submit(f, r, pb.COUNTS, pb.ADVERTISE_KEYS, wrong_type.to_bytes(), grpc.StatusCode.INVALID_ARGUMENT)
        submit(f, r, pb.COUNTS, pb.ADVERTISE_KEYS, f.garbage(), grpc.StatusCode.INVALID_ARGUMENT)
        submit(f, r, pb.COUNTS, pb.SHARE_KEYS, advert.to_bytes(), grpc.StatusCode.FAILED_PRECONDITION)
        submit(f, r, pb.UPDATE, pb.ADVERTISE_KEYS, advert.to_bytes(), grpc.StatusCode.FAILED_PRECONDITION)
        submit(f, r + 1, pb.COUNTS, pb.ADVERTISE_KEYS, advert.to_bytes(), grpc.StatusCode.OUT_OF_RANGE)
        submit(f, r, pb.COUNTS, pb.OUTCOME, advert.to_bytes(), grpc.StatusCode.FAILED_PRECONDITION)
    f.stub.Submit(
        enrolment.signed_submit(f.key, body, HOSTILE, pb.COUNTS, pb.ADVERTISE_KEYS, advert.to_bytes()),
        metadata=f.meta(),
        timeout=30,
    )  # the one honest message: it joins the round
    for i in range(5):  # replays: ALREADY_EXISTS while the stage is open, FAILED_PRECONDITION once it closed
        submit(
            f,
            r,
            pb.COUNTS,
            pb.ADVERTISE_KEYS,
            advert.to_bytes(),
            grpc.StatusCode.ALREADY_EXISTS,
            grpc.StatusCode.FAILED_PRECONDITION,
        )
    participants = messages.ParticipantSet.from_bytes(fetch(f, r, pb.COUNTS, pb.REVEAL_SEED).payload)
    reveal = session.reveal_seed(participants)
    f.stub.Submit(
        enrolment.signed_submit(f.key, body, HOSTILE, pb.COUNTS, pb.REVEAL_SEED, reveal.to_bytes()),
        metadata=f.meta(),
        timeout=30,
    )
    neighbourhood = messages.Neighbourhood.from_bytes(fetch(f, r, pb.COUNTS, pb.SHARE_KEYS).payload)
    share = session.share_keys(neighbourhood)
    f.stub.Submit(
        enrolment.signed_submit(f.key, body, HOSTILE, pb.COUNTS, pb.SHARE_KEYS, share.to_bytes()),
        metadata=f.meta(),
        timeout=30,
    )
    delivery = messages.ShareDelivery.from_bytes(fetch(f, r, pb.COUNTS, pb.MASKED_INPUT).payload)
    assert delivery.receiver == HOSTILE
    bits, length = config.bits, config.vector_length
    too_long = messages.MaskedInput(sid, HOSTILE, bits, length + 1, packing.pack(np.zeros(length + 1, np.uint64), bits))
    wrong_bits = messages.MaskedInput(
        sid, HOSTILE, bits + 1, length, packing.pack(np.zeros(length, np.uint64), bits + 1)
    )
    for i in range(10):
        submit(f, r, pb.COUNTS, pb.MASKED_INPUT, too_long.to_bytes(), grpc.StatusCode.INVALID_ARGUMENT)
        submit(f, r, pb.COUNTS, pb.MASKED_INPUT, wrong_bits.to_bytes(), grpc.StatusCode.INVALID_ARGUMENT)
    # ... and now it stalls: no masked input. The round must go on without it.


def test_fuzz_thousand_hostile_messages_then_a_normal_round(tmp_path, certs, procs) -> None:
    run_dir = tmp_path / "run"
    server, address = harness.start_server(
        tmp_path,
        certs,
        run_dir,
        extra=[
            "--rounds",
            "1",
            "--min-clients",
            "5",
            "--min-group-size",
            "2",
            "--stage-timeout",
            "8",
            "--train-timeout",
            "60",
            "--max-upload-mib",
            "1",
            "--threshold",
            "3",
        ],
    )
    procs.append(server)
    f = Fuzzer(address, certs)
    before_round(f)
    # 5 clients, k = 4, t = 3: the clients withstand 1 colluding neighbour (2t - k = 2 > 1)
    clients = harness.start_clients(
        tmp_path, certs, address, "0-3", extra=["--corrupt-neighbours", "1", "--min-group-size", "2"]
    )
    procs.append(clients)
    during_round(f, certs)
    assert server.wait(timeout=200) == 0, server.stderr()
    assert clients.wait(timeout=60) == 0, clients.stderr()

    assert f.sent >= 1000
    assert sum(f.codes.values()) == f.sent
    records = harness.audit_records(run_dir)
    rejected = [r for r in records if r["type"] == "rejected"]
    # every refused message is counted (aggregated per kind, W19; the clients' own late calls may add some),
    # except the 4 oversized ones: gRPC refuses those itself, over the run's computed receive cap
    assert sum(r["count"] for r in rejected) >= f.sent - 4
    assert len(rejected) < f.sent / 2  # ... in fewer records (at most 256 kinds and their counts per window)
    rounds = harness.round_records(run_dir)
    assert len(rounds) == 1 and rounds[0]["type"] == "round"
    assert HOSTILE in rounds[0]["participants"]
    assert rounds[0]["phases"]["counts"]["dropouts"]["masked_input"] == [HOSTILE]
    assert rounds[0]["phases"]["counts"]["survivors"] == [0, 1, 2, 3]
    assert rounds[0]["phases"]["update"]["survivors"] == [0, 1, 2, 3]
    assert set(f.codes) >= {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
    f.channel.close()

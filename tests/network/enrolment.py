"""Enrolment and signed submissions as a client makes them, for tests that speak the wire protocol
themselves: ask EnrolChallenge, sign (run id, nonce, client id, key) into the proof; sign each stage message
with the identity key."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mrff_secure.round.spec import Phase
from mrff_secure.secagg import primitives
from mrff_secure.secagg.config import MAX_CLIENT_ID
from mrff_secure.wire import limits, signing
from mrff_secure.wire.v1 import coordinator_pb2 as pb
from mrff_secure.wire.v1 import coordinator_pb2_grpc as pb_grpc


def challenge(stub: pb_grpc.CoordinatorStub, client: int) -> pb.EnrolChallengeReply:
    return stub.EnrolChallenge(pb.EnrolChallengeRequest(client_id=client), timeout=10)


def enrol_request(
    stub: pb_grpc.CoordinatorStub,
    key: Ed25519PrivateKey,
    client: int,
    credential: bytes,
    *,
    public: bytes | None = None,
    proof_key: Ed25519PrivateKey | None = None,
    proof_client: int | None = None,
    version: int = limits.PROTOCOL_VERSION,
) -> pb.EnrolRequest:
    """A request answering a fresh challenge of the server behind `stub` (the proof by `proof_key` for
    `proof_client` when given: a wrong proof)."""
    public = primitives.identity_public_bytes(key) if public is None else public
    got = challenge(stub, client if client <= MAX_CLIENT_ID else 0)  # an impossible id is refused before the nonce
    signed = signing.enrol_payload(
        got.run_id, got.nonce, client if proof_client is None else proof_client, primitives.identity_public_bytes(key)
    )
    return pb.EnrolRequest(
        protocol_version=version,
        client_id=client,
        identity_public_key=public,
        proof=primitives.sign(proof_key if proof_key is not None else key, signed),
        credential=credential,
        challenge_nonce=got.nonce,
    )


def secagg_of(body: pb.RoundBody, phase: int) -> pb.SecAggParameters:
    return {Phase.COUNTS: body.counts_secagg, Phase.UPDATE: body.update_secagg}.get(phase, body.evaluation_secagg)


def signed_submit(
    key: Ed25519PrivateKey, body: pb.RoundBody, client: int, phase: int, stage: int, payload: bytes, *, round_id=None
) -> pb.SubmitRequest:
    """A SubmitRequest signed as the client's worker signs it (client/round_calls.py)."""
    params = secagg_of(body, phase)
    signature = primitives.sign(
        key,
        signing.stage_payload(body.run_id, phase, params.secagg_round_id, params.session_nonce, stage, client, payload),
    )
    return pb.SubmitRequest(
        round_id=body.round_id if round_id is None else round_id,
        phase=phase,
        stage=stage,
        payload=payload,
        signature=signature,
    )

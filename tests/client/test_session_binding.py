"""W21: the client binds the whole round body it verified into each secure sum's session context, exactly as the
server binds the body it signed and announced, and any change to the body (model, participants, DP, training, the
audit head: everything signed) changes the session."""

from __future__ import annotations

import secrets

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.secure_sums import SecureSums
from mrff_secure.round.spec import Phase
from mrff_secure.secagg.config import SecAggConfig
from mrff_secure.secagg.context import NONCE_BYTES
from mrff_secure.wire import signing, tensors
from mrff_secure.wire.v1 import coordinator_pb2 as pb
from server.coordinator import announced_session_context, secagg_parameters

CONFIG = SecAggConfig(num_clients=8, vector_length=16, max_abs=100, num_neighbours=4)


def _body() -> pb.RoundBody:
    params = {"w": torch.randn(3, 3, generator=torch.Generator().manual_seed(1))}
    body = pb.RoundBody(run_id="run-w21", round_id=4, secure=True, participants=range(8))
    body.parameters.extend(tensors.to_proto(params))
    body.model_digest = tensors.digest(params)
    body.update_secagg.CopyFrom(secagg_parameters(CONFIG, 9, secrets.token_bytes(NONCE_BYTES)))
    body.dp.CopyFrom(pb.DPParameters(mode="distributed", clip=1.0, noise_multiplier=1.1, min_survivors=6))
    body.training.CopyFrom(pb.TrainingParameters(local_steps=2, optimizer="adam", lr=0.01, model_seed=3))
    body.audit_head.CopyFrom(pb.AuditHead(seq=7, digest="ab" * 32))
    return body


def test_client_and_server_bind_the_same_announced_round_body():
    """The server's context of the body it signed equals the context the client derives from the body it verified
    and parsed (otherwise no honest round would finish)."""
    key = Ed25519PrivateKey.generate()
    data = _body().SerializeToString()
    announcement = pb.SignedBody(body=data, signature=signing.sign_body(key, data))
    signing.verify_body(key.public_key(), announcement.body, announcement.signature)
    accepted = pb.RoundBody.FromString(announcement.body)
    params = accepted.update_secagg
    client = SecureSums.session_context(accepted, Phase.UPDATE, params)
    server = announced_session_context(announcement, Phase.UPDATE, params.secagg_round_id, bytes(params.session_nonce))
    assert client == server and client.to_bytes() == server.to_bytes()


def test_every_signed_part_of_the_round_body_changes_the_session():
    body = _body()
    base = SecureSums.session_context(body, Phase.UPDATE, body.update_secagg)
    changes = {
        "model": lambda b: setattr(b, "model_digest", bytes(32)),
        "participants": lambda b: b.participants.append(8),
        "dp": lambda b: setattr(b.dp, "noise_multiplier", 0.5),
        "training": lambda b: setattr(b.training, "lr", 0.1),
        "parameters": lambda b: setattr(b.parameters[0], "data", bytes(len(b.parameters[0].data))),
        "audit head": lambda b: setattr(b.audit_head, "seq", 8),
        "evaluation": lambda b: b.evaluation_secagg.CopyFrom(b.update_secagg),
    }
    for what, change in changes.items():
        changed = pb.RoundBody()
        changed.CopyFrom(body)
        change(changed)
        context = SecureSums.session_context(changed, Phase.UPDATE, changed.update_secagg)
        assert (context.run_id, context.round_id, context.nonce) == (base.run_id, base.round_id, base.nonce), what
        assert context.round_body_digest != base.round_body_digest, what
        assert context.to_bytes() != base.to_bytes(), what

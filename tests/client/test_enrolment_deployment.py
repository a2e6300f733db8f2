"""Issue A: the client checks the server's data schema at enrolment, from the signed DeploymentBody of the
enrolment reply alone (an unsigned or misbound one is refused), before it waits for any round."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.proposal import check_schema, verified_deployment
from client.transport import ClientFailure
from mrff_secure.wire import signing
from mrff_secure.wire.v1 import coordinator_pb2 as pb

KEY = Ed25519PrivateKey.generate()
NONCE = bytes(range(32))


def reply(*, key=KEY, run_id="run-a", client_id=4, nonce=NONCE, digest="ab" * 32, sign=signing.sign_deployment):
    body = pb.DeploymentBody(
        run_id=run_id, client_id=client_id, challenge_nonce=nonce, schema_digest=digest, schema_summary="maxlen 10"
    ).SerializeToString()
    return pb.EnrolReply(
        session_token=b"t", run_id="run-a", deployment=pb.SignedBody(body=body, signature=sign(key, body))
    )


def test_a_signed_deployment_for_this_enrolment_is_read() -> None:
    body = verified_deployment(reply(), KEY.public_key(), user=4, nonce=NONCE)
    check_schema(body, "ab" * 32, "maxlen 10", 4)  # the same schema: no refusal


def test_another_schema_is_refused_naming_both() -> None:
    body = verified_deployment(reply(digest="cd" * 32), KEY.public_key(), user=4, nonce=NONCE)
    with pytest.raises(
        ClientFailure, match="its data schema differs from ours; server: maxlen 10; this client: maxlen 12"
    ):
        check_schema(body, "ab" * 32, "maxlen 12", 4)


@pytest.mark.parametrize(
    "bad, words",
    [
        (dict(key=Ed25519PrivateKey.generate()), "does not verify"),
        (dict(sign=signing.sign_body), "does not verify"),  # a round body's signature is not a deployment's
        (dict(run_id="run-b"), "not this enrolment"),
        (dict(client_id=5), "not this enrolment"),
        (dict(nonce=bytes(32)), "not this enrolment"),
    ],
)
def test_an_unsigned_or_misbound_deployment_is_refused(bad, words) -> None:
    with pytest.raises(ClientFailure, match=words):
        verified_deployment(reply(**bad), KEY.public_key(), user=4, nonce=NONCE)


def test_a_reply_without_a_deployment_is_refused() -> None:
    with pytest.raises(ClientFailure, match="no signed deployment"):
        verified_deployment(pb.EnrolReply(session_token=b"t", run_id="run-a"), KEY.public_key(), user=4, nonce=NONCE)

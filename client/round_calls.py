"""A logical client's Submit and Fetch calls within a round it plays: every submitted stage message is signed
with the client's identity key (bound to the run, phase, secure-aggregation session, stage and the payload's
SHA-256), a refused call ends the round for this client (`RoundFailed`), a fetch waits until the server has published the stage's message, and the
fault-injection hook of the tests stops the client right after a chosen submission."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.transport import ClientFailure, Transport
from mrff_secure.errors import ConfigError
from mrff_secure.round.spec import Phase
from mrff_secure.secagg import messages, primitives
from mrff_secure.wire import limits, signing
from mrff_secure.wire.v1 import coordinator_pb2 as pb

if TYPE_CHECKING:
    from client.process import FaultInjection

POLL_MS = 10_000
FETCH_WAIT_MS = limits.MAX_WAIT_MS  # a fetch waits server-side as long as the server allows: it returns once the
# message is published, and a long stage (local training before the first) costs few repeated calls
SUBMIT_TIMEOUT_S = 60.0


# protobuf takes an enum field's number, but the generated stubs type the fields as the enum classes only (or names):
# the casts say that `phase` / `stage` hold pb.Phase / pb.Stage numbers (round.spec.Phase and pb.Stage values)
def _wire_phase(phase: int) -> pb.Phase:
    return cast(pb.Phase, phase)


def _wire_stage(stage: int) -> pb.Stage:
    return cast(pb.Stage, stage)


class RoundFailed(Exception):
    """This round cannot go on for us (aborted, dropped, refused); wait for the next one."""


def phase_secagg(body: pb.RoundBody, phase: int) -> pb.SecAggParameters:
    """The announced secure-aggregation parameters of one phase of the round."""
    if phase == Phase.COUNTS:
        return body.counts_secagg
    if phase == Phase.UPDATE:
        return body.update_secagg
    if phase == Phase.EVALUATION:
        return body.evaluation_secagg
    raise ConfigError(f"unknown phase {phase}")


def stage_signature(
    identity_key: Ed25519PrivateKey, body: pb.RoundBody, phase: int, stage: int, client_id: int, payload: bytes
) -> bytes:
    """Our identity key's signature of a stage message of this round (mrff_secure.wire.signing.stage_payload)."""
    params = phase_secagg(body, phase)
    return primitives.sign(
        identity_key,
        signing.stage_payload(
            body.run_id, phase, params.secagg_round_id, params.session_nonce, stage, client_id, payload
        ),
    )


class RoundCalls:
    """Submit and Fetch for one logical client; `on_upload(bytes)` counts what it submitted."""

    def __init__(
        self,
        user: int,
        transport: Transport,
        *,
        stop: threading.Event,
        fault: FaultInjection | None,
        on_upload: Callable[[int], None],
        identity_key: Ed25519PrivateKey,
    ) -> None:
        self.user, self.transport, self.stop, self.fault, self.on_upload = user, transport, stop, fault, on_upload
        self.identity_key = identity_key  # signs every submitted stage message

    def submit(self, body: pb.RoundBody, phase: int, stage: int, message: messages.Message) -> None:
        payload = message.to_bytes()
        signature = stage_signature(self.identity_key, body, phase, stage, self.user, payload)
        try:
            self.transport.call(
                "Submit",
                pb.SubmitRequest(
                    round_id=body.round_id,
                    phase=_wire_phase(phase),
                    stage=_wire_stage(stage),
                    payload=payload,
                    signature=signature,
                ),
                timeout=SUBMIT_TIMEOUT_S,
            )
        except grpc.RpcError as exc:
            raise RoundFailed(f"submit {pb.Stage.Name(stage)}: {exc.code().name}: {exc.details()}") from exc
        self.on_upload(len(payload))
        fault = self.fault
        if fault is not None and (fault.round_id, fault.phase, fault.stage) == (body.round_id, phase, stage):
            fault.on_pause(self.user)
            self.stop.wait()
            raise ClientFailure("paused by fault injection")

    def fetch(self, body: pb.RoundBody, phase: int, stage: int) -> pb.FetchReply:
        while True:
            try:
                reply = self.transport.call(
                    "Fetch",
                    pb.FetchRequest(
                        round_id=body.round_id,
                        phase=_wire_phase(phase),
                        stage=_wire_stage(stage),
                        wait_ms=FETCH_WAIT_MS,
                    ),
                    timeout=FETCH_WAIT_MS / 1000 + 30,
                )
            except grpc.RpcError as exc:
                raise RoundFailed(f"fetch {pb.Stage.Name(stage)}: {exc.code().name}: {exc.details()}") from exc
            if not reply.pending:
                return reply

"""A logical client's Submit and Fetch calls within a round it plays: a refused call ends the round for this
client (`RoundFailed`), a fetch waits until the server has published the stage's message, and the
fault-injection hook of the tests stops the client right after a chosen submission."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import grpc

from client.transport import ClientFailure, Transport
from mrff_secure.secagg import messages
from mrff_secure.wire.v1 import coordinator_pb2 as pb

if TYPE_CHECKING:
    from client.process import FaultInjection

POLL_MS = 10_000
SUBMIT_TIMEOUT_S = 60.0


# protobuf takes an enum field's number, but the generated stubs type the fields as the enum classes only (or names):
# the casts say that `phase` / `stage` hold pb.Phase / pb.Stage numbers (round.spec.Phase and pb.Stage values)
def _wire_phase(phase: int) -> pb.Phase:
    return cast(pb.Phase, phase)


def _wire_stage(stage: int) -> pb.Stage:
    return cast(pb.Stage, stage)


class RoundFailed(Exception):
    """This round cannot go on for us (aborted, dropped, refused); wait for the next one."""


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
    ) -> None:
        self.user, self.transport, self.stop, self.fault, self.on_upload = user, transport, stop, fault, on_upload

    def submit(self, body: pb.RoundBody, phase: int, stage: int, message: messages.Message) -> None:
        payload = message.to_bytes()
        try:
            self.transport.call(
                "Submit",
                pb.SubmitRequest(
                    round_id=body.round_id, phase=_wire_phase(phase), stage=_wire_stage(stage), payload=payload
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
                        round_id=body.round_id, phase=_wire_phase(phase), stage=_wire_stage(stage), wait_ms=POLL_MS
                    ),
                    timeout=POLL_MS / 1000 + 30,
                )
            except grpc.RpcError as exc:
                raise RoundFailed(f"fetch {pb.Stage.Name(stage)}: {exc.code().name}: {exc.details()}") from exc
            if not reply.pending:
                return reply

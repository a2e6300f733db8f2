"""The stages of one secure sum, as one table: every driver (the in-memory round, the coordinator, the
network client, the audit's protocol round, the benchmarks) runs this table and nothing else.

Each `StageStep` says, for one stage: the state machines' `Stage`, its number on the wire, its name
(records, flags, logs), what the server delivers to each client before the client's step (nothing for
the first), what each client submits, the client's step, and the server's receive and close. Closing a
stage yields the next stage's deliveries, one per client that takes part in it; after the last stage
the server calls `ServerSession.finish()`.

    deliveries = {c: None for c in participants}
    for step in STAGES:
        replies = {c: step.client_step(clients[c], deliveries[c], inputs[c]) for c in deliveries}
        for reply in replies.values():
            step.receive(server, reply)
        deliveries = step.close(server)
    result = server.finish()
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mrff_secure.errors import ConfigError
from mrff_secure.secagg import messages
from mrff_secure.secagg.client import ClientSession
from mrff_secure.secagg.server import ServerSession
from mrff_secure.secagg.stages import Stage
from mrff_secure.wire.v1 import coordinator_pb2 as pb

Deliveries = Mapping[int, messages.Message]


def _required(value: np.ndarray | None) -> np.ndarray:
    if value is None:
        raise ConfigError("the masked-input step needs the client's input vector")
    return value


def _to_each(message: messages.Message, recipients: tuple[int, ...]) -> dict[int, messages.Message]:
    """One message delivered to every listed client (the same object: serialized once, `delivery_bytes`)."""
    return dict.fromkeys(recipients, message)


def _close_advertise_keys(server: ServerSession) -> dict[int, messages.Message]:
    participants = server.close_advertise_keys()
    return _to_each(participants, participants.client_ids)


def _close_masked_input(server: ServerSession) -> dict[int, messages.Message]:
    survivors = server.close_masked_input()
    return _to_each(survivors, survivors.survivors)


@dataclass(frozen=True)
class StageStep:
    """One stage of a secure sum: what moves, who acts (see the module docstring)."""

    stage: Stage
    wire: int  # pb.Stage
    name: str
    delivered: type[messages.Message] | None  # what the server hands each client first (None: nothing)
    submitted: type[messages.ClientMessage]
    client_step: Callable[[ClientSession, Any, np.ndarray | None], messages.Message]
    receive: Callable[[ServerSession, Any], None]
    close: Callable[[ServerSession], Deliveries] | None  # None: the last stage (then finish())


# One stage per entry, its columns in the order of StageStep (the formatter leaves the table as written).
# fmt: off
STAGES: tuple[StageStep, ...] = (
    StageStep(Stage.ADVERTISE_KEYS, pb.ADVERTISE_KEYS, "advertise_keys", None, messages.AdvertiseKeys,
              lambda client, _, __: client.advertise_keys(),
              lambda server, m: server.receive_advertise_keys(m), _close_advertise_keys),
    StageStep(Stage.REVEAL_SEED, pb.REVEAL_SEED, "reveal_seed", messages.ParticipantSet, messages.SeedReveal,
              lambda client, d, _: client.reveal_seed(d),
              lambda server, m: server.receive_seed_reveal(m), lambda server: server.close_reveal_seed()),
    StageStep(Stage.SHARE_KEYS, pb.SHARE_KEYS, "share_keys", messages.Neighbourhood, messages.ShareKeys,
              lambda client, d, _: client.share_keys(d),
              lambda server, m: server.receive_share_keys(m), lambda server: server.close_share_keys()),
    StageStep(Stage.MASKED_INPUT, pb.MASKED_INPUT, "masked_input", messages.ShareDelivery, messages.MaskedInput,
              lambda client, d, value: client.masked_input(d, _required(value)),
              lambda server, m: server.receive_masked_input(m), _close_masked_input),
    StageStep(Stage.CONSISTENCY_CHECK, pb.CONSISTENCY_CHECK, "consistency_check", messages.SurvivorList,
              messages.ConsistencySignature, lambda client, d, _: client.consistency_check(d),
              lambda server, m: server.receive_consistency_signature(m),
              lambda server: server.close_consistency_check()),
    StageStep(Stage.UNMASK, pb.UNMASK, "unmask", messages.UnmaskRequest, messages.UnmaskResponse,
              lambda client, d, _: client.unmask(d),
              lambda server, m: server.receive_unmask_response(m), None),
)
# fmt: on

BY_STAGE = {step.stage: step for step in STAGES}
BY_WIRE = {step.wire: step for step in STAGES}
BY_NAME = {step.name: step for step in STAGES}
OUTCOME = pb.OUTCOME
"""The wire stage after the last secure sum of a round: the round's outcome (no secure-aggregation step)."""
WIRE_NAMES = {**{step.wire: step.name for step in STAGES}, OUTCOME: "outcome"}


def step_named(name: str) -> StageStep:
    """The step of a stage name (flags such as `mrff client --pause-after`); ConfigError naming the known."""
    if name not in BY_NAME:
        raise ConfigError(f"unknown stage {name!r}; known: {list(BY_NAME)}")
    return BY_NAME[name]


def delivery_bytes(deliveries: Deliveries) -> dict[int, bytes]:
    """Each client's delivery serialized, a message shared by several clients serialized once."""
    encoded: dict[int, bytes] = {}
    out = {}
    for client, message in deliveries.items():
        key = id(message)
        if key not in encoded:
            encoded[key] = message.to_bytes()
        out[client] = encoded[key]
    return out

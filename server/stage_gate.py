"""The stage gate: the transport-free meeting point of request threads and the round driver.

Request threads call `get_round`, `submit` and `fetch` (through the gRPC servicer); the round driver
(coordinator.py) opens a round, opens one stage at a time with `run_stage`, and publishes each stage's
server messages in its outbox. Everything here is a function of the request and the gate's state,
under one condition variable: a submission is validated against the open round, phase and stage,
parsed, and handed to the phase's secure aggregation session (or kept, for plain aggregation); a
fetch returns what the open round has published for that client, or waits for it.

A stage closes when every expected client has answered or at its deadline; whoever is missing is a
dropout and is not sampled again until its next call. Between stages no stage is open, so a late
message is refused, never half-applied. No gRPC, no crypto policy and no model state here; the one
signature checked here is the sender's own on each stage message (its enrolled identity key), before parsing.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from mrff_secure.errors import AuthenticationError, ProtocolViolation, SecAggError
from mrff_secure.round.spec import Phase, RoundSpec
from mrff_secure.round.stages import BY_WIRE, WIRE_NAMES
from mrff_secure.secagg import messages, packing, primitives
from mrff_secure.secagg.config import SecAggConfig
from mrff_secure.secagg.server import ServerSession
from mrff_secure.wire import signing
from mrff_secure.wire.v1 import coordinator_pb2 as pb
from server.errors import (
    BadSignature,
    Malformed,
    NotParticipant,
    Replay,
    RoundAborted,
    ShuttingDown,
    UnknownClient,
    WrongLength,
    WrongRound,
    WrongStage,
)

KEPT_OUTCOMES = 8  # outcomes of this many past rounds stay fetchable
_PHASES = frozenset(Phase)


def _phase_label(phase: int) -> str:
    """A phase's name for a message, or its number when a client named no known phase."""
    return Phase(phase).label if phase in _PHASES else str(phase)


class Stopped(Exception):
    """The gate was stopped while the round driver waited on a stage."""


@dataclass
class PhaseState:
    """One secure (or plain) sum of a round: its parameters, its session, the open stage."""

    phase: int
    config: SecAggConfig
    secagg_round_id: int
    nonce: bytes
    session: ServerSession | None = None  # None: plain aggregation (the inputs are kept in `plain`)
    stage: int | None = None  # the stage accepting submissions; None between stages
    expected: set[int] = field(default_factory=set)
    received: set[int] = field(default_factory=set)
    outbox: dict[int, dict[int, bytes]] = field(default_factory=dict)  # stage -> client -> server message
    plain: dict[int, np.ndarray] = field(default_factory=dict)


@dataclass
class RoundState:
    """The open round as request threads see it."""

    round_id: int
    participants: tuple[int, ...]
    spec: RoundSpec
    announcement: pb.SignedBody
    phases: dict[int, PhaseState] = field(default_factory=dict)
    current_phase: int | None = None
    phase_start: pb.SignedBody | None = None  # the update phase's start (the group counts)
    announcement_evaluates: bool = False  # the announcement carries evaluation parameters
    evaluation_open: bool = False  # the evaluation phase accepts inputs
    outcome: pb.RoundOutcome | None = None  # once decided
    members: frozenset[int] = field(init=False)  # the participants, for the per-call membership checks

    def __post_init__(self) -> None:
        self.members = frozenset(self.participants)


class StageGate:
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id  # bound into every stage message's signature
        self.condition = threading.Condition()  # re-entrant: the driver's callbacks run under it
        self._stopped = False
        self._sessions: dict[int, bytes] = {}
        self._active: set[int] = set()
        self._round: RoundState | None = None
        self._outcomes: dict[int, pb.RoundOutcome] = {}
        self._announcement: tuple[int, pb.SignedBody] | None = None
        self._wire = {"received": 0, "sent": 0, "calls": 0}  # protobuf message bytes of the current round
        self._finished = False
        self._saw_finish: set[int] = set()
        self._skip_evaluation: set[int] = set()
        self._identity_keys: dict[int, bytes] = {}  # the key each client enrolled with: its stage messages verify
        self._polling: dict[int, int] = {}  # client -> its GetRound calls waiting now (it is alive)

    # ------------------------------------------------------------ sessions
    def open_session(self, client_id: int, identity_key: bytes, *, skips_evaluation: bool = False) -> bytes:
        """A fresh session token for an enrolled client (it replaces any earlier one); its stage messages must
        be signed by `identity_key` (raw Ed25519). `skips_evaluation`: its policy sends no held-out scores, so
        the evaluation does not wait for it."""
        with self.condition:
            token = secrets.token_bytes(32)
            self._sessions[client_id] = token
            self._identity_keys[client_id] = bytes(identity_key)
            if skips_evaluation:
                self._skip_evaluation.add(client_id)
            else:
                self._skip_evaluation.discard(client_id)
            self._active.add(client_id)
            self.condition.notify_all()
        return token

    def authenticate(self, client_id: int, token: bytes) -> bool:
        with self.condition:
            expected = self._sessions.get(client_id)
            if expected is None or not secrets.compare_digest(expected, token):
                return False
            self._active.add(client_id)
            return True

    def skipping_evaluation(self) -> set[int]:
        with self.condition:
            return set(self._skip_evaluation)

    def wait_for_clients(
        self, minimum: int, on_wait: Callable[[int], None] | None = None, *, timeout: float | None = None
    ) -> list[int]:
        """Block until at least `minimum` clients with a session are active (or `timeout` seconds, then return
        fewer); return them, sorted. `on_wait(active)` is called (under the lock) about once a second while there
        are fewer. A client waiting in GetRound counts as active: it is there."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.condition:
            while True:
                eligible = sorted((self._active | set(self._polling)) & set(self._sessions))
                if len(eligible) >= minimum or (deadline is not None and time.monotonic() >= deadline):
                    return eligible
                if on_wait is not None:
                    on_wait(len(eligible))
                self._wait(time.monotonic() + 1.0 if deadline is None else min(deadline, time.monotonic() + 1.0))

    def has_session(self, client_id: int) -> bool:
        with self.condition:
            return client_id in self._sessions

    def session_count(self) -> int:
        """Clients enrolled with this server process (each holds a session)."""
        with self.condition:
            return len(self._sessions)

    def _wait(self, deadline: float) -> bool:
        """Wait on the condition until notified or the deadline; False once the deadline passed."""
        if self._stopped:
            raise ShuttingDown("the coordinator is shutting down")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.condition.wait(remaining)
        return True

    # ------------------------------------------------------------- requests
    def get_round(self, after_round: int, wait: float, client_id: int | None = None) -> pb.SignedBody | None:
        deadline = time.monotonic() + wait
        with self.condition:
            if client_id is not None:
                self._polling[client_id] = self._polling.get(client_id, 0) + 1
            try:
                while True:
                    if self._announcement is not None and self._announcement[0] > after_round:
                        if self._finished and client_id is not None:
                            self._saw_finish.add(client_id)
                        return self._announcement[1]
                    if not self._wait(deadline):
                        return None
            finally:
                if client_id is not None:
                    left = self._polling.pop(client_id) - 1
                    if left:
                        self._polling[client_id] = left

    def submit(
        self, client_id: int, round_id: int, phase: int, stage: int, payload: bytes, signature: bytes = b""
    ) -> None:
        """Accept one stage message: it must be signed by the sender's enrolled identity key over
        `signing.stage_payload` of the open round, phase, session and stage (checked before the payload is parsed)."""
        with self.condition:
            rs = self._round
            if rs is None or rs.outcome is not None or rs.round_id != round_id:
                current = "none" if rs is None or rs.outcome is not None else rs.round_id
                raise WrongRound(f"round {round_id} is not running (current round: {current})")
            if client_id not in rs.members:
                raise NotParticipant(f"client {client_id} is not a participant of round {round_id}")
            ps = rs.phases.get(phase)
            if ps is None or rs.current_phase != phase:
                raise WrongStage(f"phase {_phase_label(phase)} is not open in round {round_id}")
            step = BY_WIRE.get(stage)
            if step is None:
                raise WrongStage(f"stage {stage} takes no client messages")
            if ps.stage != stage:
                open_stage = WIRE_NAMES.get(ps.stage, "none (closing)") if ps.stage is not None else "none (closing)"
                raise WrongStage(f"stage {step.name} is not open (open: {open_stage})")
            if client_id not in ps.expected:
                raise NotParticipant(
                    f"client {client_id} is not expected at stage {WIRE_NAMES[stage]} "
                    "(it dropped out of an earlier stage)"
                )
            if client_id in ps.received:
                raise Replay(f"client {client_id} already answered stage {WIRE_NAMES[stage]}")
            self._check_signature(client_id, ps, stage, payload, signature)
            try:
                message = messages.decode(payload)
            except ProtocolViolation as exc:
                raise Malformed(f"payload does not parse: {exc}") from exc
            if type(message) is not step.submitted:
                raise Malformed(f"stage {step.name} takes {step.submitted.__name__}, got {type(message).__name__}")
            if message.client_id != client_id:
                raise NotParticipant(f"client {client_id} sent a message in the name of client {message.client_id}")
            if message.round_id != ps.secagg_round_id:
                raise WrongRound(f"message is for secagg round {message.round_id}, expected {ps.secagg_round_id}")
            if isinstance(message, messages.MaskedInput) and (
                message.length != ps.config.vector_length or message.modulus_bits != ps.config.bits
            ):
                raise WrongLength(
                    f"vector of {message.length} values x {message.modulus_bits} bits, expected "
                    f"{ps.config.vector_length} x {ps.config.bits}"
                )
            try:
                if ps.session is None:  # plain aggregation: its one stage is MASKED_INPUT
                    if not isinstance(message, messages.MaskedInput):
                        raise Malformed(f"plain aggregation takes MaskedInput, got {type(message).__name__}")
                    ps.plain[client_id] = packing.unpack(message.payload, message.modulus_bits, message.length)
                else:
                    step.receive(ps.session, message)
            except AuthenticationError as exc:
                raise BadSignature(f"stage {WIRE_NAMES[stage]}: signature does not verify") from exc
            except SecAggError as exc:
                raise Malformed(f"stage {WIRE_NAMES[stage]}: {exc}") from exc
            ps.received.add(client_id)
            if ps.received >= ps.expected:
                self.condition.notify_all()

    def _check_signature(self, client_id: int, ps: PhaseState, stage: int, payload: bytes, signature: bytes) -> None:
        key = self._identity_keys.get(client_id)
        if key is None:
            raise UnknownClient(f"client {client_id} has no enrolled identity key")
        if not signature:
            raise BadSignature(f"stage {WIRE_NAMES[stage]}: the message is not signed by client {client_id}")
        signed = signing.stage_payload(
            self.run_id, ps.phase, ps.secagg_round_id, ps.nonce, stage, client_id, bytes(payload)
        )
        try:
            primitives.verify(key, bytes(signature), signed)
        except AuthenticationError as exc:
            raise BadSignature(
                f"stage {WIRE_NAMES[stage]}: the signature does not verify under the identity key client "
                f"{client_id} enrolled with"
            ) from exc

    def fetch(self, client_id: int, round_id: int, phase: int, stage: int, wait: float) -> tuple[str, Any] | None:
        deadline = time.monotonic() + wait
        with self.condition:
            while True:
                if stage == pb.OUTCOME and round_id in self._outcomes:
                    return "outcome", self._outcomes[round_id]
                rs = self._round
                if rs is None or rs.round_id != round_id:
                    raise WrongRound(f"round {round_id} is not running")
                if client_id not in rs.members:
                    raise NotParticipant(f"client {client_id} is not a participant of round {round_id}")
                if phase not in _PHASES:
                    raise Malformed(f"unknown phase {phase}")
                if stage == pb.OUTCOME:
                    pass
                elif phase == Phase.UPDATE and stage == pb.ADVERTISE_KEYS:
                    if rs.phase_start is not None:
                        return "phase_start", rs.phase_start
                elif phase == Phase.EVALUATION and stage == pb.ADVERTISE_KEYS:
                    if not rs.announcement_evaluates:
                        raise WrongStage(f"round {round_id} has no evaluation")
                    if rs.evaluation_open:
                        return "payload", b""  # nothing to read: the phase is open, send your keys
                elif stage in (pb.REVEAL_SEED, pb.SHARE_KEYS, pb.MASKED_INPUT, pb.CONSISTENCY_CHECK, pb.UNMASK):
                    ps = rs.phases.get(phase)
                    box = None if ps is None else ps.outbox.get(stage)
                    if box is not None:
                        if client_id not in box:
                            raise NotParticipant(
                                f"client {client_id} has no part in stage {WIRE_NAMES[stage]} "
                                "(dropped out of an earlier stage)"
                            )
                        return "payload", box[client_id]
                else:
                    raise WrongStage(f"stage {stage} has nothing to fetch in phase {_phase_label(phase)}")
                if rs.outcome is not None and not rs.outcome.completed:
                    raise RoundAborted(f"round {round_id} was aborted: {rs.outcome.reason}")
                if not self._wait(deadline):
                    return None

    def count_bytes(self, received: int, sent: int) -> None:
        """Message bytes of one call (protobuf payloads, without gRPC/HTTP2/TLS framing)."""
        with self.condition:
            self._wire["received"] += received
            self._wire["sent"] += sent
            self._wire["calls"] += 1

    def wire_bytes(self) -> dict[str, int]:
        with self.condition:
            return dict(self._wire)

    def current_round(self) -> RoundState | None:
        return self._round

    # ---------------------------------------------------------- the driver
    def begin_round(self, rs: RoundState) -> None:
        with self.condition:
            self._round = rs
            self._wire = {"received": 0, "sent": 0, "calls": 0}

    def open_phase(self, rs: RoundState, ps: PhaseState) -> None:
        with self.condition:
            rs.phases[ps.phase] = ps
            rs.current_phase = ps.phase

    def run_stage(
        self,
        ps: PhaseState,
        stage: int,
        expected: set[int],
        timeout: float,
        outbox: dict[int, bytes] | None = None,
        on_open: Callable[[], None] | None = None,
    ) -> tuple[set[int], list[int]]:
        """Open `stage`, publish its server messages (a client that reads them can answer at once), run
        `on_open` under the lock, and wait for the expected clients or the deadline. Returns the clients
        that answered and the sorted missing ones (dropouts, no longer active until their next call)."""
        deadline = time.monotonic() + timeout
        with self.condition:
            ps.stage, ps.expected, ps.received = stage, set(expected), set()
            if outbox is not None:
                ps.outbox[stage] = outbox
            if on_open is not None:
                on_open()
            self.condition.notify_all()
            while not ps.received >= ps.expected:
                if self._stopped:
                    raise Stopped()
                if not self._wait(deadline):
                    break
            ps.stage = None
            missing = sorted(ps.expected - ps.received)
            for c in missing:
                self._active.discard(c)  # until its next call: a dead client is not sampled again
            return set(ps.received), missing

    def end_round(self, rs: RoundState, outcome: pb.RoundOutcome) -> None:
        with self.condition:
            rs.outcome = outcome
            rs.current_phase = None
            self._outcomes[rs.round_id] = outcome
            for old in [k for k in self._outcomes if k < rs.round_id - KEPT_OUTCOMES]:
                del self._outcomes[old]
            self.condition.notify_all()

    def announce(self, round_id: int, body: pb.SignedBody, *, finished: bool = False) -> None:
        """Publish a round's announcement (under the lock; waiters are woken). `finished`: the end of the run."""
        with self.condition:
            if finished:
                self._finished = True
            self._announcement = (round_id, body)
            self.condition.notify_all()

    def all_saw_finish(self) -> bool:
        """Every client with a session has received the end-of-run announcement."""
        with self.condition:
            return self._finished and set(self._sessions) <= self._saw_finish

    @property
    def stopped(self) -> bool:
        return self._stopped

    def stop(self) -> None:
        with self.condition:
            self._stopped = True
            self.condition.notify_all()

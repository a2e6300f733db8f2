"""The coordinator: enrolment, round sampling, the two secure sums per round with per-stage
deadlines, the DP mode, the global update, checkpoints and the audit log. Transport-free: the
gRPC servicer (service.py) calls `enrol`, `get_round`, `submit` and `fetch`; `run` drives rounds.

Concurrency: one driver thread runs rounds; request threads only validate messages and hand them
to the open stage under one condition variable. A stage closes when every expected client has
answered or at its deadline; whoever is missing is a dropout. Crypto-heavy closing steps run
outside the lock while no stage is open, so late messages are refused, never half-applied.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from mrff_secure.config import ModelConfig
from mrff_secure.data.schema import PublicSchema
from mrff_secure.dp.config import min_survivors
from mrff_secure.errors import (
    AggregationAborted,
    AuthenticationError,
    CheckpointError,
    ConfigError,
    PrivacyError,
    ProtocolViolation,
    SecAggError,
)
from mrff_secure.federation import evaluation_sum
from mrff_secure.federation.client_encoding import decode_counts, decode_sum
from mrff_secure.federation.client_update import (
    RoundSpec,
    apply_decoded,
    build_global,
    model_config_json,
    plan_configs,
    public_rotation_seed,
    round_plans,
    suppressed_groups,
)
from mrff_secure.federation.roles import Role, parameter_roles
from mrff_secure.federation.update_vector import UpdateLayout
from mrff_secure.secagg import messages, packing, primitives
from mrff_secure.secagg.config import MAX_CLIENT_ID, SecAggConfig
from mrff_secure.secagg.context import NONCE_BYTES, SessionContext, run_context_id
from mrff_secure.secagg.identity import ClientCredential, verify_credential
from mrff_secure.secagg.encoding import from_ring
from mrff_secure.secagg.server import ServerSession
from mrff_secure.wire import signing, tensors
from mrff_secure.wire.v1 import coordinator_pb2 as pb
from server import checkpoint
from server.audit import AuditLog, read_records, software_version
from server.privacy import NetworkLedger, round_release
from server.errors import (
    BadSignature,
    EnrolmentRefused,
    Malformed,
    NotParticipant,
    Replay,
    RoundAborted,
    ShuttingDown,
    WrongLength,
    WrongRound,
    WrongStage,
)

log = logging.getLogger("mrff.server")

COUNTS, UPDATE, EVALUATION = pb.COUNTS, pb.UPDATE, pb.EVALUATION
PHASE_NAMES = {COUNTS: "counts", UPDATE: "update", EVALUATION: "evaluation"}
EVALUATION_SESSION_BASE = 1 << 40  # secagg round ids of the evaluation sums: 2^40 + round (never 2r, 2r + 1)
STAGE_NAMES = {pb.ADVERTISE_KEYS: "advertise_keys", pb.REVEAL_SEED: "reveal_seed", pb.SHARE_KEYS: "share_keys",
               pb.MASKED_INPUT: "masked_input", pb.CONSISTENCY_CHECK: "consistency_check", pb.UNMASK: "unmask",
               pb.OUTCOME: "outcome"}
EXPECTED_MESSAGE = {pb.ADVERTISE_KEYS: messages.AdvertiseKeys, pb.REVEAL_SEED: messages.SeedReveal,
                    pb.SHARE_KEYS: messages.ShareKeys, pb.MASKED_INPUT: messages.MaskedInput,
                    pb.CONSISTENCY_CHECK: messages.ConsistencySignature, pb.UNMASK: messages.UnmaskResponse}


@dataclass(frozen=True)
class ServerSettings:
    """How the coordinator runs rounds (saved in the run folder; `--resume` reads it back)."""

    rounds: int = 3
    seed: int = 0
    client_fraction: float = 1.0
    min_clients: int = 3
    secure: bool = True
    train_timeout: float = 120.0  # announcement -> advertise keys of the counts phase (local training)
    stage_timeout: float = 30.0  # every other stage
    dp_delta: float = 1e-5
    max_dropout_fraction: float = 0.3  # distributed DP: noise sized for ceil(n * (1 - f)) survivors
    num_neighbours: int | None = None
    threshold: int | None = None
    eval_every: int = 1  # federated evaluation every this many rounds (and at the last)

    def __post_init__(self) -> None:
        if isinstance(self.eval_every, bool) or not isinstance(self.eval_every, int) or self.eval_every < 1:
            raise ConfigError(f"--eval-every must be an int >= 1, got {self.eval_every!r}")
        if self.rounds < 0:
            raise ConfigError(f"rounds must be >= 0, got {self.rounds}")
        if self.min_clients < 3:
            raise ConfigError(f"min_clients must be >= 3 (secure aggregation needs 3), got {self.min_clients}")
        if not 0.0 < self.client_fraction <= 1.0:
            raise ConfigError(f"client_fraction must be in (0, 1], got {self.client_fraction}")
        for name in ("train_timeout", "stage_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.max_dropout_fraction < 1.0:
            raise ConfigError(f"max_dropout_fraction must be in [0, 1), got {self.max_dropout_fraction}")

    def secagg_options(self) -> dict[str, int]:
        return {k: v for k, v in (("num_neighbours", self.num_neighbours), ("threshold", self.threshold)) if v is not None}

    def evaluates(self, round_id: int) -> bool:
        """Round `round_id` ends with a federated evaluation of the model it started from."""
        return round_id % self.eval_every == 0 or round_id == self.rounds - 1


def _evaluation_text(evaluation: dict[str, Any] | None) -> str:
    """', validation AUC 0.6821 LogLoss 0.6512 (starting model, 8 clients)' for the round's line."""
    if not evaluation:
        return ""
    if not evaluation.get("available"):
        return ", evaluation failed"
    val = evaluation["val"]
    auc = "n/a" if val["auc"] is None else f"{val['auc']:.4f}"
    loss = "n/a" if val["log_loss"] is None else f"{val['log_loss']:.4f}"
    return f", validation AUC {auc} LogLoss {loss} (starting model, {evaluation['clients']} clients)"


def evaluation_config(num_clients: int, options: dict[str, int] | None = None) -> SecAggConfig:
    """The evaluation sum's parameters: every client can check them from the public constants alone."""
    return SecAggConfig(num_clients=num_clients, vector_length=evaluation_sum.LENGTH, max_abs=evaluation_sum.MAX_ABS,
                        **(options or {}))


class _Stopped(Exception):
    pass


@dataclass
class _Phase:
    phase: int
    config: SecAggConfig
    secagg_round_id: int
    nonce: bytes
    session: ServerSession | None = None
    stage: int | None = None  # the stage accepting submissions; None between stages
    expected: set[int] = field(default_factory=set)
    received: set[int] = field(default_factory=set)
    outbox: dict[int, dict[int, bytes]] = field(default_factory=dict)  # stage -> client -> server message
    plain: dict[int, np.ndarray] = field(default_factory=dict)
    dropouts: dict[str, list[int]] = field(default_factory=dict)
    survivors: tuple[int, ...] = ()


@dataclass
class _Round:
    round_id: int
    participants: tuple[int, ...]
    spec: RoundSpec
    announcement: pb.SignedBody
    phases: dict[int, _Phase] = field(default_factory=dict)
    current_phase: int | None = None
    phase_start: pb.SignedBody | None = None
    announcement_evaluates: bool = False  # the announcement carries evaluation parameters
    evaluation_open: bool = False  # the evaluation phase accepts inputs
    outcome: pb.RoundOutcome | None = None


def secagg_parameters(config: SecAggConfig, secagg_round_id: int, nonce: bytes) -> pb.SecAggParameters:
    return pb.SecAggParameters(secagg_round_id=secagg_round_id, num_clients=config.num_clients,
                               vector_length=config.vector_length, max_abs=config.max_abs,
                               modulus_bits=config.bits, num_neighbours=config.k, threshold=config.t,
                               session_nonce=nonce)


class Coordinator:
    """One training run's server state. `run()` plays the rounds; the other public methods are
    called by request threads."""

    def __init__(self, run_dir: Path, settings: ServerSettings, model_config: ModelConfig, schema: PublicSchema,
                 spec: RoundSpec, signing_key, *, authority_public_key: bytes, resume: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.settings, self.model_config, self.base_spec = settings, model_config, spec
        self._signing_key = signing_key
        self.authority_public_key = bytes(authority_public_key)  # the identity authority (credentials)
        self.model, params = build_global(model_config, schema, settings.seed)  # no user data: the public schema
        self.schema_digest, self.schema_summary = schema.digest(), schema.describe()
        self.layout = UpdateLayout.from_model(self.model)
        self._cond = threading.Condition()
        self._stopped = False
        self._sessions: dict[int, bytes] = {}
        self._active: set[int] = set()
        self._round: _Round | None = None
        self._outcomes: dict[int, pb.RoundOutcome] = {}
        self._announcement: tuple[int, pb.SignedBody] | None = None
        self._wire = {"received": 0, "sent": 0, "calls": 0}  # protobuf message bytes of the current round
        self._finished = False
        self._saw_finish: set[int] = set()
        self.error: BaseException | None = None
        self.config_digest = hashlib.sha256(json.dumps(
            {"settings": dataclasses.asdict(settings), "spec": dataclasses.asdict(spec),
             "model_config": model_config_json(model_config), "schema": self.schema_digest},
            sort_keys=True).encode()).hexdigest()
        self.audit = AuditLog(self.run_dir / "audit.jsonl", signing_key, config_digest=self.config_digest)
        if resume and self.audit.finished:
            raise ConfigError(f"the run in {self.run_dir} has finished (its audit log ends with a signed run_finished): "
                              "it is not resumed; start a new run in another --run-dir")
        if resume:
            params, meta = checkpoint.load(self.run_dir)
            self._restore(params, meta)
            self._restore_enrolments()
            self.audit.append({"type": "resumed", "next_round": self.next_round, "model_digest": self.model_digest(),
                               "repaired": self.audit.repaired}, sync=True)
        else:
            if (self.run_dir / checkpoint.FILENAME).exists():
                raise ConfigError(f"{self.run_dir} already holds a run; use --resume {self.run_dir} or a new folder")
            self.run_id = secrets.token_hex(8)
            self.params = params
            self.next_round = 0
            self.last_completed = -1
            groups = self.layout.num_groups
            self.group_fractions = (torch.full((self.layout.num_blocks, groups), 1.0 / groups,
                                               dtype=next(iter(params.values())).dtype) if groups else None)
            self.ledger = NetworkLedger(delta=settings.dp_delta)
            self._identities: dict[int, bytes] = {}
            self._checkpoint()
            self.audit.append({"type": "run_started", "run_id": self.run_id, "settings": dataclasses.asdict(settings),
                               "spec": dataclasses.asdict(spec), "model_config": model_config_json(model_config),
                               "model_digest": self.model_digest(), "software": software_version(),
                               "config_digest": self.config_digest}, sync=True)

    # ------------------------------------------------------------------ state
    def model_digest(self) -> str:
        return tensors.digest(self.params).hex()

    def _checkpoint(self) -> None:
        meta: dict[str, Any] = {
            "run_id": self.run_id, "next_round": self.next_round, "last_completed_round": self.last_completed,
            "group_fractions": None if self.group_fractions is None else self.group_fractions.tolist(),
            "ledger": self.ledger.state_dict(), "rng": {"sampling": "numpy.default_rng([seed, round])",
                                                        "seed": self.settings.seed},
            "identities": {str(c): k.hex() for c, k in sorted(self._identities.items())},
            "model_digest": self.model_digest(), "model_config": model_config_json(self.model_config),
        }
        checkpoint.save(self.run_dir, self.params, meta)

    def _restore(self, params: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        if list(params) != list(self.params_template()):
            raise CheckpointError(f"{self.run_dir}: checkpoint parameters do not match the model")
        for name, (shape, dtype) in self.params_template().items():
            if tuple(params[name].shape) != shape or params[name].dtype != dtype:
                raise CheckpointError(f"{self.run_dir}: parameter {name} has the wrong shape or dtype")
        if meta.get("model_config") != model_config_json(self.model_config):
            raise CheckpointError(f"{self.run_dir}: the checkpoint was made with another model configuration")
        self.params = params
        if tensors.digest(params).hex() != meta.get("model_digest"):
            raise CheckpointError(f"{self.run_dir}: checkpoint parameters do not match their recorded digest")
        self.run_id = str(meta["run_id"])
        self.next_round = int(meta["next_round"])
        self.last_completed = int(meta["last_completed_round"])
        fractions = meta.get("group_fractions")
        dtype = next(iter(params.values())).dtype
        self.group_fractions = None if fractions is None else torch.tensor(fractions, dtype=dtype)
        self.ledger = NetworkLedger(delta=self.settings.dp_delta)
        self.ledger.load_state_dict(meta["ledger"])
        self._identities = {int(c): bytes.fromhex(k) for c, k in meta.get("identities", {}).items()}

    def _restore_enrolments(self) -> None:
        """Bindings made after the last checkpoint are in the audit log ("enrolled" records): a resumed
        server keeps every (client id -> identity key) it ever accepted in this run."""
        for record in read_records(self.audit.path):
            if record.get("type") == "enrolled":
                self._identities.setdefault(int(record["client"]), bytes.fromhex(record["identity_key"]))

    def params_template(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {n: (tuple(t.shape), t.dtype) for n, t in self._template.items()}

    @property
    def _template(self) -> dict[str, torch.Tensor]:
        roles = parameter_roles(self.model)
        return {n: p for n, p in self.model.named_parameters() if roles[n] is not Role.PRIVATE}

    # -------------------------------------------------------------- requests
    def enrol(self, client_id: int, public_key: bytes, proof: bytes, credential: bytes) -> bytes:
        if not 0 <= client_id <= MAX_CLIENT_ID:
            raise Malformed(f"client id {client_id} is outside [0, {MAX_CLIENT_ID}]")
        if len(public_key) != primitives.PUBLIC_KEY_BYTES:
            raise Malformed(f"identity key must be {primitives.PUBLIC_KEY_BYTES} bytes, got {len(public_key)}")
        try:
            certified = verify_credential(self.authority_public_key, ClientCredential.from_bytes(credential),
                                          client_id=client_id)
        except ProtocolViolation as exc:
            raise EnrolmentRefused(f"no readable credential from the identity authority: {exc}") from exc
        except AuthenticationError as exc:
            raise EnrolmentRefused(f"the credential is not the identity authority's statement for client "
                                   f"{client_id}") from exc
        if not hmac.compare_digest(certified, public_key):
            raise EnrolmentRefused(f"the credential of client {client_id} certifies another identity key")
        try:
            primitives.verify(public_key, proof, signing.enrol_payload(client_id, public_key))
        except AuthenticationError as exc:
            raise BadSignature("enrolment proof does not verify under the identity key") from exc
        with self._cond:
            known = self._identities.get(client_id)
            if known is not None and not hmac.compare_digest(known, public_key):
                raise EnrolmentRefused(f"client id {client_id} is already bound to another identity key in this run")
            if known is None:  # a new binding: audited with its credential, so a resumed server keeps it
                self._identities[client_id] = public_key
                self.audit.append({"type": "enrolled", "client": client_id, "identity_key": public_key.hex(),
                                   "credential": bytes(credential).hex()})
            token = secrets.token_bytes(32)
            self._sessions[client_id] = token
            self._active.add(client_id)
            self._cond.notify_all()
        return token

    def authenticate(self, client_id: int, token: bytes) -> bool:
        with self._cond:
            expected = self._sessions.get(client_id)
            if expected is None or not hmac.compare_digest(expected, token):
                return False
            self._active.add(client_id)
            return True

    def _wait(self, deadline: float) -> bool:
        """Wait on the condition until notified or the deadline; False once the deadline passed."""
        if self._stopped:
            raise ShuttingDown("the coordinator is shutting down")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self._cond.wait(remaining)
        return True

    def get_round(self, after_round: int, wait: float, client_id: int | None = None) -> pb.SignedBody | None:
        deadline = time.monotonic() + wait
        with self._cond:
            while True:
                if self._announcement is not None and self._announcement[0] > after_round:
                    if self._finished and client_id is not None:
                        self._saw_finish.add(client_id)
                    return self._announcement[1]
                if not self._wait(deadline):
                    return None

    def submit(self, client_id: int, round_id: int, phase: int, stage: int, payload: bytes) -> None:
        with self._cond:
            rs = self._round
            if rs is None or rs.outcome is not None or rs.round_id != round_id:
                current = "none" if rs is None or rs.outcome is not None else rs.round_id
                raise WrongRound(f"round {round_id} is not running (current round: {current})")
            if client_id not in rs.participants:
                raise NotParticipant(f"client {client_id} is not a participant of round {round_id}")
            ps = rs.phases.get(phase)
            if ps is None or rs.current_phase != phase:
                raise WrongStage(f"phase {PHASE_NAMES.get(phase, phase)} is not open in round {round_id}")
            if stage not in EXPECTED_MESSAGE:
                raise WrongStage(f"stage {stage} takes no client messages")
            if ps.stage != stage:
                open_stage = STAGE_NAMES.get(ps.stage, "none (closing)") if ps.stage is not None else "none (closing)"
                raise WrongStage(f"stage {STAGE_NAMES[stage]} is not open (open: {open_stage})")
            if client_id not in ps.expected:
                raise NotParticipant(f"client {client_id} is not expected at stage {STAGE_NAMES[stage]} "
                                     "(it dropped out of an earlier stage)")
            if client_id in ps.received:
                raise Replay(f"client {client_id} already answered stage {STAGE_NAMES[stage]}")
            try:
                message = messages.decode(payload)
            except ProtocolViolation as exc:
                raise Malformed(f"payload does not parse: {exc}") from exc
            if type(message) is not EXPECTED_MESSAGE[stage]:
                raise Malformed(f"stage {STAGE_NAMES[stage]} takes {EXPECTED_MESSAGE[stage].__name__}, "
                                f"got {type(message).__name__}")
            if message.client_id != client_id:
                raise NotParticipant(f"client {client_id} sent a message in the name of client {message.client_id}")
            if message.round_id != ps.secagg_round_id:
                raise WrongRound(f"message is for secagg round {message.round_id}, expected {ps.secagg_round_id}")
            if isinstance(message, messages.MaskedInput) and (
                    message.length != ps.config.vector_length or message.modulus_bits != ps.config.bits):
                raise WrongLength(f"vector of {message.length} values x {message.modulus_bits} bits, expected "
                                  f"{ps.config.vector_length} x {ps.config.bits}")
            try:
                if ps.session is None:  # plain aggregation
                    ps.plain[client_id] = packing.unpack(message.payload, message.modulus_bits, message.length)
                else:
                    receive = {pb.ADVERTISE_KEYS: ps.session.receive_advertise_keys,
                               pb.REVEAL_SEED: ps.session.receive_seed_reveal,
                               pb.SHARE_KEYS: ps.session.receive_share_keys,
                               pb.MASKED_INPUT: ps.session.receive_masked_input,
                               pb.CONSISTENCY_CHECK: ps.session.receive_consistency_signature,
                               pb.UNMASK: ps.session.receive_unmask_response}[stage]
                    receive(message)
            except AuthenticationError as exc:
                raise BadSignature(f"stage {STAGE_NAMES[stage]}: signature does not verify") from exc
            except SecAggError as exc:
                raise Malformed(f"stage {STAGE_NAMES[stage]}: {exc}") from exc
            ps.received.add(client_id)
            if ps.received >= ps.expected:
                self._cond.notify_all()

    def fetch(self, client_id: int, round_id: int, phase: int, stage: int, wait: float) -> tuple[str, Any] | None:
        deadline = time.monotonic() + wait
        with self._cond:
            while True:
                if stage == pb.OUTCOME and round_id in self._outcomes:
                    return "outcome", self._outcomes[round_id]
                rs = self._round
                if rs is None or rs.round_id != round_id:
                    raise WrongRound(f"round {round_id} is not running")
                if client_id not in rs.participants:
                    raise NotParticipant(f"client {client_id} is not a participant of round {round_id}")
                if phase not in (COUNTS, UPDATE, EVALUATION):
                    raise Malformed(f"unknown phase {phase}")
                if stage == pb.OUTCOME:
                    pass
                elif phase == UPDATE and stage == pb.ADVERTISE_KEYS:
                    if rs.phase_start is not None:
                        return "phase_start", rs.phase_start
                elif phase == EVALUATION and stage == pb.ADVERTISE_KEYS:
                    if not rs.announcement_evaluates:
                        raise WrongStage(f"round {round_id} has no evaluation")
                    if rs.evaluation_open:
                        return "payload", b""  # nothing to read: the phase is open, send your keys
                elif stage in (pb.REVEAL_SEED, pb.SHARE_KEYS, pb.MASKED_INPUT, pb.CONSISTENCY_CHECK, pb.UNMASK):
                    ps = rs.phases.get(phase)
                    box = None if ps is None else ps.outbox.get(stage)
                    if box is not None:
                        if client_id not in box:
                            raise NotParticipant(f"client {client_id} has no part in stage {STAGE_NAMES[stage]} "
                                                 "(dropped out of an earlier stage)")
                        return "payload", box[client_id]
                else:
                    raise WrongStage(f"stage {stage} has nothing to fetch in phase {PHASE_NAMES[phase]}")
                if rs.outcome is not None and not rs.outcome.completed:
                    raise RoundAborted(f"round {round_id} was aborted: {rs.outcome.reason}")
                if not self._wait(deadline):
                    return None

    def count_bytes(self, received: int, sent: int) -> None:
        """Message bytes of one call (protobuf payloads, without gRPC/HTTP2/TLS framing)."""
        with self._cond:
            self._wire["received"] += received
            self._wire["sent"] += sent
            self._wire["calls"] += 1

    def record_rejection(self, client_id: int | None, method: str, status: str, reason: str) -> None:
        rs = self._round
        self.audit.append({"type": "rejected", "client": client_id, "method": method, "status": status,
                           "reason": reason[:500], "round": None if rs is None else rs.round_id})

    def all_saw_finish(self) -> bool:
        """Every client enrolled with this server process has received the end-of-run announcement."""
        with self._cond:
            return self._finished and set(self._sessions) <= self._saw_finish

    @property
    def stopped(self) -> bool:
        return self._stopped

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    # ---------------------------------------------------------------- rounds
    def run(self) -> None:
        """Play the remaining rounds, then announce the end. Returns when done or stopped."""
        try:
            while self.next_round < self.settings.rounds:
                self._play_round(self.next_round)
            final = self._body(self.next_round, (), None, finished=True)
            with self._cond:
                self._finished = True
            self._announce(self.next_round, final)
            self.audit.append({"type": "run_finished", "rounds": self.next_round, "model_digest": self.model_digest()},
                              sync=True)
        except (_Stopped, ShuttingDown):
            log.info("coordinator stopped")
        except BaseException as exc:  # surfaced by the command; the process must not hang silently
            self.error = exc
            log.exception("coordinator failed")
            raise

    def _sign(self, body) -> pb.SignedBody:
        data = body.SerializeToString()
        return pb.SignedBody(body=data, signature=signing.sign_body(self._signing_key, data))

    def _announce(self, round_id: int, body: pb.SignedBody) -> None:
        with self._cond:
            self._announcement = (round_id, body)
            self._cond.notify_all()

    def _body(self, round_id: int, participants: tuple[int, ...], spec: RoundSpec | None, *,
              finished: bool = False, configs: tuple[SecAggConfig, SecAggConfig] | None = None,
              nonces: tuple[bytes, ...] = (b"", b""), evaluation: SecAggConfig | None = None) -> pb.SignedBody:
        body = pb.RoundBody(run_id=self.run_id, round_id=round_id, finished=finished,
                            last_completed_round=self.last_completed, secure=self.settings.secure)
        if not finished and spec is not None and configs is not None:
            body.participants.extend(participants)
            body.parameters.extend(tensors.to_proto(self.params))
            if self.group_fractions is not None:
                body.group_fractions.extend(self.group_fractions.reshape(-1).tolist())
            body.num_blocks, body.num_groups = self.layout.num_blocks, self.layout.num_groups
            body.counts_secagg.CopyFrom(secagg_parameters(configs[0], 2 * round_id, nonces[0]))
            body.update_secagg.CopyFrom(secagg_parameters(configs[1], 2 * round_id + 1, nonces[1]))
            if evaluation is not None:
                body.evaluation_secagg.CopyFrom(secagg_parameters(evaluation, EVALUATION_SESSION_BASE + round_id,
                                                                  nonces[2]))
            body.dp.CopyFrom(pb.DPParameters(mode=spec.dp_mode, clip=spec.clip, noise_multiplier=spec.noise_multiplier,
                                             min_survivors=spec.min_survivors, mechanism=spec.mechanism,
                                             modulus_bits=spec.modulus_bits, count_cap=spec.count_cap))
            body.training.CopyFrom(pb.TrainingParameters(local_steps=spec.local_steps, optimizer=spec.optimizer,
                                                         lr=spec.lr, model_seed=self.settings.seed,
                                                         model_config_json=model_config_json(self.model_config)))
            body.min_group_size = spec.min_group_size
            body.model_digest = tensors.digest(self.params)
            body.schema_digest, body.schema_summary = self.schema_digest, self.schema_summary
        return self._sign(body)

    def _sample(self, round_id: int) -> tuple[int, ...]:
        """Wait for enough active clients, then sample (reproducibly from the seed and the round)."""
        with self._cond:
            while True:
                eligible = sorted(self._active & set(self._sessions))
                if len(eligible) >= self.settings.min_clients:
                    break
                self._wait(time.monotonic() + 1.0)
        if self.settings.client_fraction >= 1.0:
            return tuple(eligible)
        rng = np.random.default_rng([self.settings.seed, round_id])
        k = max(self.settings.min_clients, int(round(len(eligible) * self.settings.client_fraction)))
        return tuple(int(c) for c in np.sort(rng.choice(eligible, size=min(k, len(eligible)), replace=False)))

    def _play_round(self, r: int) -> None:
        participants = self._sample(r)
        n = len(participants)
        spec = dataclasses.replace(self.base_spec, min_survivors=min_survivors(n, self.settings.max_dropout_fraction))
        started = time.perf_counter()
        cpu0 = time.process_time()
        plans = round_plans(spec, self.layout, n)
        configs = plan_configs(plans, n, options=self.settings.secagg_options())
        nonces = tuple(secrets.token_bytes(NONCE_BYTES) for _ in range(3))  # fresh per session
        evaluation = evaluation_config(n, self.settings.secagg_options()) if self.settings.evaluates(r) else None
        rs = _Round(r, participants, spec, self._body(r, participants, spec, configs=configs, nonces=nonces,
                                                      evaluation=evaluation), announcement_evaluates=evaluation is not None)
        evaluated_model = self.model_digest() if evaluation is not None else ""  # the round's starting model
        with self._cond:
            self._round = rs
            self._wire = {"received": 0, "sent": 0, "calls": 0}

        def announce() -> None:  # under the lock, once the counts phase accepts inputs
            self._announcement = (r, rs.announcement)

        record: dict[str, Any] = {"type": "round", "round": r, "participants": list(participants),
                                  "secure": self.settings.secure, "dp_mode": spec.dp_mode, "phases": {}}
        try:
            ring1, survivors1 = self._phase(rs, COUNTS, configs[0], 2 * r, nonces[0], set(participants),
                                            self.settings.train_timeout, record, on_open=announce)
            seed = self.settings.seed
            if plans.counts is not None:  # the phase-1 sum, decoded (noisy under DP) and rounded to counts >= 0
                counts = decode_counts(plans, ring1, survivors=len(survivors1),
                                       rotation_seed=public_rotation_seed(seed, r, COUNTS))
            else:
                counts = np.zeros((0, 0), dtype=np.int64)
            suppressed = suppressed_groups(counts.reshape(-1), self.layout, spec.min_group_size)
            start = self._sign(pb.UpdatePhaseBody(run_id=self.run_id, round_id=r, group_counts=counts.reshape(-1).tolist()))

            def publish_start() -> None:  # runs under the lock once the phase's first stage is open
                rs.phase_start = start

            ring2, survivors2 = self._phase(rs, UPDATE, configs[1], 2 * r + 1, nonces[1], set(survivors1),
                                            self.settings.stage_timeout, record, on_open=publish_start)
            summed = decode_sum(plans.update, ring2, survivors=len(survivors2),
                                rotation_seed=public_rotation_seed(seed, r, UPDATE))
            applied = apply_decoded(self.params, self.layout, summed, survivors=len(survivors2),
                                    phase1_survivors=len(survivors1), counts=counts, suppressed=suppressed)
        except (SecAggError, ConfigError, PrivacyError) as exc:  # aborted, or a sum that cannot be used
            outcome = pb.RoundOutcome(round_id=r, completed=False, reason=f"{type(exc).__name__}: {exc}")
            record.update(type="round_aborted", reason=str(exc), model_digest=self.model_digest())
        else:
            self.params = applied.params
            self.group_fractions = applied.group_fractions
            self.last_completed = r
            epsilon = self.ledger.record_round(round_release(spec, self.layout, n))
            outcome = pb.RoundOutcome(round_id=r, completed=True, survivors=len(survivors2))
            record.update(group_counts=applied.group_counts.tolist(), suppressed=suppressed.astype(int).tolist(),
                          examples=round(applied.examples, 3), model_digest=self.model_digest(), epsilon=epsilon)
            if evaluation is not None:
                record["evaluation"] = self._evaluate(rs, evaluation, nonces[2], survivors2, record,
                                                      evaluated_model)
        with self._cond:
            wire = dict(self._wire)
        record.update(seconds=round(time.perf_counter() - started, 4),
                      server_cpu_seconds=round(time.process_time() - cpu0, 4),
                      wire_bytes={**wire, "per_participant": round((wire["received"] + wire["sent"]) / n, 1),
                                  "announcement": len(rs.announcement.body) + len(rs.announcement.signature)})
        self.next_round = r + 1
        self._checkpoint()
        self.audit.append(record, sync=True)
        with self._cond:
            rs.outcome = outcome
            rs.current_phase = None
            self._outcomes[r] = outcome
            for old in [k for k in self._outcomes if k < r - 8]:
                del self._outcomes[old]
            self._cond.notify_all()
        dropouts = sorted({c for phase in record["phases"].values() for stage in phase["dropouts"].values() for c in stage})
        eps = record.get("epsilon", {}).get("epsilon") if outcome.completed else None
        print(f"[ROUND {r}] {'completed' if outcome.completed else 'ABORTED: ' + outcome.reason}: {n} participants, "
              f"{len(dropouts)} dropped, {record['seconds']:.2f} s"
              + (f", epsilon so far {eps if isinstance(eps, str) else format(eps, '.4g')}" if eps is not None else "")
              + _evaluation_text(record.get("evaluation")), flush=True)

    def _evaluate(self, rs: _Round, config: SecAggConfig, nonce: bytes, survivors: tuple[int, ...], record: dict,
                  evaluated_model: str) -> dict[str, Any]:
        """The federated evaluation of the model round `rs` started from, over the update phase's survivors:
        a secure sum of their held-out score histograms (evaluation_sum). Its failure leaves the round
        completed (the model step is already decided) and is recorded, not raised."""

        def open_phase() -> None:  # under the lock, once the phase's first stage is open
            rs.evaluation_open = True

        out: dict[str, Any] = {"evaluated_model": evaluated_model, "outside_the_guarantee": evaluation_sum.OUTSIDE_THE_GUARANTEE}
        try:
            ring, clients = self._phase(rs, EVALUATION, config, EVALUATION_SESSION_BASE + rs.round_id, nonce,
                                        set(survivors), self.settings.stage_timeout, record, on_open=open_phase)
            splits = evaluation_sum.decode(from_ring(ring.astype(np.uint64), config.bits))
        except (SecAggError, ConfigError) as exc:
            log.warning("round %d: federated evaluation failed: %s", rs.round_id, exc)
            out.update(available=False, reason=f"{type(exc).__name__}: {exc}")
            return out
        out.update(available=True, clients=len(clients), **{split: e.to_json() for split, e in splits.items()})
        return out

    # ---------------------------------------------------------------- stages
    def _stage(self, ps: _Phase, record: dict, stage: int, expected: set[int], timeout: float,
               outbox: dict[int, bytes] | None = None, on_open: Callable[[], None] | None = None) -> set[int]:
        """Open the stage, then publish its server messages (a client that reads them can answer at
        once), and wait for the expected clients or the deadline."""
        opened = time.monotonic()
        deadline = opened + timeout
        with self._cond:
            ps.stage, ps.expected, ps.received = stage, set(expected), set()
            if outbox is not None:
                ps.outbox[stage] = outbox
            if on_open is not None:
                on_open()
            self._cond.notify_all()
            while not ps.received >= ps.expected:
                if self._stopped:
                    raise _Stopped()
                if not self._wait(deadline):
                    break
            ps.stage = None
            missing = sorted(ps.expected - ps.received)
            received = set(ps.received)
            for c in missing:
                self._active.discard(c)  # until its next call: a dead client is not sampled again
        entry = record["phases"].setdefault(PHASE_NAMES[ps.phase], {"dropouts": {}, "stage_seconds": {}})
        entry["dropouts"][STAGE_NAMES[stage]] = missing
        entry["stage_seconds"][STAGE_NAMES[stage]] = round(time.monotonic() - opened, 4)  # open -> last answer
        return received

    def _phase(self, rs: _Round, phase: int, config: SecAggConfig, secagg_round_id: int, nonce: bytes,
               expected: set[int], first_timeout: float, record: dict, on_open: Callable[[], None] | None = None
               ) -> tuple[np.ndarray, tuple[int, ...]]:
        ps = _Phase(phase, config, secagg_round_id, nonce)
        if self.settings.secure:
            context = SessionContext(run_context_id(self.run_id), phase, secagg_round_id, nonce)
            ps.session = ServerSession(config, context=context, authority_public_key=self.authority_public_key,
                                       participants=expected)
        with self._cond:
            rs.phases[phase] = ps
            rs.current_phase = phase
        timeout = self.settings.stage_timeout
        spec = rs.spec
        if not self.settings.secure:
            got = self._stage(ps, record, pb.MASKED_INPUT, expected, first_timeout, on_open=on_open)
            survivors = tuple(sorted(got))
            self._check_survivors(phase, spec, len(survivors), config)
            total = np.zeros(config.vector_length, dtype=np.uint64)
            for c in survivors:
                total += ps.plain[c]
            total &= np.uint64((1 << config.bits) - 1)
            record["phases"][PHASE_NAMES[phase]]["survivors"] = list(survivors)
            return total.astype(np.int64), survivors
        session = ps.session
        self._stage(ps, record, pb.ADVERTISE_KEYS, expected, first_timeout, on_open=on_open)
        participant_set = session.close_advertise_keys()
        listed_participants = participant_set.to_bytes()
        ids = set(participant_set.client_ids)
        self._stage(ps, record, pb.REVEAL_SEED, ids, timeout, {c: listed_participants for c in ids})
        neighbourhoods = session.close_reveal_seed()
        self._stage(ps, record, pb.SHARE_KEYS, ids, timeout, {c: m.to_bytes() for c, m in neighbourhoods.items()})
        deliveries = session.close_share_keys()
        self._stage(ps, record, pb.MASKED_INPUT, set(deliveries), timeout,
                    {c: d.to_bytes() for c, d in deliveries.items()})
        survivor_list = session.close_masked_input()
        self._check_survivors(phase, spec, len(survivor_list.survivors), config)
        listed = survivor_list.to_bytes()
        self._stage(ps, record, pb.CONSISTENCY_CHECK, set(survivor_list.survivors), timeout,
                    {c: listed for c in survivor_list.survivors})
        requests = session.close_consistency_check()
        self._stage(ps, record, pb.UNMASK, set(requests), timeout, {c: q.to_bytes() for c, q in requests.items()})
        result = session.finish()
        record["phases"][PHASE_NAMES[phase]]["survivors"] = list(result.survivors)
        return result.ring_sum.astype(np.int64), result.survivors

    def _check_survivors(self, phase: int, spec: RoundSpec, survivors: int, config: SecAggConfig) -> None:
        if survivors < 1:
            raise AggregationAborted(f"no client sent its {PHASE_NAMES[phase]} input")
        if phase == UPDATE and spec.dp_mode == "distributed" and survivors < spec.min_survivors:
            raise AggregationAborted(f"{survivors} survivors carry less noise than the {spec.min_survivors} "
                                     "the distributed DP mode was sized for; nothing is released")

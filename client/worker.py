"""One logical client: its own connection, keys and private state; it trains and drives the
secure-aggregation client state machine through each round (the protocol and round logic; the
network side, retries and the classification of connection failures are in client/transport.py).

It refuses any round whose signed parameters do not verify under the server's signing key. Server
restarted (session unknown): the transport enrols again and we pick up the current round. Each
process prints one line per round on stdout for its logical clients: "[ROUND n] users 0-3: ...".
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, TextIO

import grpc
import numpy as np
import torch

from mrff_secure.config import ModelConfig
from mrff_secure.data.client_data import ClientData
from mrff_secure.data.schema import PublicSchema
from mrff_secure.errors import (AggregationAborted, AuthenticationError, ConfigError, ConnectionFailed, MrffError,
                                 PrivacyError, SecAggError)
from mrff_secure.federation import evaluation_sum
from mrff_secure.federation.client_encoding import counts_upload, secure_generator, update_upload
from mrff_secure.federation.client_update import (
    RoundSpec,
    build_global,
    counts_input,
    evaluate_user,
    initial_private,
    public_rotation_seed,
    round_plans,
    suppressed_groups,
    update_vector,
    model_config_from_json,
    torch_seed,
    train_user,
)
from mrff_secure.model.roles import Role, parameter_roles
from mrff_secure.federation.update_vector import UpdateLayout
from mrff_secure.secagg import messages, packing, primitives
from mrff_secure.secagg.client import ClientSession
from mrff_secure.secagg.config import SecAggConfig
from mrff_secure.secagg.context import SessionContext, run_context_id
from mrff_secure.secagg.policy import PolicyViolation
from mrff_secure.secagg.encoding import from_ring, to_ring
from mrff_secure.wire import limits, signing, tensors
from mrff_secure.wire.v1 import coordinator_pb2 as pb
from client.policy import ClientPolicy
from client.state import UserStore
from client.transport import ClientFailure, Connection, Reconnected, Transport

__all__ = ["ClientFailure", "Connection", "FaultInjection", "LogicalClient", "ProcessShared", "RoundReporter",
           "parse_pause", "parse_users", "run_process"]

log = logging.getLogger("mrff.client")

STAGE_BY_NAME = {"advertise_keys": pb.ADVERTISE_KEYS, "share_keys": pb.SHARE_KEYS, "masked_input": pb.MASKED_INPUT,
                 "consistency_check": pb.CONSISTENCY_CHECK, "unmask": pb.UNMASK}
PHASE_BY_NAME = {"counts": pb.COUNTS, "update": pb.UPDATE}
POLL_MS = 10_000
_DP_OFF_WARNED = threading.Event()


class _RoundFailed(Exception):
    """This round cannot go on for us (aborted, dropped, refused); wait for the next one."""


@dataclass
class ProcessShared:
    """What the logical clients of one process share: the dataset, one model per configuration, and
    a lock around local training (torch's global RNG seeds dropout, so training is serialized)."""

    data: ClientData
    train_lock: threading.Lock = field(default_factory=threading.Lock)
    _models: dict = field(default_factory=dict)
    schema_digest: str = field(init=False)  # of our own data: a server announcing another schema is refused
    schema_summary: str = field(init=False)

    def __post_init__(self) -> None:
        schema = PublicSchema.of(self.data)
        self.schema_digest, self.schema_summary = schema.digest(), schema.describe()

    def model(self, config: ModelConfig, seed: int):
        key = (repr(config), seed)
        with self.train_lock:
            if key not in self._models:
                model, params = build_global(config, self.data, seed)
                roles = parameter_roles(model)
                private = {n: (tuple(p.shape), p.dtype) for n, p in model.named_parameters() if roles[n] is Role.PRIVATE}
                shared = {n: (tuple(t.shape), t.dtype) for n, t in params.items()}
                self._models[key] = (model, UpdateLayout.from_model(model), shared, private)
            return self._models[key]


@dataclass(frozen=True)
class FaultInjection:
    """Testing hook: after submitting (round, phase, stage), stop and call `on_pause` (the test
    then kills the process). None of it runs unless `mrff client --pause-after` is given."""

    round_id: int
    phase: int
    stage: int
    on_pause: Callable[[int], None]


@dataclass
class RoundResult:
    """What one logical client did in one round, for the round's line."""

    participants: tuple[int, ...]
    started: float
    ended: float = 0.0
    examples: float = 0.0
    uploaded: int = 0  # bytes of the payloads we submitted
    status: str = "completed"  # or "aborted: ...", "refused: ...", "interrupted: ..."


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def _ids(users: Iterable[int]) -> str:
    users = sorted(users)
    if len(users) == 1:
        return f"user {users[0]}"
    if users == list(range(users[0], users[-1] + 1)):
        return f"users {users[0]}-{users[-1]}"
    return f"users {','.join(map(str, users))}" if len(users) <= 6 else f"{len(users)} users"


class RoundReporter:
    """One stdout line per round for the logical clients of this process, once each of them that the
    round sampled is done with it (or when a later round or the end of the process comes first):
    "[ROUND 3] users 0-3: trained 160 examples, uploaded 4.8 MiB, 2.1 s"."""

    def __init__(self, users: Iterable[int], out: TextIO | None = None) -> None:
        self.users = frozenset(users)
        self.out = out
        self._lock = threading.Lock()
        self._pending: dict[int, dict[int, RoundResult]] = {}

    def record(self, round_id: int, user: int, result: RoundResult) -> None:
        with self._lock:
            self._pending.setdefault(round_id, {})[user] = result
            for older in sorted(r for r in self._pending if r < round_id):
                self._emit(older)
            expected = self.users.intersection(result.participants)
            if expected <= set(self._pending[round_id]):
                self._emit(round_id)

    def flush(self) -> None:
        with self._lock:
            for round_id in sorted(self._pending):
                self._emit(round_id)

    def _emit(self, round_id: int) -> None:
        results = self._pending.pop(round_id)
        done = list(results.values())
        seconds = max(r.ended for r in done) - min(r.started for r in done)
        line = (f"[ROUND {round_id}] {_ids(results)}: trained {sum(r.examples for r in done):.0f} examples, "
                f"uploaded {_size(sum(r.uploaded for r in done))}, {seconds:.1f} s")
        failed = [r.status for r in done if r.status != "completed"]
        if failed:
            reason = failed[0] if len(failed[0]) <= 120 else failed[0][:117] + "..."
            line += f"; {len(failed)} of {len(done)} not completed, {reason}" if len(done) > 1 else f"; {reason}"
        print(line, file=self.out or sys.stdout, flush=True)


class LogicalClient:
    def __init__(self, user: int, connection: Connection, store: UserStore, shared: ProcessShared, *,
                 client_seed: int, fault: FaultInjection | None = None, stop: threading.Event | None = None,
                 policy: ClientPolicy | None = None, reproducible_noise: bool = False,
                 reporter: RoundReporter | None = None) -> None:
        self.user = user
        self.connection = connection
        self.store = store
        self.shared = shared
        self.client_seed = client_seed
        self.policy = policy if policy is not None else ClientPolicy()
        self.reproducible_noise = reproducible_noise  # debugging only: noise from client_seed, NOT private
        self._masked_rounds: set[tuple[str, int]] = set()  # (run id, round) we sent an input for
        self.fault = fault
        self.stop = stop or threading.Event()
        self.reporter = reporter
        self.identity = store.identity_key()
        self.identity_public = primitives.identity_public_bytes(self.identity)
        self.credential = store.credential(connection.authority_public_key)  # refuses to start without one
        self.transport = Transport(user, connection, stop=self.stop, enrol_request=self._enrol_request)
        self.rounds_played = 0
        self._result: RoundResult | None = None  # the round being played

    # ------------------------------------------------------------------ rpc
    def _enrol_request(self) -> pb.EnrolRequest:
        proof = primitives.sign(self.identity, signing.enrol_payload(self.user, self.identity_public))
        return pb.EnrolRequest(protocol_version=limits.PROTOCOL_VERSION, client_id=self.user,
                               identity_public_key=self.identity_public, proof=proof,
                               credential=self.credential.to_bytes(),
                               skips_evaluation=not self.policy.join_evaluation)

    def enrol(self) -> None:
        self.transport.enrol()

    def close(self) -> None:
        self.transport.close()

    def _submit(self, body: pb.RoundBody, phase: int, stage: int, message: messages.Message) -> None:
        payload = message.to_bytes()
        try:
            self.transport.call("Submit", pb.SubmitRequest(round_id=body.round_id, phase=phase, stage=stage,
                                                           payload=payload), timeout=60.0)
        except grpc.RpcError as exc:
            raise _RoundFailed(f"submit {pb.Stage.Name(stage)}: {exc.code().name}: {exc.details()}") from exc
        if self._result is not None:
            self._result.uploaded += len(payload)
        fault = self.fault
        if fault is not None and (fault.round_id, fault.phase, fault.stage) == (body.round_id, phase, stage):
            fault.on_pause(self.user)
            self.stop.wait()
            raise ClientFailure("paused by fault injection")

    def _fetch(self, body: pb.RoundBody, phase: int, stage: int) -> pb.FetchReply:
        while True:
            try:
                reply = self.transport.call("Fetch", pb.FetchRequest(round_id=body.round_id, phase=phase, stage=stage,
                                                                     wait_ms=POLL_MS), timeout=POLL_MS / 1000 + 30)
            except grpc.RpcError as exc:
                raise _RoundFailed(f"fetch {pb.Stage.Name(stage)}: {exc.code().name}: {exc.details()}") from exc
            if not reply.pending:
                return reply

    def _verified(self, signed: pb.SignedBody, message_type):
        signing.verify_body(self.connection.signing_key, signed.body, signed.signature)
        return message_type.FromString(signed.body)

    # --------------------------------------------------------------- rounds
    def run(self) -> None:
        """Enrol, then play every round this client is sampled for, until the server says finished."""
        self.enrol()
        after = -1
        while True:
            try:
                try:
                    reply = self.transport.call("GetRound", pb.GetRoundRequest(after_round=after, wait_ms=POLL_MS),
                                                timeout=POLL_MS / 1000 + 30)
                except grpc.RpcError as exc:
                    raise ClientFailure(f"user {self.user}: the server refused GetRound: {exc.code().name}: "
                                        f"{exc.details()}") from exc
                if reply.pending:
                    continue
                body = self._verified(reply.round, pb.RoundBody)
                after = body.round_id
                self.store.resolve(body.last_completed_round)
                if body.finished:
                    log.info("user %d: run finished after round %d", self.user, body.last_completed_round)
                    return
                if self.user in body.participants:
                    self._play_reported(body)
            except Reconnected:
                after = -1  # the restarted server may replay a round we saw: take part again
            except _RoundFailed as exc:
                log.info("user %d: round %d: %s", self.user, after, exc)
                self.store.discard()
            except AuthenticationError as exc:
                raise ClientFailure(f"user {self.user}: refusing the server: {exc}") from exc

    def _play_reported(self, body: pb.RoundBody) -> None:
        """_play, and this client's part of the round's line (not for a client that gives up)."""
        result = self._result = RoundResult(tuple(body.participants), time.monotonic())
        try:
            self._play(body)
        except _RoundFailed as exc:
            result.status = f"refused: {exc}" if str(exc).startswith("refusing") else f"failed: {exc}"
            self._report(body, result)
            raise
        except Reconnected:
            result.status = "interrupted: the server restarted"
            self._report(body, result)
            raise
        finally:
            self._result = None
        self._report(body, result)

    def _report(self, body: pb.RoundBody, result: RoundResult) -> None:
        result.ended = time.monotonic()
        if self.reporter is not None and not self.stop.is_set():
            self.reporter.record(body.round_id, self.user, result)

    def _check_schema(self, body: pb.RoundBody) -> None:
        """The server's model must be built for our data (catalogue, user fields, history length): another
        schema is a different deployment, or a misconfigured one; no round of it is played, ever."""
        if body.schema_digest != self.shared.schema_digest:
            theirs = body.schema_summary or "(not announced)"
            raise ClientFailure(f"user {self.user}: refusing the server: its data schema differs from ours; "
                                f"server: {theirs}; this client: {self.shared.schema_summary}")

    def _play(self, body: pb.RoundBody) -> None:
        self._check_schema(body)
        config = model_config_from_json(body.training.model_config_json)
        model, layout, shared_template, private_template = self.shared.model(config, body.training.model_seed)
        try:
            params = tensors.from_proto(body.parameters, shared_template)
        except MrffError as exc:
            raise AuthenticationError(f"round {body.round_id}: parameters do not match the model: {exc}") from exc
        if tensors.digest(params) != body.model_digest:
            raise AuthenticationError(f"round {body.round_id}: parameters do not match the signed digest")
        if (body.num_blocks, body.num_groups) != (layout.num_blocks, layout.num_groups):
            raise AuthenticationError("announced group layout does not match the model")
        try:
            spec = RoundSpec(local_steps=body.training.local_steps, optimizer=body.training.optimizer,
                             lr=body.training.lr, dp_mode=body.dp.mode, clip=body.dp.clip,
                             noise_multiplier=body.dp.noise_multiplier, min_survivors=max(body.dp.min_survivors, 1),
                             mechanism=body.dp.mechanism, modulus_bits=body.dp.modulus_bits,
                             count_cap=body.dp.count_cap, min_group_size=body.min_group_size)
            # Our own policy decides, before we train or reveal anything (the signature only says who proposed it).
            self.policy.check_round(secure=body.secure, spec=spec)
        except (ConfigError, PolicyViolation) as exc:
            raise _RoundFailed(f"refusing round {body.round_id}: {exc}") from exc
        if spec.dp_mode == "off" and body.secure and not _DP_OFF_WARNED.is_set():
            _DP_OFF_WARNED.set()  # once per process, not once per logical client
            log.warning("user %d: the server runs with DP off: secure aggregation alone protects this client only "
                        "against an honest-but-curious server (SECURITY.md)", self.user)
        round_key = (body.run_id, body.round_id)
        if round_key in self._masked_rounds:
            # A second session for a round we already masked an input for would let the server difference
            # two sums over different participant sets that both hold our (nearly identical) update.
            raise _RoundFailed(f"refusing round {body.round_id} of run {body.run_id}: we already sent an input "
                               "for it in another session")
        dtype = next(iter(params.values())).dtype
        fractions = (torch.tensor(list(body.group_fractions), dtype=dtype).reshape(layout.num_blocks, layout.num_groups)
                     if layout.num_groups else None)
        private = self.store.load_private(private_template)
        r = body.round_id
        with self.shared.train_lock:  # the model object is shared: read and train it one thread at a time
            if private is None:
                private = initial_private(model, self.shared.data, config, body.training.model_seed, self.user)
            # The federated evaluation scores the model we received, with our private part before training.
            evaluation_input = (evaluation_sum.client_vector(evaluate_user(model, params, private, self.shared.data,
                                                                           self.user))
                                if body.HasField("evaluation_secagg") and self.policy.join_evaluation else None)
            update = train_user(model, params, private, self.shared.data, self.user, fractions, spec, config,
                                torch_seed(self.client_seed, r, self.user))
        if self._result is not None:
            self._result.examples = float(update.num_examples.sum())
        self.store.save_pending(r, update.private)
        try:
            # Computed by us from the public parameters: the announced lengths and ranges must match.
            plans = round_plans(spec, layout, len(body.participants))
        except (ConfigError, PrivacyError) as exc:
            raise _RoundFailed(f"refusing round {r}: its privacy parameters are impossible: {exc}") from exc
        if plans.counts is not None:
            counts = counts_upload(plans, counts_input(layout, update), rng=self._generator(r, pb.COUNTS),
                                   rotation_seed=public_rotation_seed(body.training.model_seed, r, pb.COUNTS))
        else:
            counts = np.zeros(1, dtype=np.int64)  # no groups: phase 1 sums nothing, it only fixes the survivors
        noise_survivors = spec.min_survivors if spec.dp_mode == "distributed" else 0
        counts_session = self._phase(body, pb.COUNTS, body.counts_secagg, counts, plans,
                                     noise_survivors=noise_survivors)
        start = self._fetch(body, pb.UPDATE, pb.ADVERTISE_KEYS)
        phase_body = self._verified(start.phase_start, pb.UpdatePhaseBody)
        if phase_body.round_id != r or phase_body.run_id != body.run_id:
            raise AuthenticationError("phase parameters are for another round")
        group_counts = np.asarray(list(phase_body.group_counts), dtype=np.int64)
        if group_counts.size != layout.num_blocks * layout.num_groups:
            raise AuthenticationError("phase-1 group counts have the wrong size")
        phase1_survivors = None if counts_session is None else counts_session.signed_survivors
        if spec.dp_mode == "off" and phase1_survivors is not None and layout.num_groups:
            # Exact counts: every block's counts add up to the survivors we signed (a cheap check of a lie;
            # a server that moves counts between groups is not caught: see SECURITY.md).
            per_block = group_counts.reshape(layout.num_blocks, layout.num_groups).sum(axis=1)
            if np.any(per_block != len(phase1_survivors)):
                raise _RoundFailed(f"refusing round {r}: the phase-1 counts add up to {per_block.tolist()} per block, "
                                   f"but {len(phase1_survivors)} clients survived phase 1")
        # We decide which slots to zero, from the phase-1 counts and the minimum group size our policy accepted.
        suppressed = suppressed_groups(group_counts, layout, spec.min_group_size)
        vector = update_upload(plans, update_vector(layout, update, suppressed, spec.count_cap),
                               rng=self._generator(r, pb.UPDATE),
                               rotation_seed=public_rotation_seed(body.training.model_seed, r, pb.UPDATE))
        update_session = self._phase(body, pb.UPDATE, body.update_secagg, vector, plans, allowed=phase1_survivors,
                                     noise_survivors=noise_survivors)
        if evaluation_input is not None:
            self._evaluation(body, evaluation_input, None if update_session is None else update_session.signed_survivors)
        outcome = self._fetch(body, pb.UPDATE, pb.OUTCOME).outcome
        if outcome.completed:
            self.store.commit(r)
            self.rounds_played += 1
        else:
            self.store.discard()
            log.info("user %d: round %d aborted: %s", self.user, r, outcome.reason)
            if self._result is not None:
                self._result.status = f"aborted: {outcome.reason}"

    def _evaluation(self, body: pb.RoundBody, scores: np.ndarray, update_survivors: tuple[int, ...] | None) -> None:
        """Our held-out scores through the evaluation's secure sum, among the update phase's survivors. Its
        failure costs the round nothing: the update is already in the server's sum."""
        try:
            self._fetch(body, pb.EVALUATION, pb.ADVERTISE_KEYS)  # the phase is open
            self._phase(body, pb.EVALUATION, body.evaluation_secagg, scores, None, allowed=update_survivors)
        except _RoundFailed as exc:
            log.info("user %d: round %d: the federated evaluation failed: %s", self.user, body.round_id, exc)

    def _generator(self, round_id: int, phase: int) -> np.random.Generator:
        """The generator of this client's rounding and noise: OS entropy, unless reproducible noise was
        asked for (a debugging switch: such a run is not private, and says so)."""
        if not self.reproducible_noise:
            return secure_generator()
        return np.random.default_rng([self.client_seed, round_id, phase, self.user])

    def _phase(self, body: pb.RoundBody, phase: int, params: pb.SecAggParameters, residues: np.ndarray,
               plans, *, allowed: tuple[int, ...] | None = None, noise_survivors: int = 0) -> ClientSession | None:
        """Run one secure sum of our ring residues; returns the finished client session (None without secagg)."""
        try:
            config = SecAggConfig(num_clients=params.num_clients, vector_length=params.vector_length,
                                  max_abs=params.max_abs, modulus_bits=params.modulus_bits,
                                  num_neighbours=params.num_neighbours, threshold=params.threshold)
        except ConfigError as exc:
            raise AuthenticationError(f"announced secure-aggregation parameters are invalid: {exc}") from exc
        n = len(body.participants)
        if phase == pb.EVALUATION:  # fixed by the public encoding (evaluation_sum), the modulus sized to fit
            expected = (n, evaluation_sum.LENGTH, evaluation_sum.MAX_ABS,
                        SecAggConfig(num_clients=n, vector_length=evaluation_sum.LENGTH,
                                     max_abs=evaluation_sum.MAX_ABS).bits)
        else:
            plan, plan_max_abs = ((plans.counts, plans.counts_max_abs) if phase == pb.COUNTS else
                                  (plans.update, plans.update_max_abs))
            expected = ((n, 1, 1, config.bits) if plan is None else
                        (n, plan.padded_dim, plan_max_abs, plan.modulus_bits))
        announced = (config.num_clients, config.vector_length, config.max_abs, config.bits)
        if announced != expected or residues.size != config.vector_length:
            raise _RoundFailed(f"refusing round {body.round_id}: announced (clients, length, max_abs, modulus bits) "
                               f"{announced} differ from {expected}, computed from the round's public parameters")
        signed = from_ring(np.asarray(residues, dtype=np.int64).astype(np.uint64), config.bits)  # centred
        sid = params.secagg_round_id
        if not body.secure:
            self._masked_rounds.add((body.run_id, body.round_id))
            ring = to_ring(signed, config.bits, max_abs=config.max_abs)
            self._submit(body, phase, pb.MASKED_INPUT, messages.MaskedInput(
                sid, self.user, config.bits, config.vector_length, packing.pack(ring, config.bits)))
            return None
        try:
            context = SessionContext(run_context_id(body.run_id), phase, sid, bytes(params.session_nonce))
            session = ClientSession(config, context=context, client_id=self.user, identity_key=self.identity,
                                    credential=self.credential,
                                    authority_public_key=self.connection.authority_public_key,
                                    policy=self.policy.session_policy(config, noise_survivors=noise_survivors),
                                    allowed_participants=allowed)
            self._submit(body, phase, pb.ADVERTISE_KEYS, session.advertise_keys())
            participants = messages.ParticipantSet.from_bytes(self._fetch(body, phase, pb.REVEAL_SEED).payload)
            self._submit(body, phase, pb.REVEAL_SEED, session.reveal_seed(participants))
            neighbourhood = messages.Neighbourhood.from_bytes(self._fetch(body, phase, pb.SHARE_KEYS).payload)
            self._submit(body, phase, pb.SHARE_KEYS, session.share_keys(neighbourhood))
            delivery = messages.ShareDelivery.from_bytes(self._fetch(body, phase, pb.MASKED_INPUT).payload)
            masked = session.masked_input(delivery, signed)
            self._masked_rounds.add((body.run_id, body.round_id))  # from here on a sum may hold our input
            self._submit(body, phase, pb.MASKED_INPUT, masked)
            survivors = messages.SurvivorList.from_bytes(self._fetch(body, phase, pb.CONSISTENCY_CHECK).payload)
            self._submit(body, phase, pb.CONSISTENCY_CHECK, session.consistency_check(survivors))
            request = messages.UnmaskRequest.from_bytes(self._fetch(body, phase, pb.UNMASK).payload)
            self._submit(body, phase, pb.UNMASK, session.unmask(request))
        except (AggregationAborted, SecAggError, ConfigError) as exc:
            raise _RoundFailed(f"secure aggregation refused or aborted: {exc}") from exc
        return session


def parse_users(text: str) -> list[int]:
    """'0-99', '3,5,7' or '0-9,20' -> sorted unique ids."""
    users: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError(part)
                users.update(range(lo, hi + 1))
            elif part:
                users.add(int(part))
    except ValueError as exc:
        raise ConfigError(f"--users must look like 0-99 or 1,2,5, got {text!r}") from exc
    if not users or min(users) < 0:
        raise ConfigError(f"--users must name non-negative ids, got {text!r}")
    return sorted(users)


def parse_pause(text: str) -> tuple[int, int, int]:
    """'ROUND:PHASE:STAGE', e.g. '1:update:share_keys'."""
    try:
        r, phase, stage = text.split(":")
        return int(r), PHASE_BY_NAME[phase], STAGE_BY_NAME[stage]
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"--pause-after must be ROUND:{{counts,update}}:STAGE, got {text!r}") from exc


def run_process(users: list[int], connection: Connection, state_dir: Path, data: ClientData, *,
                client_seed: int, pause: tuple[int, int, int] | None = None, policy: ClientPolicy | None = None,
                reproducible_noise: bool = False) -> int:
    """Run every logical client of this process in its own thread; 0 if all finished the run."""
    torch.set_num_threads(1)
    if max(users) >= data.num_users:
        raise ConfigError(f"user {max(users)} does not exist: the dataset has {data.num_users} users")
    shared = ProcessShared(data)
    stop = threading.Event()
    failures: list[str] = []
    paused: set[int] = set()
    pause_lock = threading.Lock()

    def on_pause(user: int) -> None:
        with pause_lock:
            paused.add(user)
            if len(paused) == len(users):
                print(f"PAUSED users={len(users)}", flush=True)

    fault = None if pause is None else FaultInjection(*pause, on_pause=on_pause)

    reporter = RoundReporter(users)
    clients: list[LogicalClient] = []
    clients_lock = threading.Lock()
    unreachable: list[ConnectionFailed] = []

    def give_up(exc: ConnectionFailed) -> None:
        """The server cannot be reached: the other logical clients cannot reach it either; stop them now
        (closing a channel ends the calls in flight on it)."""
        with clients_lock:
            unreachable.append(exc)
            stop.set()
            for client in clients:
                client.close()

    def body(user: int) -> None:
        client = None
        try:
            client = LogicalClient(user, connection, UserStore(state_dir, user), shared, client_seed=client_seed,
                                   fault=fault, stop=stop, policy=policy, reproducible_noise=reproducible_noise,
                                   reporter=reporter)
            with clients_lock:
                clients.append(client)
            if stop.is_set():
                raise ClientFailure(f"user {user}: stopped")
            client.run()
        except ConnectionFailed as exc:
            give_up(exc)
        except ClientFailure as exc:
            failures.append(str(exc))
        except MrffError as exc:
            failures.append(f"user {user}: {exc}")
        except Exception as exc:  # noqa: BLE001 - reported, not swallowed; the traceback with -v
            log.info("user %d failed", user, exc_info=True)
            failures.append(f"user {user}: {type(exc).__name__}: {exc}")
        finally:
            if client is not None:
                client.close()

    threads = [threading.Thread(target=body, args=(u,), name=f"user-{u}", daemon=True) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reporter.flush()
    if unreachable:
        raise unreachable[0]  # one line: the cause, the same for every logical client of this process
    if failures:
        raise ClientFailure(f"{len(failures)} of {len(users)} logical clients failed; first: {failures[0]}")
    return 0

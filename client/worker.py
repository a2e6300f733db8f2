"""One logical client: its own connection, keys and private state; it trains and drives the
secure-aggregation client state machine through each round.

It refuses a server whose TLS certificate does not chain to the given CA (the channel never
connects) and any round whose signed parameters do not verify under the server's signing key.
Unreachable server: reconnect with exponential backoff and jitter. Server restarted (session
unknown): enrol again and pick up the current round.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import grpc
import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mrff_secure.config import ModelConfig
from mrff_secure.data.client_data import ClientData
from mrff_secure.errors import AggregationAborted, AuthenticationError, ConfigError, MrffError, PrivacyError, SecAggError
from mrff_secure.federation.client_encoding import counts_upload, secure_generator, update_upload
from mrff_secure.federation.client_update import (
    RoundSpec,
    build_global,
    counts_input,
    initial_private,
    public_rotation_seed,
    round_plans,
    suppressed_groups,
    update_vector,
    model_config_from_json,
    torch_seed,
    train_user,
)
from mrff_secure.federation.roles import Role, parameter_roles
from mrff_secure.federation.update_vector import UpdateLayout
from mrff_secure.secagg import messages, packing, primitives
from mrff_secure.secagg.client import ClientSession
from mrff_secure.secagg.config import SecAggConfig
from mrff_secure.secagg.context import SessionContext, run_context_id
from mrff_secure.secagg.policy import PolicyViolation
from mrff_secure.secagg.encoding import from_ring, to_ring
from mrff_secure.wire import limits, signing, tensors
from mrff_secure.wire.v1 import coordinator_pb2 as pb
from mrff_secure.wire.v1 import coordinator_pb2_grpc as pb_grpc
from client.policy import ClientPolicy
from client.state import UserStore

log = logging.getLogger("mrff.client")

STAGE_BY_NAME = {"advertise_keys": pb.ADVERTISE_KEYS, "share_keys": pb.SHARE_KEYS, "masked_input": pb.MASKED_INPUT,
                 "consistency_check": pb.CONSISTENCY_CHECK, "unmask": pb.UNMASK}
PHASE_BY_NAME = {"counts": pb.COUNTS, "update": pb.UPDATE}
POLL_MS = 10_000
_DP_OFF_WARNED = threading.Event()


class ClientFailure(MrffError):
    """A logical client gave up (server unreachable, enrolment refused, untrustworthy server)."""


class _Reconnected(Exception):
    """The server forgot our session (it restarted): we enrolled again."""


class _RoundFailed(Exception):
    """This round cannot go on for us (aborted, dropped, refused); wait for the next one."""


@dataclass
class ProcessShared:
    """What the logical clients of one process share: the dataset, one model per configuration, and
    a lock around local training (torch's global RNG seeds dropout, so training is serialized)."""

    data: ClientData
    train_lock: threading.Lock = field(default_factory=threading.Lock)
    _models: dict = field(default_factory=dict)

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
class Connection:
    target: str
    credentials: grpc.ChannelCredentials | None  # None: insecure (only with --insecure)
    signing_key: Ed25519PublicKey
    authority_public_key: bytes  # the identity authority's raw Ed25519 key: peers' credentials verify under it
    retry_timeout: float = 120.0
    server_name: str | None = None  # TLS name override (the certificate's host name)


@dataclass(frozen=True)
class FaultInjection:
    """Testing hook: after submitting (round, phase, stage), stop and call `on_pause` (the test
    then kills the process). None of it runs unless `mrff client --pause-after` is given."""

    round_id: int
    phase: int
    stage: int
    on_pause: Callable[[int], None]


class LogicalClient:
    def __init__(self, user: int, connection: Connection, store: UserStore, shared: ProcessShared, *,
                 client_seed: int, fault: FaultInjection | None = None, stop: threading.Event | None = None,
                 policy: ClientPolicy | None = None, reproducible_noise: bool = False) -> None:
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
        self.identity = store.identity_key()
        self.identity_public = primitives.identity_public_bytes(self.identity)
        self.credential = store.credential(connection.authority_public_key)  # refuses to start without one
        options = limits.client_options()
        if connection.server_name:
            options.append(("grpc.ssl_target_name_override", connection.server_name))
        if connection.credentials is None:
            self.channel = grpc.insecure_channel(connection.target, options=options)
        else:
            self.channel = grpc.secure_channel(connection.target, connection.credentials, options=options)
        self.stub = pb_grpc.CoordinatorStub(self.channel)
        self.session = b""
        self.rounds_played = 0

    # ------------------------------------------------------------------ rpc
    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return ((limits.META_CLIENT, str(self.user)), (limits.META_SESSION, self.session.hex()))

    def _call(self, method, request, *, timeout: float, enrol: bool = False):
        delay, started = 0.2, time.monotonic()
        while True:
            if self.stop.is_set():
                raise ClientFailure(f"user {self.user}: stopped")
            try:
                if enrol:
                    return method(request, timeout=timeout)
                return method(request, timeout=timeout, metadata=self._metadata())
            except grpc.RpcError as exc:
                code = exc.code()
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
                    if time.monotonic() - started > self.connection.retry_timeout:
                        raise ClientFailure(
                            f"user {self.user}: server {self.connection.target} unreachable for "
                            f"{self.connection.retry_timeout:.0f}s ({code.name}: {exc.details()}); if the server is "
                            "up, check the CA certificate and the server name") from exc
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 5.0)
                    continue
                if code == grpc.StatusCode.UNAUTHENTICATED and not enrol and "session" in (exc.details() or ""):
                    self.enrol()
                    raise _Reconnected() from exc
                raise

    def enrol(self) -> None:
        request = pb.EnrolRequest(protocol_version=limits.PROTOCOL_VERSION, client_id=self.user,
                                  identity_public_key=self.identity_public,
                                  proof=primitives.sign(self.identity, signing.enrol_payload(self.user, self.identity_public)),
                                  credential=self.credential.to_bytes())
        try:
            reply = self._call(self.stub.Enrol, request, timeout=30.0, enrol=True)
        except grpc.RpcError as exc:
            raise ClientFailure(f"user {self.user}: enrolment refused: {exc.code().name}: {exc.details()}") from exc
        self.session = reply.session_token

    def _submit(self, body: pb.RoundBody, phase: int, stage: int, message: messages.Message) -> None:
        try:
            self._call(self.stub.Submit, pb.SubmitRequest(round_id=body.round_id, phase=phase, stage=stage,
                                                          payload=message.to_bytes()), timeout=60.0)
        except grpc.RpcError as exc:
            raise _RoundFailed(f"submit {pb.Stage.Name(stage)}: {exc.code().name}: {exc.details()}") from exc
        fault = self.fault
        if fault is not None and (fault.round_id, fault.phase, fault.stage) == (body.round_id, phase, stage):
            fault.on_pause(self.user)
            self.stop.wait()
            raise ClientFailure("paused by fault injection")

    def _fetch(self, body: pb.RoundBody, phase: int, stage: int) -> pb.FetchReply:
        while True:
            try:
                reply = self._call(self.stub.Fetch, pb.FetchRequest(round_id=body.round_id, phase=phase, stage=stage,
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
                reply = self._call(self.stub.GetRound, pb.GetRoundRequest(after_round=after, wait_ms=POLL_MS),
                                   timeout=POLL_MS / 1000 + 30)
                if reply.pending:
                    continue
                body = self._verified(reply.round, pb.RoundBody)
                after = body.round_id
                self.store.resolve(body.last_completed_round)
                if body.finished:
                    log.info("user %d: run finished after round %d", self.user, body.last_completed_round)
                    return
                if self.user in body.participants:
                    self._play(body)
            except _Reconnected:
                after = -1  # the restarted server may replay a round we saw: take part again
            except _RoundFailed as exc:
                log.info("user %d: round %d: %s", self.user, after, exc)
                self.store.discard()
            except AuthenticationError as exc:
                raise ClientFailure(f"user {self.user}: refusing the server: {exc}") from exc

    def _play(self, body: pb.RoundBody) -> None:
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
            update = train_user(model, params, private, self.shared.data, self.user, fractions, spec, config,
                                torch_seed(self.client_seed, r, self.user))
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
        self._phase(body, pb.UPDATE, body.update_secagg, vector, plans, allowed=phase1_survivors,
                    noise_survivors=noise_survivors)
        outcome = self._fetch(body, pb.UPDATE, pb.OUTCOME).outcome
        if outcome.completed:
            self.store.commit(r)
            self.rounds_played += 1
        else:
            self.store.discard()
            log.info("user %d: round %d aborted: %s", self.user, r, outcome.reason)

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
        plan, plan_max_abs = ((plans.counts, plans.counts_max_abs) if phase == pb.COUNTS else
                              (plans.update, plans.update_max_abs))
        expected = ((len(body.participants), 1, 1, config.bits) if plan is None else
                    (len(body.participants), plan.padded_dim, plan_max_abs, plan.modulus_bits))
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

    def body(user: int) -> None:
        try:
            LogicalClient(user, connection, UserStore(state_dir, user), shared, client_seed=client_seed,
                          fault=fault, stop=stop, policy=policy, reproducible_noise=reproducible_noise).run()
        except ClientFailure as exc:
            failures.append(str(exc))
        except MrffError as exc:
            failures.append(f"user {user}: {exc}")
        except Exception as exc:  # noqa: BLE001 - reported, not swallowed
            log.exception("user %d failed", user)
            failures.append(f"user {user}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=body, args=(u,), name=f"user-{u}", daemon=True) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise ClientFailure(f"{len(failures)} of {len(users)} logical clients failed; first: {failures[0]}")
    return 0

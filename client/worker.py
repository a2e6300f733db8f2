"""One logical client: its own connection, keys and private state; it trains and drives the
secure-aggregation client state machine through each round (the protocol and round logic; the
network side, retries and the classification of connection failures are in client/transport.py).

It refuses any round whose signed parameters do not verify under the server's signing key, or that its own
policy or its own privacy ledger (client/ledger.py: one release per input, the epsilon cap) forbids. Server
restarted (session unknown): the transport enrols again and we pick up the current round. Each
process prints one line per round on stdout for its logical clients: "[ROUND n] users 0-3: ...".
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import grpc
import numpy as np
import torch
from google.protobuf.message import Message

from client.ledger import ClientLedger, LedgerRefusal
from client.policy import ClientPolicy
from client.proposal import (
    accepted_spec,
    announced_evaluation_release,
    check_exact_counts,
    check_schema,
    phase1_counts,
    verified_deployment,
    verified_parameters,
)
from client.receipts import record_receipt
from client.report import RoundReporter, RoundResult
from client.round_calls import POLL_MS, RoundCalls, RoundFailed
from client.secure_sums import OnRelease, SecureSums
from client.state import UserStore
from client.transport import ClientFailure, Connection, Reconnected, Transport
from mrff_secure.config import ModelConfig
from mrff_secure.errors import AuthenticationError, ConfigError, PrivacyError
from mrff_secure.federation import evaluation_sum
from mrff_secure.federation.client_update import (
    LocalUpdate,
    evaluate_user,
    initial_private,
    model_config_from_json,
    torch_seed,
    train_user,
)
from mrff_secure.round.accountant import Release
from mrff_secure.round.encoding import round_plans
from mrff_secure.round.participant import (
    group_one_hots,
    suppressed_groups,
    update_vectors,
)
from mrff_secure.round.release import network_round_release
from mrff_secure.round.spec import Phase, RoundSpec
from mrff_secure.round.update_vector import UpdateLayout
from mrff_secure.secagg import primitives
from mrff_secure.secagg.policy import PolicyViolation
from mrff_secure.wire import limits, signing
from mrff_secure.wire.v1 import coordinator_pb2 as pb

if TYPE_CHECKING:
    from client.process import FaultInjection, ProcessShared

__all__ = ["ClientFailure", "Connection", "LogicalClient"]


@dataclass(frozen=True)
class TrainedInput:
    """A round's input, derived once: the trained update and the evaluation scores of the received model."""

    update: LocalUpdate
    evaluation_input: np.ndarray | None


log = logging.getLogger("mrff.client")
BodyT = TypeVar("BodyT", bound=Message)  # a signed body's message type


class LogicalClient:
    def __init__(
        self,
        user: int,
        connection: Connection,
        store: UserStore,
        shared: ProcessShared,
        *,
        client_seed: int,
        fault: FaultInjection | None = None,
        stop: threading.Event | None = None,
        policy: ClientPolicy | None = None,
        reproducible_noise: bool = False,
        reporter: RoundReporter | None = None,
    ) -> None:
        self.user = user
        self.connection = connection
        self.store = store
        self.shared = shared
        self.client_seed = client_seed
        self.policy = policy if policy is not None else ClientPolicy()
        self.reproducible_noise = reproducible_noise  # debugging only: noise from client_seed, NOT private
        self.fault = fault
        self.stop = stop or threading.Event()
        self.reporter = reporter
        self.identity = store.identity_key()
        self.identity_public = primitives.identity_public_bytes(self.identity)
        self.credential = store.credential(connection.authority_public_key)  # refuses to start without one
        self.transport = Transport(
            user,
            connection,
            stop=self.stop,
            enrol_request=self._enrol_request,
            on_enrolled=self._check_deployment,
            waiting=shared.waiting,
        )
        self.calls = RoundCalls(
            user, self.transport, stop=self.stop, fault=fault, on_upload=self._count_upload, identity_key=self.identity
        )
        self.sums = SecureSums(
            user,
            self.calls,
            identity_key=self.identity,
            credential=self.credential,
            authority_public_key=connection.authority_public_key,
            policy=self.policy,
            insecure_seed=client_seed if reproducible_noise else None,
        )
        self.ledger = ClientLedger(
            store.ledger_path,
            user=user,
            delta=self.policy.delta,
            max_epsilon=self.policy.max_epsilon,
            max_aborted_sessions=self.policy.max_aborted_sessions,
        )
        self.rounds_played = 0
        self._result: RoundResult | None = None  # the round being played
        self._derived: dict[tuple[str, int], TrainedInput] = {}  # each round's input, derived once

    def _enrol_request(self, run_id: str, nonce: bytes) -> pb.EnrolRequest:
        """Our answer to the server's challenge: the proof signs its run id and nonce with our identity key."""
        proof = primitives.sign(self.identity, signing.enrol_payload(run_id, nonce, self.user, self.identity_public))
        return pb.EnrolRequest(
            protocol_version=limits.PROTOCOL_VERSION,
            client_id=self.user,
            identity_public_key=self.identity_public,
            proof=proof,
            credential=self.credential.to_bytes(),
            skips_evaluation=not self.policy.join_evaluation,
            challenge_nonce=nonce,
            schema_digest=self.shared.schema_digest,
        )

    def _check_deployment(self, reply: pb.EnrolReply, nonce: bytes) -> None:
        """At enrolment, before we wait for any round: the server's signed deployment must be for this run, this
        client and this challenge, and its model built for our data schema (else ClientFailure, both named)."""
        deployment = verified_deployment(reply, self.connection.signing_key, user=self.user, nonce=nonce)
        check_schema(deployment, self.shared.schema_digest, self.shared.schema_summary, self.user)
        if self.shared.enrolment is not None:
            self.shared.enrolment.enrolled(self.user, reply.run_id)

    def enrol(self) -> None:
        self.transport.enrol()

    def close(self) -> None:
        self.transport.close()

    def _count_upload(self, size: int) -> None:
        if self._result is not None:
            self._result.uploaded += size

    def _verified(self, signed: pb.SignedBody, message_type: type[BodyT]) -> BodyT:
        signing.verify_body(self.connection.signing_key, signed.body, signed.signature)
        return message_type.FromString(signed.body)

    # --------------------------------------------------------------- rounds
    def run(self) -> None:
        """Enrol, then play every round this client is sampled for, until the server says finished."""
        try:
            self.enrol()
        except ClientFailure as exc:
            if "data schema" in str(exc) and "this client:" not in str(exc):  # the server refused it: name ours too
                raise ClientFailure(f"{exc}; this client: {self.shared.schema_summary}") from exc
            raise
        after = -1
        while True:
            try:
                try:
                    reply = self.transport.call(
                        "GetRound", pb.GetRoundRequest(after_round=after, wait_ms=POLL_MS), timeout=POLL_MS / 1000 + 30
                    )
                except grpc.RpcError as exc:
                    raise ClientFailure(
                        f"user {self.user}: the server refused GetRound: {exc.code().name}: {exc.details()}"
                    ) from exc
                if reply.pending:
                    continue
                body = self._verified(reply.round, pb.RoundBody)
                enrolled = self.transport.enrolled_run_id
                if body.run_id != enrolled:  # our anti-replay is pinned to the run we enrolled in, not to a label
                    raise ClientFailure(
                        f"user {self.user}: refusing the server: it announces run {body.run_id!r}, but this "
                        f"client enrolled in run {enrolled!r} (a relabelled replay is not a new run)"
                    )
                record_receipt(self.store.folder, reply.round, body)  # evidence of the audit log's head (W20)
                after = body.round_id
                self.store.resolve(body.last_completed_round)
                if body.finished:
                    if body.unfinished_reason:  # the server stopped the run early; it may resume it later
                        log.warning(
                            "user %d: the server ended the run unfinished after round %d: %s",
                            self.user,
                            body.last_completed_round,
                            body.unfinished_reason[:500],
                        )
                    else:
                        log.info("user %d: run finished after round %d", self.user, body.last_completed_round)
                    return
                if self.user in body.participants:
                    self._play_reported(body)
            except Reconnected:
                after = -1  # the restarted server may replay a round we saw: our ledger decides what we send
            except RoundFailed as exc:
                log.info("user %d: round %d: %s", self.user, after, exc)
                self.store.discard()
            except AuthenticationError as exc:
                raise ClientFailure(f"user {self.user}: refusing the server: {exc}") from exc

    def _play_reported(self, body: pb.RoundBody) -> None:
        """_play, and this client's part of the round's line (not for a client that gives up)."""
        result = self._result = RoundResult(tuple(body.participants), time.monotonic())
        try:
            self._play(body)
        except RoundFailed as exc:
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

    def _play(self, body: pb.RoundBody) -> None:
        """One round: check what the server proposes and what our ledger allows, train (once per round), then
        upload through the two secure sums (and the evaluation's), each phase's input encoded by
        `round.participant` from public parameters only and written into our ledger before it leaves."""
        check_schema(body, self.shared.schema_digest, self.shared.schema_summary, self.user)
        r, seed = body.round_id, body.training.model_seed
        try:
            config = model_config_from_json(body.training.model_config_json, self.shared.data)
        except ConfigError as exc:
            raise RoundFailed(f"refusing round {r}: its model configuration is not acceptable: {exc}") from exc
        model, layout, shared_template, private_template = self.shared.model(config, seed)
        try:  # signed but malformed: this round is refused, the client stays for the next one
            params = verified_parameters(body, layout, shared_template)
        except AuthenticationError as exc:
            raise RoundFailed(f"refusing round {r}: {exc}") from exc
        try:
            spec = accepted_spec(body, self.policy, self.user)
            # Computed by us from the public parameters: the announced lengths and ranges must match.
            plans = round_plans(spec, layout, len(body.participants))
        except (ConfigError, PolicyViolation) as exc:
            raise RoundFailed(f"refusing round {r}: {exc}") from exc
        except PrivacyError as exc:
            raise RoundFailed(f"refusing round {r}: its privacy parameters are impossible: {exc}") from exc
        if body.evaluation_only:
            self._play_final_evaluation(body, spec, model, params, private_template, config)
            return
        release = network_round_release(
            spec, layout, len(body.participants), colluding_survivors=self.policy.corrupt_neighbours
        )
        phase_releases: dict[Phase, Release] = {
            Phase.COUNTS: release.phase("counts"),
            Phase.UPDATE: release.phase("update"),
        }
        try:
            evaluation = announced_evaluation_release(body, spec, colluding_survivors=self.policy.corrupt_neighbours)
        except PolicyViolation as exc:
            raise RoundFailed(f"refusing round {r}: {exc}") from exc
        if evaluation is not None:
            phase_releases[Phase.EVALUATION] = evaluation
        try:  # the cap, for the round's training phases before anything is made (an evaluation past it gets zeros)
            epsilon_after = self.ledger.begin_session(body.run_id, r, (release,))
        except LedgerRefusal as exc:
            raise RoundFailed(f"refusing round {r}: {exc}") from exc
        for weaker in self.policy.weaker_settings():
            log.warning(
                "user %d: round %d: this client's policy is weaker than the safe default: %s", self.user, r, weaker
            )
        if self._result is not None:
            self._result.epsilon, self._result.epsilon_cap = epsilon_after, self.policy.max_epsilon
        fractions = self._group_fractions(body, layout, next(iter(params.values())).dtype)
        derived = self._derive(body, model, params, private_template, config, fractions, spec)
        on_release = self._on_release(body, phase_releases)
        update = derived.update
        if self._result is not None:
            self._result.examples = float(update.num_examples.sum())
        self.store.save_pending(r, update.private)
        if plans.counts is not None:
            counts = self.sums.upload(plans, Phase.COUNTS, group_one_hots(layout, update.routes)[0].numpy(), body)
        else:
            counts = np.zeros(1, dtype=np.int64)  # no groups: phase 1 sums nothing, it only fixes the survivors
        counts_session = self.sums.run(
            body,
            Phase.COUNTS,
            body.counts_secagg,
            counts,
            plans,
            on_release=on_release,
            noise_survivors=spec.noise_survivors,
        )
        group_counts = self._phase1_counts(body, layout.num_blocks * layout.num_groups)
        phase1_survivors = None if counts_session is None else counts_session.signed_survivors
        if spec.dp_mode == "off" and phase1_survivors is not None and layout.num_groups:
            try:
                check_exact_counts(group_counts, layout.num_blocks, len(phase1_survivors))
            except PolicyViolation as exc:
                raise RoundFailed(f"refusing round {r}: {exc}") from exc
        # We decide which slots to zero, from the phase-1 counts and the minimum group size our policy accepted.
        suppressed = (
            suppressed_groups(
                torch.as_tensor(group_counts.reshape(layout.num_blocks, layout.num_groups)), spec.min_group_size
            )
            if layout.num_groups
            else None
        )
        vectors = update_vectors(
            layout, update.deltas, update.routes, update.num_examples, suppressed=suppressed, count_cap=spec.count_cap
        )
        vector = vectors[0].detach().to(torch.float64).numpy()  # (size,)
        update_session = self.sums.run(
            body,
            Phase.UPDATE,
            body.update_secagg,
            self.sums.upload(plans, Phase.UPDATE, vector, body),
            plans,
            on_release=on_release,
            allowed=phase1_survivors,
            noise_survivors=spec.noise_survivors,
        )
        if body.HasField("evaluation_secagg"):  # our scores, or zeros if we keep them out (SecureSums.evaluation)
            self.sums.evaluation(
                body,
                spec,
                derived.evaluation_input,
                None if update_session is None else update_session.signed_survivors,
                on_release,
                scored=sum(1 for e in self.ledger.entries if (e.run_id, e.phase) == (body.run_id, "evaluation")),
            )
        if self._result is not None:
            self._result.epsilon = self.ledger.epsilon()
        self._finish(body)

    def _play_final_evaluation(
        self,
        body: pb.RoundBody,
        spec: RoundSpec,
        model: torch.nn.Module,
        params: dict[str, torch.Tensor],
        private_template: dict[str, tuple[tuple[int, ...], torch.dtype]],
        config: ModelConfig,
    ) -> None:
        """The final model's federated evaluation (a round with only an evaluation sum, `evaluation_only`): our
        held-out scores with the final model and our private part as the last completed round left it, through
        `SecureSums.evaluation` as in any round: our policy (join_evaluation, max_evaluations, exact sums) and our
        ledger (the epsilon cap: `record_release` refuses a release past it) decide whether they go in or zeros
        do. The sum is over exactly the announced participants: we unmask no shorter survivor list."""
        r = body.round_id
        if body.HasField("counts_secagg") or body.HasField("update_secagg"):
            raise RoundFailed(f"refusing round {r}: an evaluation-only round announces training sums")
        try:
            evaluation = announced_evaluation_release(body, spec, colluding_survivors=self.policy.corrupt_neighbours)
        except PolicyViolation as exc:
            raise RoundFailed(f"refusing round {r}: {exc}") from exc
        if evaluation is None:
            raise RoundFailed(f"refusing round {r}: an evaluation-only round announces no evaluation sum")
        try:  # a session of the ledger (the release itself is checked against the cap when it is recorded)
            self.ledger.begin_session(body.run_id, r, ())
        except LedgerRefusal as exc:
            raise RoundFailed(f"refusing round {r}: {exc}") from exc
        scores = None
        if self.policy.join_evaluation:
            private = self.store.load_private(private_template)
            with self.shared.train_lock:
                if private is None:
                    private = initial_private(model, self.shared.data, config, body.training.model_seed, self.user)
                scores = evaluation_sum.client_vector(
                    evaluate_user(model, params, private, self.shared.data, self.user)
                )
        self.sums.evaluation(
            body,
            spec,
            scores,
            tuple(body.participants),
            self._on_release(body, {Phase.EVALUATION: evaluation}),
            scored=sum(1 for e in self.ledger.entries if (e.run_id, e.phase) == (body.run_id, "evaluation")),
        )
        if self._result is not None:
            self._result.epsilon, self._result.epsilon_cap = self.ledger.epsilon(), self.policy.max_epsilon

    def _group_fractions(self, body: pb.RoundBody, layout: UpdateLayout, dtype: torch.dtype) -> torch.Tensor | None:
        """The announced group fractions, refused (the round, not the client) when they do not fit the layout."""
        if not layout.num_groups:
            return None
        expected = layout.num_blocks * layout.num_groups
        values = list(body.group_fractions)
        if len(values) != expected or not all(math.isfinite(v) for v in values):
            raise RoundFailed(
                f"refusing round {body.round_id}: {len(values)} group fractions announced, expected {expected} "
                "finite values"
            )
        return torch.tensor(values, dtype=dtype).reshape(layout.num_blocks, layout.num_groups)

    def _derive(
        self,
        body: pb.RoundBody,
        model: torch.nn.Module,
        params: dict[str, torch.Tensor],
        private_template: dict[str, tuple[tuple[int, ...], torch.dtype]],
        config: ModelConfig,
        fractions: torch.Tensor | None,
        spec: RoundSpec,
    ) -> TrainedInput:
        """The round's input, derived once per (run, round): a retried session (one that ended before anything
        was sent, as many as our ledger allows) sends what the first derivation gave, never a new one."""
        key = (body.run_id, body.round_id)
        if key in self._derived:
            return self._derived[key]
        private = self.store.load_private(private_template)
        with self.shared.train_lock:  # the model object is shared: read and train it one thread at a time
            if private is None:
                private = initial_private(model, self.shared.data, config, body.training.model_seed, self.user)
            # The federated evaluation scores the model we received, with our private part before training.
            evaluation_input = (
                evaluation_sum.client_vector(evaluate_user(model, params, private, self.shared.data, self.user))
                if body.HasField("evaluation_secagg") and self.policy.join_evaluation
                else None
            )
            dropout_seed = torch_seed(self.client_seed, body.round_id, self.user)
            update = train_user(
                model, params, private, self.shared.data, self.user, fractions, spec, config, dropout_seed
            )
        derived = self._derived[key] = TrainedInput(update, evaluation_input)
        for old in [k for k in self._derived if k[0] != key[0] or k[1] < key[1] - 1]:
            del self._derived[old]  # a round's retries come before the next round
        return derived

    def _on_release(self, body: pb.RoundBody, phase_releases: dict[Phase, Release]) -> OnRelease:
        """Our ledger's record of each phase's masked input, written before it leaves (it raises to refuse)."""

        def record(phase: Phase, session: str) -> None:
            self.ledger.record_release(body.run_id, body.round_id, phase.label, session, phase_releases[phase])

        return record

    def _phase1_counts(self, body: pb.RoundBody, size: int) -> np.ndarray:
        """The phase-1 group counts the server signed when it opened the update phase."""
        start = self.calls.fetch(body, Phase.UPDATE, pb.ADVERTISE_KEYS)
        phase_body = self._verified(start.phase_start, pb.UpdatePhaseBody)
        try:
            return phase1_counts(body, phase_body, size)
        except AuthenticationError as exc:
            raise RoundFailed(f"refusing round {body.round_id}: {exc}") from exc

    def _finish(self, body: pb.RoundBody) -> None:
        """The round's outcome: keep our new private part if it completed, else forget it."""
        outcome = self.calls.fetch(body, Phase.UPDATE, pb.OUTCOME).outcome
        if outcome.completed:
            self.store.commit(body.round_id)
            self.rounds_played += 1
        else:
            self.store.discard()
            log.info("user %d: round %d aborted: %s", self.user, body.round_id, outcome.reason)
            if self._result is not None:
                self._result.status = f"aborted: {outcome.reason}"

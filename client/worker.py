"""One logical client: its own connection, keys and private state; it trains and drives the
secure-aggregation client state machine through each round (the protocol and round logic; the
network side, retries and the classification of connection failures are in client/transport.py).

It refuses any round whose signed parameters do not verify under the server's signing key. Server
restarted (session unknown): the transport enrols again and we pick up the current round. Each
process prints one line per round on stdout for its logical clients: "[ROUND n] users 0-3: ...".
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, TypeVar

import grpc
import numpy as np
import torch
from google.protobuf.message import Message

from client.policy import ClientPolicy
from client.proposal import (
    accepted_spec,
    check_exact_counts,
    check_schema,
    phase1_counts,
    verified_parameters,
)
from client.report import RoundReporter, RoundResult
from client.round_calls import POLL_MS, RoundCalls, RoundFailed
from client.secure_sums import SecureSums
from client.state import UserStore
from client.transport import ClientFailure, Connection, Reconnected, Transport
from mrff_secure.errors import AuthenticationError, ConfigError, PrivacyError
from mrff_secure.federation import evaluation_sum
from mrff_secure.federation.client_update import (
    evaluate_user,
    initial_private,
    model_config_from_json,
    torch_seed,
    train_user,
)
from mrff_secure.round.encoding import round_plans
from mrff_secure.round.participant import (
    group_one_hots,
    suppressed_groups,
    update_vectors,
)
from mrff_secure.round.spec import Phase
from mrff_secure.secagg import primitives
from mrff_secure.secagg.policy import PolicyViolation
from mrff_secure.wire import limits, signing
from mrff_secure.wire.v1 import coordinator_pb2 as pb

if TYPE_CHECKING:
    from client.process import FaultInjection, ProcessShared

__all__ = ["ClientFailure", "Connection", "LogicalClient"]

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
        self.transport = Transport(user, connection, stop=self.stop, enrol_request=self._enrol_request)
        self.calls = RoundCalls(user, self.transport, stop=self.stop, fault=fault, on_upload=self._count_upload)
        self.sums = SecureSums(
            user,
            self.calls,
            identity_key=self.identity,
            credential=self.credential,
            authority_public_key=connection.authority_public_key,
            policy=self.policy,
            insecure_seed=client_seed if reproducible_noise else None,
        )
        self.rounds_played = 0
        self._result: RoundResult | None = None  # the round being played

    def _enrol_request(self) -> pb.EnrolRequest:
        proof = primitives.sign(self.identity, signing.enrol_payload(self.user, self.identity_public))
        return pb.EnrolRequest(
            protocol_version=limits.PROTOCOL_VERSION,
            client_id=self.user,
            identity_public_key=self.identity_public,
            proof=proof,
            credential=self.credential.to_bytes(),
            skips_evaluation=not self.policy.join_evaluation,
        )

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
        self.enrol()
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
                after = body.round_id
                self.store.resolve(body.last_completed_round)
                if body.finished:
                    log.info("user %d: run finished after round %d", self.user, body.last_completed_round)
                    return
                if self.user in body.participants:
                    self._play_reported(body)
            except Reconnected:
                after = -1  # the restarted server may replay a round we saw: take part again
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
        """One round: check what the server proposes, train, then upload through the two secure sums (and the
        evaluation's), each phase's input encoded by `round.participant` from public parameters only."""
        check_schema(body, self.shared.schema_digest, self.shared.schema_summary, self.user)
        config = model_config_from_json(body.training.model_config_json)
        model, layout, shared_template, private_template = self.shared.model(config, body.training.model_seed)
        params = verified_parameters(body, layout, shared_template)
        try:
            spec = accepted_spec(body, self.policy, self.user)
        except (ConfigError, PolicyViolation) as exc:
            raise RoundFailed(f"refusing round {body.round_id}: {exc}") from exc
        r, seed = body.round_id, body.training.model_seed
        if self.sums.sent_input(body):
            # A second session for a round we already masked an input for would let the server difference
            # two sums over different participant sets that both hold our (nearly identical) update.
            raise RoundFailed(
                f"refusing round {r} of run {body.run_id}: we already sent an input for it in another session"
            )
        dtype = next(iter(params.values())).dtype
        fractions = (
            torch.tensor(list(body.group_fractions), dtype=dtype).reshape(layout.num_blocks, layout.num_groups)
            if layout.num_groups
            else None
        )
        private = self.store.load_private(private_template)
        with self.shared.train_lock:  # the model object is shared: read and train it one thread at a time
            if private is None:
                private = initial_private(model, self.shared.data, config, seed, self.user)
            # The federated evaluation scores the model we received, with our private part before training.
            # (scored whenever one is announced; SecureSums.evaluation sends zeros instead if our policy says so)
            evaluation_input = (
                evaluation_sum.client_vector(evaluate_user(model, params, private, self.shared.data, self.user))
                if body.HasField("evaluation_secagg")
                else None
            )
            dropout_seed = torch_seed(self.client_seed, r, self.user)
            update = train_user(
                model, params, private, self.shared.data, self.user, fractions, spec, config, dropout_seed
            )
        if self._result is not None:
            self._result.examples = float(update.num_examples.sum())
        self.store.save_pending(r, update.private)
        try:
            # Computed by us from the public parameters: the announced lengths and ranges must match.
            plans = round_plans(spec, layout, len(body.participants))
        except (ConfigError, PrivacyError) as exc:
            raise RoundFailed(f"refusing round {r}: its privacy parameters are impossible: {exc}") from exc
        if plans.counts is not None:
            counts = self.sums.upload(plans, Phase.COUNTS, group_one_hots(layout, update.routes)[0].numpy(), body)
        else:
            counts = np.zeros(1, dtype=np.int64)  # no groups: phase 1 sums nothing, it only fixes the survivors
        counts_session = self.sums.run(
            body, Phase.COUNTS, body.counts_secagg, counts, plans, noise_survivors=spec.noise_survivors
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
            allowed=phase1_survivors,
            noise_survivors=spec.noise_survivors,
        )
        if evaluation_input is not None:
            self.sums.evaluation(
                body, spec, evaluation_input, None if update_session is None else update_session.signed_survivors
            )
        self._finish(body)

    def _phase1_counts(self, body: pb.RoundBody, size: int) -> np.ndarray:
        """The phase-1 group counts the server signed when it opened the update phase."""
        start = self.calls.fetch(body, Phase.UPDATE, pb.ADVERTISE_KEYS)
        return phase1_counts(body, self._verified(start.phase_start, pb.UpdatePhaseBody), size)

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

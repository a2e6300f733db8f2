"""The round driver: enrolment, round sampling, the two secure sums per round (and the federated
evaluation's third, when scheduled: a DP release stepped into the ledger), the DP mode, the global update
(the decoded mean, then `mrff train`'s server optimizer; each round's lr from the run's schedule, signed in
its body), the final model's evaluation (`--final-evaluation`), checkpoints and the audit log.

Three parts, one concept each: the run's durable state (run_state.py: parameters, counters, ledger,
identities, checkpoint, audit log), the transport-free stage gate (stage_gate.py: what request threads
submit and fetch, one condition variable), and this driver, which decides what every round proposes
and signs, opens the stages one after another and applies the result. The gRPC servicer
(service.py) calls `enrol`, `authenticate`, `get_round`, `submit` and `fetch`; `run` plays the rounds.
Crypto-heavy closing steps run outside the lock while no stage is open, so late messages are
refused, never half-applied.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import Message

from mrff_secure.config import ModelConfig
from mrff_secure.data.schema import PublicSchema
from mrff_secure.dp.config import min_survivors
from mrff_secure.errors import (
    AggregationAborted,
    AuthenticationError,
    ConfigError,
    PrivacyError,
    ProtocolViolation,
    SecAggError,
)
from mrff_secure.federation import evaluation_sum
from mrff_secure.federation.client_update import model_config_json
from mrff_secure.round.aggregate import apply_decoded
from mrff_secure.round.encoding import decode_counts, decode_sum, plan_configs, round_plans
from mrff_secure.round.evaluation_release import PADDED_LENGTH as EVALUATION_LENGTH
from mrff_secure.round.evaluation_release import evaluation_release
from mrff_secure.round.participant import rotation_seed, suppressed_groups
from mrff_secure.round.spec import Phase, RoundSpec
from mrff_secure.round.stages import STAGES, WIRE_NAMES, Stage, delivery_bytes
from mrff_secure.run_summary import format_epsilon
from mrff_secure.secagg import primitives
from mrff_secure.secagg.config import MAX_CLIENT_ID, SecAggConfig, max_abs_for
from mrff_secure.secagg.context import NONCE_BYTES, SessionContext, round_body_digest, run_context_id
from mrff_secure.secagg.identity import ClientCredential, verify_credential
from mrff_secure.secagg.server import ServerSession
from mrff_secure.wire import signing, tensors
from mrff_secure.wire.v1 import coordinator_pb2 as pb
from server.enrol_challenges import ChallengeBook
from server.enrolment_lines import EnrolmentLines
from server.errors import BadSignature, EnrolmentRefused, Malformed, ShuttingDown
from server.privacy import ledger_summary, round_release
from server.run_state import RunState, ServerSettings
from server.stage_gate import PhaseState, RoundState, StageGate, Stopped

log = logging.getLogger("mrff.server")

EVALUATION_SESSION_BASE = 1 << 40  # secagg round ids of the evaluation sums: 2^40 + round (never 2r, 2r + 1)
MAX_ABORTED_IN_A_ROW = 3  # aborted rounds retried in a row before the run stops unfinished (see Coordinator.run)
_SECAGG_ROUND_PREFIX = re.compile(r"^round \d+ aborted: ")  # the secure sum's own session number, not our round


class RunUnfinished(Exception):
    """The run stops before it completed its rounds (the reason); it can be resumed."""


__all__ = [
    "Coordinator",
    "ServerSettings",
    "evaluation_config",
    "secagg_parameters",
    "announced_session_context",
    "EVALUATION_SESSION_BASE",
]


def _evaluation_text(evaluation: dict[str, Any] | None, model: str = "starting model") -> str:
    """', validation AUC 0.6821 LogLoss 0.6512 (starting model, 8 clients)' for the round's line."""
    if not evaluation:
        return ""
    if not evaluation.get("available"):
        return ", evaluation failed"
    val = evaluation["val"]
    auc = "n/a" if val["auc"] is None else f"{val['auc']:.4f}"
    loss = "n/a" if val["log_loss"] is None else f"{val['log_loss']:.4f}"
    scale = (evaluation.get("auc_error_scale") or {}).get("val")
    # the mean log-loss is the noisy sum of clipped losses (each / LOSS_CAP) x LOSS_CAP / clients, clipped to
    # [0, LOSS_CAP]: with few clients the noise dominates (a 0.0000 then means nothing), so its scale is shown
    loss_scale = evaluation["noise_std"] * evaluation_sum.LOSS_CAP / max(int(evaluation["clients"]), 1)
    noise = (
        f"DP noise std {evaluation['noise_std']:.3g} per bin, AUC error of order "
        f"{'unbounded' if scale is None else format(scale, '.2g')}, LogLoss error of order {loss_scale:.2g}, "
        "in epsilon"
        if evaluation.get("in_epsilon")
        else "exact: outside any guarantee"
    )
    return f", validation AUC {auc} LogLoss {loss} ({model}, {evaluation['clients']} clients, {noise})"


def _finite(value: float) -> float | None:
    """A JSON-safe number: None for inf or nan."""
    return round(value, 6) if np.isfinite(value) else None


def evaluation_config(num_clients: int, modulus_bits: int, options: dict[str, int] | None = None) -> SecAggConfig:
    """The evaluation sum's parameters: every client computes them from the round's public parameters (the
    evaluation's fixed length, the round's modulus and participants)."""
    return SecAggConfig(
        num_clients=num_clients,
        vector_length=EVALUATION_LENGTH,
        max_abs=max_abs_for(num_clients, modulus_bits, vector_length=EVALUATION_LENGTH),
        modulus_bits=modulus_bits,
        **(options or {}),
    )


def secagg_parameters(config: SecAggConfig, secagg_round_id: int, nonce: bytes) -> pb.SecAggParameters:
    return pb.SecAggParameters(
        secagg_round_id=secagg_round_id,
        num_clients=config.num_clients,
        vector_length=config.vector_length,
        max_abs=config.max_abs,
        modulus_bits=config.bits,
        num_neighbours=config.k,
        threshold=config.t,
        session_nonce=nonce,
    )


def announced_session_context(
    announcement: pb.SignedBody, phase: Phase, secagg_round_id: int, nonce: bytes
) -> SessionContext:
    """The context of one secure sum of the round we announced: its run, phase, session id and nonce, and the
    digest of the whole round body we signed, computed as each client computes it from the body it verified
    (`client.secure_sums.SecureSums.session_context`): a client shown another round cannot join the sum (W21)."""
    body = pb.RoundBody.FromString(announcement.body)
    return SessionContext(
        run_context_id(body.run_id),
        phase,
        secagg_round_id,
        nonce,
        round_body_digest(body.SerializeToString(deterministic=True)),
    )


class Coordinator:
    """One training run's server. `run()` plays the rounds; the other public methods are called by
    request threads."""

    def __init__(
        self,
        run_dir: Path,
        settings: ServerSettings,
        model_config: ModelConfig,
        schema: PublicSchema,
        spec: RoundSpec,
        signing_key: Ed25519PrivateKey,
        *,
        authority_public_key: bytes,
        resume: bool = False,
        on_round_line: Callable[[str], None] | None = None,
    ) -> None:
        self.settings, self.model_config, self.base_spec = settings, model_config, spec
        self.on_round_line = on_round_line  # the operator's lines: one per round, enrolment (the command prints them)
        self._signing_key = signing_key
        self.authority_public_key = bytes(authority_public_key)  # the identity authority (credentials)
        open_run = RunState.resume if resume else RunState.create
        self.state = open_run(Path(run_dir), settings, model_config, schema, spec, signing_key)
        self.gate = StageGate(self.state.run_id)
        self.challenges = ChallengeBook()  # enrolment nonces
        self.audit = self.state.audit
        self.layout = self.state.layout
        self.error: BaseException | None = None
        self.unfinished: str | None = None  # why the run stopped before completing its rounds (run())
        self._after_abort = False  # the round about to be sampled retries an aborted one
        self._line_lock = threading.Lock()  # lines come from request threads and the driver: one at a time
        self.lines = None if on_round_line is None else EnrolmentLines(settings.min_clients, self._line)

    @property
    def run_id(self) -> str:
        return self.state.run_id

    def _line(self, text: str) -> None:
        """One operator line, never interleaved with another (print writes the text and its newline apart)."""
        if self.on_round_line is not None:
            with self._line_lock:
                self.on_round_line(text)

    @property
    def run_dir(self) -> Path:
        return self.state.run_dir

    def model_digest(self) -> str:
        return self.state.model_digest()

    def params_template(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return self.state.params_template()

    # -------------------------------------------------------------- requests
    def enrol_challenge(self, peer: str, client_id: int) -> bytes:
        """A fresh single-use nonce the client must sign into its enrolment proof (with our run id)."""
        if not 0 <= client_id <= MAX_CLIENT_ID:
            raise Malformed(f"client id {client_id} is outside [0, {MAX_CLIENT_ID}]")
        return self.challenges.issue(peer, client_id)

    def enrol(
        self,
        client_id: int,
        public_key: bytes,
        proof: bytes,
        credential: bytes,
        nonce: bytes,
        *,
        skips_evaluation: bool = False,
        schema_digest: str = "",
    ) -> bytes:
        """Admit a client (see EnrolRequest); EnrolmentRefused and friends name why not. `schema_digest`: the data
        schema the client says it has (empty: not said; the client checks our signed one in any case)."""
        if not 0 <= client_id <= MAX_CLIENT_ID:
            raise Malformed(f"client id {client_id} is outside [0, {MAX_CLIENT_ID}]")
        if len(public_key) != primitives.PUBLIC_KEY_BYTES:
            raise Malformed(f"identity key must be {primitives.PUBLIC_KEY_BYTES} bytes, got {len(public_key)}")
        if len(nonce) != signing.ENROL_NONCE_BYTES:
            raise EnrolmentRefused(
                f"no enrolment challenge answered (nonce of {len(nonce)} bytes): ask EnrolChallenge first"
            )
        if not self.challenges.redeem(nonce, client_id):  # single use: a recorded enrolment does not replay
            raise EnrolmentRefused(
                f"the enrolment challenge of client {client_id} is unknown, used or expired (a replayed enrolment?)"
            )
        try:
            certified = verify_credential(
                self.authority_public_key, ClientCredential.from_bytes(credential), client_id=client_id
            )
        except ProtocolViolation as exc:
            raise EnrolmentRefused(f"no readable credential from the identity authority: {exc}") from exc
        except AuthenticationError as exc:
            raise EnrolmentRefused(
                f"the credential is not the identity authority's statement for client {client_id}"
            ) from exc
        if not hmac.compare_digest(certified, public_key):
            raise EnrolmentRefused(f"the credential of client {client_id} certifies another identity key")
        try:
            primitives.verify(public_key, proof, signing.enrol_payload(self.run_id, nonce, client_id, public_key))
        except AuthenticationError as exc:
            raise BadSignature(
                "enrolment proof does not verify under the identity key for this run and challenge"
            ) from exc
        if schema_digest and not hmac.compare_digest(schema_digest.encode(), self.state.schema_digest.encode()):
            raise EnrolmentRefused(
                f"the data schema of client {client_id} differs from the one the model is built for (check --maxlen "
                f"and the dataset on both sides); server: {self.state.schema_summary}"
            )
        with self.gate.condition:
            known = self.state.identities.get(client_id)
            if known is not None and not hmac.compare_digest(known, public_key):
                raise EnrolmentRefused(f"client id {client_id} is already bound to another identity key in this run")
            if known is None:  # a new binding: audited with its credential, so a resumed server keeps it
                self.state.identities[client_id] = public_key
                self.audit.append(
                    {
                        "type": "enrolled",
                        "client": client_id,
                        "identity_key": public_key.hex(),
                        "credential": bytes(credential).hex(),
                    }
                )
            again = self.gate.has_session(client_id)
            token = self.gate.open_session(client_id, public_key, skips_evaluation=skips_evaluation)
            count = self.gate.session_count()
        if self.lines is not None:
            self.lines.enrolled(client_id, count, again=again)
        return token

    def enrolment_refused(self, client_id: int, reason: str) -> None:
        """The operator's line for a refused enrolment (the audit log records the same reason)."""
        if self.lines is not None:
            self.lines.refused(client_id, reason)

    def deployment(self, client_id: int, nonce: bytes) -> pb.SignedBody:
        """The signed DeploymentBody of an enrolment reply: the run, the client, its challenge and the model's data
        schema, which the client checks before it waits for a round."""
        body = pb.DeploymentBody(
            run_id=self.run_id,
            client_id=client_id,
            challenge_nonce=nonce,
            schema_digest=self.state.schema_digest,
            schema_summary=self.state.schema_summary,
        ).SerializeToString()
        return pb.SignedBody(body=body, signature=signing.sign_deployment(self._signing_key, body))

    def authenticate(self, client_id: int, token: bytes) -> bool:
        return self.gate.authenticate(client_id, token)

    def get_round(self, after_round: int, wait: float, client_id: int | None = None) -> pb.SignedBody | None:
        return self.gate.get_round(after_round, wait, client_id)

    def submit(
        self, client_id: int, round_id: int, phase: int, stage: int, payload: bytes, signature: bytes = b""
    ) -> None:
        self.gate.submit(client_id, round_id, phase, stage, payload, signature)

    def fetch(self, client_id: int, round_id: int, phase: int, stage: int, wait: float) -> tuple[str, Any] | None:
        return self.gate.fetch(client_id, round_id, phase, stage, wait)

    def count_bytes(self, received: int, sent: int) -> None:
        self.gate.count_bytes(received, sent)

    def record_rejection(self, client_id: int | None, method: str, status: str, reason: str) -> None:
        rs = self.gate.current_round()
        self.audit.record_refusal(  # aggregated: a flood of refusals cannot grow the log without bound (W19)
            {
                "type": "rejected",
                "client": client_id,
                "method": method,
                "status": status,
                "reason": reason[:500],
                "round": None if rs is None else rs.round_id,
            }
        )

    def all_saw_finish(self) -> bool:
        """Every client enrolled with this server process has received the end-of-run announcement."""
        return self.gate.all_saw_finish()

    @property
    def stopped(self) -> bool:
        return self.gate.stopped

    def stop(self) -> None:
        self.gate.stop()

    # ---------------------------------------------------------------- rounds
    def run(self) -> None:
        """Play rounds until `--rounds` of them have completed, then announce the end. Returns when done or stopped.

        An aborted round is retried as a new round: a new round id (ids are never reused, so no client is asked
        again for an input it released), a new sample and new sessions; whatever it released stays accounted
        (the server's ledger and every client's). So the round ids run to `rounds` plus the aborted rounds. The
        retries are bounded: after MAX_ABORTED_IN_A_ROW aborted rounds in a row, or max(MAX_ABORTED_IN_A_ROW,
        rounds) aborted rounds in one server process, or when fewer than --min-clients clients are active within
        --train-timeout of an aborted round, the run stops unfinished: the clients are told why (they leave), the
        audit log gets `run_stopped`, no `run_finished`, and `mrff server --resume` continues it. A server stopped
        by a signal leaves its round aborted (recorded now, or on --resume after a SIGKILL); the resumed server
        starts a new round. With --final-evaluation, a run that completed its rounds then evaluates the final model
        once (`_final_evaluation`) before it announces the end."""
        state = self.state
        in_a_row = aborted_here = 0
        try:
            while state.next_round < self.settings.rounds + state.aborted_rounds:
                aborted_before = state.aborted_rounds
                self._after_abort = in_a_row > 0
                self._play_round(state.next_round)
                if state.aborted_rounds == aborted_before:
                    in_a_row = 0
                    continue
                in_a_row, aborted_here = in_a_row + 1, aborted_here + 1
                if in_a_row >= MAX_ABORTED_IN_A_ROW:
                    raise RunUnfinished(f"{in_a_row} rounds in a row were aborted")
                if aborted_here >= max(MAX_ABORTED_IN_A_ROW, self.settings.rounds):
                    raise RunUnfinished(f"{aborted_here} rounds of this server process were aborted")
            if self.settings.evaluates_final_model and state.final_evaluation_round is None:
                self._final_evaluation(state.next_round)
            self.gate.announce(state.next_round, self._body(state.next_round, (), None, finished=True), finished=True)
            self.audit.append(
                {
                    "type": "run_finished",
                    "rounds": state.completed_rounds,
                    "aborted_rounds": state.aborted_rounds,
                    "model_digest": self.model_digest(),
                },
                sync=True,
            )
        except RunUnfinished as exc:
            self.unfinished = str(exc)
            self.audit.append(
                {
                    "type": "run_stopped",
                    "reason": self.unfinished,
                    "completed_rounds": state.completed_rounds,
                    "aborted_rounds": state.aborted_rounds,
                    "next_round": state.next_round,
                    "model_digest": self.model_digest(),
                },
                sync=True,
            )
            self._line(
                f"STOPPED the run unfinished: {self.unfinished}; {state.completed_rounds} of {self.settings.rounds} "
                "rounds completed (it can be resumed with --resume)"
            )
            body = self._body(state.next_round, (), None, finished=True, unfinished_reason=self.unfinished)
            self.gate.announce(state.next_round, body, finished=True)
        except (Stopped, ShuttingDown):
            log.info("coordinator stopped")
        except BaseException as exc:  # surfaced by the command; the process must not hang silently
            self.error = exc
            log.exception("coordinator failed")
            raise

    def _sign(self, body: Message) -> pb.SignedBody:
        data = body.SerializeToString()
        return pb.SignedBody(body=data, signature=signing.sign_body(self._signing_key, data))

    def _body(
        self,
        round_id: int,
        participants: tuple[int, ...],
        spec: RoundSpec | None,
        *,
        finished: bool = False,
        configs: tuple[SecAggConfig, SecAggConfig] | None = None,
        nonces: tuple[bytes, ...] = (b"", b""),
        evaluation: SecAggConfig | None = None,
        unfinished_reason: str = "",
        evaluation_only: bool = False,
    ) -> pb.SignedBody:
        state = self.state
        body = pb.RoundBody(
            run_id=state.run_id,
            round_id=round_id,
            finished=finished,
            last_completed_round=state.last_completed,
            secure=self.settings.secure,
            unfinished_reason=unfinished_reason,
        )
        head_seq, head_digest = self.audit.head()  # clients keep the signed head as a receipt (W20)
        if head_seq >= 0:
            body.audit_head.CopyFrom(pb.AuditHead(seq=head_seq, digest=head_digest))
        if not finished and spec is not None and (configs is not None or evaluation_only):
            body.evaluation_only = evaluation_only
            body.participants.extend(participants)
            body.parameters.extend(tensors.to_proto(state.params))
            if state.group_fractions is not None:
                body.group_fractions.extend(state.group_fractions.reshape(-1).tolist())
            body.num_blocks, body.num_groups = self.layout.num_blocks, self.layout.num_groups
            if configs is not None:
                body.counts_secagg.CopyFrom(secagg_parameters(configs[0], 2 * round_id, nonces[0]))
                body.update_secagg.CopyFrom(secagg_parameters(configs[1], 2 * round_id + 1, nonces[1]))
            if evaluation is not None:
                body.evaluation_secagg.CopyFrom(
                    secagg_parameters(evaluation, EVALUATION_SESSION_BASE + round_id, nonces[2])
                )
            body.dp.CopyFrom(
                pb.DPParameters(
                    mode=spec.dp_mode,
                    clip=spec.clip,
                    noise_multiplier=spec.noise_multiplier,
                    min_survivors=spec.min_survivors,
                    mechanism=spec.mechanism,
                    modulus_bits=spec.modulus_bits,
                    count_cap=spec.count_cap,
                )
            )
            body.training.CopyFrom(
                pb.TrainingParameters(
                    local_steps=spec.local_steps,
                    optimizer=spec.optimizer,
                    lr=spec.lr,
                    weight_decay=spec.weight_decay,
                    model_seed=self.settings.seed,
                    model_config_json=model_config_json(self.model_config),
                )
            )
            body.min_group_size = spec.min_group_size
            body.model_digest = tensors.digest(state.params)
            body.schema_digest, body.schema_summary = state.schema_digest, state.schema_summary
        return self._sign(body)

    def _sample(self, round_id: int) -> tuple[int, ...]:
        """Wait for enough active clients, then sample (reproducibly from the seed and the round). The retry of an
        aborted round waits at most --train-timeout (RunUnfinished): the clients it needs may be gone."""
        wait = self.settings.train_timeout if self._after_abort else None
        eligible = self.gate.wait_for_clients(
            self.settings.min_clients, None if self.lines is None else self.lines.waiting, timeout=wait
        )
        if len(eligible) < self.settings.min_clients:
            raise RunUnfinished(
                f"only {len(eligible)} of the --min-clients {self.settings.min_clients} clients were active within "
                f"--train-timeout {self.settings.train_timeout:g} s to retry the aborted round"
            )
        if self.settings.client_fraction >= 1.0:
            return tuple(eligible)
        rng = np.random.default_rng([self.settings.seed, round_id])
        k = max(self.settings.min_clients, int(round(len(eligible) * self.settings.client_fraction)))
        return tuple(int(c) for c in np.sort(rng.choice(eligible, size=min(k, len(eligible)), replace=False)))

    def round_lr(self) -> float:
        """The clients' lr of the next training round: the run's schedule (`FederationConfig.client_lr`, as `mrff
        train` evaluates it) at the number of rounds completed so far, so a retried aborted round keeps its step
        of the schedule; announced, signed, in the round's body."""
        return self.settings.recipe(lr=self.base_spec.lr).client_lr(self.state.completed_rounds)

    def _play_round(self, r: int) -> None:
        participants = self._sample(r)
        n = len(participants)
        spec = dataclasses.replace(
            self.base_spec,
            min_survivors=min_survivors(n, self.settings.max_dropout_fraction),
            lr=self.round_lr(),
        )
        started = time.perf_counter()
        cpu0 = time.process_time()
        plans = round_plans(spec, self.layout, n)
        configs = plan_configs(plans, n, options=self.settings.secagg_options())
        nonces = tuple(secrets.token_bytes(NONCE_BYTES) for _ in range(3))  # fresh per session
        evaluation = (
            evaluation_config(n, spec.modulus_bits, self.settings.secagg_options()) if self._evaluation_due(r) else None
        )
        rs = RoundState(
            r,
            participants,
            spec,
            self._body(r, participants, spec, configs=configs, nonces=nonces, evaluation=evaluation),
            announcement_evaluates=evaluation is not None,
        )
        evaluated_model = self.model_digest() if evaluation is not None else ""  # the round's starting model
        release = round_release(spec, self.layout, n, corrupt_neighbours=self.settings.corrupt_neighbours)
        state = self.state
        state.next_round, state.round_in_progress = r + 1, r  # the id is consumed before anyone sees it
        state.save()
        self.gate.begin_round(rs)
        current = [Phase.COUNTS]  # the phase running, for the abort's reason

        def announce() -> None:  # under the lock, once the counts phase accepts inputs
            self.gate.announce(r, rs.announcement)

        record: dict[str, Any] = {
            "type": "round",
            "round": r,
            "participants": list(participants),
            "secure": self.settings.secure,
            "dp_mode": spec.dp_mode,
            "lr": spec.lr,
            "phases": {},
        }
        try:
            ring1, survivors1 = self._phase(
                rs,
                Phase.COUNTS,
                configs[0],
                2 * r,
                nonces[0],
                set(participants),
                self.settings.train_timeout,
                record,
                on_open=announce,
            )
            seed = self.settings.seed
            if plans.counts is not None:  # the phase-1 sum, decoded (noisy under DP) and rounded to counts >= 0
                counts = decode_counts(
                    plans, ring1, survivors=len(survivors1), rotation_seed=rotation_seed(seed, r, Phase.COUNTS)
                )
            else:
                counts = np.zeros((0, 0), dtype=np.int64)
            self.state.ledger.step(release=release.phase("counts"))  # released: the clients learn the counts
            self.state.save()  # the step survives a SIGKILL (the resumed server records this round aborted)
            current[0] = Phase.UPDATE
            suppressed = suppressed_groups(counts, spec.min_group_size)
            start = self._sign(
                pb.UpdatePhaseBody(run_id=self.state.run_id, round_id=r, group_counts=counts.reshape(-1).tolist())
            )

            def publish_start() -> None:  # runs under the lock once the phase's first stage is open
                rs.phase_start = start

            ring2, survivors2 = self._phase(
                rs,
                Phase.UPDATE,
                configs[1],
                2 * r + 1,
                nonces[1],
                set(survivors1),
                self.settings.stage_timeout,
                record,
                on_open=publish_start,
            )
            summed = decode_sum(
                plans.update, ring2, survivors=len(survivors2), rotation_seed=rotation_seed(seed, r, Phase.UPDATE)
            )
            self.state.ledger.step(release=release.phase("update"))  # released to us, whatever happens next
            self.state.save()
            applied, examples = apply_decoded(
                self.state.params,
                self.layout,
                summed,
                survivors=len(survivors2),
                phase1_survivors=len(survivors1),
                counts=counts,
                suppressed=suppressed,
            )
        except (SecAggError, ConfigError, PrivacyError) as exc:  # aborted, or a sum that cannot be used
            reason = f"{current[0].label} phase: {_SECAGG_ROUND_PREFIX.sub('', str(exc))}"  # our round numbering
            outcome = pb.RoundOutcome(round_id=r, completed=False, reason=f"{type(exc).__name__}: {reason}")
            state.aborted_rounds += 1
            record.update(
                type="round_aborted",
                reason=reason,
                model_digest=self.model_digest(),
                epsilon=ledger_summary(self.state.ledger),  # what was released before the abort is accounted
            )
        except (Stopped, ShuttingDown):  # a signal: the round ends aborted, recorded now; a resumed run starts anew
            reason = "the server was stopped during the round"
            state.aborted_rounds += 1
            state.round_in_progress = None
            state.save()
            record.update(
                type="round_aborted",
                reason=reason,
                interrupted=True,
                model_digest=self.model_digest(),
                epsilon=ledger_summary(self.state.ledger),
            )
            self.audit.append(record, sync=True)
            self.gate.end_round(rs, pb.RoundOutcome(round_id=r, completed=False, reason=reason))
            self._line(f"[ROUND {r}] ABORTED: {reason}: {n} participants")
            raise
        else:
            state.completed_rounds += 1
            self.state.params = state.server_optimizer.step(state.params, applied.averaged)
            self.state.group_fractions = applied.group_fractions
            self.state.last_completed = r
            epsilon = ledger_summary(self.state.ledger)
            outcome = pb.RoundOutcome(round_id=r, completed=True, survivors=len(survivors2))
            record.update(
                group_counts=counts.tolist(),
                suppressed=suppressed.astype(int).tolist(),
                examples=round(examples, 3),
                model_digest=self.model_digest(),
                epsilon=epsilon,
            )
            if evaluation is not None:
                record["evaluation"] = self._evaluate(rs, evaluation, nonces[2], survivors2, record, evaluated_model)
        wire = self.gate.wire_bytes()
        record.update(
            seconds=round(time.perf_counter() - started, 4),
            server_cpu_seconds=round(time.process_time() - cpu0, 4),
            wire_bytes={
                **wire,
                "per_participant": round((wire["received"] + wire["sent"]) / n, 1),
                "announcement": len(rs.announcement.body) + len(rs.announcement.signature),
            },
        )
        state.round_in_progress = None
        self.state.save()
        self.audit.append(record, sync=True)
        self.gate.end_round(rs, outcome)
        dropouts = sorted(
            {c for phase in record["phases"].values() for stage in phase["dropouts"].values() for c in stage}
        )
        eps = record.get("epsilon", {}).get("epsilon")
        if self.on_round_line is not None:
            self._line(
                f"[ROUND {r}] {'completed' if outcome.completed else 'ABORTED: ' + outcome.reason}: "
                f"{state.completed_rounds} of {self.settings.rounds} rounds completed, {n} participants, "
                f"{len(dropouts)} dropped, {record['seconds']:.2f} s"
                + (f", epsilon so far {format_epsilon(eps)}" if eps is not None else "")
                + _evaluation_text(record.get("evaluation"))
            )

    def _evaluation_due(self, r: int) -> bool:
        """Round r ends with a federated evaluation: scheduled (--federated-eval-every, counted in completed rounds:
        round r is the run's (completed_rounds + 1)-th if it completes, whatever ids aborted rounds took) and under
        the run's cap (--max-evaluations, counted by the ledger, so a resumed run keeps its count)."""
        return (
            self.settings.evaluates(self.state.completed_rounds)
            and self.state.ledger.evaluations < self.settings.round_evaluations_cap
        )

    def _final_evaluation(self, r: int) -> None:
        """The federated evaluation of the final model, once per run, after the last round (`--final-evaluation`):
        round id `r` (consumed, and the attempt saved, before it is announced: a resumed run does not repeat it)
        announces the final model with only an evaluation sum (`evaluation_only`) to every active client, and
        `_evaluate` runs it as a round's evaluation, over exactly those participants. Each client decides for
        itself, as for any release: its policy or its epsilon budget may keep its scores out (it sends zeros, so
        the sum goes on), and the record's `clients` says how many scored. Recorded as `final_evaluation` in the
        audit log (results.py: the summary's `final_evaluation`), released or not."""
        state = self.state
        eligible = self.gate.wait_for_clients(
            self.settings.min_clients,
            None if self.lines is None else self.lines.waiting,
            timeout=self.settings.train_timeout,
        )
        participants = tuple(sorted(eligible))
        n = len(participants)
        state.next_round, state.final_evaluation_round = r + 1, r
        state.save()
        evaluated_model = self.model_digest()
        record: dict[str, Any] = {
            "type": "final_evaluation",
            "round": r,
            "participants": list(participants),
            "model_digest": evaluated_model,
            "phases": {},
        }
        if n < self.settings.min_clients:
            out: dict[str, Any] = {
                "available": False,
                "reason": f"only {n} of the --min-clients {self.settings.min_clients} clients were active within "
                f"--train-timeout {self.settings.train_timeout:g} s",
            }
        else:
            # no training: the run's base lr (the schedule may reach 0 after the last round)
            spec = dataclasses.replace(
                self.base_spec, min_survivors=min_survivors(n, self.settings.max_dropout_fraction)
            )
            config = evaluation_config(n, spec.modulus_bits, self.settings.secagg_options())
            nonce = secrets.token_bytes(NONCE_BYTES)
            body = self._body(r, participants, spec, nonces=(b"", b"", nonce), evaluation=config, evaluation_only=True)
            rs = RoundState(r, participants, spec, body, announcement_evaluates=True)
            self.gate.begin_round(rs)
            try:
                out = self._evaluate(
                    rs,
                    config,
                    nonce,
                    participants,
                    record,
                    evaluated_model,
                    on_open=lambda: self.gate.announce(r, rs.announcement),
                )
            except (Stopped, ShuttingDown):
                self.gate.end_round(rs, pb.RoundOutcome(round_id=r, completed=False, reason="the server was stopped"))
                raise
            self.gate.end_round(
                rs, pb.RoundOutcome(round_id=r, completed=bool(out.get("available")), reason=out.get("reason", ""))
            )
        record["evaluation"] = out
        record["epsilon"] = ledger_summary(state.ledger)
        state.save()
        self.audit.append(record, sync=True)
        if out.get("available") and not out.get("clients"):
            text = ": every client kept its scores out (its policy or its epsilon budget): nothing to report"
        elif out.get("available"):
            text = _evaluation_text(out, "final model")
        else:
            text = f": not released: {out.get('reason')}"
        self._line(f"[FINAL EVALUATION] {n} participants{text}")

    def _evaluate(
        self,
        rs: RoundState,
        config: SecAggConfig,
        nonce: bytes,
        survivors: tuple[int, ...],
        record: dict,
        evaluated_model: str,
        on_open: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """The federated evaluation of the model round `rs` started from, over exactly the update phase's survivors
        (a client whose policy keeps its held-out items out sends zeros): a secure sum of their held-out score
        histograms under the round's distributed DP (`evaluation_sum`, `round.evaluation_release`). When it is
        released the ledger is stepped with its release and the round's epsilon updated. Its failure leaves the
        round completed (the model step is already decided) and is recorded, not raised."""

        def open_phase() -> None:  # under the lock, once the phase's first stage is open
            rs.evaluation_open = True
            if on_open is not None:  # the final evaluation: its announcement
                on_open()

        release = evaluation_release(
            rs.spec, len(rs.participants), colluding_survivors=self.settings.corrupt_neighbours
        )
        out: dict[str, Any] = {
            "evaluated_model": evaluated_model,
            "release": release.describe(),
            "in_epsilon": release.noisy,
            "noise_std": release.noise_std,
            "guarantee": evaluation_sum.guarantee_text(release),
        }
        if not release.noisy:
            out["outside_the_guarantee"] = evaluation_sum.OUTSIDE_THE_GUARANTEE
        try:
            ring, clients = self._phase(
                rs,
                Phase.EVALUATION,
                config,
                EVALUATION_SESSION_BASE + rs.round_id,
                nonce,
                set(survivors),
                self.settings.stage_timeout,
                record,
                on_open=open_phase,
            )
            if set(clients) != set(survivors):
                raise AggregationAborted(
                    f"the evaluation sum is over {len(clients)} of the update's {len(survivors)} survivors: "
                    "it is released over exactly the update's survivors or not at all"
                )
            seed = rotation_seed(self.settings.seed, rs.round_id, Phase.EVALUATION)
            splits = evaluation_sum.decode_ring(release, ring, survivors=len(clients), rotation_seed=seed)
        except (SecAggError, ConfigError, PrivacyError) as exc:
            log.warning("round %d: federated evaluation failed: %s", rs.round_id, exc)
            out.update(available=False, reason=f"{type(exc).__name__}: {exc}")
            return out
        self.state.ledger.step(release=release)  # released: its cost is in every epsilon from here on
        record["epsilon"] = ledger_summary(self.state.ledger)
        out.update(
            available=True,
            clients=splits["val"].clients,
            survivors=len(clients),
            auc_error_scale={
                split: _finite(evaluation_sum.auc_error_scale(release, e.positives, e.negatives))
                for split, e in splits.items()
            },
            **{split: e.to_json() for split, e in splits.items()},
        )
        return out

    # ---------------------------------------------------------------- stages
    def _stage(
        self,
        ps: PhaseState,
        record: dict,
        stage: int,
        expected: set[int],
        timeout: float,
        outbox: dict[int, bytes] | None = None,
        on_open: Callable[[], None] | None = None,
    ) -> set[int]:
        """Run one stage through the gate and record its dropouts and duration."""
        opened = time.monotonic()
        received, missing = self.gate.run_stage(ps, stage, expected, timeout, outbox, on_open)
        entry = record["phases"].setdefault(Phase(ps.phase).label, {"dropouts": {}, "stage_seconds": {}})
        entry["dropouts"][WIRE_NAMES[stage]] = missing
        entry["stage_seconds"][WIRE_NAMES[stage]] = round(time.monotonic() - opened, 4)  # open -> last answer
        return received

    def _phase(
        self,
        rs: RoundState,
        phase: Phase,
        config: SecAggConfig,
        secagg_round_id: int,
        nonce: bytes,
        expected: set[int],
        first_timeout: float,
        record: dict,
        on_open: Callable[[], None] | None = None,
    ) -> tuple[np.ndarray, tuple[int, ...]]:
        """One secure sum of the round, stage by stage of the stage table (or one plain stage)."""
        ps = PhaseState(phase, config, secagg_round_id, nonce)
        session: ServerSession | None = None  # None: plain aggregation
        if self.settings.secure:
            context = announced_session_context(rs.announcement, phase, secagg_round_id, nonce)
            session = ps.session = ServerSession(
                config, context=context, authority_public_key=self.authority_public_key, participants=expected
            )
        self.gate.open_phase(rs, ps)
        if session is None:
            got = self._stage(ps, record, pb.MASKED_INPUT, expected, first_timeout, on_open=on_open)
            survivors = tuple(sorted(got))
            self._check_survivors(phase, rs.spec, len(survivors))
            total = np.zeros(config.vector_length, dtype=np.uint64)
            for c in survivors:
                total += ps.plain[c]
            total &= np.uint64((1 << config.bits) - 1)
            record["phases"][phase.label]["survivors"] = list(survivors)
            return total.astype(np.int64), survivors
        outbox: dict[int, bytes] | None = None
        for step in STAGES:
            first = outbox is None
            self._stage(
                ps,
                record,
                step.wire,
                expected if outbox is None else set(outbox),
                first_timeout if first else self.settings.stage_timeout,
                outbox,
                on_open if first else None,
            )
            if step.close is None:
                break
            deliveries = step.close(session)
            if step.stage is Stage.MASKED_INPUT:  # the survivors are known: refuse a sum that cannot be used
                self._check_survivors(phase, rs.spec, len(deliveries))
            outbox = delivery_bytes(deliveries)
        result = session.finish()
        record["phases"][phase.label]["survivors"] = list(result.survivors)
        return result.ring_sum.astype(np.int64), result.survivors

    def _check_survivors(self, phase: Phase, spec: RoundSpec, survivors: int) -> None:
        if survivors < 1:
            raise AggregationAborted(f"no client sent its {phase.label} input")
        if phase == Phase.UPDATE and spec.dp_mode == "distributed" and survivors < spec.min_survivors:
            raise AggregationAborted(
                f"{survivors} survivors carry less noise than the {spec.min_survivors} "
                "the distributed DP mode was sized for; nothing is released"
            )

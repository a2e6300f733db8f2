"""A logical client's side of a round's secure sums: each phase's ring residues (its DP generator, the
phase's public rotation seed), the announced parameters checked against our own, the stage table run with
the client state machine; each masked input is written into the client's ledger (by the `on_release` callback
the logical client gives) before it is sent."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.policy import ClientPolicy
from client.proposal import announced_evaluation_release, announced_secagg_config
from client.round_calls import RoundCalls, RoundFailed
from mrff_secure.errors import AggregationAborted, ConfigError, PrivacyError, SecAggError
from mrff_secure.federation import evaluation_sum
from mrff_secure.round.encoding import SecureRoundPlans
from mrff_secure.round.evaluation_release import EvaluationRelease
from mrff_secure.round.participant import client_generator, phase_upload, rotation_seed
from mrff_secure.round.spec import Phase, RoundSpec
from mrff_secure.round.stages import STAGES, Stage
from mrff_secure.secagg import messages, packing
from mrff_secure.secagg.client import ClientSession
from mrff_secure.secagg.context import SessionContext, round_body_digest, run_context_id
from mrff_secure.secagg.encoding import from_ring, to_ring
from mrff_secure.secagg.identity import ClientCredential
from mrff_secure.secagg.policy import PolicyViolation
from mrff_secure.wire.v1 import coordinator_pb2 as pb

log = logging.getLogger("mrff.client")
OnRelease = Callable[[Phase, str], None]  # (phase, session label): record it, or raise to send nothing


def session_label(params: pb.SecAggParameters) -> str:
    """Which secure sum a release went into: its session id and the first bytes of its nonce."""
    return f"{params.secagg_round_id}:{bytes(params.session_nonce)[:8].hex()}"


class SecureSums:
    """The secure sums of the rounds one logical client plays. `insecure_seed` (debugging only, NOT private):
    derive the DP randomness from that seed instead of the operating system's entropy."""

    def __init__(
        self,
        user: int,
        calls: RoundCalls,
        *,
        identity_key: Ed25519PrivateKey,
        credential: ClientCredential,
        authority_public_key: bytes,
        policy: ClientPolicy,
        insecure_seed: int | None,
    ) -> None:
        self.user, self.calls, self.policy, self.insecure_seed = user, calls, policy, insecure_seed
        self.identity_key, self.credential, self.authority_public_key = identity_key, credential, authority_public_key

    def upload(self, plans: SecureRoundPlans, phase: Phase, vector: np.ndarray, body: pb.RoundBody) -> np.ndarray:
        """One phase's ring residues (`round.participant.phase_upload`) with this client's generator."""
        return phase_upload(
            plans,
            phase,
            vector,
            rotation_seed=rotation_seed(body.training.model_seed, body.round_id, phase),
            rng=client_generator(self.insecure_seed, body.round_id, phase, self.user),
        )

    @staticmethod
    def session_context(body: pb.RoundBody, phase: Phase, params: pb.SecAggParameters) -> SessionContext:
        """What our session of `phase` is bound to: the run, phase, session id and nonce, and the digest of the whole
        round body we verified and accepted (model, participants, DP and training parameters, everything signed:
        W21), so that clients shown different rounds cannot finish a sum together."""
        return SessionContext(
            run_context_id(body.run_id),
            phase,
            params.secagg_round_id,
            bytes(params.session_nonce),
            round_body_digest(body.SerializeToString(deterministic=True)),
        )

    def run(
        self,
        body: pb.RoundBody,
        phase: Phase,
        params: pb.SecAggParameters,
        residues: np.ndarray,
        plans: SecureRoundPlans | None,
        *,
        on_release: OnRelease,
        allowed: tuple[int, ...] | None = None,
        noise_survivors: int = 0,
    ) -> ClientSession | None:
        """One secure sum of our ring residues; the finished client session (None without secure aggregation).
        `on_release(phase, session)` is called just before the masked input leaves (it raises to refuse)."""
        try:
            config = announced_secagg_config(params, phase, len(body.participants), plans, residues.size)
        except PolicyViolation as exc:
            raise RoundFailed(f"refusing round {body.round_id}: {exc}") from exc
        signed = from_ring(np.asarray(residues, dtype=np.int64).astype(np.uint64), config.bits)  # centred
        sid = params.secagg_round_id
        if not body.secure:
            self._release(on_release, phase, params, body)
            ring = to_ring(signed, config.bits, max_abs=config.max_abs)
            packed = packing.pack(ring, config.bits)
            message = messages.MaskedInput(sid, self.user, config.bits, config.vector_length, packed)
            self.calls.submit(body, phase, pb.MASKED_INPUT, message)
            return None
        try:
            context = self.session_context(body, phase, params)
            session = ClientSession(
                config,
                context=context,
                client_id=self.user,
                identity_key=self.identity_key,
                credential=self.credential,
                authority_public_key=self.authority_public_key,
                policy=self.policy.session_policy(config, noise_survivors=noise_survivors),
                allowed_participants=allowed,
            )
            delivered = None
            for step in STAGES:
                if step.delivered is not None:
                    delivered = step.delivered.from_bytes(self.calls.fetch(body, phase, step.wire).payload)
                reply = step.client_step(session, delivered, signed)
                if step.stage is Stage.MASKED_INPUT:  # from here on a sum may hold our input
                    self._release(on_release, phase, params, body)
                self.calls.submit(body, phase, step.wire, reply)
        except (AggregationAborted, SecAggError, ConfigError) as exc:
            raise RoundFailed(f"secure aggregation refused or aborted: {exc}") from exc
        return session

    @staticmethod
    def _release(on_release: OnRelease, phase: Phase, params: pb.SecAggParameters, body: pb.RoundBody) -> None:
        try:
            on_release(phase, session_label(params))
        except PrivacyError as exc:
            raise RoundFailed(f"refusing round {body.round_id}: {exc}") from exc

    def evaluation(
        self,
        body: pb.RoundBody,
        spec: RoundSpec,
        scores: np.ndarray | None,
        update_survivors: tuple[int, ...] | None,
        on_release: OnRelease,
        *,
        scored: int,
    ) -> EvaluationRelease | None:
        """The round's federated evaluation: our held-out scores (`evaluation_sum.client_vector`), or zeros when our
        policy keeps them out of this one (`ClientPolicy.check_evaluation`) or our ledger refuses the release
        (`on_release(Phase.EVALUATION, session)`, called before anything is encoded: it records the release or
        raises), encoded with our noise share under the round's DP (`announced_evaluation_release`), through a
        secure sum over exactly the update phase's survivors we signed: we unmask no survivor list shorter than
        it. Zeros release nothing about us, so they are not recorded. Returns the release our scores went into
        (None: zeros, or nothing sent). `scored`: the evaluations of this run our ledger already holds our scores
        for (the policy's max_evaluations). Its failure costs the round nothing: the update is already in the sum."""
        r = body.round_id
        try:
            release = announced_evaluation_release(body, spec, colluding_survivors=self.policy.corrupt_neighbours)
        except PolicyViolation as exc:
            log.info("user %d: round %d: refusing the federated evaluation: %s", self.user, r, exc)
            return None
        if release is None:
            return None
        vector = evaluation_sum.ZERO_VECTOR
        try:
            if scores is None:
                raise PolicyViolation("no held-out scores were computed for this round")
            self.policy.check_evaluation(noisy=release.noisy, scored=scored)
            on_release(Phase.EVALUATION, session_label(body.evaluation_secagg))  # recorded, or refused
            vector = scores
        except (PolicyViolation, PrivacyError) as exc:
            log.info("user %d: round %d: zeros for the federated evaluation: %s", self.user, r, exc)
        try:
            residues = evaluation_sum.encode(
                release,
                vector,
                rotation_seed=rotation_seed(body.training.model_seed, r, Phase.EVALUATION),
                rng=client_generator(self.insecure_seed, r, Phase.EVALUATION, self.user),
            )
            self.calls.fetch(body, Phase.EVALUATION, pb.ADVERTISE_KEYS)  # the phase is open
            self.run(
                body,
                Phase.EVALUATION,
                body.evaluation_secagg,
                residues,
                None,
                on_release=lambda phase, session: None,  # recorded above; zeros release nothing
                allowed=update_survivors,
                noise_survivors=0 if update_survivors is None else len(update_survivors),
            )
        except (RoundFailed, ConfigError, PrivacyError) as exc:
            log.info("user %d: round %d: the federated evaluation failed: %s", self.user, r, exc)
        return None if vector is evaluation_sum.ZERO_VECTOR else release

"""A logical client's side of a round's secure sums: each phase's ring residues (its DP generator, the
phase's public rotation seed), the announced parameters checked against our own, the stage table run with
the client state machine, and the rule that one round gets at most one input from us."""

from __future__ import annotations

import logging

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
from mrff_secure.secagg.context import SessionContext, run_context_id
from mrff_secure.secagg.encoding import from_ring, to_ring
from mrff_secure.secagg.identity import ClientCredential
from mrff_secure.secagg.policy import PolicyViolation
from mrff_secure.wire.v1 import coordinator_pb2 as pb

log = logging.getLogger("mrff.client")


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
        self._input_sent: set[tuple[str, int]] = set()  # (run id, round) we sent an input for
        self._evaluations_scored: dict[str, int] = {}  # run id -> evaluations we sent held-out scores to

    def sent_input(self, body: pb.RoundBody) -> bool:
        """We already sent an input for this round of this run: a second session for it would let the server
        difference two sums over different participant sets that both hold our (nearly identical) update."""
        return (body.run_id, body.round_id) in self._input_sent

    def upload(self, plans: SecureRoundPlans, phase: Phase, vector: np.ndarray, body: pb.RoundBody) -> np.ndarray:
        """One phase's ring residues (`round.participant.phase_upload`) with this client's generator."""
        return phase_upload(
            plans,
            phase,
            vector,
            rotation_seed=rotation_seed(body.training.model_seed, body.round_id, phase),
            rng=client_generator(self.insecure_seed, body.round_id, phase, self.user),
        )

    def run(
        self,
        body: pb.RoundBody,
        phase: Phase,
        params: pb.SecAggParameters,
        residues: np.ndarray,
        plans: SecureRoundPlans | None,
        *,
        allowed: tuple[int, ...] | None = None,
        noise_survivors: int = 0,
    ) -> ClientSession | None:
        """One secure sum of our ring residues; the finished client session (None without secure aggregation)."""
        try:
            config = announced_secagg_config(params, phase, len(body.participants), plans, residues.size)
        except PolicyViolation as exc:
            raise RoundFailed(f"refusing round {body.round_id}: {exc}") from exc
        signed = from_ring(np.asarray(residues, dtype=np.int64).astype(np.uint64), config.bits)  # centred
        sid = params.secagg_round_id
        if not body.secure:
            self._input_sent.add((body.run_id, body.round_id))
            ring = to_ring(signed, config.bits, max_abs=config.max_abs)
            packed = packing.pack(ring, config.bits)
            message = messages.MaskedInput(sid, self.user, config.bits, config.vector_length, packed)
            self.calls.submit(body, phase, pb.MASKED_INPUT, message)
            return None
        try:
            context = SessionContext(run_context_id(body.run_id), phase, sid, bytes(params.session_nonce))
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
                if step.stage is Stage.MASKED_INPUT:
                    self._input_sent.add((body.run_id, body.round_id))  # from here on a sum may hold our input
                self.calls.submit(body, phase, step.wire, reply)
        except (AggregationAborted, SecAggError, ConfigError) as exc:
            raise RoundFailed(f"secure aggregation refused or aborted: {exc}") from exc
        return session

    def evaluation(
        self,
        body: pb.RoundBody,
        spec: RoundSpec,
        scores: np.ndarray,
        update_survivors: tuple[int, ...] | None,
    ) -> EvaluationRelease | None:
        """The round's federated evaluation: our held-out scores (`evaluation_sum.client_vector`), or zeros when our
        policy keeps them out of this one (`ClientPolicy.check_evaluation`), encoded with our noise share under the
        round's DP (`announced_evaluation_release`), through a secure sum over exactly the update phase's survivors
        we signed: we unmask no survivor list shorter than it. Returns the release our scores went into (None:
        we sent zeros, or nothing). Its failure costs the round nothing: the update is already in the server's sum."""
        r = body.round_id
        try:
            release = announced_evaluation_release(body, spec)
        except PolicyViolation as exc:
            log.info("user %d: round %d: refusing the federated evaluation: %s", self.user, r, exc)
            return None
        if release is None:
            return None
        scored = self._evaluations_scored.get(body.run_id, 0)
        try:
            self.policy.check_evaluation(noisy=release.noisy, scored=scored)
            vector = scores
        except PolicyViolation as exc:
            log.info("user %d: round %d: zeros for the federated evaluation: %s", self.user, r, exc)
            vector = evaluation_sum.ZERO_VECTOR
        try:
            residues = evaluation_sum.encode(
                release,
                vector,
                rotation_seed=rotation_seed(body.training.model_seed, r, Phase.EVALUATION),
                rng=client_generator(self.insecure_seed, r, Phase.EVALUATION, self.user),
            )
            self.calls.fetch(body, Phase.EVALUATION, pb.ADVERTISE_KEYS)  # the phase is open
            if vector is scores:
                self._evaluations_scored[body.run_id] = scored + 1  # counted before any input can leave
            self.run(
                body,
                Phase.EVALUATION,
                body.evaluation_secagg,
                residues,
                None,
                allowed=update_survivors,
                noise_survivors=0 if update_survivors is None else len(update_survivors),
            )
        except (RoundFailed, ConfigError, PrivacyError) as exc:
            log.info("user %d: round %d: the federated evaluation failed: %s", self.user, r, exc)
        return release if vector is scores else None

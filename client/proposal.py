"""What a network client checks in a round's signed proposal before it trains or reveals anything: the data
schema, the parameters against their signed digest, the round's settings against its own policy, and the
phase-1 counts the server announces. Each check raises, naming what does not hold."""

from __future__ import annotations

import logging
import threading

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from client.policy import ClientPolicy
from client.transport import ClientFailure
from mrff_secure.errors import AuthenticationError, ConfigError, MrffError
from mrff_secure.round.encoding import SecureRoundPlans
from mrff_secure.round.evaluation_release import PADDED_LENGTH as EVALUATION_LENGTH
from mrff_secure.round.evaluation_release import EvaluationRelease, evaluation_release
from mrff_secure.round.spec import Phase, RoundSpec
from mrff_secure.round.update_vector import UpdateLayout
from mrff_secure.secagg.config import SecAggConfig, max_abs_for
from mrff_secure.secagg.policy import PolicyViolation
from mrff_secure.wire import limits, signing, tensors
from mrff_secure.wire.v1 import coordinator_pb2 as pb

log = logging.getLogger("mrff.client")
_DP_OFF_WARNED = threading.Event()


def check_schema(body: pb.RoundBody | pb.DeploymentBody, schema_digest: str, schema_summary: str, user: int) -> None:
    """The server's model must be built for our data (catalogue, user fields, history length): another
    schema is a different deployment, or a misconfigured one; no round of it is played, ever. Checked on the
    signed DeploymentBody of the enrolment reply (before we wait for a round) and again on every round."""
    if body.schema_digest != schema_digest:
        theirs = body.schema_summary or "(not announced)"
        raise ClientFailure(
            f"user {user}: refusing the server: its data schema differs from ours; "
            f"server: {theirs}; this client: {schema_summary}"
        )


def verified_deployment(
    reply: pb.EnrolReply, signing_key: Ed25519PublicKey, *, user: int, nonce: bytes
) -> pb.DeploymentBody:
    """The enrolment reply's DeploymentBody, refused (ClientFailure) unless the server signed it for this run,
    this client and this enrolment's challenge: we trust no schema the server did not sign."""
    if not reply.HasField("deployment"):
        raise ClientFailure(
            f"user {user}: refusing the server: its enrolment reply carries no signed deployment (an older "
            f"protocol than {limits.PROTOCOL_VERSION}?)"
        )
    try:
        signing.verify_deployment(signing_key, reply.deployment.body, reply.deployment.signature)
    except AuthenticationError as exc:
        raise ClientFailure(f"user {user}: refusing the server: {exc}") from exc
    body = pb.DeploymentBody.FromString(reply.deployment.body)
    if body.run_id != reply.run_id or body.client_id != user or body.challenge_nonce != nonce:
        raise ClientFailure(
            f"user {user}: refusing the server: its signed deployment is for run {body.run_id!r}, client "
            f"{body.client_id}, another challenge: not this enrolment"
        )
    return body


def verified_parameters(
    body: pb.RoundBody, layout: UpdateLayout, template: dict[str, tuple[tuple[int, ...], torch.dtype]]
) -> dict[str, torch.Tensor]:
    """The announced global parameters, refused unless they fit the model and the signed digest."""
    try:
        params = tensors.from_proto(body.parameters, template)
    except MrffError as exc:
        raise AuthenticationError(f"round {body.round_id}: parameters do not match the model: {exc}") from exc
    if tensors.digest(params) != body.model_digest:
        raise AuthenticationError(f"round {body.round_id}: parameters do not match the signed digest")
    if (body.num_blocks, body.num_groups) != (layout.num_blocks, layout.num_groups):
        raise AuthenticationError("announced group layout does not match the model")
    return params


def accepted_spec(body: pb.RoundBody, policy: ClientPolicy, user: int) -> RoundSpec:
    """The round's settings, refused (ConfigError, PolicyViolation) unless our own policy accepts them: the
    signature only says who proposed them. The round's lr and weight decay are range-checked by `RoundSpec`
    (a malformed value is a ConfigError naming it); they change no privacy guarantee (`ClientPolicy.check_round`)."""
    spec = RoundSpec(
        local_steps=body.training.local_steps,
        optimizer=body.training.optimizer,
        lr=body.training.lr,
        weight_decay=body.training.weight_decay,
        dp_mode=body.dp.mode,
        clip=body.dp.clip,
        noise_multiplier=body.dp.noise_multiplier,
        min_survivors=max(body.dp.min_survivors, 1),
        mechanism=body.dp.mechanism,
        modulus_bits=body.dp.modulus_bits,
        count_cap=body.dp.count_cap,
        min_group_size=body.min_group_size,
    )
    policy.check_round(secure=body.secure, spec=spec)
    if spec.dp_mode == "off" and body.secure and not _DP_OFF_WARNED.is_set():
        _DP_OFF_WARNED.set()  # once per process, not once per logical client
        log.warning(
            "user %d: the server runs with DP off: secure aggregation alone protects this client only "
            "against an honest-but-curious server (SECURITY.md)",
            user,
        )
    return spec


def phase1_counts(body: pb.RoundBody, phase_body: pb.UpdatePhaseBody, size: int) -> np.ndarray:
    """The phase-1 group counts of the signed update-phase body, refused if for another round or mis-sized."""
    if phase_body.round_id != body.round_id or phase_body.run_id != body.run_id:
        raise AuthenticationError("phase parameters are for another round")
    group_counts = np.asarray(list(phase_body.group_counts), dtype=np.int64)
    if group_counts.size != size:
        raise AuthenticationError("phase-1 group counts have the wrong size")
    return group_counts


def check_exact_counts(group_counts: np.ndarray, num_blocks: int, survivors: int) -> None:
    """DP off: every block's counts add up to the survivors we signed (a cheap check of a lie; a server that
    moves counts between groups is not caught: see SECURITY.md)."""
    per_block = group_counts.reshape(num_blocks, -1).sum(axis=1)
    if np.any(per_block != survivors):
        raise PolicyViolation(
            f"the phase-1 counts add up to {per_block.tolist()} per block, but {survivors} clients survived phase 1"
        )


def announced_secagg_config(
    params: pb.SecAggParameters, phase: Phase, num_clients: int, plans: SecureRoundPlans | None, input_length: int
) -> SecAggConfig:
    """A phase's announced secure-aggregation parameters, refused (PolicyViolation) unless the lengths and
    ranges equal what we compute ourselves from the round's public parameters (AuthenticationError when
    they are not even valid)."""
    try:
        config = SecAggConfig(
            num_clients=params.num_clients,
            vector_length=params.vector_length,
            max_abs=params.max_abs,
            modulus_bits=params.modulus_bits,
            num_neighbours=params.num_neighbours,
            threshold=params.threshold,
        )
    except ConfigError as exc:
        raise AuthenticationError(f"announced secure-aggregation parameters are invalid: {exc}") from exc
    n = num_clients
    expected: tuple[int, int, int | None, int]  # (clients, length, max_abs, modulus bits); None matches no announcement
    if phase != Phase.EVALUATION and plans is None:
        raise PolicyViolation(f"the {phase.label} phase has no plans of ours to check its parameters against")
    if phase == Phase.EVALUATION or plans is None:  # the evaluation's fixed length, sized for the round's modulus
        # (SecureSums.evaluation checks the modulus against the round's own before it gets here)
        try:
            evaluation_max_abs: int | None = max_abs_for(n, config.bits, vector_length=EVALUATION_LENGTH)
        except ConfigError:
            evaluation_max_abs = None
        expected = (n, EVALUATION_LENGTH, evaluation_max_abs, config.bits)
    else:
        plan, plan_max_abs = (
            (plans.counts, plans.counts_max_abs) if phase == Phase.COUNTS else (plans.update, plans.update_max_abs)
        )
        expected = (n, 1, 1, config.bits) if plan is None else (n, plan.padded_dim, plan_max_abs, plan.modulus_bits)
    announced = (config.num_clients, config.vector_length, config.max_abs, config.bits)
    if announced != expected or input_length != config.vector_length:
        raise PolicyViolation(
            f"announced (clients, length, max_abs, modulus bits) {announced} differ from "
            f"{expected}, computed from the round's public parameters"
        )
    return config


def announced_evaluation_release(
    body: pb.RoundBody, spec: RoundSpec, *, colluding_survivors: int = 0
) -> EvaluationRelease | None:
    """The federated evaluation a round announces, as our ledger records it: the round's mechanism, noise
    multiplier, n_min and modulus from `spec` (the round's settings our policy accepted, `accepted_spec`) and its
    participants, accounted with the n_min - `colluding_survivors` honest shares (our policy's
    corrupt_neighbours); None when the round announces no evaluation. Refused (PolicyViolation) when the
    announced evaluation sum is not on the round's modulus (its noise would not be what we account)."""
    if not body.HasField("evaluation_secagg"):
        return None
    if body.evaluation_secagg.modulus_bits != spec.modulus_bits:
        raise PolicyViolation(
            f"the evaluation sum is announced on a {body.evaluation_secagg.modulus_bits}-bit modulus, the round's is "
            f"{spec.modulus_bits}"
        )
    try:
        return evaluation_release(spec, len(body.participants), colluding_survivors=colluding_survivors)
    except ConfigError as exc:
        raise PolicyViolation(f"the round's evaluation is impossible: {exc}") from exc

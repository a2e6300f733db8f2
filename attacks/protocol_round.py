"""A secure-aggregation round driven stage by stage with an honest ServerSession, so that an attack (the
malicious-server cells of the grid, `attacks.active`, and the hostile tests) can tamper between stages,
and the attacker's tools: colluders' signatures on any survivor list, and the last step of an attack
(strip the target's masks with whatever secrets were collected).

Every message goes through to_bytes/from_bytes (`inmemory.wire`), as a transport carries it. With
`seed=...` a round is deterministic (identity keys, context, every client's randomness): re-running it
gives the same graph, bundles and masks, so a test can replay one graph under several attacks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mrff_secure.errors import ProtocolViolation
from mrff_secure.round.inmemory import Identities, make_identities, simulation_policy, wire
from mrff_secure.round.stages import BY_STAGE
from mrff_secure.secagg import masking, packing, primitives, shamir
from mrff_secure.secagg.client import ClientSession
from mrff_secure.secagg.config import SecAggConfig
from mrff_secure.secagg.context import SessionContext
from mrff_secure.secagg.encoding import from_ring
from mrff_secure.secagg.graph import graph_seed
from mrff_secure.secagg.identity import issue_credential
from mrff_secure.secagg.messages import (
    ConsistencySignature,
    MaskedInput,
    Message,
    Neighbourhood,
    ParticipantSet,
    ShareDelivery,
    consistency_payload,
)
from mrff_secure.secagg.policy import SecAggPolicy
from mrff_secure.secagg.server import AggregateResult, ServerSession
from mrff_secure.secagg.stages import Stage


def derive(seed: bytes, *labels: object) -> bytes:
    """32 deterministic bytes for one labelled use of a test seed."""
    return hashlib.sha256(b"|".join([seed] + [str(label).encode() for label in labels])).digest()


def seeded_identities(ids: Iterable[int], seed: bytes) -> Identities:
    """make_identities, but every key derived from `seed` (a reproducible authority and clients)."""
    authority = Ed25519PrivateKey.from_private_bytes(derive(seed, "authority"))
    keys = {c: Ed25519PrivateKey.from_private_bytes(derive(seed, "identity", c)) for c in ids}
    credentials = {  # a fixed expiry (2100-01-01): the credentials' bytes, hence the graph, are reproducible
        c: issue_credential(authority, c, primitives.identity_public_bytes(k), expires_at=4_102_444_800)
        for c, k in keys.items()
    }
    return Identities(authority, keys, credentials)


def seeded_context(seed: bytes, round_id: int, phase: int = 0) -> SessionContext:
    return SessionContext(
        derive(seed, "run")[:16],
        phase,
        round_id,
        derive(seed, "nonce", round_id, phase),
        derive(seed, "round body", round_id, phase),
    )


class Round:
    def __init__(
        self,
        config: SecAggConfig,
        ids: Iterable[int],
        *,
        round_id: int = 1,
        policy: SecAggPolicy | None = None,
        identities: Identities | None = None,
        context: SessionContext | None = None,
        seed: bytes | None = None,
    ) -> None:
        self.config = config
        self.ids = sorted(ids)
        if identities is None:
            identities = make_identities(self.ids) if seed is None else seeded_identities(self.ids, seed)
        self.identities = identities
        if context is None:
            context = SessionContext.fresh(round_id=round_id) if seed is None else seeded_context(seed, round_id)
        self.context = context
        self.policy = policy if policy is not None else simulation_policy(config)
        self.server = ServerSession(
            config,
            context=self.context,
            authority_public_key=self.identities.authority_public_key,
            participants=self.ids,
        )
        self.clients: dict[int, ClientSession] = {c: self.session(c, seed=seed) for c in self.ids}
        self.participants: ParticipantSet | None = None
        self.neighbourhoods: dict[int, Neighbourhood] = {}
        self.deliveries: dict[int, ShareDelivery] = {}
        self.uploads: dict[int, MaskedInput] = {}

    def session(
        self,
        client: int,
        *,
        seed: bytes | None = None,
        policy: SecAggPolicy | None = None,
        context: SessionContext | None = None,
        allowed: Collection[int] | None = None,
    ) -> ClientSession:
        """A fresh ClientSession of one of this round's clients (deterministic when `seed` is given;
        `allowed`: the participants it may be shown, as a phase-2 session bound to phase 1)."""
        random = (
            primitives.system_random if seed is None else primitives.keystream_random(derive(seed, "client", client))
        )
        return ClientSession(
            self.config,
            context=context or self.context,
            client_id=client,
            identity_key=self.identities.keys[client],
            credential=self.identities.credentials[client],
            authority_public_key=self.identities.authority_public_key,
            policy=policy or self.policy,
            allowed_participants=allowed,
            random=random,
        )

    @property
    def round_id(self) -> int:
        return self.context.round_id

    def _step(
        self, stage: Stage, deliveries: Mapping[int, Message | None], inputs: Mapping[int, np.ndarray] | None = None
    ) -> dict[int, Message]:
        """Every client with a delivery takes `stage`'s step of the stage table; the server receives each reply
        (every message through the 'wire'). Returns the replies."""
        step = BY_STAGE[stage]
        replies = {}
        for c, delivered in deliveries.items():
            reply = wire(
                step.client_step(
                    self.clients[c],
                    None if delivered is None else wire(delivered),
                    None if inputs is None else inputs[c],
                )
            )
            step.receive(self.server, reply)
            replies[c] = reply
        return replies

    def advertise(self) -> ParticipantSet:
        self._step(Stage.ADVERTISE_KEYS, dict.fromkeys(self.ids))
        self.participants = wire(self.server.close_advertise_keys())
        return self.participants

    def reveal(self) -> dict[int, Neighbourhood]:
        self._step(Stage.REVEAL_SEED, dict.fromkeys(self.ids, self.participants))
        self.neighbourhoods = self.server.close_reveal_seed()
        return self.neighbourhoods

    def share(self) -> dict[int, ShareDelivery]:
        self._step(Stage.SHARE_KEYS, {c: self.neighbourhoods[c] for c in self.ids})
        self.deliveries = self.server.close_share_keys()
        return self.deliveries

    def mask(self, inputs: dict[int, np.ndarray]) -> None:
        replies = self._step(Stage.MASKED_INPUT, {c: self.deliveries[c] for c in self.ids}, inputs)
        for c, reply in replies.items():
            if not isinstance(reply, MaskedInput):  # the stage table's MASKED_INPUT step submits a MaskedInput
                raise ProtocolViolation(f"client {c} answered MASKED_INPUT with a {type(reply).__name__}")
            self.uploads[c] = reply

    def until_masked(self, inputs: dict[int, np.ndarray]) -> "Round":
        self.advertise()
        self.reveal()
        self.share()
        self.mask(inputs)
        return self

    def finish_honestly(self) -> AggregateResult:
        survivors = wire(self.server.close_masked_input())
        self._step(Stage.CONSISTENCY_CHECK, dict.fromkeys(survivors.survivors, survivors))
        self._step(Stage.UNMASK, self.server.close_consistency_check())
        return self.server.finish()

    # --- the attacker's tools ---------------------------------------------------------------

    def graph_seed(self) -> bytes:
        """The graph seed, from public data only (context, participant set, the reveals)."""
        if self.participants is None:
            raise ProtocolViolation("the graph seed needs the participant set: run advertise() first")
        reveals = next(iter(self.neighbourhoods.values())).reveals
        return graph_seed(self.context.to_bytes(), self.participants.digest(), reveals)

    def colluder_signature(self, colluder: int, survivors: Sequence[int]) -> ConsistencySignature:
        """What a colluding client (its identity key is the attacker's) signs: any survivor list, as
        often as the attacker likes."""
        payload = consistency_payload(self.context.to_bytes(), self.graph_seed(), tuple(survivors))
        return ConsistencySignature(self.round_id, colluder, primitives.sign(self.identities.keys[colluder], payload))

    def held_by(self, client: int) -> tuple[int, ...]:
        """The neighbours whose shares `client` received (and whose pairwise masks it applied)."""
        return tuple(s.sender for s in self.deliveries[client].shares)

    def strip_masks(
        self, target: int, seed_shares: Sequence[shamir.Share], key_shares: Sequence[shamir.Share]
    ) -> np.ndarray:
        """The attacker's last step: rebuild the target's self-mask seed and mask key from t shares each
        and remove every mask from its upload. Returns the signed vector it gets."""
        t, bits, d = self.config.t, self.config.bits, self.config.vector_length
        seed = shamir.combine(list(seed_shares), t)
        private = primitives.agreement_key_from_bytes(shamir.combine(list(key_shares), t))
        guess = packing.unpack(self.uploads[target].payload, bits, d).astype(primitives.word_dtype(bits))
        guess -= masking.self_mask(seed, round_id=self.round_id, client_id=target, length=d, modulus_bits=bits)
        for v in self.held_by(target):
            secret = primitives.agree(private, self.server.bundle(v).mask_public_key)
            mask = masking.pairwise_mask(
                secret, round_id=self.round_id, id_a=target, id_b=v, length=d, modulus_bits=bits
            )
            masking.apply_signed(guess, mask, owner=v, peer=target)  # the target added the opposite sign
        masking.reduce(guess, bits)
        return from_ring(guess, bits)

"""The client side of a secure-aggregation round: a state machine that any transport drives.

Each public method is one protocol stage. It first checks that the session is
in that stage and that the message belongs to this round and this client;
any refusal raises a typed SecAggError and moves the session to ABORTED, after
which it answers nothing. Secrets (agreement keys, b_u, received shares) never
leave the session except as the protocol prescribes.
"""

from __future__ import annotations

import bisect
import operator
from dataclasses import replace
from functools import wraps
from typing import Callable, Collection, Concatenate, ParamSpec, TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mrff_secure.checks import check_int
from mrff_secure.errors import AggregationAborted, AuthenticationError, ConfigError, ProtocolViolation
from mrff_secure.secagg import masking, packing, primitives, shamir
from mrff_secure.secagg.config import MAX_CLIENT_ID, SecAggConfig
from mrff_secure.secagg.context import SessionContext
from mrff_secure.secagg.encoding import InputRangeError, to_ring
from mrff_secure.secagg.graph import graph_seed, neighbours_of
from mrff_secure.secagg.identity import ClientCredential, verify_credential
from mrff_secure.secagg.messages import (
    PURPOSE_GRAPH_SEED,
    PURPOSE_SELF_MASK_SEED,
    AdvertiseKeys,
    ConsistencySignature,
    EncryptedShare,
    MaskedInput,
    Message,
    Neighbourhood,
    OwnedShare,
    ParticipantSet,
    SeedReveal,
    ShareDelivery,
    ShareKeys,
    SharePayload,
    SurvivorList,
    UnmaskRequest,
    UnmaskResponse,
    consistency_payload,
)
from mrff_secure.secagg.policy import SecAggPolicy
from mrff_secure.secagg.stages import ShareKind, Stage

P = ParamSpec("P")
OTHER_ROUND_BODY = (
    "the other clients of this session accepted another round body: the server showed different rounds to "
    "different clients (model inconsistency)"
)
R = TypeVar("R")


def _stage(
    expected: Stage, following: Stage
) -> Callable[[Callable[Concatenate[ClientSession, P], R]], Callable[Concatenate[ClientSession, P], R]]:
    """Check the stage before the step; advance on success, abort the session on any failure."""

    def decorate(step: Callable[Concatenate[ClientSession, P], R]) -> Callable[Concatenate[ClientSession, P], R]:
        @wraps(step)
        def run(self: ClientSession, *args: P.args, **kwargs: P.kwargs) -> R:
            if self.stage is not expected:
                raise ProtocolViolation(
                    f"client {self.client_id}: {step.__name__} is not allowed in stage "
                    f"{self.stage.name} (expected {expected.name})"
                )
            try:
                result = step(self, *args, **kwargs)
            except BaseException:
                self.stage = Stage.ABORTED
                raise
            self.stage = following
            return result

        return run

    return decorate


def _sorted_unique(ids: tuple[int, ...], what: str) -> None:
    if not all(map(operator.lt, ids, ids[1:])):
        raise ProtocolViolation(f"{what} must be sorted by client id without repeats")


class ClientSession:
    """One client's side of one session. Usage: advertise_keys -> reveal_seed -> share_keys ->
    masked_input -> consistency_check -> unmask, each taking the server's message and returning
    the reply.

    The client trusts no directory from the server: each neighbour's identity key comes from that
    neighbour's credential, verified under the identity authority's key. It verifies only its own
    neighbours (O(k) signatures); a participant-set entry that names no real client can only land
    next to honest clients, which then refuse the round.
    """

    def __init__(
        self,
        config: SecAggConfig,
        *,
        context: SessionContext,
        client_id: int,
        identity_key: Ed25519PrivateKey,
        credential: ClientCredential,
        authority_public_key: bytes,
        policy: SecAggPolicy | None = None,
        allowed_participants: Collection[int] | None = None,
        random: primitives.RandomBytes = primitives.system_random,
    ) -> None:
        """credential: this client's own, issued by the authority whose raw Ed25519 public key is
        `authority_public_key`; policy: the client's floors (default SecAggPolicy());
        allowed_participants: if given, a participant set naming anyone else is refused (binds the
        update phase of a round to the survivors of its counts phase); `random` is the randomness
        seam for known-answer tests."""
        check_int("client_id", client_id, low=0, high=MAX_CLIENT_ID)
        if not isinstance(context, SessionContext):
            raise ConfigError(f"context must be a SessionContext, got {type(context).__name__}")
        try:
            certified = verify_credential(authority_public_key, credential, client_id=client_id)
        except AuthenticationError as exc:
            raise ConfigError(
                f"client {client_id}: our own credential is not the authority's statement for this client id"
            ) from exc
        if certified != primitives.identity_public_bytes(identity_key):
            raise ConfigError(f"client {client_id}: our credential certifies another identity key")
        self.policy = policy if policy is not None else SecAggPolicy()
        self.policy.check_config(config)  # refuse weak parameters before revealing anything
        self.config = config
        self.context = context
        self._context_bytes = context.to_bytes()
        self.round_id = context.round_id
        self.client_id = client_id
        self.stage = Stage.ADVERTISE_KEYS
        self._allowed = None if allowed_participants is None else frozenset(allowed_participants)
        self._identity_key = identity_key
        self._credential = credential
        self._authority = bytes(authority_public_key)
        self._random = random
        self._cipher_key = primitives.generate_agreement_key(random)
        self._mask_key = primitives.generate_agreement_key(random)
        self._graph_reveal = random(primitives.KEY_BYTES)
        self._self_mask_seed = random(shamir.SECRET_BYTES)
        self._advert: AdvertiseKeys | None = None
        self._participants: ParticipantSet | None = None
        self._participant_ids: frozenset[int] = frozenset()
        self._roster: dict[int, AdvertiseKeys] = {}  # the neighbours' verified bundles
        self._identities: dict[int, bytes] = {}  # the neighbours' certified identity keys
        self._seed = b""
        self.neighbours: tuple[int, ...] = ()
        self._held: dict[int, SharePayload] = {}  # shares neighbours gave us, by sender
        self._signed_survivors: tuple[int, ...] | None = None
        self._consistency_payload = b""  # what we signed at the consistency check
        self._revealed: dict[int, ShareKind] = {}
        self._share_ciphers: dict[int, AESGCM] = {}

    # --- helpers ---------------------------------------------------------------------------

    def _check_round(self, message: Message) -> None:
        if message.round_id != self.round_id:
            raise ProtocolViolation(
                f"client {self.client_id}: message {type(message).__name__} is for round {message.round_id}, "
                f"this is round {self.round_id} (replayed or misrouted)"
            )

    def _check_addressee(self, receiver: int) -> None:
        if receiver != self.client_id:
            raise ProtocolViolation(f"client {self.client_id}: message addressed to client {receiver}")

    @property
    def signed_survivors(self) -> tuple[int, ...] | None:
        """The survivor list this client signed (None before the consistency check)."""
        return self._signed_survivors

    def _share_cipher_with(self, peer: int) -> AESGCM:
        """The pair's share-encryption cipher (primitives.share_cipher of the derived key), made once (when we
        encrypt to the peer) and reused to open the peer's share."""
        cipher = self._share_ciphers.get(peer)
        if cipher is None:
            secret = primitives.agree(self._cipher_key, self._roster[peer].cipher_public_key)
            key = primitives.derive_key(
                secret,
                purpose=primitives.PURPOSE_SHARE_ENCRYPTION,
                round_id=self.round_id,
                id_a=self.client_id,
                id_b=peer,
            )
            cipher = primitives.share_cipher(key)
            self._share_ciphers[peer] = cipher
        return cipher

    def _other_round_body(self, clients: list[int], theirs: bytes) -> ProtocolViolation:
        """The refusal when participants accepted another round body than ours (W21)."""
        return ProtocolViolation(
            f"client {self.client_id}: {OTHER_ROUND_BODY}: "
            f"{'participants' if len(clients) > 1 else 'participant'} {clients[:10]} "
            f"{'are' if len(clients) > 1 else 'is'} bound to round body {theirs.hex()[:16]}..., this client accepted "
            f"{self.context.round_body_digest.hex()[:16]}..."
        )

    def _verified_bundle(self, bundle: AdvertiseKeys, expected_digest: bytes) -> bytes:
        """Check a neighbour's bundle against the participant set, our round body and the authority; its identity
        key."""
        if bundle.round_id != self.round_id:
            raise ProtocolViolation(f"key bundle of client {bundle.client_id} is for round {bundle.round_id}")
        if bundle.round_body_digest != self.context.round_body_digest:
            raise self._other_round_body([bundle.client_id], bundle.round_body_digest)
        if bundle.digest() != expected_digest:
            raise ProtocolViolation(
                f"key bundle of client {bundle.client_id} differs from the one the participant set fixed"
            )
        try:
            identity = verify_credential(self._authority, bundle.credential, client_id=bundle.client_id)
        except AuthenticationError as exc:
            raise AuthenticationError(
                f"client {bundle.client_id} has no credential from our identity authority"
            ) from exc
        primitives.verify(identity, bundle.signature, bundle.signed_payload(self._context_bytes))
        return identity

    # --- stage 0 ---------------------------------------------------------------------------

    @_stage(Stage.ADVERTISE_KEYS, Stage.REVEAL_SEED)
    def advertise_keys(self) -> AdvertiseKeys:
        """Fresh X25519 keys and commitments for this session, signed with the identity key."""
        ctx = self._context_bytes
        unsigned = AdvertiseKeys(
            self.round_id,
            self.client_id,
            primitives.agreement_public_bytes(self._cipher_key),
            primitives.agreement_public_bytes(self._mask_key),
            primitives.commitment(PURPOSE_GRAPH_SEED, ctx, self.client_id, self._graph_reveal),
            primitives.commitment(PURPOSE_SELF_MASK_SEED, ctx, self.client_id, self._self_mask_seed),
            self._credential,
            bytes(primitives.SIGNATURE_BYTES),
            self.context.round_body_digest,
        )
        self._advert = replace(unsigned, signature=primitives.sign(self._identity_key, unsigned.signed_payload(ctx)))
        return self._advert

    # --- stage 1 ---------------------------------------------------------------------------

    @_stage(Stage.REVEAL_SEED, Stage.SHARE_KEYS)
    def reveal_seed(self, participants: ParticipantSet) -> SeedReveal:
        """Check the fixed participant set (size, every participant's round body is ours, our own entry), then
        open our graph commitment."""
        self._check_round(participants)
        ids = participants.client_ids
        _sorted_unique(ids, "the participant set")
        if len(ids) > self.config.num_clients:
            raise ProtocolViolation(
                f"participant set has {len(ids)} clients but the modulus was sized for {self.config.num_clients}"
            )
        self.policy.check_participants(len(ids))
        self.policy.check_graph(len(ids), self.config.k, self.config.t)  # the graph the actual set will have
        id_set = frozenset(ids)
        if self._allowed is not None and not id_set <= self._allowed:
            raise ProtocolViolation(
                f"client {self.client_id}: the participant set names "
                f"{sorted(id_set - self._allowed)[:10]}, who may not take part in this session"
            )
        table = participants.table  # (n,) structured: the entries' columns, read from the received bytes
        ours = np.frombuffer(self.context.round_body_digest, dtype=np.uint8)  # (32,)
        others = np.flatnonzero((table["round_body_digest"] != ours).any(axis=1))
        if others.size:
            raise self._other_round_body(
                [ids[i] for i in others.tolist()], participants.entry_at(int(others[0])).round_body_digest
            )
        position = bisect.bisect_left(ids, self.client_id)
        own = participants.entry_at(position) if position < len(ids) and ids[position] == self.client_id else None
        advert = self._advert
        if (
            advert is None
            or own is None
            or own.bundle_digest != advert.digest()
            or own.graph_commitment != advert.graph_commitment
        ):
            raise ProtocolViolation(f"client {self.client_id}: the participant set does not carry our own key bundle")
        self._participant_ids = id_set
        self._participants = participants
        return SeedReveal(self.round_id, self.client_id, self._graph_reveal)

    # --- stage 2 ---------------------------------------------------------------------------

    @_stage(Stage.SHARE_KEYS, Stage.MASKED_INPUT)
    def share_keys(self, neighbourhood: Neighbourhood) -> ShareKeys:
        """Check every reveal against its commitment, derive the graph, verify our neighbours' bundles
        (credential and signature), and send each neighbour an encrypted share of our self-mask seed and
        of our mask-agreement private key."""
        self._check_round(neighbourhood)
        self._check_addressee(neighbourhood.receiver)
        participants = self._participants
        if participants is None:  # unreachable through the stage machine
            raise ProtocolViolation("no participant set was fixed in this session")
        ctx = self._context_bytes
        ids = participants.client_ids
        if len(neighbourhood.reveals) != len(ids):
            raise ProtocolViolation(f"{len(neighbourhood.reveals)} reveals for {len(ids)} participants")
        reveals = neighbourhood.reveal_block()
        unopened = primitives.first_unopened(
            PURPOSE_GRAPH_SEED, ctx, participants.table["client_id"], reveals, participants.graph_commitments()
        )
        if unopened is not None:
            raise ProtocolViolation(f"the reveal of client {ids[unopened]} does not open its commitment")
        self._seed = graph_seed(ctx, participants.digest(), neighbourhood.reveals)
        self.neighbours = neighbours_of(self._seed, ids, self.config.k, self.client_id)
        if tuple(b.client_id for b in neighbourhood.bundles) != self.neighbours:
            raise ProtocolViolation(
                f"client {self.client_id}: the server sent the bundles of "
                f"{[b.client_id for b in neighbourhood.bundles]}, our neighbours are "
                f"{list(self.neighbours)}"
            )
        for bundle in neighbourhood.bundles:  # our neighbours are participants: each has its entry
            entry = participants.entry_at(bisect.bisect_left(ids, bundle.client_id))
            self._identities[bundle.client_id] = self._verified_bundle(bundle, entry.bundle_digest)
            self._roster[bundle.client_id] = bundle
        t = self.config.t
        if len(self.neighbours) < t:
            raise AggregationAborted(
                f"client {self.client_id}: {len(self.neighbours)} neighbours, fewer than the threshold t={t}"
            )
        if 2 * t <= len(self.neighbours):
            raise ConfigError(f"threshold t={t} is not a strict majority of our {len(self.neighbours)} neighbours")

        mask_private = primitives.agreement_private_bytes(self._mask_key)
        shares = shamir.split_values(
            [self._self_mask_seed, mask_private], [v + 1 for v in self.neighbours], t, random=self._random
        )
        sealed = []
        for peer, (self_share, key_share) in zip(self.neighbours, shares):
            payload = SharePayload(self.client_id, peer, self_share, key_share).to_bytes()
            ciphertext = primitives.seal(
                self._share_cipher_with(peer),
                payload,
                sender=self.client_id,
                receiver=peer,
                round_id=self.round_id,
                random=self._random,
            )
            sealed.append(EncryptedShare(self.client_id, peer, ciphertext))
        return ShareKeys(self.round_id, self.client_id, tuple(sealed))

    # --- stage 3 ---------------------------------------------------------------------------

    @_stage(Stage.MASKED_INPUT, Stage.CONSISTENCY_CHECK)
    def masked_input(self, delivery: ShareDelivery, vector: np.ndarray) -> MaskedInput:
        """Decrypt the shares our neighbours sent, then upload our input masked with our self mask
        and one pairwise mask per neighbour that shared with us. `vector` holds signed integers in
        [-max_abs, max_abs], length config.vector_length."""
        self._check_round(delivery)
        self._check_addressee(delivery.receiver)
        held: dict[int, SharePayload] = {}
        for item in delivery.shares:
            if item.receiver != self.client_id or item.sender not in self.neighbours or item.sender in held:
                raise ProtocolViolation(
                    f"client {self.client_id}: unexpected share from {item.sender} to {item.receiver}"
                )
            plaintext = primitives.open_sealed(
                self._share_cipher_with(item.sender),
                item.ciphertext,
                sender=item.sender,
                receiver=self.client_id,
                round_id=self.round_id,
            )
            payload = SharePayload.from_bytes(plaintext)
            if payload.sender != item.sender or payload.receiver != self.client_id:
                raise ProtocolViolation(f"client {self.client_id}: share payload names the wrong pair")
            held[item.sender] = payload
        t = self.config.t
        if len(held) < t:
            raise AggregationAborted(
                f"client {self.client_id}: only {len(held)} neighbours shared keys, fewer than t={t}"
            )

        values = np.asarray(vector)
        if values.shape != (self.config.vector_length,):
            raise InputRangeError(f"input has shape {values.shape}, expected ({self.config.vector_length},)")
        bits = self.config.bits
        ring = to_ring(values, bits, max_abs=self.config.max_abs)
        length = self.config.vector_length
        masked = ring.astype(primitives.word_dtype(bits))  # (d,) word dtype
        masked += masking.self_mask(
            self._self_mask_seed, round_id=self.round_id, client_id=self.client_id, length=length, modulus_bits=bits
        )
        for peer in sorted(held):
            secret = primitives.agree(self._mask_key, self._roster[peer].mask_public_key)
            mask = masking.pairwise_mask(
                secret, round_id=self.round_id, id_a=self.client_id, id_b=peer, length=length, modulus_bits=bits
            )
            masking.apply_signed(masked, mask, owner=self.client_id, peer=peer)
        masking.reduce(masked, bits)
        self._held = held
        return MaskedInput(self.round_id, self.client_id, bits, length, packing.pack(masked, bits))

    # --- stage 4 ---------------------------------------------------------------------------

    @_stage(Stage.CONSISTENCY_CHECK, Stage.UNMASK)
    def consistency_check(self, survivor_list: SurvivorList) -> ConsistencySignature:
        """Sign the survivor list (with the graph seed), after checking it makes sense to us."""
        self._check_round(survivor_list)
        survivors = survivor_list.survivors
        _sorted_unique(survivors, "the survivor list")
        if self.client_id not in survivors:
            raise ProtocolViolation(f"client {self.client_id}: survivor list omits us, yet asks us to sign it")
        survivor_set = set(survivors)
        unknown = survivor_set - self._participant_ids
        if unknown:
            raise ProtocolViolation(f"survivor list names clients outside the participant set: {sorted(unknown)}")
        self.policy.check_survivors(len(survivors))
        surviving_neighbours = survivor_set & set(self.neighbours)
        not_shared = surviving_neighbours - set(self._held)
        if not_shared:
            raise ProtocolViolation(
                f"client {self.client_id}: survivors {sorted(not_shared)} never shared keys with us"
            )
        t = self.config.t
        if len(surviving_neighbours) < t:
            raise AggregationAborted(
                f"client {self.client_id}: {len(surviving_neighbours)} of our neighbours survived, fewer than t={t}"
            )
        self._signed_survivors = survivors
        self._consistency_payload = consistency_payload(self._context_bytes, self._seed, survivors)
        signature = primitives.sign(self._identity_key, self._consistency_payload)
        return ConsistencySignature(self.round_id, self.client_id, signature)

    # --- stage 5 ---------------------------------------------------------------------------

    @_stage(Stage.UNMASK, Stage.DONE)
    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Reveal the self-mask share of each surviving neighbour and the key share of each dropped
        one, only if the lists agree with the survivor list that >= t neighbours signed.

        Policy on the consistency signatures: each must name a distinct neighbour on the list we signed; they are
        verified in the order given until t verify. One that fails before then refuses the request; those after the
        t-th valid one are not verified, so a bad one there is ignored (the rule needs t signers, and a server could
        as well have left it out)."""
        self._check_round(request)
        self._check_addressee(request.receiver)
        signed = self._signed_survivors
        if signed is None:  # unreachable through the stage machine; kept as a guard
            raise ProtocolViolation("no survivor list was signed in this round")
        survivors, dropped = request.survivors, request.dropped
        _sorted_unique(survivors, "the survivor list")
        _sorted_unique(dropped, "the dropped list")
        both = set(survivors) & set(dropped)
        if both:
            raise ProtocolViolation(
                f"client {self.client_id}: clients {sorted(both)} are listed both as survivors and dropped; "
                "refusing to reveal both shares of a peer"
            )
        strangers = (set(survivors) | set(dropped)) - set(self._held)
        if strangers:
            raise ProtocolViolation(
                f"client {self.client_id}: {sorted(strangers)} are not neighbours that shared keys with us"
            )
        signed_set = set(signed)
        if not set(survivors) <= signed_set:
            raise ProtocolViolation(
                f"survivors {sorted(set(survivors) - signed_set)} are not on the survivor list we signed"
            )
        if set(dropped) & signed_set:
            raise ProtocolViolation(
                f"clients {sorted(set(dropped) & signed_set)} are called dropped but are on the survivor list we signed"
            )
        t = self.config.t
        if len(survivors) < t:
            raise ProtocolViolation(
                f"client {self.client_id}: only {len(survivors)} surviving neighbours listed, need t={t}"
            )
        held = set(self._held)
        if set(survivors) != held & signed_set or set(dropped) != held - signed_set:
            raise ProtocolViolation(
                f"client {self.client_id}: the request's lists differ from the survivor list we "
                "signed, restricted to the neighbours that shared keys with us"
            )

        # Every listed signature must come from a distinct neighbour on the list we signed; the signatures are
        # verified in the order given until t verify (the rule is ">= t neighbours signed our list"). An invalid
        # signature met before that refuses the request; signatures after the t-th valid one are not verified
        # (nothing rests on them: a server could as well have left them out), so a bad one there is ignored.
        signers: set[int] = set()
        for sig in request.signatures:
            if sig.round_id != self.round_id:
                raise ProtocolViolation(f"a consistency signature is from round {sig.round_id}")
            if sig.client_id in signers or sig.client_id not in self.neighbours or sig.client_id not in signed_set:
                raise ProtocolViolation(f"unexpected consistency signature from client {sig.client_id}")
            signers.add(sig.client_id)
        verified = 0
        for sig in request.signatures:
            if verified >= t:
                break
            primitives.verify(self._identities[sig.client_id], sig.signature, self._consistency_payload)
            verified += 1
        if verified < t:
            raise ProtocolViolation(
                f"client {self.client_id}: {verified} neighbours signed the survivor list, need t={t}"
            )

        for peer in survivors:
            if self._revealed.get(peer, ShareKind.SELF_MASK) is not ShareKind.SELF_MASK:
                raise ProtocolViolation(f"already revealed the key share of {peer}; refusing its self-mask share")
        for peer in dropped:
            if self._revealed.get(peer, ShareKind.KEY) is not ShareKind.KEY:
                raise ProtocolViolation(f"already revealed the self-mask share of {peer}; refusing its key share")
        x = self.client_id + 1
        self_mask_shares = []
        for peer in survivors:
            self._revealed[peer] = ShareKind.SELF_MASK
            self_mask_shares.append(OwnedShare(peer, shamir.Share(x, self._held[peer].self_mask_share)))
        key_shares = []
        for peer in dropped:
            self._revealed[peer] = ShareKind.KEY
            key_shares.append(OwnedShare(peer, shamir.Share(x, self._held[peer].key_share)))
        return UnmaskResponse(self.round_id, self.client_id, tuple(self_mask_shares), tuple(key_shares))


__all__ = ["ClientSession", "Stage"]

"""The server side of a secure-aggregation round: collects messages, routes shares, and
recovers only the sum of the survivors' inputs.

`receive_*` methods validate one client message; a bad message raises a typed
error and is ignored, so one hostile client cannot end the round. `close_*`
methods end a stage (at the transport's deadline) and return the messages to
send. If the survivors cannot recover the sum, the round aborts with
AggregationAborted and nothing partial is ever returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection

import numpy as np

from mrff_secure.errors import AggregationAborted, ProtocolViolation, SecAggError
from mrff_secure.secagg import masking, packing, primitives, shamir
from mrff_secure.secagg.config import SecAggConfig
from mrff_secure.secagg.context import SessionContext
from mrff_secure.secagg.encoding import from_ring
from mrff_secure.secagg.graph import graph_seed, neighbour_graph
from mrff_secure.secagg.identity import verify_credential
from mrff_secure.secagg.messages import (
    PURPOSE_GRAPH_SEED,
    PURPOSE_SELF_MASK_SEED,
    AdvertiseKeys,
    ConsistencySignature,
    MaskedInput,
    Message,
    Neighbourhood,
    ParticipantEntry,
    ParticipantSet,
    SeedReveal,
    ShareDelivery,
    ShareKeys,
    SurvivorList,
    UnmaskRequest,
    UnmaskResponse,
    consistency_payload,
)
from mrff_secure.secagg.stages import Stage


@dataclass(frozen=True)
class AggregateResult:
    """The outcome of a successful round: the exact sum of the survivors' inputs."""

    round_id: int
    survivors: tuple[int, ...]
    ring_sum: np.ndarray  # (d,) uint64, the sum mod 2^b
    total: np.ndarray  # (d,) int64, the centred lift: the exact integer sum (it cannot wrap)


class ServerSession:
    """The server's side of one session (transport-agnostic). An honest server; the hostile ones
    of the tests subclass or bypass it, and the clients' checks are what stop them."""

    def __init__(
        self,
        config: SecAggConfig,
        *,
        context: SessionContext,
        authority_public_key: bytes,
        participants: Collection[int] | None = None,
    ) -> None:
        """authority_public_key: the identity authority's raw Ed25519 key (clients carry its
        credentials); participants: the client ids invited to the session (None: any certified client)."""
        self.config = config
        self.context = context
        self._context_bytes = context.to_bytes()
        self.round_id = context.round_id
        self.stage = Stage.ADVERTISE_KEYS
        self._authority = bytes(authority_public_key)
        self._invited = None if participants is None else frozenset(participants)
        self._bundles: dict[int, AdvertiseKeys] = {}  # U1
        self._identities: dict[int, bytes] = {}  # certified identity keys of U1
        self.participants: ParticipantSet | None = None
        self._reveals: dict[int, bytes] = {}
        self._seed = b""
        self.graph: dict[int, tuple[int, ...]] = {}
        self._share_keys: dict[int, ShareKeys] = {}  # U2
        self._delivered: dict[int, frozenset[int]] = {}  # receiver -> senders whose shares it got
        self._masked: set[int] = set()  # U3
        self._masked_total = masking.zeros(config.vector_length, config.bits)  # (d,) sum of U3's uploads mod 2^b
        self.survivors: tuple[int, ...] = ()
        self._consistency_payload = b""  # what each survivor signs (fixed when the survivor list is)
        self._signatures: dict[int, ConsistencySignature] = {}  # U4
        self._requests: dict[int, UnmaskRequest] = {}
        self._responses: dict[int, UnmaskResponse] = {}  # U5

    # --- helpers ---------------------------------------------------------------------------

    def _expect(self, stage: Stage, message: Message | None = None) -> None:
        if self.stage is not stage:
            raise ProtocolViolation(f"server is in stage {self.stage.name}, not {stage.name}")
        if message is not None and message.round_id != self.round_id:
            raise ProtocolViolation(
                f"{type(message).__name__} is for round {message.round_id}, this is round {self.round_id}"
            )

    def _abort(self, reason: str) -> AggregationAborted:
        self.stage = Stage.ABORTED
        return AggregationAborted(f"round {self.round_id} aborted: {reason}")

    def bundle(self, client_id: int) -> AdvertiseKeys:
        return self._bundles[client_id]

    # --- stage 0 ---------------------------------------------------------------------------

    def receive_advertise_keys(self, message: AdvertiseKeys) -> None:
        """Admit a bundle only with a credential from the authority, the round body this session belongs to, a
        valid signature over this session's context and two valid agreement keys (W1, W10, W11, W21)."""
        self._expect(Stage.ADVERTISE_KEYS, message)
        client = message.client_id
        if self._invited is not None and client not in self._invited:
            raise ProtocolViolation(f"client {client} is not invited to this session")
        if client in self._bundles:
            raise ProtocolViolation(f"client {client} already advertised keys")
        if len(self._bundles) >= self.config.num_clients:
            raise ProtocolViolation(f"round already has the maximum of {self.config.num_clients} clients")
        identity = verify_credential(self._authority, message.credential, client_id=client)
        if message.round_body_digest != self.context.round_body_digest:
            raise ProtocolViolation(
                f"client {client} accepted another round body ({message.round_body_digest.hex()[:16]}...) than the "
                f"one this session belongs to ({self.context.round_body_digest.hex()[:16]}...): it was shown another "
                "round"
            )
        primitives.verify(identity, message.signature, message.signed_payload(self._context_bytes))
        primitives.check_agreement_public_key(message.cipher_public_key)
        primitives.check_agreement_public_key(message.mask_public_key)
        self._bundles[client] = message
        self._identities[client] = identity

    def close_advertise_keys(self) -> ParticipantSet:
        """End stage 0: fix the participant set (ids, graph commitments, bundle digests)."""
        self._expect(Stage.ADVERTISE_KEYS)
        if len(self._bundles) < max(3, self.config.t + 1):
            raise self._abort(
                f"{len(self._bundles)} clients advertised keys, need at least {max(3, self.config.t + 1)}"
            )
        self.participants = ParticipantSet(
            self.round_id,
            tuple(ParticipantEntry.of(self._bundles[c]) for c in sorted(self._bundles)),
        )
        self.stage = Stage.REVEAL_SEED
        return self.participants

    # --- stage 1 ---------------------------------------------------------------------------

    def receive_seed_reveal(self, message: SeedReveal) -> None:
        self._expect(Stage.REVEAL_SEED, message)
        client = message.client_id
        if client not in self._bundles or client in self._reveals:
            raise ProtocolViolation(f"unexpected SeedReveal from client {client}")
        expected = self._bundles[client].graph_commitment
        if primitives.commitment(PURPOSE_GRAPH_SEED, self._context_bytes, client, message.reveal) != expected:
            raise ProtocolViolation(f"the reveal of client {client} does not open its commitment")
        self._reveals[client] = message.reveal

    def close_reveal_seed(self) -> dict[int, Neighbourhood]:
        """End stage 1: the graph from every reveal; each client gets the reveals and its neighbours'
        bundles. A missing reveal aborts the session: a seed over a subset the server picks would let
        it choose among graphs."""
        self._expect(Stage.REVEAL_SEED)
        missing = sorted(set(self._bundles) - set(self._reveals))
        if missing:
            raise self._abort(f"participants {missing[:10]} did not reveal their graph seed")
        ids = sorted(self._bundles)
        reveals = tuple(self._reveals[c] for c in ids)
        assert self.participants is not None
        self._seed = graph_seed(self._context_bytes, self.participants.digest(), reveals)
        self.graph = neighbour_graph(self._seed, ids, self.config.k)
        self.stage = Stage.SHARE_KEYS
        return Neighbourhood.for_each(
            self.round_id, reveals, {c: tuple(self._bundles[v] for v in self.graph[c]) for c in ids}
        )

    # --- stage 2 ---------------------------------------------------------------------------

    def receive_share_keys(self, message: ShareKeys) -> None:
        self._expect(Stage.SHARE_KEYS, message)
        sender = message.client_id
        if sender not in self._bundles or sender in self._share_keys:
            raise ProtocolViolation(f"unexpected ShareKeys from client {sender}")
        receivers = [s.receiver for s in message.shares]
        if any(s.sender != sender for s in message.shares) or sorted(receivers) != list(self.graph[sender]):
            raise ProtocolViolation(f"client {sender} must send exactly one share to each of its neighbours")
        self._share_keys[sender] = message

    def close_share_keys(self) -> dict[int, ShareDelivery]:
        """End stage 1: route each share to its receiver (only between clients that both shared)."""
        self._expect(Stage.SHARE_KEYS)
        inbox: dict[int, list] = {u: [] for u in self._share_keys}
        for message in self._share_keys.values():
            for share in message.shares:
                if share.receiver in inbox:
                    inbox[share.receiver].append(share)
        self._delivered = {u: frozenset(s.sender for s in shares) for u, shares in inbox.items()}
        self.stage = Stage.MASKED_INPUT
        return {
            u: ShareDelivery(self.round_id, u, tuple(sorted(shares, key=lambda s: s.sender)))
            for u, shares in inbox.items()
        }

    # --- stage 3 ---------------------------------------------------------------------------

    def receive_masked_input(self, message: MaskedInput) -> None:
        self._expect(Stage.MASKED_INPUT, message)
        sender = message.client_id
        if sender not in self._delivered or sender in self._masked:
            raise ProtocolViolation(f"unexpected MaskedInput from client {sender}")
        if message.modulus_bits != self.config.bits or message.length != self.config.vector_length:
            raise ProtocolViolation(
                f"client {sender} sent {message.length} values of {message.modulus_bits} bits, expected "
                f"{self.config.vector_length} of {self.config.bits}"
            )
        values = packing.unpack(message.payload, message.modulus_bits, message.length)  # (d,) uint64, < 2^b
        # every upload is a survivor's (U3 is the survivor list): add it now rather than keep n vectors; the
        # word dtype wraps mod 2^32 or 2^64, exact mod 2^b
        np.add(self._masked_total, values, out=self._masked_total, casting="unsafe")
        self._masked.add(sender)

    def _recoverable(self, holders_alive: set[int]) -> None:
        """Abort unless every survivor and every needed dropped client has >= t live share holders."""
        t = self.config.t
        survivors = set(self._masked)
        for u in sorted(survivors):
            alive = len(self._delivered[u] & holders_alive)
            if alive < t:
                raise self._abort(f"survivor {u} has {alive} live neighbours holding its shares, need t={t}")
        dropped = set(self._delivered) - survivors
        for v in sorted(dropped):
            if self._delivered[v] & survivors:
                alive = len(self._delivered[v] & holders_alive)
                if alive < t:
                    raise self._abort(f"dropped client {v} has {alive} live neighbours holding its shares, need t={t}")

    def close_masked_input(self) -> SurvivorList:
        """End stage 2: the survivor list U3 every survivor is asked to sign."""
        self._expect(Stage.MASKED_INPUT)
        self._recoverable(set(self._masked))
        self.survivors = tuple(sorted(self._masked))
        self._consistency_payload = consistency_payload(self._context_bytes, self._seed, self.survivors)
        self.stage = Stage.CONSISTENCY_CHECK
        return SurvivorList(self.round_id, self.survivors)

    # --- stage 4 ---------------------------------------------------------------------------

    def receive_consistency_signature(self, message: ConsistencySignature) -> None:
        self._expect(Stage.CONSISTENCY_CHECK, message)
        sender = message.client_id
        if sender not in self._masked or sender in self._signatures:
            raise ProtocolViolation(f"unexpected ConsistencySignature from client {sender}")
        primitives.verify(self._identities[sender], message.signature, self._consistency_payload)
        self._signatures[sender] = message

    def close_consistency_check(self) -> dict[int, UnmaskRequest]:
        """End stage 3: ask each signer for the shares of its surviving and dropped neighbours."""
        self._expect(Stage.CONSISTENCY_CHECK)
        survivors = set(self.survivors)
        t = self.config.t
        requests: dict[int, UnmaskRequest] = {}
        for u in sorted(self._signatures):
            signers = [self._signatures[v] for v in self.graph[u] if v in self._signatures]
            if len(signers) < t:
                continue  # the client would refuse; it cannot help this round
            held = self._delivered[u]
            requests[u] = UnmaskRequest(
                self.round_id, u, tuple(sorted(held & survivors)), tuple(sorted(held - survivors)), tuple(signers)
            )
        self._recoverable(set(requests))
        self._requests = requests
        self.stage = Stage.UNMASK
        return requests

    # --- stage 5 ---------------------------------------------------------------------------

    def receive_unmask_response(self, message: UnmaskResponse) -> None:
        self._expect(Stage.UNMASK, message)
        sender = message.client_id
        request = self._requests.get(sender)
        if request is None or sender in self._responses:
            raise ProtocolViolation(f"unexpected UnmaskResponse from client {sender}")
        if (
            tuple(s.owner for s in message.self_mask_shares) != request.survivors
            or tuple(s.owner for s in message.key_shares) != request.dropped
        ):
            raise ProtocolViolation(f"client {sender} answered for other clients than requested")
        if any(s.share.x != sender + 1 for s in message.self_mask_shares + message.key_shares):
            raise ProtocolViolation(f"client {sender} sent shares at the wrong evaluation point")
        self._responses[sender] = message

    def _combine(self, shares: list[shamir.Share], owner: int) -> bytes:
        try:
            return shamir.combine(shares, self.config.t)
        except SecAggError as exc:
            raise self._abort(f"shares of client {owner} do not combine: {exc}") from exc

    def finish(self) -> AggregateResult:
        """End stage 4: recover the dropped clients' pairwise masks and the survivors' self masks,
        and return the exact sum. Abort if any needed secret has fewer than t shares."""
        self._expect(Stage.UNMASK)
        self._recoverable(set(self._responses))
        bits, length = self.config.bits, self.config.vector_length
        self_shares: dict[int, list[shamir.Share]] = {u: [] for u in self.survivors}
        key_shares: dict[int, list[shamir.Share]] = {}
        for response in self._responses.values():
            for item in response.self_mask_shares:
                self_shares[item.owner].append(item.share)
            for item in response.key_shares:
                key_shares.setdefault(item.owner, []).append(item.share)

        total = self._masked_total.copy()  # (d,) word dtype: the survivors' uploads, added as they came
        for u in self.survivors:
            seed = self._combine(self_shares[u], u)
            committed = self._bundles[u].self_mask_commitment
            if primitives.commitment(PURPOSE_SELF_MASK_SEED, self._context_bytes, u, seed) != committed:
                raise self._abort(
                    f"the self-mask seed of client {u} rebuilt from its shares does not match its "
                    "commitment (a corrupted share, or a client that masked with another seed)"
                )
            total -= masking.self_mask(seed, round_id=self.round_id, client_id=u, length=length, modulus_bits=bits)
        for v in sorted(key_shares):
            private = self._combine(key_shares[v], v)
            key = primitives.agreement_key_from_bytes(private)
            if primitives.agreement_public_bytes(key) != self._bundles[v].mask_public_key:
                raise self._abort(
                    f"recovered mask key of dropped client {v} does not match its advertised key "
                    "(a neighbour sent a corrupted share)"
                )
            for u in sorted(self._delivered[v] & set(self.survivors)):
                secret = primitives.agree(key, self._bundles[u].mask_public_key)
                mask = masking.pairwise_mask(
                    secret, round_id=self.round_id, id_a=u, id_b=v, length=length, modulus_bits=bits
                )
                # survivor u added sign(u, v) * mask; remove it
                masking.apply_signed(total, mask, owner=v, peer=u)
        masking.reduce(total, bits)
        ring_sum = total.astype(np.uint64)
        exact = from_ring(ring_sum, bits)
        bound = len(self.survivors) * self.config.max_abs
        if exact.size and int(np.abs(exact).max()) > bound:
            raise self._abort(
                f"the decoded sum leaves the range +-{bound} that {len(self.survivors)} inputs of "
                f"max_abs {self.config.max_abs} allow (an input or a mask was not what it claimed)"
            )
        self.stage = Stage.DONE
        return AggregateResult(self.round_id, self.survivors, ring_sum, exact)

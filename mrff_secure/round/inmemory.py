"""An in-memory driver of a whole secure sum: the client and server state machines wired together by the
stage table (`round.stages`).

For the simulation engine, the audit and the tests. Every message goes through
to_bytes/from_bytes, so what runs here is what a transport carries.
`dropouts` says which clients fall silent from which stage on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection, Mapping, TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mrff_secure.errors import AggregationAborted
from mrff_secure.round.stages import STAGES
from mrff_secure.secagg import primitives
from mrff_secure.secagg.client import ClientSession
from mrff_secure.secagg.config import DEFAULT_CORRUPT_NEIGHBOURS, SecAggConfig
from mrff_secure.secagg.context import SessionContext
from mrff_secure.secagg.identity import ClientCredential, issue_credential
from mrff_secure.secagg.messages import Message
from mrff_secure.secagg.policy import SecAggPolicy
from mrff_secure.secagg.server import AggregateResult, ServerSession
from mrff_secure.secagg.stages import Stage

M = TypeVar("M", bound=Message)


def wire(message: M) -> M:
    """Send a message over the 'wire': serialize and parse it again."""
    return type(message).from_bytes(message.to_bytes())


@dataclass(frozen=True)
class Identities:
    """A throwaway identity authority and one certified identity key per client (simulation, tests)."""

    authority_key: Ed25519PrivateKey
    keys: dict[int, Ed25519PrivateKey]
    credentials: dict[int, ClientCredential]

    @property
    def authority_public_key(self) -> bytes:
        return primitives.identity_public_bytes(self.authority_key)

    def session(
        self, config: SecAggConfig, context: SessionContext, client_id: int, policy: SecAggPolicy | None = None
    ) -> ClientSession:
        return ClientSession(
            config,
            context=context,
            client_id=client_id,
            identity_key=self.keys[client_id],
            credential=self.credentials[client_id],
            authority_public_key=self.authority_public_key,
            policy=policy,
        )


def make_identities(client_ids: Collection[int]) -> Identities:
    """Fresh identity keys for a set of clients, certified by a fresh authority."""
    authority = primitives.generate_identity_key()
    keys = {c: primitives.generate_identity_key() for c in client_ids}
    credentials = {c: issue_credential(authority, c, primitives.identity_public_bytes(k)) for c, k in keys.items()}
    return Identities(authority, keys, credentials)


def simulation_policy(config: SecAggConfig) -> SecAggPolicy:
    """The policy of simulated honest clients: the default, with c_max lowered to what (k, t) allow and no corrupt
    fraction (the simulation has no adversary; the (k, t) a benchmark chooses is played as given)."""
    return SecAggPolicy(
        corrupt_neighbours=max(0, min(DEFAULT_CORRUPT_NEIGHBOURS, 2 * config.t - config.k - 1)), corrupt_fraction=0.0
    )


Dropouts = Mapping[Stage, set[int]]


def _wired(deliveries: Mapping[int, Message]) -> dict[int, Message]:
    """Each delivery through the 'wire', a message shared by several clients serialized once."""
    parsed: dict[int, Message] = {}
    return {c: parsed.setdefault(id(m), wire(m)) for c, m in deliveries.items()}


def run_round(
    config: SecAggConfig,
    *,
    round_id: int,
    inputs: Mapping[int, np.ndarray],
    identities: Identities | None = None,
    policy: SecAggPolicy | None = None,
    context: SessionContext | None = None,
    dropouts: Dropouts | Callable[[Mapping[int, tuple[int, ...]]], Dropouts] | None = None,
) -> AggregateResult:
    """Run one secure sum of `inputs` (client id -> signed int vector) in memory, stage by stage of
    `round.stages.STAGES`.

    dropouts[s] lists the clients that send nothing from stage s on (s in
    ADVERTISE_KEYS .. UNMASK; a dropout at REVEAL_SEED aborts the session); it
    may also be a function of the neighbour graph, called once the graph is
    known (then it cannot drop before SHARE_KEYS). A client that aborts its own
    session with AggregationAborted (too few neighbours left) counts as
    dropped. Raises AggregationAborted if the survivors cannot recover the sum.
    """
    ids = sorted(inputs)
    identities = identities if identities is not None else make_identities(ids)
    context = context if context is not None else SessionContext.fresh(round_id=round_id)
    policy = policy if policy is not None else simulation_policy(config)
    gone: set[int] = set()
    drops: Dropouts = {} if dropouts is None or callable(dropouts) else dropouts
    server = ServerSession(
        config, context=context, authority_public_key=identities.authority_public_key, participants=ids
    )
    clients = {c: identities.session(config, context, c, policy) for c in ids}
    deliveries: Mapping[int, Message | None] = dict.fromkeys(ids)
    for step in STAGES:
        if step.stage is Stage.SHARE_KEYS and callable(dropouts):
            drops = dropouts(server.graph)
            if drops.get(Stage.ADVERTISE_KEYS) or drops.get(Stage.REVEAL_SEED):
                raise ValueError("a graph-dependent dropout schedule cannot drop clients before SHARE_KEYS")
        gone.update(drops.get(step.stage, set()))
        for c, delivered in deliveries.items():
            if c in gone:
                continue
            try:
                reply = wire(step.client_step(clients[c], delivered, inputs[c]))
            except AggregationAborted:
                gone.add(c)  # the client gave up on the round: a dropout as far as the server can tell
                continue
            step.receive(server, reply)
        if step.close is not None:
            deliveries = _wired(step.close(server))
    return server.finish()

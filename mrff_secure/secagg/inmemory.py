"""An in-memory driver of a whole round: the client and server state machines wired together.

For the simulation engine and the tests. Every message goes through
to_bytes/from_bytes, so what runs here is what a transport carries.
`dropouts` says which clients fall silent from which stage on.
"""

from __future__ import annotations

from typing import Callable, Mapping, TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mrff_secure.errors import AggregationAborted
from mrff_secure.secagg import primitives
from mrff_secure.secagg.client import ClientSession
from mrff_secure.secagg.config import SecAggConfig
from mrff_secure.secagg.messages import Message
from mrff_secure.secagg.server import AggregateResult, ServerSession
from mrff_secure.secagg.stages import Stage

M = TypeVar("M", bound=Message)


def wire(message: M) -> M:
    """Send a message over the 'wire': serialize and parse it again."""
    return type(message).from_bytes(message.to_bytes())


def make_identities(client_ids: list[int]) -> tuple[dict[int, Ed25519PrivateKey], dict[int, bytes]]:
    """Fresh identity keys for a set of clients, and the public directory (the PKI)."""
    keys = {c: primitives.generate_identity_key() for c in client_ids}
    return keys, {c: primitives.identity_public_bytes(k) for c, k in keys.items()}


Dropouts = Mapping[Stage, set[int]]


def run_round(config: SecAggConfig, *, round_id: int, inputs: Mapping[int, np.ndarray],
              identity_keys: Mapping[int, Ed25519PrivateKey] | None = None,
              dropouts: Dropouts | Callable[[Mapping[int, tuple[int, ...]]], Dropouts] | None = None
              ) -> AggregateResult:
    """Run one secure sum of `inputs` (client id -> signed int vector) in memory.

    dropouts[s] lists the clients that send nothing from stage s on (s in
    ADVERTISE_KEYS .. UNMASK); it may also be a function of the neighbour
    graph, called once the graph is known (then it cannot drop at
    ADVERTISE_KEYS). A client that aborts its own session with
    AggregationAborted (too few neighbours left) counts as dropped. Raises
    AggregationAborted if the survivors cannot recover the sum.
    """
    ids = sorted(inputs)
    if identity_keys is None:
        identity_keys, directory = make_identities(ids)
    else:
        directory = {c: primitives.identity_public_bytes(k) for c, k in identity_keys.items()}
    gone: set[int] = set()
    drops: Dropouts = {} if dropouts is None or callable(dropouts) else dropouts

    def alive(stage: Stage) -> list[int]:
        gone.update(drops.get(stage, set()))
        return [c for c in ids if c not in gone]

    def step(client: int, action: Callable[[], Message]) -> Message | None:
        try:
            return wire(action())
        except AggregationAborted:
            gone.add(client)  # the client gave up on the round: a dropout as far as the server can tell
            return None

    server = ServerSession(config, round_id=round_id, identities=directory)
    clients = {c: ClientSession(config, round_id=round_id, client_id=c, identity_key=identity_keys[c],
                                peer_identities=directory) for c in ids}

    for c in alive(Stage.ADVERTISE_KEYS):
        server.receive_advertise_keys(wire(clients[c].advertise_keys()))
    roster = wire(server.close_advertise_keys())
    if callable(dropouts):
        drops = dropouts(server.graph)
        if drops.get(Stage.ADVERTISE_KEYS):
            raise ValueError("a graph-dependent dropout schedule cannot drop clients at ADVERTISE_KEYS")
    for c in alive(Stage.SHARE_KEYS):
        reply = step(c, lambda: clients[c].share_keys(roster))
        if reply is not None:
            server.receive_share_keys(reply)  # type: ignore[arg-type]
    deliveries = server.close_share_keys()
    for c in alive(Stage.MASKED_INPUT):
        if c in deliveries:
            reply = step(c, lambda: clients[c].masked_input(wire(deliveries[c]), inputs[c]))
            if reply is not None:
                server.receive_masked_input(reply)  # type: ignore[arg-type]
    survivor_list = wire(server.close_masked_input())
    for c in alive(Stage.CONSISTENCY_CHECK):
        if c in survivor_list.survivors:
            reply = step(c, lambda: clients[c].consistency_check(survivor_list))
            if reply is not None:
                server.receive_consistency_signature(reply)  # type: ignore[arg-type]
    requests = server.close_consistency_check()
    for c in alive(Stage.UNMASK):
        if c in requests:
            reply = step(c, lambda: clients[c].unmask(wire(requests[c])))
            if reply is not None:
                server.receive_unmask_response(reply)  # type: ignore[arg-type]
    return server.finish()

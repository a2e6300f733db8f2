"""A round driven stage by stage with an honest ServerSession, so a test can tamper between stages.

Every message goes through to_bytes/from_bytes (`inmemory.wire`), as a transport carries it."""

from __future__ import annotations

from typing import Iterable

import numpy as np

from mrff_secure.secagg.client import ClientSession
from mrff_secure.secagg.config import SecAggConfig
from mrff_secure.secagg.context import SessionContext
from mrff_secure.secagg.inmemory import Identities, make_identities, simulation_policy, wire
from mrff_secure.secagg.messages import MaskedInput, Neighbourhood, ParticipantSet, ShareDelivery
from mrff_secure.secagg.policy import SecAggPolicy
from mrff_secure.secagg.server import ServerSession


class Round:
    def __init__(self, config: SecAggConfig, ids: Iterable[int], *, round_id: int = 1,
                 policy: SecAggPolicy | None = None, identities: Identities | None = None,
                 context: SessionContext | None = None) -> None:
        self.config = config
        self.ids = sorted(ids)
        self.identities = identities if identities is not None else make_identities(self.ids)
        self.context = context if context is not None else SessionContext.fresh(round_id=round_id)
        self.policy = policy if policy is not None else simulation_policy(config)
        self.server = ServerSession(config, context=self.context,
                                    authority_public_key=self.identities.authority_public_key, participants=self.ids)
        self.clients: dict[int, ClientSession] = {
            c: self.identities.session(config, self.context, c, self.policy) for c in self.ids}
        self.participants: ParticipantSet | None = None
        self.neighbourhoods: dict[int, Neighbourhood] = {}
        self.deliveries: dict[int, ShareDelivery] = {}
        self.uploads: dict[int, MaskedInput] = {}

    @property
    def round_id(self) -> int:
        return self.context.round_id

    def advertise(self) -> ParticipantSet:
        for c in self.ids:
            self.server.receive_advertise_keys(wire(self.clients[c].advertise_keys()))
        self.participants = wire(self.server.close_advertise_keys())
        return self.participants

    def reveal(self) -> dict[int, Neighbourhood]:
        for c in self.ids:
            self.server.receive_seed_reveal(wire(self.clients[c].reveal_seed(self.participants)))
        self.neighbourhoods = self.server.close_reveal_seed()
        return self.neighbourhoods

    def share(self) -> dict[int, ShareDelivery]:
        for c in self.ids:
            self.server.receive_share_keys(wire(self.clients[c].share_keys(wire(self.neighbourhoods[c]))))
        self.deliveries = self.server.close_share_keys()
        return self.deliveries

    def mask(self, inputs: dict[int, np.ndarray]) -> None:
        for c in self.ids:
            upload = wire(self.clients[c].masked_input(wire(self.deliveries[c]), inputs[c]))
            self.server.receive_masked_input(upload)
            self.uploads[c] = upload

    def until_masked(self, inputs: dict[int, np.ndarray]) -> "Round":
        self.advertise()
        self.reveal()
        self.share()
        self.mask(inputs)
        return self

    def finish_honestly(self):
        survivors = wire(self.server.close_masked_input())
        for c in survivors.survivors:
            self.server.receive_consistency_signature(wire(self.clients[c].consistency_check(survivors)))
        requests = self.server.close_consistency_check()
        for c, request in requests.items():
            self.server.receive_unmask_response(wire(self.clients[c].unmask(wire(request))))
        return self.server.finish()

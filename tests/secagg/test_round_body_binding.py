"""W21: a secure-aggregation session is bound to the round body its client accepted (SessionContext.round_body_digest):
the digest is in the context every bundle signature, commitment, graph seed and consistency signature covers, and in
each key bundle and participant entry, so clients (or a server) holding different rounds refuse each other and say
why (model inconsistency, Pasquini et al. CCS 2022)."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from attacks.protocol_round import Round
from mrff_secure.errors import ConfigError, ProtocolViolation
from mrff_secure.round.inmemory import wire
from mrff_secure.secagg import primitives
from mrff_secure.secagg.client import OTHER_ROUND_BODY
from mrff_secure.secagg.config import SecAggConfig
from mrff_secure.secagg.context import SessionContext, round_body_digest
from mrff_secure.secagg.messages import PURPOSE_GRAPH_SEED, Neighbourhood, ParticipantEntry, ParticipantSet

N, ODD = 6, 2
CONFIG = SecAggConfig(num_clients=N, vector_length=4, max_abs=100, num_neighbours=4)


def _other_body(context: SessionContext) -> SessionContext:
    return replace(context, round_body_digest=round_body_digest(b"another round body"))


def test_the_round_body_is_in_every_context_derivation():
    context = SessionContext.fresh(round_id=3)
    other = _other_body(context)
    assert context.to_bytes() != other.to_bytes() and context.to_bytes().endswith(context.round_body_digest)
    secret = os.urandom(32)
    assert primitives.commitment(PURPOSE_GRAPH_SEED, context.to_bytes(), 1, secret) != primitives.commitment(
        PURPOSE_GRAPH_SEED, other.to_bytes(), 1, secret
    )
    assert round_body_digest(b"a") != round_body_digest(b"b") and len(round_body_digest(b"")) == 32
    with pytest.raises(ConfigError, match="round_body_digest must be 32 bytes"):
        replace(context, round_body_digest=bytes(31))


def test_the_server_refuses_a_bundle_bound_to_another_round_body():
    r = Round(CONFIG, range(N))
    odd = r.session(ODD, context=_other_body(r.context))
    with pytest.raises(ProtocolViolation, match=f"client {ODD} accepted another round body .* it was shown another"):
        r.server.receive_advertise_keys(wire(odd.advertise_keys()))


def test_clients_shown_different_round_bodies_refuse_each_other_before_revealing_anything():
    """A lying server puts one client shown another round in the participant set: every client refuses the set (none
    opens its graph commitment) and names who holds the other round body."""
    r = Round(CONFIG, range(N))
    r.clients[ODD] = r.session(ODD, context=_other_body(r.context))
    bundles = {c: wire(r.clients[c].advertise_keys()) for c in r.ids}
    participants = wire(ParticipantSet(r.round_id, tuple(ParticipantEntry.of(bundles[c]) for c in r.ids)))
    for c in r.ids:
        expected = [ODD] if c != ODD else [v for v in r.ids if v != ODD]
        with pytest.raises(ProtocolViolation, match=rf"client {c}: .*\(model inconsistency\): .*{expected}") as refused:
            r.clients[c].reveal_seed(participants)
        assert OTHER_ROUND_BODY in str(refused.value)


def test_participant_entries_that_hide_the_other_round_body_still_abort_the_sum():
    """The server shows each client a participant set in which every entry claims that client's own round body: all
    reveal their graph seed, but a commitment made under one round body does not open under another, so each side
    refuses the other's reveal at the next stage."""
    r = Round(CONFIG, range(N))
    r.clients[ODD] = r.session(ODD, context=_other_body(r.context))
    bundles = {c: wire(r.clients[c].advertise_keys()) for c in r.ids}

    def claiming(body: bytes) -> ParticipantSet:
        return wire(
            ParticipantSet(
                r.round_id, tuple(replace(ParticipantEntry.of(bundles[c]), round_body_digest=body) for c in r.ids)
            )
        )

    views = {c: claiming(r.clients[c].context.round_body_digest) for c in r.ids}
    reveals = {c: wire(r.clients[c].reveal_seed(views[c])).reveal for c in r.ids}
    ordered = tuple(reveals[c] for c in r.ids)
    honest = next(c for c in r.ids if c != ODD)
    with pytest.raises(ProtocolViolation, match=f"the reveal of client {ODD} does not open its commitment"):
        r.clients[honest].share_keys(wire(Neighbourhood(r.round_id, honest, ordered, ())))
    with pytest.raises(ProtocolViolation, match=f"the reveal of client {honest} does not open its commitment"):
        r.clients[ODD].share_keys(wire(Neighbourhood(r.round_id, ODD, ordered, ())))

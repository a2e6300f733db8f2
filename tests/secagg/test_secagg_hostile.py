"""A hostile server: every deviation is refused with a typed error, and in no case can the
server unmask one client's input (each test tries, with whatever the honest clients revealed)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest

from mrff_secure.errors import AggregationAborted, AuthenticationError, ProtocolViolation, SecAggError
from mrff_secure.secagg import masking, packing, primitives, shamir
from mrff_secure.secagg.client import ClientSession
from mrff_secure.secagg.config import SecAggConfig
from mrff_secure.secagg.encoding import from_ring
from mrff_secure.secagg.inmemory import make_identities
from mrff_secure.secagg.messages import (
    ConsistencySignature,
    EncryptedShare,
    KeyRoster,
    ShareDelivery,
    SurvivorList,
    UnmaskRequest,
    UnmaskResponse,
)
from mrff_secure.secagg.server import ServerSession
from mrff_secure.secagg.stages import Stage

N, K, D = 12, 6, 32  # t = 4
TARGET = 5


@dataclass
class Round:
    config: SecAggConfig
    server: ServerSession
    clients: dict[int, ClientSession]
    inputs: dict[int, np.ndarray]
    roster: KeyRoster
    deliveries: dict[int, ShareDelivery]
    uploads: dict[int, np.ndarray]

    @property
    def neighbours(self) -> tuple[int, ...]:
        return self.server.graph[TARGET]


def _until_masked_input(round_id: int = 7) -> Round:
    """Run the honest first three stages; the server holds every masked input."""
    config = SecAggConfig(num_clients=N, vector_length=D, max_abs=1000, num_neighbours=K)
    keys, directory = make_identities(list(range(N)))
    server = ServerSession(config, round_id=round_id, identities=directory)
    clients = {c: ClientSession(config, round_id=round_id, client_id=c, identity_key=keys[c],
                                peer_identities=directory) for c in range(N)}
    rng = np.random.default_rng(round_id)
    inputs = {c: rng.integers(-1000, 1001, D) for c in range(N)}
    for c in clients.values():
        server.receive_advertise_keys(c.advertise_keys())
    roster = server.close_advertise_keys()
    for c in clients.values():
        server.receive_share_keys(c.share_keys(roster))
    deliveries = server.close_share_keys()
    uploads = {}
    for c, client in clients.items():
        msg = client.masked_input(deliveries[c], inputs[c])
        server.receive_masked_input(msg)
        uploads[c] = packing.unpack(msg.payload, config.bits, D)
    return Round(config, server, clients, inputs, roster, deliveries, uploads)


def _signatures(r: Round, survivor_list: SurvivorList, signers) -> dict[int, ConsistencySignature]:
    return {c: r.clients[c].consistency_check(survivor_list) for c in signers}


def _try_to_unmask(r: Round, responses: list[UnmaskResponse]) -> None:
    """The attacker's last step: with every share it obtained, try to strip the target's masks.
    It needs t self-mask shares AND t key shares of the target; assert it never has both,
    and if it somehow had, that the recovered vector is not the input."""
    t = r.config.t
    seed_shares = [s.share for resp in responses for s in resp.self_mask_shares if s.owner == TARGET]
    key_shares = [s.share for resp in responses for s in resp.key_shares if s.owner == TARGET]
    assert not (len(seed_shares) >= t and len(key_shares) >= t), (len(seed_shares), len(key_shares))
    if len(seed_shares) < t and len(key_shares) < t:
        return
    # Whatever single secret it can rebuild is not enough: strip what it can and compare.
    bits = r.config.bits
    guess = r.uploads[TARGET].copy()
    if len(seed_shares) >= t:
        seed = shamir.combine(seed_shares, t)
        guess -= masking.self_mask(seed, round_id=r.server.round_id, client_id=TARGET, length=D, modulus_bits=bits)
    else:
        private = primitives.agreement_key_from_bytes(shamir.combine(key_shares, t))
        for v in r.neighbours:
            secret = primitives.agree(private, r.roster.bundles[v].mask_public_key)
            mask = masking.pairwise_mask(secret, round_id=r.server.round_id, id_a=TARGET, id_b=v, length=D,
                                         modulus_bits=bits)
            masking.apply_signed(guess, mask, owner=v, peer=TARGET)
    masking.reduce(guess, bits)
    assert not np.array_equal(from_ring(guess, bits), r.inputs[TARGET])


def _honest_request(r: Round, client: int, alive: tuple[int, ...], sigs: dict[int, ConsistencySignature],
                    **changes) -> UnmaskRequest:
    neighbours = r.server.graph[client]
    request = UnmaskRequest(r.server.round_id, client, tuple(v for v in neighbours if v in alive),
                            tuple(v for v in neighbours if v not in alive),
                            tuple(sigs[v] for v in neighbours if v in sigs))
    return replace(request, **changes)


def test_asking_for_both_shares_of_a_peer_is_refused():
    r = _until_masked_input()
    everyone = tuple(range(N))
    sigs = _signatures(r, SurvivorList(r.server.round_id, everyone), range(N))
    asked = r.neighbours[0]
    request = _honest_request(r, asked, everyone, sigs, dropped=(TARGET,))
    with pytest.raises(ProtocolViolation, match="both"):
        r.clients[asked].unmask(request)
    assert r.clients[asked].stage is Stage.ABORTED
    # a second try, now honest, is refused as well: the session is over
    with pytest.raises(ProtocolViolation):
        r.clients[asked].unmask(_honest_request(r, asked, everyone, sigs))


def test_calling_a_signed_survivor_dropped_is_refused():
    r = _until_masked_input()
    everyone = tuple(range(N))
    sigs = _signatures(r, SurvivorList(r.server.round_id, everyone), range(N))
    asked = r.neighbours[0]
    request = _honest_request(r, asked, everyone, sigs)
    request = replace(request, survivors=tuple(v for v in request.survivors if v != TARGET), dropped=(TARGET,))
    with pytest.raises(ProtocolViolation, match="survivor list we signed"):
        r.clients[asked].unmask(request)


@pytest.mark.parametrize("pattern", ["both", "not neighbours", "sorted", "need t=", "signed the survivor list",
                                     "unexpected consistency signature"])
def test_overlapping_lists_and_strangers_are_refused(pattern):
    r = _until_masked_input()
    everyone = tuple(range(N))
    sigs = _signatures(r, SurvivorList(r.server.round_id, everyone), range(N))
    asked = r.neighbours[1]
    good = _honest_request(r, asked, everyone, sigs)
    stranger = next(c for c in range(N) if c not in r.server.graph[asked] and c != asked)
    bad = {
        "both": replace(good, dropped=good.survivors[:1]),
        "not neighbours": replace(good, survivors=tuple(sorted(good.survivors + (stranger,)))),
        "sorted": replace(good, survivors=good.survivors[::-1]),
        "need t=": replace(good, survivors=good.survivors[: r.config.t - 1]),
        "signed the survivor list": replace(good, signatures=good.signatures[: r.config.t - 1]),
        "unexpected consistency signature": replace(good, signatures=good.signatures + good.signatures[:1]),
    }[pattern]
    with pytest.raises(ProtocolViolation, match=pattern):
        r.clients[asked].unmask(bad)
    assert r.clients[asked].stage is Stage.ABORTED


def test_forged_consistency_signature_is_refused():
    r = _until_masked_input()
    everyone = tuple(range(N))
    sigs = _signatures(r, SurvivorList(r.server.round_id, everyone), range(N))
    asked = r.neighbours[0]
    request = _honest_request(r, asked, everyone, sigs)
    forged = replace(request.signatures[0], signature=bytes(64))
    with pytest.raises(AuthenticationError):
        r.clients[asked].unmask(replace(request, signatures=(forged,) + request.signatures[1:]))


def test_split_view_attack_cannot_unmask_the_target():
    """The server tells some neighbours of the target that it survived and others that it
    dropped (two different survivor lists), hoping for t self-mask shares and t key shares."""
    for split in range(K + 2):
        r = _until_masked_input(round_id=100 + split)
        with_target = tuple(range(N))
        without_target = tuple(c for c in range(N) if c != TARGET)
        # these see the list without the target; the last case: everyone but the target
        believers_of_drop = set(r.neighbours[split:]) if split <= K else set(without_target)
        list_a = SurvivorList(r.server.round_id, with_target)
        list_b = SurvivorList(r.server.round_id, without_target)
        sigs_a = _signatures(r, list_a, [c for c in range(N) if c not in believers_of_drop])
        sigs_b = _signatures(r, list_b, sorted(believers_of_drop))
        responses = []
        for c in range(N):
            if c == TARGET:
                continue
            if c in believers_of_drop:
                request = _honest_request(r, c, without_target, sigs_b)
            else:
                request = _honest_request(r, c, with_target, sigs_a)
            try:
                responses.append(r.clients[c].unmask(request))
            except SecAggError:
                pass  # refused: too few neighbours signed that list
        _try_to_unmask(r, responses)


def test_asking_twice_cannot_unmask_the_target():
    """After honest unmasking the server asks again, now calling the target dropped."""
    r = _until_masked_input()
    everyone = tuple(range(N))
    sigs = _signatures(r, SurvivorList(r.server.round_id, everyone), range(N))
    responses = [r.clients[c].unmask(_honest_request(r, c, everyone, sigs)) for c in r.neighbours]
    for c in r.neighbours:
        with pytest.raises(ProtocolViolation):
            r.clients[c].unmask(_honest_request(r, c, everyone, sigs, survivors=(), dropped=(TARGET,)))
    _try_to_unmask(r, responses)


def test_replayed_messages_from_another_round_are_refused():
    old = _until_masked_input(round_id=1)
    config = old.config
    keys, directory = make_identities(list(range(N)))
    client = ClientSession(config, round_id=2, client_id=TARGET, identity_key=keys[TARGET], peer_identities=directory)
    client.advertise_keys()
    with pytest.raises(ProtocolViolation, match="round 1"):
        client.share_keys(old.roster)
    # the same replay with the header rewritten to the current round: the signatures bind the round
    client = ClientSession(config, round_id=2, client_id=TARGET, identity_key=keys[TARGET], peer_identities=directory)
    client.advertise_keys()
    forged_round = KeyRoster(2, tuple(replace(b, round_id=2) for b in old.roster.bundles))
    with pytest.raises(AuthenticationError):
        client.share_keys(forged_round)
    # replaying a share delivery or a survivor list from round 1 into a round-2 session
    new = _until_masked_input(round_id=2)
    everyone = tuple(range(N))
    with pytest.raises(ProtocolViolation, match="round 1"):
        new.clients[TARGET].consistency_check(SurvivorList(1, everyone))
    fresh = _until_masked_input(round_id=3)
    sigs = _signatures(fresh, SurvivorList(3, everyone), range(N))
    stale = _honest_request(fresh, TARGET, everyone, sigs, round_id=4)
    with pytest.raises(ProtocolViolation, match="round 4"):
        fresh.clients[TARGET].unmask(stale)


def test_replayed_shares_under_a_rewritten_round_fail_authentication():
    r1 = _until_masked_input(round_id=1)
    config = r1.config
    # A round-2 session for the same clients: deliver round-1 ciphertexts relabelled as round 2.
    keys, directory = make_identities(list(range(N)))
    server = ServerSession(config, round_id=2, identities=directory)
    clients = {c: ClientSession(config, round_id=2, client_id=c, identity_key=keys[c], peer_identities=directory)
               for c in range(N)}
    for c in clients.values():
        server.receive_advertise_keys(c.advertise_keys())
    roster = server.close_advertise_keys()
    for c in clients.values():
        server.receive_share_keys(c.share_keys(roster))
    deliveries = server.close_share_keys()
    target = clients[TARGET]
    genuine = deliveries[TARGET]
    old_cipher = r1.deliveries[TARGET].shares[0].ciphertext
    swapped = replace(genuine.shares[0], ciphertext=old_cipher)
    with pytest.raises(AuthenticationError):
        target.masked_input(replace(genuine, shares=(swapped,) + genuine.shares[1:]), r1.inputs[TARGET])


def test_forged_key_is_refused():
    r = _until_masked_input()
    keys, directory = make_identities(list(range(N)))
    config = r.config
    server = ServerSession(config, round_id=8, identities=directory)
    clients = {c: ClientSession(config, round_id=8, client_id=c, identity_key=keys[c], peer_identities=directory)
               for c in range(N)}
    for c in clients.values():
        server.receive_advertise_keys(c.advertise_keys())
    roster = server.close_advertise_keys()
    attacker_key = primitives.agreement_public_bytes(primitives.generate_agreement_key())
    victim = 3
    forged = tuple(replace(b, mask_public_key=attacker_key) if b.client_id == victim else b for b in roster.bundles)
    with pytest.raises(AuthenticationError):
        clients[0].share_keys(KeyRoster(8, forged))
    # the server re-signs with its own identity key: still refused (it is not the victim's identity)
    server_identity = primitives.generate_identity_key()
    bundle = next(b for b in roster.bundles if b.client_id == victim)
    bundle = replace(bundle, mask_public_key=attacker_key)
    bundle = replace(bundle, signature=primitives.sign(server_identity, bundle.signed_payload()))
    forged = tuple(bundle if b.client_id == victim else b for b in roster.bundles)
    with pytest.raises(AuthenticationError):
        clients[1].share_keys(KeyRoster(8, forged))
    # an unknown client slipped into the roster
    stranger = ClientSession(config, round_id=8, client_id=99, identity_key=server_identity,
                             peer_identities={99: primitives.identity_public_bytes(server_identity)})
    stranger_bundle = stranger.advertise_keys()
    extra = KeyRoster(8, roster.bundles[:-1] + (stranger_bundle,))
    with pytest.raises(ProtocolViolation, match="no known identity"):
        clients[2].share_keys(extra)
    too_many = KeyRoster(8, roster.bundles + (stranger_bundle,))
    with pytest.raises(ProtocolViolation, match="modulus was sized for 12"):
        clients[3].share_keys(too_many)
    # a roster that drops the client's own bundle or swaps it
    without_self = KeyRoster(8, tuple(b for b in roster.bundles if b.client_id != 4))
    with pytest.raises(ProtocolViolation, match="own key bundle"):
        clients[4].share_keys(without_self)


def test_tampered_or_misrouted_shares_are_refused():
    r = _until_masked_input(round_id=5)
    keys, directory = make_identities(list(range(N)))
    config = r.config

    def fresh_round():
        server = ServerSession(config, round_id=5, identities=directory)
        clients = {c: ClientSession(config, round_id=5, client_id=c, identity_key=keys[c], peer_identities=directory)
                   for c in range(N)}
        for c in clients.values():
            server.receive_advertise_keys(c.advertise_keys())
        roster = server.close_advertise_keys()
        for c in clients.values():
            server.receive_share_keys(c.share_keys(roster))
        return clients, server.close_share_keys()

    clients, deliveries = fresh_round()
    good = deliveries[TARGET]
    first = good.shares[0]
    flipped = replace(first, ciphertext=first.ciphertext[:-1] + bytes([first.ciphertext[-1] ^ 1]))
    with pytest.raises(AuthenticationError):
        clients[TARGET].masked_input(replace(good, shares=(flipped,) + good.shares[1:]), np.zeros(D, np.int64))
    clients, deliveries = fresh_round()
    good = deliveries[TARGET]
    with pytest.raises(ProtocolViolation):  # a share duplicated
        clients[TARGET].masked_input(replace(good, shares=good.shares + good.shares[:1]), np.zeros(D, np.int64))
    clients, deliveries = fresh_round()
    with pytest.raises(ProtocolViolation):  # someone else's mail
        other = next(c for c in range(N) if c != TARGET)
        clients[TARGET].masked_input(deliveries[other], np.zeros(D, np.int64))
    clients, deliveries = fresh_round()
    good = deliveries[TARGET]
    relabelled = EncryptedShare(good.shares[1].sender, TARGET, good.shares[0].ciphertext)
    with pytest.raises(AuthenticationError):  # AD binds the sender
        clients[TARGET].masked_input(replace(good, shares=(relabelled,) + good.shares[1:]), np.zeros(D, np.int64))
    clients, deliveries = fresh_round()
    good = deliveries[TARGET]
    with pytest.raises(AggregationAborted):  # shares withheld: the client refuses to mask with too few
        clients[TARGET].masked_input(replace(good, shares=good.shares[: config.t - 1]), np.zeros(D, np.int64))


def test_survivor_list_checks():
    r = _until_masked_input()
    client = r.clients[TARGET]
    with pytest.raises(ProtocolViolation, match="omits us"):
        client.consistency_check(SurvivorList(r.server.round_id, tuple(c for c in range(N) if c != TARGET)))
    r = _until_masked_input()
    with pytest.raises(ProtocolViolation, match="never advertised"):
        r.clients[TARGET].consistency_check(SurvivorList(r.server.round_id, tuple(range(N)) + (500,)))
    r = _until_masked_input()
    keep = set(r.neighbours[: r.config.t - 1]) | {TARGET}
    with pytest.raises(AggregationAborted):
        r.clients[TARGET].consistency_check(SurvivorList(r.server.round_id, tuple(sorted(keep))))


def test_server_detects_a_corrupted_key_share():
    """A neighbour that lies about a dropped client's key share cannot make the server return a wrong sum."""
    config = SecAggConfig(num_clients=N, vector_length=D, max_abs=1000, num_neighbours=K)
    keys, directory = make_identities(list(range(N)))
    server = ServerSession(config, round_id=9, identities=directory)
    clients = {c: ClientSession(config, round_id=9, client_id=c, identity_key=keys[c], peer_identities=directory)
               for c in range(N)}
    for c in clients.values():
        server.receive_advertise_keys(c.advertise_keys())
    roster = server.close_advertise_keys()
    for c in clients.values():
        server.receive_share_keys(c.share_keys(roster))
    deliveries = server.close_share_keys()
    for c, client in clients.items():
        if c != TARGET:
            server.receive_masked_input(client.masked_input(deliveries[c], np.ones(D, np.int64)))
    survivors = server.close_masked_input()
    for c, client in clients.items():
        if c != TARGET:
            server.receive_consistency_signature(client.consistency_check(survivors))
    requests = server.close_consistency_check()
    for c, request in requests.items():
        response = clients[c].unmask(request)
        if response.key_shares:
            bad = replace(response.key_shares[0].share, value=bytes(44))
            response = replace(response, key_shares=(replace(response.key_shares[0], share=bad),)
                               + response.key_shares[1:])
        server.receive_unmask_response(response)
    with pytest.raises(AggregationAborted):
        server.finish()

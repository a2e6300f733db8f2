"""A hostile server (alone, or with sybil or colluding clients) against the real ClientSession.

Every deviation is refused with a typed error, and in no case can the server unmask one client's
input (each unmasking test tries, with whatever the honest clients revealed). One section per
weakness of SECURITY-REVIEW.md that lives in the secure-aggregation layer (W1-W3, W8, W10, W11);
W4-W7 and W9 are tested where they live (network client, DP encoding)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from mrff_secure.errors import AggregationAborted, AuthenticationError, ConfigError, ProtocolViolation, SecAggError
from mrff_secure.secagg import masking, packing, primitives, shamir
from mrff_secure.secagg.config import SecAggConfig
from mrff_secure.secagg.context import SessionContext
from mrff_secure.secagg.encoding import from_ring
from mrff_secure.secagg.identity import issue_credential
from mrff_secure.secagg.inmemory import make_identities, wire
from mrff_secure.secagg.messages import (
    ConsistencySignature,
    EncryptedShare,
    MaskedInput,
    Neighbourhood,
    ParticipantEntry,
    ParticipantSet,
    SurvivorList,
    UnmaskRequest,
    UnmaskResponse,
)
from mrff_secure.secagg.policy import PolicyViolation, SecAggPolicy
from mrff_secure.secagg.stages import Stage
from .roundkit import Round

N, K, D = 12, 6, 32  # default t = 5: 2t - k = 4 > c_max = 2
TARGET = 5


def _config(**changes) -> SecAggConfig:
    return SecAggConfig(**{**dict(num_clients=N, vector_length=D, max_abs=1000, num_neighbours=K), **changes})


def _inputs(seed: int = 7) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {c: rng.integers(-1000, 1001, D) for c in range(N)}


def _masked(round_id: int = 7, **changes) -> tuple[Round, dict[int, np.ndarray]]:
    """Honest first four stages; the server holds every masked input."""
    inputs = _inputs(round_id)
    r = Round(_config(**changes), range(N), round_id=round_id, policy=SecAggPolicy())
    r.until_masked(inputs)
    return r, inputs


def _neighbours(r: Round, client: int = TARGET) -> tuple[int, ...]:
    return r.server.graph[client]


def _signatures(r: Round, survivor_list: SurvivorList, signers) -> dict[int, ConsistencySignature]:
    return {c: r.clients[c].consistency_check(survivor_list) for c in signers}


def _request(r: Round, client: int, alive: tuple[int, ...], sigs: dict[int, ConsistencySignature],
             **changes) -> UnmaskRequest:
    neighbours = r.server.graph[client]
    request = UnmaskRequest(r.round_id, client, tuple(v for v in neighbours if v in alive),
                            tuple(v for v in neighbours if v not in alive),
                            tuple(sigs[v] for v in neighbours if v in sigs))
    return replace(request, **changes)


def _try_to_unmask(r: Round, inputs, responses: list[UnmaskResponse], known: dict[int, tuple[bytes, bytes]] = {}):
    """The attacker's last step: with every share it obtained (and the secrets of colluders in
    `known`: client -> (self-mask seed, mask private key)), try to strip the target's masks. It needs
    t self-mask shares AND t key shares of the target; assert it never has both, and that whatever it
    can strip does not give the input."""
    t, bits = r.config.t, r.config.bits
    seed_shares = [s.share for resp in responses for s in resp.self_mask_shares if s.owner == TARGET]
    key_shares = [s.share for resp in responses for s in resp.key_shares if s.owner == TARGET]
    assert not (len(seed_shares) >= t and len(key_shares) >= t), (len(seed_shares), len(key_shares))
    if len(seed_shares) < t and len(key_shares) < t:
        return
    guess = packing.unpack(r.uploads[TARGET].payload, bits, D).astype(primitives.word_dtype(bits))
    if len(seed_shares) >= t:
        seed = shamir.combine(seed_shares, t)
        guess -= masking.self_mask(seed, round_id=r.round_id, client_id=TARGET, length=D, modulus_bits=bits)
    else:
        private = primitives.agreement_key_from_bytes(shamir.combine(key_shares, t))
        for v in _neighbours(r):
            secret = primitives.agree(private, r.server.bundle(v).mask_public_key)
            mask = masking.pairwise_mask(secret, round_id=r.round_id, id_a=TARGET, id_b=v, length=D, modulus_bits=bits)
            masking.apply_signed(guess, mask, owner=v, peer=TARGET)
    masking.reduce(guess, bits)
    assert not np.array_equal(from_ring(guess, bits), inputs[TARGET])


# --- what already held: both shares, overlapping lists, replays --------------------------------


def test_asking_for_both_shares_of_a_peer_is_refused():
    r, _ = _masked()
    everyone = tuple(range(N))
    sigs = _signatures(r, SurvivorList(r.round_id, everyone), range(N))
    asked = _neighbours(r)[0]
    with pytest.raises(ProtocolViolation, match="both"):
        r.clients[asked].unmask(_request(r, asked, everyone, sigs, dropped=(TARGET,)))
    assert r.clients[asked].stage is Stage.ABORTED
    with pytest.raises(ProtocolViolation):  # a second, honest try is refused too: the session is over
        r.clients[asked].unmask(_request(r, asked, everyone, sigs))


def test_calling_a_signed_survivor_dropped_is_refused():
    r, _ = _masked()
    everyone = tuple(range(N))
    sigs = _signatures(r, SurvivorList(r.round_id, everyone), range(N))
    asked = _neighbours(r)[0]
    request = _request(r, asked, everyone, sigs)
    request = replace(request, survivors=tuple(v for v in request.survivors if v != TARGET), dropped=(TARGET,))
    with pytest.raises(ProtocolViolation, match="survivor list we signed"):
        r.clients[asked].unmask(request)


@pytest.mark.parametrize("pattern", ["both", "not neighbours", "sorted", "need t=", "signed the survivor list",
                                     "unexpected consistency signature", "differ from the survivor list"])
def test_overlapping_lists_and_strangers_are_refused(pattern):
    r, _ = _masked()
    everyone = tuple(range(N))
    sigs = _signatures(r, SurvivorList(r.round_id, everyone), range(N))
    asked = _neighbours(r)[1]
    good = _request(r, asked, everyone, sigs)
    stranger = next(c for c in range(N) if c not in r.server.graph[asked] and c != asked)
    bad = {
        "both": replace(good, dropped=good.survivors[:1]),
        "not neighbours": replace(good, survivors=tuple(sorted(good.survivors + (stranger,)))),
        "sorted": replace(good, survivors=good.survivors[::-1]),
        "need t=": replace(good, survivors=good.survivors[: r.config.t - 1]),
        "signed the survivor list": replace(good, signatures=good.signatures[: r.config.t - 1]),
        "unexpected consistency signature": replace(good, signatures=good.signatures + good.signatures[:1]),
        "differ from the survivor list": replace(good, survivors=good.survivors[:-1]),
    }[pattern]
    with pytest.raises(ProtocolViolation, match=pattern):
        r.clients[asked].unmask(bad)
    assert r.clients[asked].stage is Stage.ABORTED


def test_forged_consistency_signature_is_refused():
    r, _ = _masked()
    everyone = tuple(range(N))
    sigs = _signatures(r, SurvivorList(r.round_id, everyone), range(N))
    asked = _neighbours(r)[0]
    request = _request(r, asked, everyone, sigs)
    forged = replace(request.signatures[0], signature=bytes(64))
    with pytest.raises(AuthenticationError):
        r.clients[asked].unmask(replace(request, signatures=(forged,) + request.signatures[1:]))


def test_asking_twice_cannot_unmask_the_target():
    r, inputs = _masked()
    everyone = tuple(range(N))
    sigs = _signatures(r, SurvivorList(r.round_id, everyone), range(N))
    responses = [r.clients[c].unmask(_request(r, c, everyone, sigs)) for c in _neighbours(r)]
    for c in _neighbours(r):
        with pytest.raises(ProtocolViolation):
            r.clients[c].unmask(_request(r, c, everyone, sigs, survivors=(), dropped=(TARGET,)))
    _try_to_unmask(r, inputs, responses)


def test_tampered_or_misrouted_shares_are_refused():
    def shared() -> Round:
        r = Round(_config(), range(N), round_id=5, policy=SecAggPolicy())
        r.advertise(), r.reveal(), r.share()
        return r

    zeros = np.zeros(D, np.int64)
    r = shared()
    good = r.deliveries[TARGET]
    first = good.shares[0]
    flipped = replace(first, ciphertext=first.ciphertext[:-1] + bytes([first.ciphertext[-1] ^ 1]))
    with pytest.raises(AuthenticationError):
        r.clients[TARGET].masked_input(replace(good, shares=(flipped,) + good.shares[1:]), zeros)
    r = shared()
    good = r.deliveries[TARGET]
    with pytest.raises(ProtocolViolation):  # a share duplicated
        r.clients[TARGET].masked_input(replace(good, shares=good.shares + good.shares[:1]), zeros)
    r = shared()
    with pytest.raises(ProtocolViolation):  # someone else's mail
        r.clients[TARGET].masked_input(r.deliveries[next(c for c in range(N) if c != TARGET)], zeros)
    r = shared()
    good = r.deliveries[TARGET]
    relabelled = EncryptedShare(good.shares[1].sender, TARGET, good.shares[0].ciphertext)
    with pytest.raises(AuthenticationError):  # AD binds the sender
        r.clients[TARGET].masked_input(replace(good, shares=(relabelled,) + good.shares[1:]), zeros)
    r = shared()
    good = r.deliveries[TARGET]
    with pytest.raises(AggregationAborted):  # shares withheld: the client refuses to mask with too few
        r.clients[TARGET].masked_input(replace(good, shares=good.shares[: r.config.t - 1]), zeros)


def test_server_detects_a_corrupted_key_share():
    """A neighbour that lies about a dropped client's key share cannot make the server return a wrong sum."""
    r = Round(_config(), range(N), round_id=9, policy=SecAggPolicy())
    r.advertise(), r.reveal(), r.share()
    for c in range(N):
        if c != TARGET:
            r.server.receive_masked_input(r.clients[c].masked_input(r.deliveries[c], np.ones(D, np.int64)))
    survivors = r.server.close_masked_input()
    for c in survivors.survivors:
        r.server.receive_consistency_signature(r.clients[c].consistency_check(survivors))
    for c, request in r.server.close_consistency_check().items():
        response = r.clients[c].unmask(request)
        if response.key_shares:
            bad = replace(response.key_shares[0].share, value=bytes(44))
            response = replace(response, key_shares=(replace(response.key_shares[0], share=bad),)
                               + response.key_shares[1:])
        r.server.receive_unmask_response(response)
    with pytest.raises(AggregationAborted):
        r.server.finish()


# --- W1: the server is not the PKI ------------------------------------------------------------


def _sybil_bundle(r: Round, victim_slot: int, *, authority=None, credential_id=None, key=None, context=None):
    """A bundle for a sybil that the server would like a neighbour of the target to accept."""
    key = key or primitives.generate_identity_key()
    authority = authority or primitives.generate_identity_key()
    honest = r.server.bundle(victim_slot)
    credential = issue_credential(authority, victim_slot if credential_id is None else credential_id,
                                  primitives.identity_public_bytes(key))
    bundle = replace(honest, credential=credential)
    ctx = (context or r.context).to_bytes()
    return replace(bundle, signature=primitives.sign(key, bundle.signed_payload(ctx)))


@pytest.mark.parametrize("how", ["another authority", "another id", "uncertified key", "stale context"])
def test_sybil_bundles_are_refused_by_the_neighbour_and_by_the_honest_server(how):
    r = Round(_config(), range(N), round_id=4, policy=SecAggPolicy())
    r.advertise()
    r.reveal()
    victim = _neighbours(r)[0]  # the server wants its own key in this slot, next to the target
    real = r.identities
    sybil_key = primitives.generate_identity_key()
    bundle = {
        "another authority": lambda: _sybil_bundle(r, victim, key=sybil_key),
        "another id": lambda: _sybil_bundle(r, victim, authority=real.authority_key, credential_id=victim + 100,
                                            key=sybil_key),
        "uncertified key": lambda: replace(r.server.bundle(victim), signature=primitives.sign(
            sybil_key, r.server.bundle(victim).signed_payload(r.context.to_bytes()))),
        "stale context": lambda: _sybil_bundle(r, victim, authority=real.authority_key, key=real.keys[victim],
                                               context=SessionContext.fresh(round_id=4)),
    }[how]()
    hood = r.neighbourhoods[TARGET]
    forged = replace(hood, bundles=tuple(bundle if b.client_id == victim else b for b in hood.bundles))
    # the participant set fixed the honest bundle's digest; a server that also rewrites the entry
    # is caught by the signature and credential checks
    entries = tuple(replace(e, bundle_digest=bundle.digest()) if e.client_id == victim else e
                    for e in r.participants.entries)
    with pytest.raises(ProtocolViolation, match="differs from the one the participant set fixed"):
        r.clients[TARGET].share_keys(forged)
    fresh = Round(_config(), range(N), round_id=4, policy=SecAggPolicy(), identities=real, context=r.context)
    fresh.advertise()
    client = fresh.clients[TARGET]
    client._participants = replace(fresh.participants, entries=entries)  # as if the set had listed the sybil
    client.stage = Stage.SHARE_KEYS
    client._graph_reveal = r.clients[TARGET]._graph_reveal
    with pytest.raises(AuthenticationError):
        client._verified_bundle(bundle, bundle.digest())
    server = Round(_config(), range(N), round_id=4, identities=real, context=r.context).server
    with pytest.raises((AuthenticationError, ProtocolViolation)):
        server.receive_advertise_keys(bundle)


# --- W2: the threshold rule -------------------------------------------------------------------


@pytest.mark.parametrize("k,t,c_max", [(6, 4, 2), (7, 4, 1), (10, 6, 2), (2, 2, 2)])
def test_policy_refuses_thresholds_a_split_view_with_c_max_colluders_defeats(k, t, c_max):
    config = SecAggConfig(num_clients=20, vector_length=4, max_abs=10, num_neighbours=k, threshold=t)
    ids = make_identities([0])
    with pytest.raises(PolicyViolation, match="2t - k"):
        ids.session(config, SessionContext.fresh(round_id=1), 0, SecAggPolicy(corrupt_neighbours=c_max))


@pytest.mark.parametrize("seed", range(4))
def test_split_view_with_two_colluding_neighbours_cannot_unmask_the_target(seed):
    """The server colludes with 2 of the target's neighbours (their shares are the attacker's) and shows
    two disjoint groups of honest neighbours different survivor lists: with the target, or without."""
    probe, _ = _masked(round_id=100 + seed)
    for split in range(len(_neighbours(probe)) - 1):
        r, inputs = _masked(round_id=100 + seed)
        neighbours = list(_neighbours(r))
        colluders = set(neighbours[seed % 3: seed % 3 + 2])
        honest = [v for v in neighbours if v not in colluders]
        with_target, without_target = tuple(range(N)), tuple(c for c in range(N) if c != TARGET)
        drop_believers = set(honest[split:])
        sigs_a = _signatures(r, SurvivorList(r.round_id, with_target),
                             [c for c in range(N) if c not in drop_believers])
        sigs_b = _signatures(r, SurvivorList(r.round_id, without_target), sorted(drop_believers))
        responses = []
        for c in range(N):
            if c == TARGET or c in colluders:
                continue
            request = (_request(r, c, without_target, sigs_b) if c in drop_believers
                       else _request(r, c, with_target, sigs_a))
            try:
                responses.append(r.clients[c].unmask(request))
            except SecAggError:
                pass
        for c in colluders:  # the colluders hand over both shares of the target
            held = r.clients[c]._held[TARGET]
            responses.append(UnmaskResponse(r.round_id, c, (shamir_owned(TARGET, c + 1, held.self_mask_share),),
                                            (shamir_owned(TARGET, c + 1, held.key_share),)))
        _try_to_unmask(r, inputs, responses)


def shamir_owned(owner: int, x: int, value: bytes):
    from mrff_secure.secagg.messages import OwnedShare

    return OwnedShare(owner, shamir.Share(x, value))


# --- W3: a graph the server cannot steer, floors on what it may propose ------------------------


def test_a_substituted_reveal_is_caught_by_its_commitment():
    r = Round(_config(), range(N), round_id=3, policy=SecAggPolicy())
    r.advertise()
    hoods = r.reveal()
    hood = hoods[TARGET]
    reveals = list(hood.reveals)
    reveals[4] = bytes(32)  # the server grinds a colluder's contribution after seeing the others
    with pytest.raises(ProtocolViolation, match="does not open its commitment"):
        r.clients[TARGET].share_keys(replace(hood, reveals=tuple(reveals)))
    with pytest.raises(ProtocolViolation, match="reveals for"):
        Round(_config(), range(N), round_id=3, policy=SecAggPolicy())  # (a fresh round for the next client)
        r.clients[0].share_keys(replace(hoods[0], reveals=hoods[0].reveals[:-1]))


@pytest.mark.parametrize("change", ["other neighbours", "one missing", "one extra"])
def test_a_neighbourhood_other_than_the_graph_gives_is_refused(change):
    r = Round(_config(), range(N), round_id=3, policy=SecAggPolicy())
    r.advertise()
    hood = r.reveal()[TARGET]
    outsider = next(c for c in range(N) if c not in _neighbours(r) and c != TARGET)
    bundles = {
        "other neighbours": tuple(sorted(hood.bundles[1:] + (r.server.bundle(outsider),), key=lambda b: b.client_id)),
        "one missing": hood.bundles[1:],
        "one extra": tuple(sorted(hood.bundles + (r.server.bundle(outsider),), key=lambda b: b.client_id)),
    }[change]
    with pytest.raises(ProtocolViolation, match="our neighbours are"):
        r.clients[TARGET].share_keys(replace(hood, bundles=bundles))


def test_participant_sets_the_policy_or_our_entry_forbid_are_refused():
    def advertised(policy=SecAggPolicy(), allowed=None):
        r = Round(_config(), range(N), round_id=2, policy=policy)
        if allowed is not None:
            r.clients[TARGET] = r.identities.session(r.config, r.context, TARGET, policy)
            r.clients[TARGET]._allowed = frozenset(allowed)
        return r, r.advertise()

    r, full = advertised(SecAggPolicy(min_participants=N))
    small = replace(full, entries=full.entries[:3] + tuple(e for e in full.entries if e.client_id == TARGET))
    small = replace(small, entries=tuple(sorted(set(small.entries), key=lambda e: e.client_id)))
    with pytest.raises(PolicyViolation, match="min_participants"):
        r.clients[TARGET].reveal_seed(small)
    r, full = advertised()
    with pytest.raises(ProtocolViolation, match="own key bundle"):
        r.clients[TARGET].reveal_seed(replace(full, entries=tuple(e for e in full.entries if e.client_id != TARGET)))
    r, full = advertised()
    altered = tuple(replace(e, bundle_digest=bytes(32)) if e.client_id == TARGET else e for e in full.entries)
    with pytest.raises(ProtocolViolation, match="own key bundle"):
        r.clients[TARGET].reveal_seed(replace(full, entries=altered))
    r, full = advertised(allowed=set(range(N)) - {3})  # phase 2 bound to the survivors of phase 1
    with pytest.raises(ProtocolViolation, match="may not take part"):
        r.clients[TARGET].reveal_seed(full)
    r, full = advertised()
    padded = full.entries + tuple(ParticipantEntry(1000 + i, bytes(32), bytes(32)) for i in range(N))
    with pytest.raises(ProtocolViolation, match="sized for"):
        r.clients[TARGET].reveal_seed(replace(full, entries=padded))


def test_survivor_lists_below_the_floor_or_with_strangers_are_refused():
    r, _ = _masked(round_id=8)
    with pytest.raises(ProtocolViolation, match="omits us"):
        r.clients[TARGET].consistency_check(SurvivorList(r.round_id, tuple(c for c in range(N) if c != TARGET)))
    r, _ = _masked(round_id=8)
    with pytest.raises(ProtocolViolation, match="outside the participant set"):
        r.clients[TARGET].consistency_check(SurvivorList(r.round_id, tuple(range(N)) + (500,)))
    r, _ = _masked(round_id=8)
    r.clients[TARGET].policy = SecAggPolicy(min_survivors=N)
    with pytest.raises(PolicyViolation, match="min_survivors"):
        r.clients[TARGET].consistency_check(SurvivorList(r.round_id, tuple(range(N - 1))[:-1] + (TARGET,)
                                                         if TARGET >= N - 2 else tuple(c for c in range(N) if c != 0)))
    r, _ = _masked(round_id=8)
    keep = set(_neighbours(r)[: r.config.t - 1]) | {TARGET}
    with pytest.raises(AggregationAborted):
        r.clients[TARGET].consistency_check(SurvivorList(r.round_id, tuple(sorted(keep))))


@pytest.mark.parametrize("k,t", [(2, 2), (6, 4), (11, 6)])
def test_weak_k_or_t_refused_by_the_default_policy(k, t):
    config = SecAggConfig(num_clients=N, vector_length=D, max_abs=10, num_neighbours=k, threshold=t)
    ids = make_identities([TARGET])
    with pytest.raises(PolicyViolation):
        ids.session(config, SessionContext.fresh(round_id=1), TARGET, SecAggPolicy())


# --- W8: commitments and the output range ------------------------------------------------------


def _finish_with(r: Round, tamper) -> None:
    survivors = r.server.close_masked_input()
    for c in survivors.survivors:
        r.server.receive_consistency_signature(r.clients[c].consistency_check(survivors))
    for c, request in r.server.close_consistency_check().items():
        r.server.receive_unmask_response(tamper(c, r.clients[c].unmask(request)))
    return r.server.finish()


def test_a_shifted_self_mask_share_aborts_instead_of_a_wrong_sum():
    r, _ = _masked(round_id=12)

    def shift(c, response):
        if c == _neighbours(r)[0]:
            item = next(s for s in response.self_mask_shares if s.owner == TARGET)
            value = (int.from_bytes(item.share.value, "big") + 12345).to_bytes(len(item.share.value), "big")
            shifted = replace(item, share=replace(item.share, value=value))
            response = replace(response, self_mask_shares=tuple(shifted if s is item else s
                                                                  for s in response.self_mask_shares))
        return response

    with pytest.raises(AggregationAborted, match="does not match its commitment|do not combine"):
        _finish_with(r, shift)


def test_a_dealer_masking_with_another_seed_than_it_shared_is_caught_by_the_range_check():
    inputs = _inputs(13)
    r = Round(_config(), range(N), round_id=13, policy=SecAggPolicy())
    r.advertise(), r.reveal(), r.share()
    cheat = r.clients[TARGET]
    cheat._self_mask_seed = primitives.system_random(32)  # masks with a seed other than the one it shared
    r.mask(inputs)
    # the server rebuilds the seed that was shared (it matches the commitment) and removes the wrong mask:
    # what is left is uniform noise, far outside what N inputs of max_abs can sum to
    with pytest.raises(AggregationAborted, match="range"):
        _finish_with(r, lambda c, response: response)


def test_an_out_of_range_input_is_caught_by_the_output_range_check():
    inputs = {c: np.full(D, 1000, np.int64) for c in range(N)}
    r = Round(_config(), range(N), round_id=14, policy=SecAggPolicy())
    r.advertise(), r.reveal(), r.share()
    for c in range(N):
        if c == TARGET:  # a hostile client bypasses to_ring's range check: far beyond max_abs
            bits = r.config.bits
            session = r.clients[c]
            real = session.masked_input(r.deliveries[c], np.zeros(D, np.int64))
            words = packing.unpack(real.payload, bits, D)
            words = (words + np.uint64(1 << (bits - 2))) & np.uint64((1 << bits) - 1)
            r.server.receive_masked_input(replace(real, payload=packing.pack(words, bits)))
        else:
            r.server.receive_masked_input(r.clients[c].masked_input(r.deliveries[c], inputs[c]))
    with pytest.raises(AggregationAborted, match="range"):
        _finish_with(r, lambda c, response: response)


# --- W10: invalid X25519 keys ---------------------------------------------------------------------

SMALL_ORDER = [bytes(32), (1).to_bytes(32, "little"),
               bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
               bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
               bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f")]


@pytest.mark.parametrize("bad", SMALL_ORDER + [(2**255 - 19).to_bytes(32, "little"), bytes([255]) * 32],
                         ids=lambda b: b.hex()[:8])
@pytest.mark.parametrize("field", ["mask_public_key", "cipher_public_key"])
def test_small_order_or_non_canonical_keys_are_refused_at_advertise(bad, field):
    r = Round(_config(), range(N), round_id=15)
    client = r.clients[TARGET]
    honest = client.advertise_keys()
    forged = replace(honest, **{field: bad})
    forged = replace(forged, signature=primitives.sign(r.identities.keys[TARGET],
                                                       forged.signed_payload(r.context.to_bytes())))
    with pytest.raises(ProtocolViolation, match="small-order|canonical"):
        r.server.receive_advertise_keys(forged)
    r.server.receive_advertise_keys(honest)  # the honest bundle still enters


# --- W11: signatures bound to run, phase, round and nonce -------------------------------------------


@pytest.mark.parametrize("field", ["run_id", "phase", "round_id", "nonce"])
def test_bundles_and_survivor_signatures_of_another_session_are_refused(field):
    r = Round(_config(), range(N), round_id=16, policy=SecAggPolicy())
    other = {"run_id": replace(r.context, run_id=bytes(16)), "phase": replace(r.context, phase=r.context.phase + 1),
             "round_id": replace(r.context, round_id=17), "nonce": replace(r.context, nonce=bytes(32))}[field]
    stale_client = r.identities.session(r.config, other, TARGET, SecAggPolicy())
    stale = stale_client.advertise_keys()
    stale = replace(stale, round_id=r.round_id)  # the header is the server's to rewrite; the signature is not
    with pytest.raises(AuthenticationError):
        r.server.receive_advertise_keys(stale)
    # a consistency signature made in another session does not count either
    r2, _ = _masked(round_id=16)
    everyone = tuple(range(N))
    sigs = _signatures(r2, SurvivorList(r2.round_id, everyone), range(N))
    from mrff_secure.secagg.messages import consistency_payload

    asked = _neighbours(r2)[0]
    request = _request(r2, asked, everyone, sigs)
    forged_sig = replace(request.signatures[0], signature=primitives.sign(
        r2.identities.keys[request.signatures[0].client_id],
        consistency_payload(other.to_bytes(), r2.clients[asked]._seed, everyone)))
    with pytest.raises(AuthenticationError):
        r2.clients[asked].unmask(replace(request, signatures=(forged_sig,) + request.signatures[1:]))

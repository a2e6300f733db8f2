"""A hostile server (alone, or with sybil or colluding clients) against the real ClientSession.

Every deviation is refused with a typed error, and in no case can the server unmask one client's
input: each unmasking test hands the attacker every share the honest clients revealed plus everything
its colluders hold, and asserts it never holds t shares of both of the target's secrets. Where an
attack needs more than the policy allows, a control runs the same attack with the policy broken and
recovers the target's input exactly, so the harness itself is shown to work.

One section per weakness of SECURITY.md's table that lives in the secure-aggregation layer (W1-W3,
W8, W10, W11); W4-W7 and W9 are tested where they live (network client, DP encoding)."""

from __future__ import annotations

from dataclasses import replace
from itertools import combinations

import numpy as np
import pytest

from attacks.protocol_round import Round, derive
from mrff_secure.errors import AggregationAborted, AuthenticationError, ConfigError, ProtocolViolation, SecAggError
from mrff_secure.round.inmemory import make_identities, wire
from mrff_secure.secagg import packing, primitives, shamir
from mrff_secure.secagg.config import SecAggConfig, max_abs_for
from mrff_secure.secagg.context import SessionContext
from mrff_secure.secagg.encoding import to_ring
from mrff_secure.secagg.graph import graph_seed, neighbour_graph
from mrff_secure.secagg.identity import issue_credential
from mrff_secure.secagg.messages import (
    PURPOSE_GRAPH_SEED,
    PURPOSE_SELF_MASK_SEED,
    AdvertiseKeys,
    ConsistencySignature,
    EncryptedShare,
    Neighbourhood,
    OwnedShare,
    ParticipantEntry,
    ParticipantSet,
    SeedReveal,
    ShareDelivery,
    SharePayload,
    SurvivorList,
    UnmaskRequest,
    UnmaskResponse,
    consistency_payload,
)
from mrff_secure.secagg.policy import PolicyViolation, SecAggPolicy
from mrff_secure.secagg.server import ServerSession
from mrff_secure.secagg.stages import Stage

N, K, D = 12, 6, 32  # default t = 5: 2t - k = 4 > c_max = 2
TARGET = 5


def _config(**changes) -> SecAggConfig:
    return SecAggConfig(**{**dict(num_clients=N, vector_length=D, max_abs=1000, num_neighbours=K), **changes})


def _inputs(seed: int = 7, ids=range(N), d: int = D, max_abs: int = 1000) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {c: rng.integers(-max_abs, max_abs + 1, d) for c in ids}


def _masked(round_id: int = 7, **changes) -> tuple[Round, dict[int, np.ndarray]]:
    """Honest first four stages; the server holds every masked input."""
    config = _config(**changes)
    inputs = _inputs(round_id, d=config.vector_length)
    r = Round(config, range(N), round_id=round_id, policy=SecAggPolicy())
    r.until_masked(inputs)
    return r, inputs


def _neighbours(r: Round, client: int = TARGET) -> tuple[int, ...]:
    return r.server.graph[client]


def _signatures(r: Round, survivor_list: SurvivorList, signers) -> dict[int, ConsistencySignature]:
    return {c: r.clients[c].consistency_check(survivor_list) for c in signers}


def _request(
    r: Round, client: int, alive: tuple[int, ...], sigs: dict[int, ConsistencySignature], **changes
) -> UnmaskRequest:
    neighbours = r.server.graph[client]
    request = UnmaskRequest(
        r.round_id,
        client,
        tuple(v for v in neighbours if v in alive),
        tuple(v for v in neighbours if v not in alive),
        tuple(sigs[v] for v in neighbours if v in sigs),
    )
    return replace(request, **changes)


def _target_shares(responses, colluders=(), r: Round | None = None):
    """Every share of the target the attacker holds: from honest responses, and both shares from each
    colluder (a colluder's session is the attacker's: it reads what the target sent it)."""
    seed_shares = [s.share for resp in responses for s in resp.self_mask_shares if s.owner == TARGET]
    key_shares = [s.share for resp in responses for s in resp.key_shares if s.owner == TARGET]
    for c in colluders:
        held = r.clients[c]._held[TARGET]
        seed_shares.append(shamir.Share(c + 1, held.self_mask_share))
        key_shares.append(shamir.Share(c + 1, held.key_share))
    return seed_shares, key_shares


def _assert_target_hidden(r: Round, inputs, seed_shares, key_shares) -> None:
    """The attacker's last step: with t shares of both secrets it would strip every mask (the controls
    show it then gets the input exactly); assert it never has them, or that what it strips is not the input."""
    t = r.config.t
    if len(seed_shares) >= t and len(key_shares) >= t:
        recovered = r.strip_masks(TARGET, seed_shares, key_shares)
        assert not np.array_equal(recovered, inputs[TARGET]), "the attacker unmasked the target's input"
    assert not (len(seed_shares) >= t and len(key_shares) >= t), (len(seed_shares), len(key_shares))


# --- what already held: both shares, overlapping lists, replays --------------------------------


def test_asking_for_both_shares_of_a_peer_is_refused():
    r, inputs = _masked()
    everyone = tuple(range(N))
    sigs = _signatures(r, SurvivorList(r.round_id, everyone), range(N))
    asked = _neighbours(r)[0]
    with pytest.raises(ProtocolViolation, match="both"):
        r.clients[asked].unmask(_request(r, asked, everyone, sigs, dropped=(TARGET,)))
    assert r.clients[asked].stage is Stage.ABORTED
    with pytest.raises(ProtocolViolation, match="ABORTED"):  # a second, honest try is refused too: the session is over
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


@pytest.mark.parametrize(
    "pattern",
    [
        "both",
        "not neighbours",
        "sorted",
        "need t=",
        "signed the survivor list",
        "unexpected consistency signature",
        "differ from the survivor list",
    ],
)
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
    with pytest.raises(AuthenticationError, match="signature did not verify"):
        r.clients[asked].unmask(replace(request, signatures=(forged,) + request.signatures[1:]))


def test_asking_twice_cannot_unmask_the_target():
    r, inputs = _masked()
    everyone = tuple(range(N))
    sigs = _signatures(r, SurvivorList(r.round_id, everyone), range(N))
    responses = [r.clients[c].unmask(_request(r, c, everyone, sigs)) for c in _neighbours(r)]
    for c in _neighbours(r):
        with pytest.raises(ProtocolViolation, match="not allowed in stage DONE"):
            r.clients[c].unmask(_request(r, c, everyone, sigs, survivors=(), dropped=(TARGET,)))
    seed_shares, key_shares = _target_shares(responses)
    assert (len(seed_shares), len(key_shares)) == (K, 0)
    _assert_target_hidden(r, inputs, seed_shares, key_shares)


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
    with pytest.raises(AuthenticationError, match="ciphertext did not verify"):
        r.clients[TARGET].masked_input(replace(good, shares=(flipped,) + good.shares[1:]), zeros)
    r = shared()
    good = r.deliveries[TARGET]
    with pytest.raises(ProtocolViolation, match="unexpected share"):  # a share duplicated
        r.clients[TARGET].masked_input(replace(good, shares=good.shares + good.shares[:1]), zeros)
    r = shared()
    with pytest.raises(ProtocolViolation, match="addressed to client"):  # someone else's mail
        r.clients[TARGET].masked_input(r.deliveries[next(c for c in range(N) if c != TARGET)], zeros)
    r = shared()
    good = r.deliveries[TARGET]
    relabelled = EncryptedShare(good.shares[1].sender, TARGET, good.shares[0].ciphertext)
    with pytest.raises(AuthenticationError, match="ciphertext did not verify"):  # AD binds the sender
        r.clients[TARGET].masked_input(replace(good, shares=(relabelled,) + good.shares[1:]), zeros)
    r = shared()
    good = r.deliveries[TARGET]
    with pytest.raises(AggregationAborted, match="fewer than t="):  # shares withheld: too few to mask with
        r.clients[TARGET].masked_input(replace(good, shares=good.shares[: r.config.t - 1]), zeros)


# --- W1: the server is not the PKI ------------------------------------------------------------

SYBIL = 100


def _bundle(
    r: Round,
    client_id: int,
    *,
    signer,
    credential,
    reveal: bytes,
    context: SessionContext | None = None,
    cipher_public_key: bytes | None = None,
    mask_public_key: bytes | None = None,
) -> AdvertiseKeys:
    """A key bundle the attacker makes: fresh agreement keys (or the given ones), a graph commitment it
    can open with `reveal`, signed by `signer` over the context."""
    ctx = (context or r.context).to_bytes()
    unsigned = AdvertiseKeys(
        r.round_id,
        client_id,
        cipher_public_key or primitives.agreement_public_bytes(primitives.generate_agreement_key()),
        mask_public_key or primitives.agreement_public_bytes(primitives.generate_agreement_key()),
        primitives.commitment(PURPOSE_GRAPH_SEED, ctx, client_id, reveal),
        primitives.commitment(PURPOSE_SELF_MASK_SEED, ctx, client_id, bytes(32)),
        credential,
        bytes(64),
        (context or r.context).round_body_digest,
    )
    return replace(unsigned, signature=primitives.sign(signer, unsigned.signed_payload(ctx)))


def _rogue_server(
    r: Round, forged: dict[int, AdvertiseKeys], reveals: dict[int, bytes], *, leave_out: tuple[int, ...] = ()
):
    """A malicious server after the honest bundles are in (r.advertise()): it lists every honest client
    (except `leave_out`, and those whose id a forged bundle takes) and the forged bundles, with graph
    commitments it can open with `reveals`; shows every listed honest client that participant set,
    collects their reveals, derives the graph exactly as the clients will, and prepares each listed
    honest client's Neighbourhood with its neighbours' bundles (forged ones included).

    Returns (participant set, graph, neighbourhoods of the honest listed clients)."""
    ctx = r.context.to_bytes()
    honest = {c: r.server.bundle(c) for c in r.ids if c not in forged and c not in leave_out}
    entries = [ParticipantEntry.of(b) for b in honest.values()]
    entries += [
        ParticipantEntry(
            c, primitives.commitment(PURPOSE_GRAPH_SEED, ctx, c, reveals[c]), b.digest(), b.round_body_digest
        )
        for c, b in forged.items()
    ]
    participants = ParticipantSet(r.round_id, tuple(sorted(entries, key=lambda e: e.client_id)))
    opened = {c: wire(r.clients[c].reveal_seed(wire(participants))).reveal for c in honest} | reveals
    ordered = tuple(opened[c] for c in participants.client_ids)
    graph = neighbour_graph(graph_seed(ctx, participants.digest(), ordered), participants.client_ids, r.config.k)
    bundles = {**honest, **forged}
    hoods = {c: Neighbourhood(r.round_id, c, ordered, tuple(bundles[v] for v in graph[c])) for c in honest}
    return participants, graph, hoods


@pytest.mark.parametrize(
    "how,at_client,at_server",
    [
        ("another authority", "client 100 has no credential from our identity authority", "signature did not verify"),
        (
            "another id",
            "client 100 has no credential from our identity authority",
            "credential is for another client id",
        ),
        ("uncertified key", "signature did not verify", "signature did not verify"),
        ("stale context", "signature did not verify", "signature did not verify"),
    ],
)
def test_sybil_bundles_are_refused_by_the_neighbour_and_by_the_honest_server(how, at_client, at_server):
    """The malicious server lists a sybil in the participant set (with the digest of the sybil's bundle, so
    the digest check passes) and hands the sybil's bundle to each of its neighbours. Every honest
    neighbour refuses it; the honest server refuses it at advertise.

    another authority: a new id certified by a rogue authority. another id: a colluding client that the
    real authority certified as id 200 claims id 100 with its genuine credential. uncertified key: the
    server replaces honest client 3 with keys of its own, signed by a key no credential names. stale
    context: honest client 3's genuine bundle from another session (same run and round, other nonce)."""
    config = _config(num_clients=N + 1)
    r = Round(config, range(N), round_id=4, policy=SecAggPolicy())
    r.advertise()
    real = r.identities
    own_key = primitives.generate_identity_key()
    reveal = derive(b"sybil", how)
    victim = 3
    if how == "another authority":
        rogue = primitives.generate_identity_key()
        credential = issue_credential(rogue, SYBIL, primitives.identity_public_bytes(own_key))
        sybil = _bundle(r, SYBIL, signer=own_key, credential=credential, reveal=reveal)
    elif how == "another id":
        genuine = issue_credential(real.authority_key, 200, primitives.identity_public_bytes(own_key))
        sybil = _bundle(r, SYBIL, signer=own_key, credential=genuine, reveal=reveal)
    elif how == "uncertified key":
        sybil = _bundle(r, victim, signer=own_key, credential=real.credentials[victim], reveal=reveal)
    else:
        other = replace(r.context, nonce=derive(b"another session", 0))
        sybil = replace(r.session(victim, context=other).advertise_keys(), round_id=r.round_id)
    _, graph, hoods = _rogue_server(r, {sybil.client_id: sybil}, {sybil.client_id: reveal})

    refused = {}
    for c, hood in hoods.items():
        try:
            r.clients[c].share_keys(wire(hood))
        except SecAggError as exc:
            refused[c] = exc
            assert r.clients[c].stage is Stage.ABORTED
    assert set(refused) == set(graph[sybil.client_id]) and len(refused) == K  # exactly the sybil's neighbours
    for exc in refused.values():
        assert isinstance(exc, AuthenticationError) and at_client in str(exc), exc
    # clients that are not the sybil's neighbours never look at its bundle (O(k) verification) and go on
    assert all(r.clients[c].stage is Stage.MASKED_INPUT for c in hoods if c not in refused)

    server = ServerSession(config, context=r.context, authority_public_key=real.authority_public_key)
    with pytest.raises(AuthenticationError, match=at_server):
        server.receive_advertise_keys(wire(sybil))


def test_a_participant_set_with_a_bundle_other_than_the_one_it_fixed_is_refused():
    """The server fixed neighbour v's honest bundle in the participant set, then hands the target a
    sybil's bundle for v: refused on the digest, before any signature is looked at."""
    r = Round(_config(), range(N), round_id=4, policy=SecAggPolicy())
    r.advertise()
    hood = r.reveal()[TARGET]
    victim = _neighbours(r)[0]
    sybil = _bundle(
        r, victim, signer=r.identities.keys[victim], credential=r.identities.credentials[victim], reveal=bytes(32)
    )  # even a bundle the real client could have signed
    forged = replace(hood, bundles=tuple(sybil if b.client_id == victim else b for b in hood.bundles))
    with pytest.raises(ProtocolViolation, match=f"key bundle of client {victim} differs from the one the participant"):
        r.clients[TARGET].share_keys(forged)


# --- W2: the threshold rule -------------------------------------------------------------------


@pytest.mark.parametrize("k,t,c_max", [(6, 4, 2), (7, 4, 1), (10, 6, 2), (2, 2, 2)])
def test_policy_refuses_thresholds_a_split_view_with_c_max_colluders_defeats(k, t, c_max):
    config = SecAggConfig(num_clients=20, vector_length=4, max_abs=10, num_neighbours=k, threshold=t)
    ids = make_identities([0])
    with pytest.raises(PolicyViolation, match=f"gives 2t - k = {2 * t - k}"):
        ids.session(config, SessionContext.fresh(round_id=1), 0, SecAggPolicy(corrupt_neighbours=c_max))


def test_policy_refuses_exactly_the_thresholds_with_2t_minus_k_at_most_c_max():
    """Every (k, t, c_max) with k in 2..12: the client is refused at construction (before it has made
    any key) iff 2t - k <= c_max, and accepts every other proposal (the absolute rule alone: no
    corrupt fraction, whose check test_sizing.py covers)."""
    ids = make_identities([0])
    context = SessionContext.fresh(round_id=1)
    refused = accepted = 0
    for k in range(2, 13):
        for t in range(k // 2 + 1, k + 1):
            config = SecAggConfig(num_clients=16, vector_length=2, max_abs=10, num_neighbours=k, threshold=t)
            for c_max in range(0, 5):
                policy = SecAggPolicy(corrupt_neighbours=c_max, corrupt_fraction=0.0)
                if 2 * t - k <= c_max:
                    with pytest.raises(PolicyViolation, match="split view"):
                        ids.session(config, context, 0, policy)
                    refused += 1
                else:
                    assert ids.session(config, context, 0, policy).stage is Stage.ADVERTISE_KEYS
                    accepted += 1
    assert (refused, accepted) == (53, 152)


def _plan(graph, t: int, colluders: set[int], drop_believers: set[int]) -> tuple[int, int, set[int]]:
    """What the split view gives, computed from the graph alone (the server knows it): each honest
    neighbour of the target answers iff t of its neighbours signed its list. Returns (self-mask shares,
    key shares, honest neighbours that answer)."""
    honest = {TARGET} | (set(graph[TARGET]) - colluders)
    side = {c: c in drop_believers for c in honest}
    answering = {h for h in honest - {TARGET} if sum(1 for v in graph[h] if v not in honest or side[v] == side[h]) >= t}
    seeds = len(colluders) + sum(1 for h in answering if not side[h])
    keys = len(colluders) + sum(1 for h in answering if side[h])
    return seeds, keys, answering


def _split_view(r: Round, colluders: set[int], drop_believers: set[int]):
    """Run the split view on the real clients after the masked-input stage. The target's honest
    neighbours in `drop_believers` are shown the survivor list without the target (and so reveal its
    key share), the others the full list (and reveal its self-mask share). To give the attacker every
    signature it could want, every client that is neither the target nor one of its honest neighbours
    colludes (signs both lists); only `colluders` are among the target's neighbours.
    Returns (self-mask shares, key shares, honest neighbours that answered)."""
    graph = r.server.graph
    honest = {TARGET} | (set(graph[TARGET]) - colluders)
    with_target, without_target = tuple(r.ids), tuple(c for c in r.ids if c != TARGET)
    shown = {c: without_target if c in drop_believers else with_target for c in honest}
    sigs = {c: wire(r.clients[c].consistency_check(SurvivorList(r.round_id, shown[c]))) for c in honest}
    responses, answered = [], set()
    for h in sorted(honest - {TARGET}):
        signatures = tuple(
            sigs[v] if v in honest else r.colluder_signature(v, shown[h])
            for v in graph[h]
            if v not in honest or shown[v] == shown[h]
        )
        held = r.held_by(h)
        request = UnmaskRequest(
            r.round_id,
            h,
            tuple(v for v in held if v in shown[h]),
            tuple(v for v in held if v not in shown[h]),
            signatures,
        )
        try:
            responses.append(r.clients[h].unmask(wire(request)))
            answered.add(h)
        except ProtocolViolation as exc:
            assert "neighbours signed the survivor list, need t=" in str(exc), exc
    return (*_target_shares(responses, colluders, r), answered)


def _best_placement(graph, t: int, c: int) -> set[int]:
    """The attacker's best choice of c colluders among the target's neighbours: the one whose best split
    gets the most shares of the scarcer secret."""

    def score(colluders):
        honest = sorted(set(graph[TARGET]) - set(colluders))
        return max(
            min(_plan(graph, t, set(colluders), {h for i, h in enumerate(honest) if mask >> i & 1})[:2])
            for mask in range(2 ** len(honest))
        )

    return set(max(combinations(graph[TARGET], c), key=score))


@pytest.mark.parametrize("graph_seed_label", [b"graph-0", b"graph-1", b"graph-2"])
def test_split_view_with_two_colluding_neighbours_cannot_unmask_the_target(graph_seed_label):
    """Default threshold (k = 6, t = 5), the policy's c_max = 2 colluding neighbours, placed where they
    help most, every other non-neighbour colluding too; every one of the 2^4 splits of the target's
    honest neighbours into 'target survived' / 'target dropped' is run on the real clients (one replay
    of the same deterministic graph per split). Never t shares of both secrets; each honest neighbour
    answers exactly when t of its neighbours signed its list."""
    inputs = _inputs(11)
    probe = Round(_config(), range(N), round_id=30, policy=SecAggPolicy(), seed=graph_seed_label)
    probe.until_masked(inputs)
    graph, t = probe.server.graph, probe.config.t
    colluders = _best_placement(graph, t, 2)
    honest = sorted(set(graph[TARGET]) - colluders)
    best = (0, 0)
    for mask in range(2 ** len(honest)):
        drop_believers = {h for i, h in enumerate(honest) if mask >> i & 1}
        r = Round(_config(), range(N), round_id=30, policy=SecAggPolicy(), seed=graph_seed_label)
        r.until_masked(inputs)
        assert r.server.graph == graph  # the same graph, replayed
        seed_shares, key_shares, answered = _split_view(r, colluders, drop_believers)
        planned_seeds, planned_keys, planned_answering = _plan(graph, t, colluders, drop_believers)
        assert answered == planned_answering
        assert (len(seed_shares), len(key_shares)) == (planned_seeds, planned_keys)
        _assert_target_hidden(r, inputs, seed_shares, key_shares)
        best = max(best, (min(len(seed_shares), len(key_shares)), max(len(seed_shares), len(key_shares))))
    assert best[0] == t - 1  # the attacker's best split falls one share short: 2t - k - c = 2


def test_split_view_control_unmasks_when_colluders_exceed_the_policy():
    """The control of the test above: t = 4 at k = 6 (2t - k = 2, which a client with c_max = 1
    accepts) and 2 colluding neighbours: the attacker's best split gives t shares of both secrets and the
    target's input, exactly. The harness works; only the threshold rule stops it."""
    config = _config(threshold=4)
    policy = SecAggPolicy(corrupt_neighbours=1)
    inputs = _inputs(12)
    for label in (b"control-0", b"control-1", b"control-2", b"control-3"):
        probe = Round(config, range(N), round_id=31, policy=policy, seed=label)
        probe.until_masked(inputs)
        graph = probe.server.graph
        colluders = _best_placement(graph, 4, 2)
        honest = sorted(set(graph[TARGET]) - colluders)
        for mask in range(2 ** len(honest)):
            drop_believers = {h for i, h in enumerate(honest) if mask >> i & 1}
            if min(_plan(graph, 4, colluders, drop_believers)[:2]) >= 4:
                break
        else:
            continue
        r = Round(config, range(N), round_id=31, policy=policy, seed=label)
        r.until_masked(inputs)
        seed_shares, key_shares, _ = _split_view(r, colluders, drop_believers)
        assert len(seed_shares) >= 4 and len(key_shares) >= 4
        assert np.array_equal(r.strip_masks(TARGET, seed_shares, key_shares), inputs[TARGET])
        return
    pytest.fail("no graph gave the control attack a working split")


# --- W3: a graph the server cannot steer, floors on what it may propose ------------------------


def test_a_colluder_regrinding_its_bundle_cannot_choose_the_graph():
    """A colluder sees every honest bundle, then grinds its own bundle until the graph it can predict
    puts it next to the target. The graph that follows from the honest reveals is another one; the
    client computes it, and a reveal ground after the honest ones are known is caught (by the client and
    by the honest server)."""
    r = Round(_config(), range(N), round_id=3, policy=SecAggPolicy())
    colluder = 0
    honest = [c for c in r.ids if c != colluder]
    for c in honest:
        r.server.receive_advertise_keys(wire(r.clients[c].advertise_keys()))
    ctx, ids = r.context.to_bytes(), tuple(r.ids)

    def participants_with(bundle):
        entries = [ParticipantEntry.of(r.server.bundle(c)) for c in honest]
        entries.append(ParticipantEntry.of(bundle))
        return ParticipantSet(r.round_id, tuple(sorted(entries, key=lambda e: e.client_id)))

    key, credential = r.identities.keys[colluder], r.identities.credentials[colluder]
    guessed = {c: bytes(32) for c in honest}  # all it can know of the honest reveals: nothing
    for attempt in range(200):
        reveal = derive(b"grind", attempt)
        bundle = _bundle(r, colluder, signer=key, credential=credential, reveal=reveal)
        aimed_set = participants_with(bundle)
        aimed = neighbour_graph(graph_seed(ctx, aimed_set.digest(), tuple(guessed.get(c, reveal) for c in ids)), ids, K)
        if colluder in aimed[TARGET]:
            break
    else:
        pytest.fail("no bundle put the colluder next to the target in its own prediction")
    r.server.receive_advertise_keys(wire(bundle))  # a valid bundle: the honest server admits it
    participants = wire(r.server.close_advertise_keys())
    assert participants == aimed_set
    real = {}  # the honest reveals, as the server (and so the colluder) sees them
    for c in honest:
        message = wire(r.clients[c].reveal_seed(participants))
        r.server.receive_seed_reveal(message)
        real[c] = message.reveal

    # after the honest reveals, the colluder grinds a reveal that would put it next to the target
    for attempt in range(200):
        late = derive(b"late", attempt)
        late_graph = neighbour_graph(
            graph_seed(ctx, participants.digest(), tuple(real.get(c, late) for c in ids)), ids, K
        )
        if colluder in late_graph[TARGET] and late != reveal:
            break
    else:
        pytest.fail("no late reveal put the colluder next to the target")
    with pytest.raises(ProtocolViolation, match=f"reveal of client {colluder} does not open its commitment"):
        r.server.receive_seed_reveal(SeedReveal(r.round_id, colluder, late))
    r.server.receive_seed_reveal(SeedReveal(r.round_id, colluder, reveal))
    hoods = r.server.close_reveal_seed()
    assert r.server.graph != aimed  # what the colluder aimed at is not what it got
    target = r.clients[TARGET]
    late_hood = Neighbourhood(
        r.round_id, TARGET, tuple(real.get(c, late) for c in ids), tuple(hoods[TARGET].bundles)
    )  # (its bundles do not matter: refused first)
    with pytest.raises(ProtocolViolation, match=f"reveal of client {colluder} does not open its commitment"):
        target.share_keys(wire(late_hood))
    other = r.clients[honest[1]]  # given the honest neighbourhood, a client derives the server's graph
    other.share_keys(wire(hoods[honest[1]]))
    assert other.neighbours == r.server.graph[honest[1]]


def test_a_substituted_reveal_is_caught_by_its_commitment():
    """After seeing the reveals the server replaces one participant's (any position), leaves one out, or
    reorders them: each client that receives it refuses."""
    for position in (0, 4, N - 1):
        r = Round(_config(), range(N), round_id=3, policy=SecAggPolicy())
        r.advertise()
        hood = r.reveal()[TARGET]
        reveals = list(hood.reveals)
        reveals[position] = derive(b"ground", position)
        with pytest.raises(ProtocolViolation, match=f"reveal of client {position} does not open its commitment"):
            r.clients[TARGET].share_keys(wire(replace(hood, reveals=tuple(reveals))))
        assert r.clients[TARGET].stage is Stage.ABORTED
    hoods = r.neighbourhoods
    with pytest.raises(ProtocolViolation, match=f"{N - 1} reveals for {N} participants"):
        r.clients[0].share_keys(replace(hoods[0], reveals=hoods[0].reveals[:-1]))  # one participant left out
    reordered = hoods[1].reveals[1:] + hoods[1].reveals[:1]
    with pytest.raises(ProtocolViolation, match="reveal of client 0 does not open its commitment"):
        r.clients[1].share_keys(replace(hoods[1], reveals=reordered))


@pytest.mark.parametrize("change", ["other neighbours", "one missing", "one extra", "unsorted"])
def test_a_neighbourhood_other_than_the_graph_gives_is_refused(change):
    r = Round(_config(), range(N), round_id=3, policy=SecAggPolicy())
    r.advertise()
    hood = r.reveal()[TARGET]
    outsider = next(c for c in range(N) if c not in _neighbours(r) and c != TARGET)
    bundles = {
        "other neighbours": tuple(sorted(hood.bundles[1:] + (r.server.bundle(outsider),), key=lambda b: b.client_id)),
        "one missing": hood.bundles[1:],
        "one extra": tuple(sorted(hood.bundles + (r.server.bundle(outsider),), key=lambda b: b.client_id)),
        "unsorted": hood.bundles[::-1],
    }[change]
    with pytest.raises(ProtocolViolation, match="our neighbours are"):
        r.clients[TARGET].share_keys(replace(hood, bundles=bundles))
    assert r.clients[TARGET].stage is Stage.ABORTED


def test_participant_sets_the_policy_or_our_entry_forbid_are_refused():
    def advertised(policy=SecAggPolicy(), allowed=None):
        r = Round(_config(), range(N), round_id=2, policy=policy)
        if allowed is not None:  # a session bound to an announced set (phase 2 to phase 1's survivors)
            r.clients[TARGET] = r.session(TARGET, allowed=allowed)
        return r, r.advertise()

    def only(full, ids):
        return replace(full, entries=tuple(e for e in full.entries if e.client_id in ids))

    # floors: the default refuses 2 participants; a policy of 8 refuses 7 and accepts 8
    r, full = advertised()
    with pytest.raises(PolicyViolation, match="2 participants, below the policy's min_participants=3"):
        r.clients[TARGET].reveal_seed(only(full, {TARGET, 0}))
    r, full = advertised(SecAggPolicy(min_participants=8))
    with pytest.raises(PolicyViolation, match="7 participants, below the policy's min_participants=8"):
        r.clients[TARGET].reveal_seed(only(full, set(range(7))))
    r, full = advertised(SecAggPolicy(min_participants=8))
    assert r.clients[TARGET].reveal_seed(only(full, set(range(8)))).client_id == TARGET
    # our own entry: omitted, another digest, another graph commitment
    r, full = advertised()
    with pytest.raises(ProtocolViolation, match="own key bundle"):
        r.clients[TARGET].reveal_seed(only(full, set(range(N)) - {TARGET}))
    for field in ("bundle_digest", "graph_commitment"):
        r, full = advertised()
        altered = tuple(replace(e, **{field: bytes(32)}) if e.client_id == TARGET else e for e in full.entries)
        with pytest.raises(ProtocolViolation, match="own key bundle"):
            r.clients[TARGET].reveal_seed(replace(full, entries=altered))
    # malformed: unsorted, a repeated entry, more entries than the round was sized for
    r, full = advertised()
    with pytest.raises(ProtocolViolation, match="sorted by client id without repeats"):
        r.clients[TARGET].reveal_seed(replace(full, entries=full.entries[::-1]))
    r, full = advertised()
    with pytest.raises(ProtocolViolation, match="sorted by client id without repeats"):
        r.clients[TARGET].reveal_seed(
            replace(full, entries=tuple(sorted(full.entries + full.entries[:1], key=lambda e: e.client_id)))
        )
    r, full = advertised()
    padded = full.entries + tuple(ParticipantEntry(1000 + i, bytes(32), bytes(32), bytes(32)) for i in range(N))
    with pytest.raises(ProtocolViolation, match="sized for"):
        r.clients[TARGET].reveal_seed(replace(full, entries=padded))
    # phase 2 bound to the survivors of phase 1: anyone else listed is refused
    r, full = advertised(allowed=set(range(N)) - {3})
    with pytest.raises(ProtocolViolation, match=r"names \[3\], who may not take part"):
        r.clients[TARGET].reveal_seed(full)


def test_a_roster_shrunk_to_the_target_and_t_colluders_is_stopped_only_by_the_participant_floor():
    """Roster shrinking: the server runs the target's session with the target and t colluders only, so
    every neighbour of the target is a colluder. With a participant floor of t + 1 the target takes part
    and its input is recovered exactly (the control); with t + 2 it refuses before revealing anything.
    (The default floor is 3: a deployment must set it from its bound on colluding clients.)"""
    t = _config().t
    colluders = [0, 1, 2, 3, 4][:t]
    ids = [TARGET] + colluders
    inputs = _inputs(40, ids)
    r = Round(_config(), ids, round_id=40, policy=SecAggPolicy(min_participants=t + 1))
    r.until_masked(inputs)
    assert set(_neighbours(r)) == set(colluders)
    seed_shares, key_shares = _target_shares([], colluders, r)
    assert np.array_equal(r.strip_masks(TARGET, seed_shares, key_shares), inputs[TARGET])

    r = Round(_config(), ids, round_id=40, policy=SecAggPolicy(min_participants=t + 2))
    participants = r.advertise()
    with pytest.raises(PolicyViolation, match=f"{t + 1} participants, below the policy's min_participants={t + 2}"):
        r.clients[TARGET].reveal_seed(participants)


def test_survivor_lists_below_the_floor_or_with_strangers_are_refused():
    r, _ = _masked(round_id=8)
    with pytest.raises(ProtocolViolation, match="omits us"):
        r.clients[TARGET].consistency_check(SurvivorList(r.round_id, tuple(c for c in range(N) if c != TARGET)))
    r, _ = _masked(round_id=8)
    with pytest.raises(ProtocolViolation, match=r"outside the participant set: \[500\]"):
        r.clients[TARGET].consistency_check(SurvivorList(r.round_id, tuple(range(N)) + (500,)))
    r, _ = _masked(round_id=8)
    with pytest.raises(ProtocolViolation, match="sorted"):
        r.clients[TARGET].consistency_check(SurvivorList(r.round_id, tuple(range(N))[::-1]))
    # the floor: 8 refuses 7 survivors, accepts 8 (each list keeps all the target's neighbours)
    for size, refused in ((7, True), (8, False)):
        r = Round(_config(), range(N), round_id=8, policy=SecAggPolicy(min_survivors=8))
        r.until_masked(_inputs(8))
        keep = sorted(set(_neighbours(r)) | {TARGET})
        others = [c for c in range(N) if c not in keep]
        survivors = SurvivorList(r.round_id, tuple(sorted(keep + others[: size - len(keep)])))
        if refused:
            with pytest.raises(PolicyViolation, match="7 survivors, below the policy's min_survivors=8"):
                r.clients[TARGET].consistency_check(survivors)
        else:
            assert r.clients[TARGET].consistency_check(survivors).client_id == TARGET
    # t - 1 of our neighbours on the list (and everyone else): too few to help unmask
    r, _ = _masked(round_id=8)
    listed = set(_neighbours(r)[: r.config.t - 1]) | (set(range(N)) - set(_neighbours(r)))
    with pytest.raises(AggregationAborted, match="4 of our neighbours survived, fewer than t=5"):
        r.clients[TARGET].consistency_check(SurvivorList(r.round_id, tuple(sorted(listed))))


@pytest.mark.parametrize("k,t", [(2, 2), (3, 2), (6, 4), (11, 6)])
def test_weak_k_or_t_refused_by_the_default_policy(k, t):
    config = SecAggConfig(num_clients=N, vector_length=D, max_abs=10, num_neighbours=k, threshold=t)
    ids = make_identities([TARGET])
    with pytest.raises(PolicyViolation, match=f"threshold t={t} with k={k} neighbours"):
        ids.session(config, SessionContext.fresh(round_id=1), TARGET, SecAggPolicy())


def test_policy_floors_on_k_and_on_the_round_size():
    ids = make_identities([TARGET])
    context = SessionContext.fresh(round_id=1)
    small_k = SecAggConfig(num_clients=N, vector_length=D, max_abs=10, num_neighbours=3, threshold=3)
    with pytest.raises(PolicyViolation, match="k=3 neighbours is below the policy's min_neighbours=4"):
        ids.session(small_k, context, TARGET, SecAggPolicy(min_neighbours=4, corrupt_neighbours=0))
    assert ids.session(small_k, context, TARGET, SecAggPolicy(min_neighbours=3, corrupt_neighbours=2))
    small_round = SecAggConfig(num_clients=8, vector_length=D, max_abs=10, num_neighbours=7, threshold=6)
    with pytest.raises(PolicyViolation, match="sized for 8 clients, below the policy's min_participants=9"):
        ids.session(small_round, context, TARGET, SecAggPolicy(min_participants=9))
    with pytest.raises(ConfigError, match="min_participants must be >= 3"):
        SecAggPolicy(min_participants=2)
    with pytest.raises(ConfigError, match="min_survivors must be >= 3"):
        SecAggPolicy(min_survivors=2)


# --- W8: commitments and the output range ------------------------------------------------------


def _finish_with(r: Round, tamper=lambda c, response: response, *, silent=(), order=None):
    """Honest consistency check, then the unmask stage with `tamper` applied to each response; clients
    in `silent` drop at unmask; `order` is the order responses reach the server."""
    survivors = r.server.close_masked_input()
    for c in survivors.survivors:
        r.server.receive_consistency_signature(r.clients[c].consistency_check(survivors))
    requests = r.server.close_consistency_check()
    for c in order or sorted(requests):
        if c in requests and c not in silent:
            r.server.receive_unmask_response(tamper(c, r.clients[c].unmask(requests[c])))
    return r.server.finish()


def _shift_limb0(share: shamir.Share, delta: int, weight: int) -> shamir.Share:
    """The share moved so that, interpolated with weight `weight`, the secret's first limb moves by delta:
    the rebuilt secret stays well formed, only its value changes (a Lagrange-targeted offset)."""
    elements = share.elements().astype(np.int64)
    elements[0] = (int(elements[0]) + delta * pow(weight, shamir.PRIME - 2, shamir.PRIME)) % shamir.PRIME
    return replace(share, value=elements.astype(">u4").tobytes())


def _shift_owned(response: UnmaskResponse, kind: str, owner: int, points: list[int]) -> UnmaskResponse:
    items = getattr(response, kind)
    item = next(s for s in items if s.owner == owner)
    weight = int(shamir.lagrange_at_zero(np.array(points, dtype=np.uint64))[points.index(item.share.x)])
    shifted = OwnedShare(owner, _shift_limb0(item.share, 1, weight))
    return replace(response, **{kind: tuple(shifted if s is item else s for s in items)})


def test_a_shifted_self_mask_share_aborts_instead_of_a_wrong_sum():
    """One of exactly t holders of the target's self-mask seed shifts its share so that the rebuilt seed
    is another well-formed seed (it would silently unmask the target's input with the wrong mask):
    the server checks the rebuilt seed against the target's commitment and aborts."""
    r, _ = _masked(round_id=12)
    holders = list(_neighbours(r))
    silent, corrupt = holders[-1], holders[0]  # k - t = 1 holder drops: the server has exactly t shares
    points = [h + 1 for h in holders if h != silent]
    honest = {}

    def shift(c, response):
        if c == corrupt:
            honest["share"] = next(s.share for s in response.self_mask_shares if s.owner == TARGET)
            response = _shift_owned(response, "self_mask_shares", TARGET, points)
            honest["shifted"] = next(s.share for s in response.self_mask_shares if s.owner == TARGET)
        return response

    with pytest.raises(
        AggregationAborted,
        match=f"self-mask seed of client {TARGET} rebuilt from its shares does not match its commitment",
    ):
        _finish_with(r, shift, silent={silent})
    # the attack was a real one: the shifted shares rebuild a different, well-formed seed
    others = [shamir.Share(x, r.clients[x - 1]._held[TARGET].self_mask_share) for x in points if x - 1 != corrupt]
    assert shamir.combine([honest["shifted"]] + others, 5) != shamir.combine([honest["share"]] + others, 5)


def test_server_detects_a_corrupted_key_share():
    """A neighbour shifts its share of a dropped client's mask key (targeted, so the rebuilt key is a
    valid X25519 key): the recovered key is not the advertised one, and the round aborts."""
    config = _config()
    r = Round(config, range(N), round_id=9, policy=SecAggPolicy())
    r.advertise(), r.reveal(), r.share()
    for c in range(N):
        if c != TARGET:  # the target drops before uploading
            r.server.receive_masked_input(r.clients[c].masked_input(r.deliveries[c], np.ones(D, np.int64)))
    holders = list(_neighbours(r))
    corrupt = holders[0]
    points = [h + 1 for h in holders[: config.t]]  # the server rebuilds from the first t shares it receives

    def shift(c, response):
        return _shift_owned(response, "key_shares", TARGET, points) if c == corrupt else response

    order = holders + [c for c in range(N) if c not in holders]
    with pytest.raises(AggregationAborted, match=f"recovered mask key of dropped client {TARGET} does not match"):
        _finish_with(r, shift, order=order)


def test_a_dealer_masking_with_a_seed_other_than_it_committed_to_aborts():
    """The target commits to one self-mask seed, then shares and masks with another: the seed rebuilt from
    its shares does not open its commitment."""
    inputs = _inputs(13)
    r = Round(_config(), range(N), round_id=13, policy=SecAggPolicy())
    r.advertise(), r.reveal()
    r.clients[TARGET]._self_mask_seed = derive(b"another seed", 13)  # after the commitment was made
    r.share()
    r.mask(inputs)
    with pytest.raises(
        AggregationAborted,
        match=f"self-mask seed of client {TARGET} rebuilt from its shares does not match its commitment",
    ):
        _finish_with(r)


def test_a_dealer_masking_with_another_seed_than_it_shared_is_caught_by_the_range_check():
    """The target commits to and shares its seed, but masks with another: the server removes the shared
    seed's mask and what is left of the target's input is uniform over the ring, so some of the 64
    coordinates leave the range 12 inputs of max_abs 1000 can sum to (the 16-bit ring keeps one guard bit
    for d = 64: each stays in it with probability 24001/65536, all 64 with probability 1e-28)."""
    config = _config(vector_length=64)
    assert config.bits == 16
    inputs = _inputs(13, d=64)
    r = Round(config, range(N), round_id=13, policy=SecAggPolicy())
    r.advertise(), r.reveal(), r.share()
    r.clients[TARGET]._self_mask_seed = derive(b"another seed", 13)
    r.mask(inputs)
    with pytest.raises(AggregationAborted, match=r"the decoded sum leaves the range \+-12000"):
        _finish_with(r)


@pytest.mark.parametrize("trial", range(4))
def test_a_dealer_masking_with_another_seed_aborts_at_production_sizing(trial):
    """The federation's own sizing (max_abs_for: the largest inputs a 16-bit ring holds for 12 clients
    of length 32, with guard_bits(32) = 2 bits to spare) still leaves the range check its power: the junk
    that a dealer's other seed leaves is caught (it would pass with probability <= 2^-64)."""
    bits = 16
    max_abs = max_abs_for(N, bits, vector_length=D)
    assert max_abs == ((1 << 15) - 1) // (N << 2)
    config = _config(max_abs=max_abs, modulus_bits=bits)
    inputs = _inputs(14 + trial, max_abs=max_abs)
    r = Round(config, range(N), round_id=14 + trial, policy=SecAggPolicy(), seed=b"production sizing %d" % trial)
    r.advertise(), r.reveal(), r.share()
    r.clients[TARGET]._self_mask_seed = derive(b"another seed", 14 + trial)
    r.mask(inputs)
    with pytest.raises(AggregationAborted, match=r"leaves the range \+-%d" % (N * max_abs)):
        _finish_with(r)


def test_a_ring_without_guard_bits_is_refused_before_any_key_exists():
    """The sizing that made the range check blind (12 x 2730 = 32760 of the 16-bit ring's 32767: junk
    passed a coordinate with probability 1 - 15/65536) is refused by the config every client builds, naming
    the guard bits and the modulus it would need; one bit more is accepted."""
    no_headroom = ((1 << 15) - 1) // N
    with pytest.raises(
        ConfigError,
        match=r"modulus_bits=16 leaves no room for the range check.*2\^2 guard bits.*"
        r"modulus_bits >= 18",
    ):
        _config(max_abs=no_headroom, modulus_bits=16)
    assert _config(max_abs=no_headroom, modulus_bits=18).bits == 18
    assert _config(max_abs=no_headroom).bits == 18


def test_an_out_of_range_input_is_caught_by_the_output_range_check():
    """A hostile client crafts its MaskedInput directly (no to_ring check): max_abs + 1 in one coordinate,
    while every other client sends max_abs there. The sum, 12 x 1000 + 1, leaves the range and the round
    aborts; the same crafting with max_abs (the control) gives the exact sum."""
    bits = _config().bits

    def run(excess: int):
        inputs = {c: np.full(D, 1000, np.int64) for c in range(N)}
        r = Round(_config(), range(N), round_id=14, policy=SecAggPolicy())
        r.advertise(), r.reveal(), r.share()
        for c in range(N):
            if c == TARGET:
                real = r.clients[c].masked_input(r.deliveries[c], np.zeros(D, np.int64))
                crafted = np.zeros(D, np.int64)
                crafted[0] = 1000 + excess
                words = packing.unpack(real.payload, bits, D) + to_ring(crafted, bits)
                words &= np.uint64((1 << bits) - 1)
                r.server.receive_masked_input(wire(replace(real, payload=packing.pack(words, bits))))
            else:
                r.server.receive_masked_input(wire(r.clients[c].masked_input(r.deliveries[c], inputs[c])))
        return _finish_with(r)

    assert run(0).total.tolist() == [N * 1000] + [(N - 1) * 1000] * (D - 1)
    with pytest.raises(AggregationAborted, match=r"the decoded sum leaves the range \+-12000"):
        run(1)


# --- W10: invalid X25519 keys ---------------------------------------------------------------------

_P = 2**255 - 19
SMALL_ORDER = [
    0,
    1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
    _P - 1,
]
NON_CANONICAL = [_P, _P + 1, _P + SMALL_ORDER[2], 2**255 - 1, 2**256 - 1]


@pytest.mark.parametrize(
    "bad",
    [(u, "small-order") for u in SMALL_ORDER] + [(u, "canonical") for u in NON_CANONICAL],
    ids=lambda b: hex(b[0])[:10],
)
@pytest.mark.parametrize("field", ["mask_public_key", "cipher_public_key"])
def test_small_order_or_non_canonical_keys_are_refused_at_advertise(bad, field):
    u, reason = bad
    r = Round(_config(), range(N), round_id=15)
    honest = r.clients[TARGET].advertise_keys()
    forged = replace(honest, **{field: u.to_bytes(32, "little")})
    forged = replace(
        forged, signature=primitives.sign(r.identities.keys[TARGET], forged.signed_payload(r.context.to_bytes()))
    )
    with pytest.raises(ProtocolViolation, match=reason):
        r.server.receive_advertise_keys(wire(forged))
    r.server.receive_advertise_keys(honest)  # the honest bundle still enters


def test_a_valid_key_with_its_top_bit_set_is_refused_at_advertise():
    r = Round(_config(), range(N), round_id=15)
    honest = r.clients[TARGET].advertise_keys()
    flipped = honest.mask_public_key[:31] + bytes([honest.mask_public_key[31] | 0x80])
    forged = replace(honest, mask_public_key=flipped)
    forged = replace(
        forged, signature=primitives.sign(r.identities.keys[TARGET], forged.signed_payload(r.context.to_bytes()))
    )
    with pytest.raises(ProtocolViolation, match="not a canonical X25519 encoding"):
        r.server.receive_advertise_keys(forged)


@pytest.mark.parametrize("field", ["cipher_public_key", "mask_public_key"])
def test_a_small_order_key_relayed_by_a_hostile_server_is_refused_by_the_neighbour(field):
    """A server that skips the advertise check relays a colluder's validly signed bundle with a small-order
    key (u = 1). Each neighbour refuses with a typed error where it would agree on a key with it: the
    cipher key when it encrypts its shares, the mask key when it masks (the colluder delivered a share,
    so the neighbour would mask with it). Never an all-zero secret, which would make that mask public."""
    r = Round(_config(num_clients=N + 1), range(N), round_id=15, policy=SecAggPolicy())
    r.advertise()
    identity = primitives.generate_identity_key()
    credential = issue_credential(r.identities.authority_key, SYBIL, primitives.identity_public_bytes(identity))
    cipher = primitives.generate_agreement_key()
    keys = {"cipher_public_key": primitives.agreement_public_bytes(cipher), field: (1).to_bytes(32, "little")}
    colluder = _bundle(r, SYBIL, signer=identity, credential=credential, reveal=derive(b"colluder"), **keys)
    with pytest.raises(ProtocolViolation, match="small-order"):
        ServerSession(
            r.config, context=r.context, authority_public_key=r.identities.authority_public_key
        ).receive_advertise_keys(colluder)
    _, graph, hoods = _rogue_server(r, {SYBIL: colluder}, {SYBIL: derive(b"colluder")})
    victims = graph[SYBIL]
    if field == "cipher_public_key":
        for c in victims:
            with pytest.raises(ProtocolViolation, match="peer agreement key rejected"):
                r.clients[c].share_keys(wire(hoods[c]))
            assert r.clients[c].stage is Stage.ABORTED
        return
    sent = {c: r.clients[c].share_keys(wire(hood)) for c, hood in hoods.items()}
    for c in victims:
        secret = primitives.agree(cipher, r.server.bundle(c).cipher_public_key)
        key = primitives.derive_key(
            secret, purpose=primitives.PURPOSE_SHARE_ENCRYPTION, round_id=r.round_id, id_a=SYBIL, id_b=c
        )
        payload = SharePayload(SYBIL, c, bytes(44), bytes(44)).to_bytes()
        from_colluder = EncryptedShare(
            SYBIL, c, primitives.seal(key, payload, sender=SYBIL, receiver=c, round_id=r.round_id)
        )
        shares = [s for m in sent.values() for s in m.shares if s.receiver == c] + [from_colluder]
        delivery = ShareDelivery(r.round_id, c, tuple(sorted(shares, key=lambda s: s.sender)))
        with pytest.raises(ProtocolViolation, match="peer agreement key rejected"):
            r.clients[c].masked_input(wire(delivery), np.zeros(D, np.int64))
        assert r.clients[c].stage is Stage.ABORTED


# --- W11: signatures bound to run, phase, round and nonce -------------------------------------------


def _other_context(context: SessionContext, field: str) -> SessionContext:
    return {
        "run_id": replace(context, run_id=bytes(16)),
        "phase": replace(context, phase=context.phase + 1),
        "round_id": replace(context, round_id=context.round_id + 1),
        "nonce": replace(context, nonce=bytes(32)),
    }[field]


@pytest.mark.parametrize("field", ["run_id", "phase", "round_id", "nonce"])
def test_bundles_and_survivor_signatures_of_another_session_are_refused(field):
    """A bundle and a consistency signature the real clients made in another session (another run, phase,
    round or nonce), with the message header rewritten to this round: refused by the honest server at
    advertise, by a neighbour the hostile server hands the bundle to, and by a client checking the
    signatures in its unmask request (and by the honest server receiving the signature)."""
    r = Round(_config(), range(N), round_id=16, policy=SecAggPolicy())
    other = _other_context(r.context, field)
    victim = 3
    stale = replace(r.session(victim, context=other).advertise_keys(), round_id=r.round_id)
    with pytest.raises(AuthenticationError, match="signature did not verify"):
        r.server.receive_advertise_keys(wire(stale))
    r.advertise()
    _, graph, hoods = _rogue_server(r, {victim: stale}, {victim: derive(b"stale", field)})
    for c in graph[victim]:
        with pytest.raises(AuthenticationError, match="signature did not verify"):
            r.clients[c].share_keys(wire(hoods[c]))

    r2, _ = _masked(round_id=16)
    other = _other_context(r2.context, field)
    everyone = r2.server.close_masked_input().survivors
    assert everyone == tuple(range(N))
    sigs = _signatures(r2, SurvivorList(r2.round_id, everyone), [c for c in range(N) if c != victim])
    seed = r2.graph_seed()
    stale_sig = ConsistencySignature(
        r2.round_id,
        victim,
        primitives.sign(r2.identities.keys[victim], consistency_payload(other.to_bytes(), seed, everyone)),
    )
    with pytest.raises(AuthenticationError, match="signature did not verify"):
        r2.server.receive_consistency_signature(wire(stale_sig))
    asked = next(c for c in _neighbours(r2, victim) if c != TARGET)
    request = _request(r2, asked, everyone, {**sigs, victim: stale_sig})
    assert victim in [s.client_id for s in request.signatures]
    with pytest.raises(AuthenticationError, match="signature did not verify"):
        r2.clients[asked].unmask(wire(request))


def test_stage_messages_of_another_session_are_refused():
    """The participant set and the neighbourhood of another session of the same round (another nonce),
    replayed into this one: the client's own bundle is not in that set, and the other session's reveals
    do not open this session's commitments. A message of another round is refused on its header."""
    context = SessionContext.fresh(round_id=17)
    r = Round(_config(), range(N), context=context, policy=SecAggPolicy())
    old = Round(
        _config(), range(N), identities=r.identities, context=replace(context, nonce=bytes(32)), policy=SecAggPolicy()
    )
    old_set = old.advertise()
    old_hoods = old.reveal()
    participants = r.advertise()
    with pytest.raises(ProtocolViolation, match="own key bundle"):
        r.clients[TARGET].reveal_seed(old_set)
    r.clients[0].reveal_seed(participants)
    with pytest.raises(ProtocolViolation, match="does not open its commitment"):
        r.clients[0].share_keys(old_hoods[0])
    r.clients[1].reveal_seed(participants)
    with pytest.raises(ProtocolViolation, match="is for round 18, this is round 17"):
        r.clients[1].share_keys(replace(old_hoods[1], round_id=18, bundles=()))

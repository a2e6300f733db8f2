"""The bulk encodings and checks of the secure-aggregation hot path: they give exactly what the per-field code
gave (bytes, refusals, commitments) and the client's policy on consistency signatures past the t-th."""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import replace

import numpy as np
import pytest

from attacks.protocol_round import Round
from mrff_secure.errors import AuthenticationError, ProtocolViolation
from mrff_secure.secagg import messages as m
from mrff_secure.secagg import packing, primitives, shamir
from mrff_secure.secagg.config import SecAggConfig
from mrff_secure.secagg.graph import neighbour_graph, neighbours_of, ring_order
from mrff_secure.secagg.policy import SecAggPolicy
from mrff_secure.secagg.stages import Stage

N, K, D = 12, 6, 32  # t = 5


def _entries(n: int, seed: int = 0) -> tuple[m.ParticipantEntry, ...]:
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(10_000, n, replace=False)).tolist()
    return tuple(m.ParticipantEntry(c, os.urandom(32), os.urandom(32), os.urandom(32)) for c in ids)


def _reference_participant_set_bytes(round_id: int, entries) -> bytes:
    """The wire format written out field by field (module docstring of messages.py)."""
    out = struct.pack(">BBQ", primitives.PROTOCOL_VERSION, m.ParticipantSet.TAG, round_id)
    out += struct.pack(">I", len(entries))
    for e in entries:
        out += struct.pack(">I", e.client_id) + e.graph_commitment + e.bundle_digest + e.round_body_digest
    return out


def test_participant_set_decoded_from_bytes_gives_the_same_entries_columns_and_digest():
    entries = _entries(300)
    built = m.ParticipantSet(9, entries)
    data = built.to_bytes()
    assert data == _reference_participant_set_bytes(9, entries)
    decoded = m.ParticipantSet.from_bytes(data)
    assert decoded.client_ids == tuple(e.client_id for e in entries)
    assert decoded.digest() == hashlib.sha256(data).digest() == built.digest()
    assert decoded.graph_commitments() == b"".join(e.graph_commitment for e in entries)
    assert [decoded.entry_at(i) for i in (0, 137, 299)] == [entries[0], entries[137], entries[299]]
    table = decoded.table
    assert table["client_id"].tolist() == list(decoded.client_ids)
    assert bytes(table["round_body_digest"][5]) == entries[5].round_body_digest
    assert decoded.entries == entries and decoded == built
    assert decoded.to_bytes() == data
    shorter = replace(decoded, entries=decoded.entries[:-1])  # a hostile edit of a decoded set re-encodes
    assert shorter.to_bytes() == _reference_participant_set_bytes(9, entries[:-1])
    assert shorter.client_ids == decoded.client_ids[:-1]


def test_participant_set_entries_of_the_wrong_size_are_refused_when_encoded():
    bad = m.ParticipantEntry(3, bytes(31), bytes(32), bytes(32))
    with pytest.raises(ProtocolViolation, match="graph commitment must be 32 bytes"):
        m.ParticipantSet(1, (bad,)).to_bytes()
    with pytest.raises(ProtocolViolation, match="does not fit in u32"):
        m.ParticipantSet(1, (m.ParticipantEntry(2**32, bytes(32), bytes(32), bytes(32)),)).to_bytes()


@pytest.mark.parametrize("bad", [-1, 2**32, 1.0, "7"])
def test_id_lists_refuse_what_does_not_fit_in_u32(bad):
    with pytest.raises(ProtocolViolation, match="does not fit in u32"):
        m.SurvivorList(1, (1, bad, 3)).to_bytes()


def test_id_lists_round_trip_at_the_largest_values_and_refuse_a_short_body():
    ids = (0, 1, 2**31, 2**32 - 1)
    data = m.SurvivorList(4, ids).to_bytes()
    assert data[10:] == struct.pack(">5I", 4, *ids)
    assert m.SurvivorList.from_bytes(data).survivors == ids
    with pytest.raises(ProtocolViolation, match="list count exceeds the message size"):
        m.SurvivorList.from_bytes(data[:-1])


def test_neighbourhood_reveals_decode_to_the_same_bytes_and_refuse_a_short_reveal():
    reveals = tuple(os.urandom(32) for _ in range(50))
    hood = m.Neighbourhood(2, 7, reveals, ())
    decoded = m.Neighbourhood.from_bytes(hood.to_bytes())
    assert decoded.reveals == reveals and decoded.reveal_block() == b"".join(reveals)
    with pytest.raises(ProtocolViolation, match="seed reveal must be 32 bytes"):
        m.Neighbourhood(2, 7, reveals[:3] + (bytes(31),), ()).to_bytes()


def test_first_unopened_agrees_with_one_commitment_at_a_time():
    context = os.urandom(90)
    ids = np.array([3, 17, 400, 2**32 - 1], dtype=np.int64)
    secrets = [os.urandom(32) for _ in ids]
    commitments = [primitives.commitment(b"graph-seed", context, int(c), s) for c, s in zip(ids, secrets)]
    args = (b"graph-seed", context, ids, b"".join(secrets))
    assert primitives.first_unopened(*args, b"".join(commitments)) is None
    for wrong in (0, 2, 3):
        altered = list(commitments)
        altered[wrong] = bytes(32)
        assert primitives.first_unopened(*args, b"".join(altered)) == wrong
    # another purpose, context or id does not open the same commitments
    assert primitives.first_unopened(b"self-mask-seed", context, ids, b"".join(secrets), b"".join(commitments)) == 0
    assert primitives.first_unopened(b"graph-seed", context[1:], ids, b"".join(secrets), b"".join(commitments)) == 0
    assert primitives.first_unopened(b"graph-seed", context, ids + 1, b"".join(secrets), b"".join(commitments)) == 0


def test_ring_order_and_neighbours_of_agree_with_the_server_graph():
    seed = os.urandom(32)
    ids = tuple(sorted(np.random.default_rng(3).choice(5000, 201, replace=False).tolist()))
    graph = neighbour_graph(seed, ids, 22)
    ring = ring_order(seed, ids)
    assert sorted(ring) == list(ids) and all(isinstance(c, int) for c in ring)
    for c in ids[::20]:
        assert neighbours_of(seed, ids, 22, c) == graph[c]


@pytest.mark.parametrize("bits", [8, 16, 32, 64])
def test_byte_aligned_packing_is_the_bit_layout(bits):
    rng = np.random.default_rng(bits)
    values = rng.integers(0, 2**bits, 257, dtype=np.uint64) if bits < 64 else rng.integers(0, 2**63, 257, np.uint64)
    packed = packing.pack(values, bits)
    as_int = sum(int(v) << (i * bits) for i, v in enumerate(values.tolist()))  # value i at bits [i b, (i + 1) b)
    assert packed == as_int.to_bytes(packing.packed_size(len(values), bits), "little")
    assert np.array_equal(packing.unpack(packed, bits, len(values)), values)
    assert packing.pack(values.astype(primitives.word_dtype(bits)), bits) == packed
    if bits < 64:
        with pytest.raises(ValueError, match=f"does not fit in {bits} bits"):
            packing.pack(np.array([1, 2**bits], dtype=np.uint64), bits)
    with pytest.raises(ProtocolViolation, match="bytes, expected"):
        packing.unpack(packed[:-1], bits, len(values))


def test_split_many_shares_still_combine():
    secrets = [os.urandom(32), os.urandom(32)]
    xs = [5, 9, 11, 30, 31]
    shares = shamir.split_many(secrets, xs, 3)
    assert [row[0].x for row in shares] == xs
    for j, secret in enumerate(secrets):
        assert shamir.combine([shares[i][j] for i in (0, 2, 4)], 3) == secret
        assert shamir.combine([shares[i][j] for i in (1, 3, 4)], 3) == secret


# --- consistency signatures: verified until t verify ---------------------------------------


def _at_unmask() -> tuple[Round, int, m.UnmaskRequest]:
    config = SecAggConfig(num_clients=N, vector_length=D, max_abs=1000, num_neighbours=K)
    rng = np.random.default_rng(1)
    r = Round(config, range(N), round_id=3, policy=SecAggPolicy())
    r.until_masked({c: rng.integers(-1000, 1001, D) for c in range(N)})
    everyone = tuple(range(N))
    sigs = {c: r.clients[c].consistency_check(m.SurvivorList(r.round_id, everyone)) for c in range(N)}
    asked = 0
    neighbours = r.server.graph[asked]
    request = m.UnmaskRequest(r.round_id, asked, neighbours, (), tuple(sigs[v] for v in neighbours))
    assert len(request.signatures) == K > config.t
    return r, asked, request


def _forged(sig: m.ConsistencySignature) -> m.ConsistencySignature:
    return replace(sig, signature=bytes([sig.signature[0] ^ 1]) + sig.signature[1:])


def test_a_bad_consistency_signature_after_t_valid_ones_is_ignored():
    r, asked, request = _at_unmask()
    t = r.config.t
    sigs = request.signatures[:t] + tuple(_forged(s) for s in request.signatures[t:])
    response = r.clients[asked].unmask(replace(request, signatures=sigs))
    assert [s.owner for s in response.self_mask_shares] == list(request.survivors)
    assert r.clients[asked].stage is Stage.DONE


@pytest.mark.parametrize("position", [0, "t-1"])
def test_a_bad_consistency_signature_among_the_first_t_is_refused(position):
    r, asked, request = _at_unmask()
    where = 0 if position == 0 else r.config.t - 1
    sigs = list(request.signatures)
    sigs[where] = _forged(sigs[where])
    with pytest.raises(AuthenticationError, match="signature did not verify"):
        r.clients[asked].unmask(replace(request, signatures=tuple(sigs)))
    assert r.clients[asked].stage is Stage.ABORTED


def test_extra_signatures_past_t_are_still_checked_for_who_signed():
    r, asked, request = _at_unmask()
    t = r.config.t
    stranger = next(c for c in range(N) if c not in request.survivors and c != asked)
    foreign = replace(request.signatures[-1], client_id=stranger)  # past the t-th, from a non-neighbour
    with pytest.raises(ProtocolViolation, match=f"unexpected consistency signature from client {stranger}"):
        r.clients[asked].unmask(replace(request, signatures=request.signatures[:t] + (foreign,)))


def test_a_decoded_bundle_is_resent_as_received_and_an_edited_one_re_encoded():
    config = SecAggConfig(num_clients=N, vector_length=D, max_abs=1000, num_neighbours=K)
    r = Round(config, range(N), round_id=4, policy=SecAggPolicy())
    bundle = r.clients[0].advertise_keys()
    data = bundle.to_bytes()
    decoded = m.AdvertiseKeys.from_bytes(data)
    assert decoded == bundle and decoded.to_bytes() == data and decoded.digest() == bundle.digest()
    edited = replace(decoded, signature=bytes(64))
    assert edited.to_bytes() == replace(bundle, signature=bytes(64)).to_bytes() != data
    with pytest.raises(ProtocolViolation, match="signature must be 64 bytes"):
        replace(decoded, signature=bytes(63)).to_bytes()
    hood = m.Neighbourhood(4, 1, (bytes(32),), (decoded, edited))
    assert m.Neighbourhood.from_bytes(hood.to_bytes()).bundles == (bundle, edited)

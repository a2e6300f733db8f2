"""Neighbour graph from public randomness; typed messages and their fixed-width encoding."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrff_secure.errors import ProtocolViolation
from mrff_secure.secagg import messages as m
from mrff_secure.secagg import primitives
from mrff_secure.secagg.graph import graph_seed, neighbour_graph, neighbours_of
from mrff_secure.secagg.identity import ClientCredential
from mrff_secure.secagg.shamir import Share


@pytest.mark.parametrize("n", [3, 4, 5, 9, 10, 31, 64])
def test_graph_symmetric_with_k_neighbours(n):
    seed = os.urandom(32)
    for k in range(2, n):
        graph = neighbour_graph(seed, range(100, 100 + n), k)
        for u, neighbours in graph.items():
            assert u not in neighbours
            assert all(u in graph[v] for v in neighbours)
            assert neighbours == neighbours_of(seed, range(100, 100 + n), k, u)
        degrees = sorted(len(v) for v in graph.values())
        expected = min(k, n - 1)
        assert degrees[-1] == expected and degrees[1] == expected and degrees[0] >= expected - 1


def test_graph_seed_depends_on_context_participants_and_every_reveal():
    reveals = [os.urandom(32) for _ in range(20)]
    context, participants = os.urandom(60), os.urandom(32)
    seed = graph_seed(context, participants, reveals)
    assert seed == graph_seed(context, participants, list(reveals))
    assert seed != graph_seed(os.urandom(60), participants, reveals)
    assert seed != graph_seed(context, os.urandom(32), reveals)
    for i in (0, 7, 19):  # any one participant's reveal changes the graph: nobody who chose a bundle knew it
        changed = list(reveals)
        changed[i] = os.urandom(32)
        assert seed != graph_seed(context, participants, changed)
    assert neighbour_graph(seed, range(20), 4) != neighbour_graph(
        graph_seed(context, participants, reveals[::-1]), range(20), 4
    )


def _bundle(client: int) -> m.AdvertiseKeys:
    credential = ClientCredential(client, bytes([5]) * 32, bytes([6]) * 64)
    return m.AdvertiseKeys(
        3,
        client,
        bytes([1]) * 32,
        bytes([2]) * 32,
        bytes([3]) * 32,
        bytes([4]) * 32,
        credential,
        bytes([3]) * 64,
        bytes([14]) * 32,
    )


def _sample_messages() -> list[m.Message]:
    share = Share(5, bytes(range(44)))
    sig = m.ConsistencySignature(3, 4, bytes([1]) * 64)
    bundle = _bundle(4)
    return [
        bundle,
        m.ParticipantSet(
            3,
            (
                m.ParticipantEntry(4, bytes([7]) * 32, bytes([8]) * 32, bytes([14]) * 32),
                m.ParticipantEntry(9, bytes([9]) * 32, bytes([10]) * 32, bytes([14]) * 32),
            ),
        ),
        m.SeedReveal(3, 4, bytes([11]) * 32),
        m.Neighbourhood(3, 4, (bytes([12]) * 32, bytes([13]) * 32), (bundle, _bundle(9))),
        m.ShareKeys(3, 4, (m.EncryptedShare(4, 5, b"abc"), m.EncryptedShare(4, 6, b""))),
        m.ShareDelivery(3, 5, (m.EncryptedShare(4, 5, b"abc"),)),
        m.MaskedInput(3, 4, 20, 2, b"\x01\x02\x03\x04\x05"),
        m.SurvivorList(3, (1, 2, 3)),
        sig,
        m.UnmaskRequest(3, 4, (1, 2), (7,), (sig,)),
        m.UnmaskResponse(3, 4, (m.OwnedShare(1, share),), (m.OwnedShare(7, share), m.OwnedShare(8, share))),
        m.SurvivorList(2**64 - 1, ()),
    ]


@pytest.mark.parametrize("message", _sample_messages(), ids=lambda x: type(x).__name__)
def test_message_roundtrip(message):
    data = message.to_bytes()
    assert data[0] == primitives.PROTOCOL_VERSION and data[1] == message.TAG
    assert int.from_bytes(data[2:10], "big") == message.round_id
    assert type(message).from_bytes(data) == message
    assert m.decode(data) == message
    for cut in range(len(data)):
        with pytest.raises(ProtocolViolation):
            m.decode(data[:cut])
    with pytest.raises(ProtocolViolation):
        m.decode(data + b"\x00")


def test_header_checks():
    data = m.SurvivorList(3, (1,)).to_bytes()
    with pytest.raises(ProtocolViolation, match="version"):
        m.decode(bytes([primitives.PROTOCOL_VERSION + 1]) + data[1:])
    with pytest.raises(ProtocolViolation, match="tag"):
        m.decode(data[:1] + b"\xee" + data[2:])
    with pytest.raises(ProtocolViolation, match="expected AdvertiseKeys"):
        m.AdvertiseKeys.from_bytes(data)


def test_known_encoding():
    data = m.SurvivorList(0x0102, (7, 9)).to_bytes()
    assert data.hex() == "03060000000000000102000000020000000700000009"  # version 3


def test_writer_refuses_wrong_field_sizes():
    credential = ClientCredential(4, bytes(32), bytes(64))
    with pytest.raises(ProtocolViolation):
        m.AdvertiseKeys(3, 4, bytes(31), bytes(32), bytes(32), bytes(32), credential, bytes(64), bytes(32)).to_bytes()
    with pytest.raises(ProtocolViolation):
        m.AdvertiseKeys(3, 4, bytes(32), bytes(32), bytes(31), bytes(32), credential, bytes(64), bytes(32)).to_bytes()
    with pytest.raises(ProtocolViolation, match="round body digest"):
        m.AdvertiseKeys(3, 4, bytes(32), bytes(32), bytes(32), bytes(32), credential, bytes(64), bytes(31)).to_bytes()
    with pytest.raises(ProtocolViolation):
        m.SeedReveal(3, 4, bytes(33)).to_bytes()
    with pytest.raises(ProtocolViolation):
        m.SurvivorList(3, (-1,)).to_bytes()
    with pytest.raises(ProtocolViolation):
        m.SurvivorList(2**64, ()).to_bytes()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash_the_decoder(data):
    try:
        m.decode(data)
    except ProtocolViolation:
        pass


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(_sample_messages()), st.integers(0, 10**6), st.integers(0, 255))
def test_bit_flips_are_decoded_or_rejected(message, position, value):
    data = bytearray(message.to_bytes())
    data[position % len(data)] = value
    try:
        m.decode(bytes(data))
    except ProtocolViolation:
        pass


def test_protocol_known_answers(vectors):
    """The hardened protocol's encodings from fixed keys (vectors/protocol.json, make_vectors.py): the
    session context, credentials, commitments, key bundles and their digests, the participant set, the
    graph seed and graph, the consistency payload, the stage-1 messages. Rebuilt from the vector's
    inputs, then each message decoded, re-encoded and its signatures checked."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from mrff_secure.secagg import primitives
    from mrff_secure.secagg.context import SessionContext
    from mrff_secure.secagg.identity import issue_credential, verify_credential

    data = vectors("protocol")
    c = data["context"]
    context = SessionContext(
        bytes.fromhex(c["run_id"]),
        c["phase"],
        c["round_id"],
        bytes.fromhex(c["nonce"]),
        bytes.fromhex(c["round_body_digest"]),
    )
    ctx = context.to_bytes()
    assert ctx.hex() == c["bytes"]
    authority = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(data["authority_key"]))
    assert primitives.identity_public_bytes(authority).hex() == data["authority_public_key"]
    bundles, reveals, entries = [], [], []
    for case in data["clients"]:
        client = case["client_id"]
        identity = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(case["identity_key"]))
        credential = issue_credential(
            authority, client, primitives.identity_public_bytes(identity), expires_at=data["credential_expires_at"]
        )
        assert credential.to_bytes().hex() == case["credential"]
        reveal = bytes.fromhex(case["reveal"])
        keys = [
            primitives.agreement_public_bytes(primitives.agreement_key_from_bytes(bytes.fromhex(case[name])))
            for name in ("cipher_key", "mask_key")
        ]
        unsigned = m.AdvertiseKeys(
            context.round_id,
            client,
            *keys,
            primitives.commitment(m.PURPOSE_GRAPH_SEED, ctx, client, reveal),
            primitives.commitment(m.PURPOSE_SELF_MASK_SEED, ctx, client, bytes.fromhex(case["self_mask_seed"])),
            credential,
            bytes(64),
            context.round_body_digest,
        )
        bundle = m.AdvertiseKeys(
            **{**unsigned.__dict__, "signature": primitives.sign(identity, unsigned.signed_payload(ctx))}
        )
        assert bundle.to_bytes().hex() == case["bundle"]
        assert bundle.digest().hex() == case["digest"]
        parsed = m.AdvertiseKeys.from_bytes(bytes.fromhex(case["bundle"]))
        assert parsed == bundle
        certified = verify_credential(bytes.fromhex(data["authority_public_key"]), parsed.credential, client_id=client)
        primitives.verify(certified, parsed.signature, parsed.signed_payload(ctx))
        bundles.append(bundle)
        reveals.append(reveal)
        entries.append(m.ParticipantEntry(client, bundle.graph_commitment, bundle.digest(), context.round_body_digest))
    participants = m.ParticipantSet(context.round_id, tuple(entries))
    assert participants.to_bytes().hex() == data["participant_set"]["bytes"]
    assert participants.digest().hex() == data["participant_set"]["digest"]
    assert m.ParticipantSet.from_bytes(participants.to_bytes()) == participants
    assert m.SeedReveal(context.round_id, 3, reveals[0]).to_bytes().hex() == data["seed_reveal"]
    seed = graph_seed(ctx, participants.digest(), reveals)
    assert seed.hex() == data["graph_seed"]
    graph = neighbour_graph(seed, participants.client_ids, 2)
    assert {str(u): list(v) for u, v in graph.items()} == data["graph_k2"]
    survivors = tuple(data["consistency"]["survivors"])
    payload = m.consistency_payload(ctx, seed, survivors)
    assert payload.hex() == data["consistency"]["payload"]
    primitives.verify(
        bundles[0].credential.identity_public_key, bytes.fromhex(data["consistency"]["signature_by_3"]), payload
    )
    hood = m.Neighbourhood(context.round_id, 3, tuple(reveals), tuple(b for b in bundles if b.client_id in graph[3]))
    assert hood.to_bytes().hex() == data["neighbourhood_of_3"]
    assert m.Neighbourhood.from_bytes(hood.to_bytes()) == hood
    for case in data["invalid"]:
        with pytest.raises(ProtocolViolation, match=case["error"]):
            m.decode(bytes.fromhex(case["bytes"]))

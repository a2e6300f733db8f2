"""Regenerate the known-answer vectors (run from the repo root: python tests/secagg/vectors/make_vectors.py).

The vectors pin the wire-level behaviour: a change that alters them changes the
protocol and must bump PROTOCOL_VERSION. Each file has generate / verify / invalid sets.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mrff_secure.secagg import messages, packing, primitives, shamir
from mrff_secure.secagg.context import SessionContext
from mrff_secure.secagg.encoding import to_ring
from mrff_secure.secagg.graph import graph_seed, neighbour_graph
from mrff_secure.secagg.identity import issue_credential

HERE = Path(__file__).parent
CREDENTIAL_EXPIRES_AT = 4_102_444_800  # 2100-01-01 UTC: the vectors' credentials are fixed bytes


def shamir_vectors() -> dict:
    generate = []
    for index, (n, t) in enumerate([(3, 2), (5, 3), (7, 7), (10, 4)]):
        seed = bytes([index]) * 32
        secret = bytes(range(index, index + 32))
        shares = shamir.split(secret, n, t, random=primitives.keystream_random(seed))
        generate.append(
            {
                "seed": seed.hex(),
                "secret": secret.hex(),
                "n": n,
                "t": t,
                "shares": [{"x": s.x, "value": s.value.hex()} for s in shares],
            }
        )
    verify = [{"t": g["t"], "secret": g["secret"], "shares": g["shares"][::-1][: g["t"]]} for g in generate]
    first = generate[1]
    invalid = [
        {"reason": "too few shares", "t": 3, "shares": first["shares"][:2]},
        {"reason": "repeated x", "t": 3, "shares": [first["shares"][0]] * 3},
        {"reason": "x out of field", "t": 1, "shares": [{"x": shamir.PRIME, "value": first["shares"][0]["value"]}]},
    ]
    return {"field": "GF(2^31 - 1), 11 limbs of 3 bytes", "generate": generate, "verify": verify, "invalid": invalid}


def packing_vectors() -> dict:
    generate = []
    for bits, values in [
        (1, [1, 0, 1, 1, 0, 0, 0, 1, 1]),
        (3, [0, 7, 5, 2]),
        (12, [0xABC, 0x123, 0xFFF]),
        (17, [0, 1, 131071, 65536]),
        (32, [0xDEADBEEF, 1]),
        (62, [2**62 - 1, 12345]),
        (64, [2**64 - 1, 0]),
    ]:
        generate.append(
            {
                "bits": bits,
                "values": [str(v) for v in values],
                "packed": packing.pack(np.array(values, dtype=np.uint64), bits).hex(),
            }
        )
    invalid = [
        {"reason": "wrong length", "bits": 12, "count": 3, "packed": "bc3a12"},
        {"reason": "non-zero padding", "bits": 3, "count": 2, "packed": "ff"},
    ]
    return {
        "order": "value i at bits [i*b, (i+1)*b), least significant bit first",
        "generate": generate,
        "invalid": invalid,
    }


def encoding_vectors() -> dict:
    ring = [
        {"bits": b, "q": q, "ring": [str(int(v)) for v in to_ring(np.array(q, dtype=np.int64), b)]}
        for b, q in [(8, [-128, -1, 0, 1, 127]), (33, [-(2**32), -5, 0, 2**32 - 1]), (62, [-(2**61), 2**61 - 1])]
    ]
    return {"ring": ring}


def protocol_vectors() -> dict:
    """The session context, credentials, commitments, key bundles, participant set, graph seed and graph,
    consistency payload and the stage-1 messages, all from fixed keys and bytes (Ed25519 is deterministic)."""
    context = SessionContext(bytes(range(16)), 1, 0x0102030405060708, bytes(range(32, 64)), bytes(range(64, 96)))
    ctx = context.to_bytes()
    authority = Ed25519PrivateKey.from_private_bytes(bytes([0xA0]) * 32)
    bundles, entries, reveals, identities, secrets = [], [], [], [], []
    for client in (3, 7, 11, 20):
        identity = Ed25519PrivateKey.from_private_bytes(bytes([client]) * 32)
        credential = issue_credential(
            authority, client, primitives.identity_public_bytes(identity), expires_at=CREDENTIAL_EXPIRES_AT
        )
        cipher = primitives.agreement_key_from_bytes(bytes([client + 100]) * 32)
        mask = primitives.agreement_key_from_bytes(bytes([client + 150]) * 32)
        reveal, self_seed = bytes([client + 1]) * 32, bytes([client + 2]) * 32
        secrets.append(
            {
                "identity_key": (bytes([client]) * 32).hex(),
                "cipher_key": (bytes([client + 100]) * 32).hex(),
                "mask_key": (bytes([client + 150]) * 32).hex(),
                "self_mask_seed": self_seed.hex(),
            }
        )
        unsigned = messages.AdvertiseKeys(
            context.round_id,
            client,
            primitives.agreement_public_bytes(cipher),
            primitives.agreement_public_bytes(mask),
            primitives.commitment(messages.PURPOSE_GRAPH_SEED, ctx, client, reveal),
            primitives.commitment(messages.PURPOSE_SELF_MASK_SEED, ctx, client, self_seed),
            credential,
            bytes(64),
            context.round_body_digest,
        )
        bundle = messages.AdvertiseKeys(
            **{**unsigned.__dict__, "signature": primitives.sign(identity, unsigned.signed_payload(ctx))}
        )
        bundles.append(bundle)
        identities.append(identity)
        reveals.append(reveal)
        entries.append(messages.ParticipantEntry.of(bundle))
    participants = messages.ParticipantSet(context.round_id, tuple(entries))
    seed = graph_seed(ctx, participants.digest(), reveals)
    graph = neighbour_graph(seed, participants.client_ids, 2)
    survivors = (3, 7, 20)
    payload = messages.consistency_payload(ctx, seed, survivors)
    signature = primitives.sign(identities[0], payload)
    neighbourhood = messages.Neighbourhood(
        context.round_id, 3, tuple(reveals), tuple(b for b in bundles if b.client_id in graph[3])
    )
    return {
        "context": {
            "run_id": context.run_id.hex(),
            "phase": context.phase,
            "round_id": context.round_id,
            "nonce": context.nonce.hex(),
            "round_body_digest": context.round_body_digest.hex(),
            "bytes": ctx.hex(),
        },
        "authority_key": (bytes([0xA0]) * 32).hex(),
        "authority_public_key": primitives.identity_public_bytes(authority).hex(),
        "credential_expires_at": CREDENTIAL_EXPIRES_AT,
        "clients": [
            {
                "client_id": b.client_id,
                **secret,
                "reveal": r.hex(),
                "credential": b.credential.to_bytes().hex(),
                "bundle": b.to_bytes().hex(),
                "digest": b.digest().hex(),
            }
            for b, r, secret in zip(bundles, reveals, secrets)
        ],
        "participant_set": {"bytes": participants.to_bytes().hex(), "digest": participants.digest().hex()},
        "seed_reveal": messages.SeedReveal(context.round_id, 3, reveals[0]).to_bytes().hex(),
        "graph_seed": seed.hex(),
        "graph_k2": {str(c): list(v) for c, v in graph.items()},
        "consistency": {"survivors": list(survivors), "payload": payload.hex(), "signature_by_3": signature.hex()},
        "neighbourhood_of_3": neighbourhood.to_bytes().hex(),
        "invalid": [
            {
                "reason": "participant count beyond the message",
                "error": "list count exceeds the message size",
                "bytes": participants.to_bytes()[:10].hex() + "000000ff",
            },
            {"reason": "truncated bundle", "error": "truncated", "bytes": bundles[0].to_bytes()[:-1].hex()},
            {
                "reason": "trailing byte",
                "error": "1 trailing bytes",
                "bytes": messages.SeedReveal(context.round_id, 3, reveals[0]).to_bytes().hex() + "00",
            },
        ],
    }


def main() -> None:
    for name, build in [
        ("shamir", shamir_vectors),
        ("packing", packing_vectors),
        ("encoding", encoding_vectors),
        ("protocol", protocol_vectors),
    ]:
        (HERE / f"{name}.json").write_text(json.dumps(build(), indent=1) + "\n")


if __name__ == "__main__":
    main()

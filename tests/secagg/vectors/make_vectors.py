"""Regenerate the known-answer vectors (run from the repo root: python tests/secagg/vectors/make_vectors.py).

The vectors pin the wire-level behaviour: a change that alters them changes the
protocol and must bump PROTOCOL_VERSION. Each file has generate / verify / invalid sets.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mrff_secure.secagg import packing, primitives, shamir
from mrff_secure.secagg.encoding import quantize, to_ring

HERE = Path(__file__).parent


def shamir_vectors() -> dict:
    generate = []
    for index, (n, t) in enumerate([(3, 2), (5, 3), (7, 7), (10, 4)]):
        seed = bytes([index]) * 32
        secret = bytes(range(index, index + 32))
        shares = shamir.split(secret, n, t, random=primitives.keystream_random(seed))
        generate.append({"seed": seed.hex(), "secret": secret.hex(), "n": n, "t": t,
                         "shares": [{"x": s.x, "value": s.value.hex()} for s in shares]})
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
    for bits, values in [(1, [1, 0, 1, 1, 0, 0, 0, 1, 1]), (3, [0, 7, 5, 2]), (12, [0xABC, 0x123, 0xFFF]),
                         (17, [0, 1, 131071, 65536]), (32, [0xDEADBEEF, 1]), (62, [2**62 - 1, 12345]),
                         (64, [2**64 - 1, 0])]:
        generate.append({"bits": bits, "values": [str(v) for v in values],
                         "packed": packing.pack(np.array(values, dtype=np.uint64), bits).hex()})
    invalid = [
        {"reason": "wrong length", "bits": 12, "count": 3, "packed": "bc3a12"},
        {"reason": "non-zero padding", "bits": 3, "count": 2, "packed": "ff"},
    ]
    return {"order": "value i at bits [i*b, (i+1)*b), least significant bit first", "generate": generate,
            "invalid": invalid}


def encoding_vectors() -> dict:
    generate = []
    for seed, clip, levels in [(0, 1.0, 255), (1, 0.5, 2**15), (2, 2.0, 7)]:
        x = np.linspace(-2.5, 2.5, 11)
        q = quantize(x, clip=clip, levels=levels, rng=np.random.default_rng(seed))
        generate.append({"rng": f"numpy PCG64 seed {seed}", "seed": seed, "clip": clip, "levels": levels,
                         "x": x.tolist(), "q": q.tolist()})
    ring = [{"bits": b, "q": q, "ring": [str(int(v)) for v in to_ring(np.array(q, dtype=np.int64), b)]}
            for b, q in [(8, [-128, -1, 0, 1, 127]), (33, [-(2**32), -5, 0, 2**32 - 1]), (62, [-(2**61), 2**61 - 1])]]
    return {"generate": generate, "ring": ring}


def main() -> None:
    for name, build in [("shamir", shamir_vectors), ("packing", packing_vectors), ("encoding", encoding_vectors)]:
        (HERE / f"{name}.json").write_text(json.dumps(build(), indent=1) + "\n")


if __name__ == "__main__":
    main()

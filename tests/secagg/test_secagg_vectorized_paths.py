"""The vectorized and object-reusing paths give exactly what the textbook code gives: Shamir share bytes of the
polynomial evaluation (float64 matrix product over the points' powers) against Horner's rule in Python integers,
the batched Lagrange weights against the per-point formula, split_values against split_many, a share cipher object
against its key; refusals kept."""

from __future__ import annotations

import numpy as np
import pytest

from mrff_secure.errors import AuthenticationError, SecAggError
from mrff_secure.secagg import primitives, shamir

P = shamir.PRIME


def _reference_shares(secrets: list[bytes], xs: list[int], t: int, seed: bytes) -> list[list[bytes]]:
    """Horner's rule in Python integers, limb by limb, with the coefficients split_many draws from `seed`."""
    draw = primitives.keystream_random(seed)
    limbs = [shamir._secret_to_limbs(s).tolist() for s in secrets]  # (secrets, limbs)
    words = np.frombuffer(draw(8 * (t - 1) * len(secrets) * shamir.NUM_LIMBS), dtype="<u8")
    coefficients = (words % np.uint64(P)).reshape(t - 1, len(secrets), shamir.NUM_LIMBS).tolist()
    out = []
    for x in xs:
        row = []
        for j in range(len(secrets)):
            elements = []
            for limb in range(shamir.NUM_LIMBS):
                acc = 0
                for degree in range(t - 2, -1, -1):
                    acc = (acc * x + coefficients[degree][j][limb]) % P
                elements.append((acc * x + limbs[j][limb]) % P)
            row.append(b"".join(v.to_bytes(4, "big") for v in elements))
        out.append(row)
    return out


def _reference_lagrange(xs: list[int]) -> list[int]:
    weights = []
    for i, xi in enumerate(xs):
        numerator, denominator = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                numerator = numerator * xj % P
                denominator = denominator * (xj - xi) % P
        weights.append(numerator * pow(denominator, P - 2, P) % P)
    return weights


CASES = [(1, 1), (1, 4), (2, 3), (5, 5), (13, 22), (53, 80), (130, 200)]


@pytest.mark.parametrize(("t", "n"), CASES)
def test_shares_are_horners_bytes_at_small_and_large_points(t, n):
    rng = np.random.default_rng(t * 1000 + n)
    secrets = [rng.bytes(32), bytes(32), b"\xff" * 32]
    for xs in (list(range(1, n + 1)), sorted((P - 1 - rng.choice(2**31 - 2, n, replace=False)).tolist())):
        seed = rng.bytes(32)
        expected = _reference_shares(secrets, xs, t, seed)
        values = shamir.split_values(secrets, xs, t, random=primitives.keystream_random(seed))
        assert values == expected
        shares = shamir.split_many(secrets, xs, t, random=primitives.keystream_random(seed))
        assert [[s.value for s in row] for row in shares] == expected
        assert [[s.x for s in row] for row in shares] == [[x] * len(secrets) for x in xs]
        for j, secret in enumerate(secrets):
            assert shamir.combine([row[j] for row in shares[::-1]], t) == secret


@pytest.mark.parametrize("t", [1, 2, 3, 17, 53, 64, 65, 200])
def test_lagrange_weights_are_the_per_point_formula(t):
    rng = np.random.default_rng(t)
    for xs in (list(range(1, t + 1)), (rng.choice(2**31 - 2, t, replace=False) + 1).tolist()):
        assert shamir.lagrange_at_zero(np.array(xs, dtype=np.uint64)).tolist() == _reference_lagrange(xs)


def test_powers_are_modular_powers():
    points = np.array([1, 2, 3, 12345, P - 1, P - 2], dtype=np.uint64)
    for count in (1, 2, 3, 7, 8, 53, 64, 65):
        expected = [[pow(int(x), j, P) for j in range(count)] for x in points.tolist()]
        assert shamir._powers(points, count).tolist() == expected


def test_refusals_are_kept():
    secret = bytes(range(32))
    with pytest.raises(SecAggError, match="distinct"):
        shamir.split_values([secret], [3, 5, 3], 2)
    with pytest.raises(SecAggError, match="evaluation points"):
        shamir.split_values([secret], [0, 1], 2)
    with pytest.raises(SecAggError, match="evaluation points"):
        shamir.split_values([secret], [1, P], 2)
    with pytest.raises(SecAggError, match="threshold"):
        shamir.split_values([secret], [1, 2], 3)
    with pytest.raises(SecAggError, match="secret must be 32 bytes"):
        shamir.split_values([secret[:31]], [1, 2], 2)
    with pytest.raises(SecAggError, match="distinct and non-zero"):
        shamir.lagrange_at_zero(np.array([4, 4], dtype=np.uint64))
    shares = shamir.split_many([secret], [1, 2, 3], 2)
    with pytest.raises(SecAggError, match="need 2 shares"):
        shamir.combine([shares[0][0]], 2)
    with pytest.raises(SecAggError, match="distinct"):
        shamir.combine([shares[0][0], shares[0][0]], 2)
    one_of_two = shamir.split_many([secret], [1, 2, 3], 3)
    with pytest.raises(SecAggError, match="valid secret"):  # too few shares interpolate garbage, nearly surely
        shamir.combine([one_of_two[0][0], one_of_two[1][0]], 2)


def test_a_share_cipher_object_seals_and_opens_as_its_key_does():
    key = bytes(range(32))
    cipher = primitives.share_cipher(key)
    plaintext = bytes(range(96))
    by_key = primitives.seal(key, plaintext, sender=4, receiver=9, round_id=7, random=primitives.keystream_random(key))
    by_cipher = primitives.seal(
        cipher, plaintext, sender=4, receiver=9, round_id=7, random=primitives.keystream_random(key)
    )
    assert by_cipher == by_key
    assert primitives.open_sealed(cipher, by_key, sender=4, receiver=9, round_id=7) == plaintext
    tampered = by_key[:-1] + bytes([by_key[-1] ^ 1])
    for wrong in (
        dict(sealed=tampered, sender=4, receiver=9, round_id=7),
        dict(sealed=by_key, sender=9, receiver=4, round_id=7),
        dict(sealed=by_key, sender=4, receiver=9, round_id=8),
        dict(sealed=by_key[:27], sender=4, receiver=9, round_id=7),
    ):
        with pytest.raises(AuthenticationError, match="did not verify"):
            primitives.open_sealed(cipher, **wrong)
    with pytest.raises(AuthenticationError, match="did not verify"):
        primitives.open_sealed(primitives.share_cipher(bytes(32)), by_key, sender=4, receiver=9, round_id=7)

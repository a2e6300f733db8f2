"""Mask arithmetic in Z_{2^b}: the self mask and the signed pairwise masks, as pure functions.

Client u uploads y_u = x_u + PRG(b_u) + sum_v sign(u, v) * PRG(s_uv) mod 2^b,
with sign(u, v) = +1 if u < v else -1, so pairwise masks cancel between two
survivors. Arithmetic runs in the word dtype (uint32 or uint64) with natural
wrap-around, which is exact mod 2^b because 2^b divides the word modulus;
results are reduced to b bits at the end.
"""

from __future__ import annotations

import numpy as np

from mrff_secure.secagg.primitives import (
    PURPOSE_PAIRWISE_MASK,
    PURPOSE_SELF_MASK,
    derive_key,
    expand_mask,
    word_dtype,
)


def self_mask(seed: bytes, *, round_id: int, client_id: int, length: int, modulus_bits: int) -> np.ndarray:
    """PRG(b_u): the self mask of one client from its 32-byte seed. (length,) word dtype."""
    key = derive_key(seed, purpose=PURPOSE_SELF_MASK, round_id=round_id, id_a=client_id, id_b=client_id)
    return expand_mask(key, length, modulus_bits)


def pairwise_mask(
    shared_secret: bytes, *, round_id: int, id_a: int, id_b: int, length: int, modulus_bits: int
) -> np.ndarray:
    """PRG(s_ab) from the X25519 secret of a pair; the same for (a, b) and (b, a). (length,) word dtype."""
    key = derive_key(shared_secret, purpose=PURPOSE_PAIRWISE_MASK, round_id=round_id, id_a=id_a, id_b=id_b)
    return expand_mask(key, length, modulus_bits)


def apply_signed(acc: np.ndarray, mask: np.ndarray, *, owner: int, peer: int) -> None:
    """acc += sign(owner, peer) * mask, in place, with wrap-around."""
    if owner < peer:
        acc += mask
    else:
        acc -= mask


def reduce(values: np.ndarray, modulus_bits: int) -> np.ndarray:
    """Reduce word-dtype values mod 2^b, in place, and return them."""
    bits = values.dtype.itemsize * 8
    if modulus_bits < bits:
        values &= values.dtype.type((1 << modulus_bits) - 1)
    return values


def zeros(length: int, modulus_bits: int) -> np.ndarray:
    return np.zeros(length, dtype=word_dtype(modulus_bits))

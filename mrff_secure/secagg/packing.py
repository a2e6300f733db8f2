"""Bit-packing of ring elements to exactly b bits each, so uploads cost b bits per value, not 64.

Layout: value i occupies bits [i*b, (i+1)*b) of the byte string, least
significant bit first (little-endian bit and byte order); the last byte is
zero-padded.
"""

from __future__ import annotations

import numpy as np

from mrff_secure.errors import ProtocolViolation


def packed_size(count: int, bits: int) -> int:
    """Bytes needed for `count` values of `bits` bits."""
    return (count * bits + 7) // 8


def pack(values: np.ndarray, bits: int) -> bytes:
    """Pack unsigned values < 2^bits (1 <= bits <= 64) into packed_size(len, bits) bytes."""
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be in [1, 64], got {bits}")
    words = np.ascontiguousarray(np.asarray(values).astype("<u8"))  # (n,)
    if bits < 64 and words.size and int(words.max()) >> bits:
        raise ValueError(f"a value does not fit in {bits} bits")
    bit_matrix = np.unpackbits(words.view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")  # (n, 64)
    return np.packbits(bit_matrix[:, :bits].reshape(-1), bitorder="little").tobytes()


def unpack(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of pack; raise ProtocolViolation if the length or the padding is wrong. (count,) uint64."""
    if not 1 <= bits <= 64:
        raise ProtocolViolation(f"bits must be in [1, 64], got {bits}")
    if len(data) != packed_size(count, bits):
        raise ProtocolViolation(f"packed vector has {len(data)} bytes, expected {packed_size(count, bits)}")
    stream = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")  # (8 * bytes,)
    if stream[count * bits:].any():
        raise ProtocolViolation("packed vector has non-zero padding bits")
    bit_matrix = np.zeros((count, 64), dtype=np.uint8)
    bit_matrix[:, :bits] = stream[: count * bits].reshape(count, bits)
    return np.packbits(bit_matrix, axis=1, bitorder="little").reshape(-1).view("<u8").astype(np.uint64)

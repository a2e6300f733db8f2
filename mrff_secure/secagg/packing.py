"""Bit-packing of ring elements to exactly b bits each, so uploads cost b bits per value, not 64.

Layout: value i occupies bits [i*b, (i+1)*b) of the byte string, least
significant bit first (little-endian bit and byte order); the last byte is
zero-padded.
"""

from __future__ import annotations

import numpy as np

from mrff_secure.errors import ProtocolViolation

_BYTE_ALIGNED: dict[int, np.dtype[np.unsignedinteger]] = {
    8: np.dtype("<u1"),
    16: np.dtype("<u2"),
    32: np.dtype("<u4"),
    64: np.dtype("<u8"),
}


def packed_size(count: int, bits: int) -> int:
    """Bytes needed for `count` values of `bits` bits."""
    return (count * bits + 7) // 8


def _positions(count: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """For each value: the 64-bit word it starts in and its bit shift within that word."""
    offsets = np.arange(count, dtype=np.uint64) * np.uint64(bits)  # (count,)
    return offsets >> np.uint64(6), offsets & np.uint64(63)


def pack(values: np.ndarray, bits: int) -> bytes:
    """Pack unsigned values < 2^bits (1 <= bits <= 64) into packed_size(len, bits) bytes."""
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be in [1, 64], got {bits}")
    values = np.asarray(values)
    if bits in _BYTE_ALIGNED:  # whole bytes per value: the layout is the little-endian array itself
        if values.dtype.kind != "u":
            values = values.astype(np.uint64)  # what the general path does with other dtypes
        if bits < 64 and values.size and int(values.max()) >> bits:
            raise ValueError(f"a value does not fit in {bits} bits")
        return np.ascontiguousarray(values, dtype=_BYTE_ALIGNED[bits]).tobytes()
    words = np.ascontiguousarray(values.astype(np.uint64))  # (n,)
    count = words.size
    if bits < 64 and count and int(words.max()) >> bits:
        raise ValueError(f"a value does not fit in {bits} bits")
    num_words = (count * bits + 63) // 64
    out = np.zeros(num_words + 1, dtype=np.uint64)  # (words + 1,): one spare word for the last spill
    if count:
        word, shift = _positions(count, bits)
        # Low parts: value << shift lands in its start word. Bit ranges are disjoint, so adding the
        # parts of all values that start in one word is the same as OR-ing them; every word has a
        # start because bits <= 64.
        low = words << shift  # uint64 shift drops the bits that spill over
        starts = np.flatnonzero(np.r_[True, word[1:] != word[:-1]])
        out[word[starts]] = np.add.reduceat(low, starts)
        # High parts: the bits that spill into the next word (at most one value spills per word).
        spills = np.flatnonzero(shift + np.uint64(bits) > np.uint64(64))
        if spills.size:
            out[word[spills] + np.uint64(1)] += words[spills] >> (np.uint64(64) - shift[spills])
    return out.astype("<u8").tobytes()[: packed_size(count, bits)]


def unpack(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of pack; raise ProtocolViolation if the length or the padding is wrong. (count,) uint64."""
    if not 1 <= bits <= 64:
        raise ProtocolViolation(f"bits must be in [1, 64], got {bits}")
    size = packed_size(count, bits)
    if len(data) != size:
        raise ProtocolViolation(f"packed vector has {len(data)} bytes, expected {size}")
    used = count * bits % 8
    if used and data[-1] >> used:
        raise ProtocolViolation("packed vector has non-zero padding bits")
    if bits in _BYTE_ALIGNED:
        return np.frombuffer(data, dtype=_BYTE_ALIGNED[bits]).astype(np.uint64)
    num_words = (count * bits + 63) // 64
    buffer = bytes(data) + bytes((num_words + 1) * 8 - size)
    stream = np.frombuffer(buffer, dtype="<u8").astype(np.uint64)  # (words + 1,)
    if count == 0:
        return np.zeros(0, dtype=np.uint64)
    word, shift = _positions(count, bits)
    values = stream[word] >> shift
    spills = np.flatnonzero(shift + np.uint64(bits) > np.uint64(64))
    if spills.size:
        values[spills] |= stream[word[spills] + np.uint64(1)] << (np.uint64(64) - shift[spills])
    if bits < 64:
        values &= np.uint64((1 << bits) - 1)
    return values

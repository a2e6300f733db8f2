"""Ring encoding, modulus sizing, and bit-packing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mrff_secure.errors import ConfigError, ProtocolViolation
from mrff_secure.secagg import packing
from mrff_secure.secagg.config import RANGE_CHECK_SECURITY_BITS, SecAggConfig, guard_bits, required_modulus_bits
from mrff_secure.secagg.encoding import InputRangeError, check_no_wrap, from_ring, to_ring
from mrff_secure.secagg.sizing import graph_for


def test_encoding_known_answers(vectors):
    data = vectors("encoding")
    for case in data["ring"]:
        ring = to_ring(np.array(case["q"], dtype=np.int64), case["bits"])
        assert [str(int(v)) for v in ring] == case["ring"]
        assert from_ring(ring, case["bits"]).tolist() == case["q"]


@settings(max_examples=50, deadline=None)
@given(bits=st.integers(2, 62), data=st.data())
def test_ring_roundtrip(bits, data):
    half = 2 ** (bits - 1)
    values = data.draw(st.lists(st.integers(-half, half - 1), min_size=1, max_size=20))
    q = np.array(values, dtype=np.int64)
    assert np.array_equal(from_ring(to_ring(q, bits), bits), q)


def test_to_ring_refuses_out_of_range():
    with pytest.raises(InputRangeError, match="exceeds max_abs 5"):
        to_ring(np.array([6]), 8, max_abs=5)
    with pytest.raises(InputRangeError):
        to_ring(np.array([0.5]), 8)


def test_modulus_sized_so_sums_cannot_wrap_with_guard_bits_to_spare():
    for n, max_abs, d in [(3, 1, 1), (100, 2**15, 1000), (2000, 2**20 - 1, 8), (7, 255, 41)]:
        bits, g = required_modulus_bits(n, max_abs, vector_length=d), guard_bits(d)
        assert g >= 1 and g * d >= RANGE_CHECK_SECURITY_BITS and (g == 1 or (g - 1) * d < RANGE_CHECK_SECURITY_BITS)
        headroom = n * max_abs * 2**g
        assert headroom <= 2 ** (bits - 1) - 1 < 2 * headroom + 1 or bits == 2
        check_no_wrap(n, max_abs, bits, vector_length=d)
        with pytest.raises(ConfigError, match=str(n * max_abs)):
            check_no_wrap(n, max_abs, bits - 1, vector_length=d)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(3, 10**6), max_abs=st.integers(1, 2**24), d=st.integers(1, 10**6))
def test_junk_passes_the_range_check_with_probability_at_most_two_to_minus_forty(n, max_abs, d):
    """At the modulus SecAggConfig picks, a uniform ring element lies within +-(s max_abs) for any s <= n
    with probability (2 s max_abs + 1) / 2^b <= 2^-g, so a vector of d uniform coordinates passes the
    server's range check with probability <= 2^-(g d) <= 2^-40."""
    bits = required_modulus_bits(n, max_abs, vector_length=d)
    assume(bits <= 62)
    config = SecAggConfig(num_clients=n, vector_length=d, max_abs=max_abs)
    assert config.bits == bits
    g = guard_bits(d)
    assert (2 * n * max_abs + 1) * 2**g <= 2**bits
    assert g * d >= 40


def test_config_refuses_a_wrapping_modulus_naming_the_numbers():
    with pytest.raises(ConfigError) as info:
        SecAggConfig(num_clients=1000, vector_length=10, max_abs=2**16, modulus_bits=20)
    message = str(info.value)
    # 1000 x 2^16 x 2^4 guard bits (4 x 10 coordinates >= 40) = 1,048,576,000 < 2^30: 31 bits
    assert "1000" in message and "65536" in message and "modulus_bits=20" in message and "31" in message
    assert "2^4 guard bits" in message
    assert SecAggConfig(num_clients=1000, vector_length=10, max_abs=2**16).modulus_bits == 31
    assert SecAggConfig(num_clients=1000, vector_length=40, max_abs=2**16).modulus_bits == 28
    with pytest.raises(ConfigError, match="62"):
        SecAggConfig(num_clients=10**6, vector_length=1, max_abs=2**50)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_clients": 2},
        {"vector_length": 0},
        {"max_abs": 0},
        {"num_neighbours": 1},
        {"num_neighbours": 10},
        {"threshold": 2, "num_neighbours": 6},
        {"threshold": 7, "num_neighbours": 6},
        {"num_clients": 5.0},
    ],
)
def test_config_validation(kwargs):
    base = {"num_clients": 10, "vector_length": 4, "max_abs": 100}
    base.update(kwargs)
    with pytest.raises(ConfigError):
        SecAggConfig(**base)


def test_config_defaults():
    config = SecAggConfig(num_clients=100, vector_length=4, max_abs=100)
    # sized for 5% corrupt, 10% dropping out (sizing.graph_for): 2t - k = 6 > the 5 corrupt others,
    # k - t = 10 = the 10 dropped others
    assert (config.k, config.t) == graph_for(100) == (26, 16)
    assert 2 * config.t - config.k > 2
    large = SecAggConfig(num_clients=1791, vector_length=4, max_abs=1)
    assert (large.k, large.t) == graph_for(1791)
    # an explicit k keeps the absolute rule: t withstands 2 colluding neighbours, t <= k - 1
    assert SecAggConfig(num_clients=1791, vector_length=4, max_abs=1, num_neighbours=22).t == 13
    # n <= 5 has no (k, t) meeting the fractions: the complete graph with the absolute rule
    small = SecAggConfig(num_clients=3, vector_length=4, max_abs=100)
    assert (small.k, small.t) == (2, 2)
    assert SecAggConfig(num_clients=5, vector_length=4, max_abs=1).t == 3  # k = 4: t = k - 1 (one dropout survives)


# --- packing ---------------------------------------------------------------------------


def test_packing_known_answers(vectors):
    data = vectors("packing")
    for case in data["generate"]:
        values = np.array([int(v) for v in case["values"]], dtype=np.uint64)
        assert packing.pack(values, case["bits"]).hex() == case["packed"]
        assert np.array_equal(packing.unpack(bytes.fromhex(case["packed"]), case["bits"], len(values)), values)
    for case in data["invalid"]:
        with pytest.raises(ProtocolViolation):
            packing.unpack(bytes.fromhex(case["packed"]), case["bits"], case["count"])


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 64), data=st.data())
def test_packing_roundtrip(bits, data):
    values = data.draw(st.lists(st.integers(0, 2**bits - 1), min_size=0, max_size=40))
    arr = np.array(values, dtype=np.uint64)
    packed = packing.pack(arr, bits)
    assert len(packed) == packing.packed_size(len(values), bits)
    assert np.array_equal(packing.unpack(packed, bits, len(values)), arr)


def test_pack_refuses_values_that_do_not_fit():
    with pytest.raises(ValueError):
        packing.pack(np.array([8], dtype=np.uint64), 3)


def test_upload_bits_per_value_is_the_modulus_width():
    values = np.arange(60000, dtype=np.uint64) % 2**20
    assert len(packing.pack(values, 20)) * 8 / 60000 == 20

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mrff_secure.dp.rotation import RandomizedHadamard, fwht, next_power_of_two
from mrff_secure.errors import PrivacyError


def test_next_power_of_two():
    assert [next_power_of_two(n) for n in (1, 2, 3, 5, 8, 9, 1000)] == [1, 2, 4, 8, 8, 16, 1024]


@pytest.mark.parametrize("p", [1, 2, 8, 256])
def test_fwht_is_exactly_an_involution_up_to_p_on_integers(p):
    x = np.random.default_rng(p).integers(-(10**6), 10**6, size=(3, p))
    assert np.array_equal(fwht(fwht(x)), p * x)
    t = torch.from_numpy(x)
    assert torch.equal(fwht(fwht(t)), p * t)


def test_fwht_matches_dense_hadamard():
    from scipy.linalg import hadamard

    x = np.random.default_rng(0).normal(size=16)
    np.testing.assert_allclose(fwht(x), hadamard(16) @ x, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(dim=st.integers(1, 300), seed=st.integers(0, 2**64 - 1), batch=st.integers(1, 4))
def test_rotation_is_invertible_and_norm_preserving(dim, seed, batch):
    rot = RandomizedHadamard(dim, seed=seed)
    x = np.random.default_rng(seed % 2**32).normal(size=(batch, dim))
    y = rot.forward(x)
    assert y.shape == (batch, rot.padded_dim)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1), rtol=1e-12)
    np.testing.assert_allclose(rot.inverse(y), x, atol=1e-12 * max(1.0, np.abs(x).max()) * np.log2(rot.padded_dim + 1))


def test_rotation_exact_on_dyadic_grid():
    # power-of-4 length: 1/sqrt(p) is a power of two, so small dyadic inputs round-trip bit-exactly
    rot = RandomizedHadamard(64, seed=b"round-7")
    x = np.random.default_rng(1).integers(-1000, 1000, size=64).astype(np.float64) / 8
    assert np.array_equal(rot.inverse(rot.forward(x)), x)


def test_rotation_is_linear_shared_seed_and_torch_agrees():
    a = RandomizedHadamard(100, seed=42)
    b = RandomizedHadamard(100, seed=42)
    assert np.array_equal(a.signs, b.signs)
    assert not np.array_equal(a.signs, RandomizedHadamard(100, seed=43).signs)
    x = np.random.default_rng(0).normal(size=(5, 100))
    np.testing.assert_allclose(a.forward(x).sum(axis=0), a.forward(x.sum(axis=0)), atol=1e-12)
    t = a.forward(torch.from_numpy(x))
    np.testing.assert_allclose(t.numpy(), a.forward(x), atol=1e-12)
    np.testing.assert_allclose(a.inverse(t).numpy(), x, atol=1e-12)


def test_rotation_spreads_a_spike():
    rot = RandomizedHadamard(1024, seed=9)
    e = np.zeros(1024)
    e[3] = 1.0
    assert np.allclose(np.abs(rot.forward(e)), 1 / 32)


def test_rotation_rejects_wrong_lengths_and_seeds():
    rot = RandomizedHadamard(10, seed=1)
    with pytest.raises(PrivacyError):
        rot.forward(np.zeros(11))
    with pytest.raises(PrivacyError):
        rot.inverse(np.zeros(10))
    with pytest.raises(PrivacyError):
        RandomizedHadamard(10, seed=-1)
    with pytest.raises(PrivacyError):
        fwht(np.zeros(6))

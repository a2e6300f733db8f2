import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mrff_secure.dp.clipping import clip_l2, clip_prefix_l2
from mrff_secure.errors import PrivacyError

floats = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32)


@settings(max_examples=150, deadline=None)
@given(
    x=arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 40)), elements=floats),
    clip=st.floats(min_value=1e-3, max_value=1e3),
)
def test_clipped_norms_never_exceed_c_numpy(x, clip):
    out, norms = clip_l2(x, clip)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert np.all(np.linalg.norm(out.astype(np.float64), axis=1) <= clip)
    np.testing.assert_allclose(norms, np.linalg.norm(x.astype(np.float64), axis=1))
    small = norms <= clip
    np.testing.assert_array_equal(out[small], x[small])  # rows within the bound are untouched


@settings(max_examples=100, deadline=None)
@given(
    x=arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(1, 30)), elements=floats),
    clip=st.floats(min_value=1e-3, max_value=1e3),
)
def test_clipped_norms_never_exceed_c_torch_and_match_numpy(x, clip):
    t = torch.from_numpy(x).to(torch.float32)
    out, norms = clip_l2(t, clip)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert bool((torch.linalg.vector_norm(out.double(), dim=1) <= clip).all())
    ref, _ = clip_l2(x.astype(np.float32), clip)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-6 * clip)


def test_single_vector_and_direction_preserved():
    x = np.array([3.0, 4.0])
    out, norm = clip_l2(x, 1.0)
    assert norm.shape == () and float(norm) == 5.0
    np.testing.assert_allclose(out, [0.6, 0.8])
    zero, n0 = clip_l2(np.zeros(4), 1.0)
    assert np.all(zero == 0) and float(n0) == 0.0


def test_prefix_clipping_leaves_counts():
    x = torch.tensor([[3.0, 4.0, 1.0, 0.0, 7.0], [0.1, 0.1, 0.0, 1.0, 2.0]])  # (clients, d)
    out, norms = clip_prefix_l2(x, clip=1.0, prefix_len=2)
    assert torch.allclose(out[:, 2:], x[:, 2:])
    assert bool((torch.linalg.vector_norm(out[:, :2].double(), dim=1) <= 1.0).all())
    assert norms.tolist() == pytest.approx([5.0, 0.1414213562])


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan"), True])
def test_bad_clip(bad):
    with pytest.raises(PrivacyError):
        clip_l2(np.ones(3), bad)


def test_bad_inputs():
    with pytest.raises(PrivacyError):
        clip_l2(np.ones((2, 2, 2)), 1.0)
    with pytest.raises(PrivacyError):
        clip_l2(np.array([1.0, np.nan]), 1.0)
    with pytest.raises(PrivacyError):
        clip_l2(np.ones(3, dtype=np.int64), 1.0)
    with pytest.raises(PrivacyError):
        clip_l2([1.0, 2.0], 1.0)  # type: ignore[arg-type]
    with pytest.raises(PrivacyError):
        clip_prefix_l2(np.ones(3), clip=1.0, prefix_len=4)

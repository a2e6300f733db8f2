"""The fused building blocks of the training round (issue 26, item 2) compute what their plain forms compute."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import vmap

from mrff_secure.data.client_data import AttributeTable
from mrff_secure.model.layers import AttributeEmbedding, causal_scores, dropout, dropout_keep_threshold


def single_token_table() -> AttributeTable:
    rng = np.random.default_rng(0)
    vocab = (3, 5, 7)
    tokens = np.stack([rng.integers(0, v, size=40) for v in vocab], axis=1).astype(np.int64)
    tokens[0] = [v - 1 for v in vocab]  # a row of padding tokens
    return AttributeTable(("a", "b", "c"), vocab, ((0, 1), (1, 2), (2, 3)), tokens)


def test_stacked_lookup_equals_one_embedding_per_field_and_padding_rows_get_no_gradient():
    table = single_token_table()
    embedding = AttributeEmbedding(table, 4)
    assert embedding.single_tokens
    with torch.no_grad():
        for weight in embedding.tables:
            weight[-1] = 1.5  # a nonzero padding row is still read in the forward, as with padding_idx
    rows = torch.tensor([[0, 3, 7], [12, 0, 39]])
    out = embedding(rows)
    tokens = torch.as_tensor(table.tokens)[rows]
    expected = torch.cat(
        [F.embedding(tokens[..., i], w, padding_idx=w.shape[0] - 1) for i, w in enumerate(embedding.tables)], -1
    )
    assert torch.equal(out, expected)
    upstream = torch.randn(out.shape)
    got = torch.autograd.grad((out * upstream).sum(), list(embedding.tables))
    want = torch.autograd.grad((expected * upstream).sum(), list(embedding.tables))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
        assert torch.equal(g[-1], torch.zeros_like(g[-1]))


def test_stacked_lookup_of_no_rows_has_the_feature_width():
    embedding = AttributeEmbedding(single_token_table(), 4)
    assert embedding(torch.zeros(0, dtype=torch.long)).shape == (0, 12)


@pytest.mark.parametrize("p", [0.5, 0.1, 0.8])
def test_dropout_zeroes_about_p_and_scales_the_rest(p):
    torch.manual_seed(0)
    x = torch.ones(200_000)
    out = dropout(x, p, True)
    kept = out != 0
    assert torch.equal(out[kept], torch.full_like(out[kept], 1.0 / (1.0 - p)))
    n = x.numel()
    assert abs(kept.double().mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    torch.manual_seed(0)
    assert torch.equal(dropout(x, p, True), out)  # the seed fixes the mask
    assert dropout(x, p, False) is x and dropout(x, 0.0, True) is x


def test_dropout_threshold_rounds_p_to_a_multiple_of_2_to_the_minus_16():
    assert dropout_keep_threshold(0.5) == 0
    assert dropout_keep_threshold(0.0) == -(2**15)
    assert dropout_keep_threshold(0.25) == -(2**14)
    assert dropout_keep_threshold(0.1) == round(0.1 * 2**16) - 2**15


def test_dropout_under_vmap_draws_a_mask_per_client():
    torch.manual_seed(1)
    out = vmap(lambda t: dropout(t, 0.5, True), randomness="different")(torch.ones(4, 300))
    assert len({tuple(row.tolist()) for row in out}) == 4


def test_causal_scores_mask_the_future_and_scale():
    q, k = torch.randn(2, 5, 6), torch.randn(2, 5, 6)
    scores = causal_scores(q, k)
    expected = (q @ k.transpose(-1, -2) / math.sqrt(6)).masked_fill(
        ~torch.ones(5, 5, dtype=torch.bool).tril(), -math.inf
    )
    torch.testing.assert_close(scores, expected)
    assert torch.isinf(scores[:, 0, 1:]).all() and torch.isfinite(scores[:, 4]).all()

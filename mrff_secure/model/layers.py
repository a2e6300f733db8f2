"""Building blocks shared by the backbones: attribute embeddings, feed-forward, causal attention.

Every module here works on ONE user's sequence: (seq, hidden). The federation
engine vectorizes over users with `torch.func.vmap`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mrff_secure.config import ModelConfig
from mrff_secure.data.client_data import AttributeSource, AttributeTable
from mrff_secure.model.roles import Role

# (logits or features, gate probabilities or None, routes or None): what a model or block's forward returns
ModelOutput = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]


class AttributeEmbedding(nn.Module):
    """Concatenation of one embedding per attribute field (token_seq fields: mean of their tokens).

    When every field is a single token, the lookup is one index_select from the fields' tables stacked row-wise
    (their tokens offset into it), so one lookup and one gradient scatter serve all fields; each table's padding
    row enters that stack detached, so it gets no gradient, as with `padding_idx`.
    """

    tokens: torch.Tensor  # a buffer (register_buffer): (rows, width)
    stacked_tokens: torch.Tensor  # single-token fields only: tokens offset into the stacked tables, (rows, fields)

    def __init__(self, table: AttributeTable, dim: int) -> None:
        super().__init__()
        self.spans = table.spans
        self.padding = tuple(v - 1 for v in table.vocab_sizes)
        self.tables = nn.ParameterList()
        for vocab in table.vocab_sizes:
            weight = torch.randn(vocab, dim)
            weight[vocab - 1] = 0.0  # padding row
            self.tables.append(nn.Parameter(weight))
        self.register_buffer("tokens", torch.as_tensor(table.tokens), persistent=False)
        self.out_dim = dim * len(table.vocab_sizes)
        self.single_tokens = all(hi - lo == 1 for lo, hi in table.spans)
        if self.single_tokens:
            offsets = torch.cumsum(torch.as_tensor((0, *table.vocab_sizes[:-1])), 0)
            self.register_buffer("stacked_tokens", self.tokens + offsets, persistent=False)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        if self.single_tokens:
            stacked = torch.cat([part for w in self.tables for part in (w[:-1], w[-1:].detach())])
            tokens = self.stacked_tokens[rows]  # (..., fields)
            # index_select, not F.embedding: its backward (index_add) is much faster under vmap on CPU
            return stacked.index_select(0, tokens.flatten()).view(*tokens.shape[:-1], self.out_dim)
        tokens = self.tokens[rows]  # (..., width)
        parts = []
        for weight, pad, (lo, hi) in zip(self.tables, self.padding, self.spans):
            field = tokens[..., lo:hi]  # (..., w)
            emb = F.embedding(field, weight, padding_idx=pad)  # (..., w, dim)
            if hi - lo == 1:
                parts.append(emb[..., 0, :])
            else:
                real = (field != pad).unsqueeze(-1).to(emb.dtype)
                parts.append((emb * real).sum(-2) / real.sum(-2).clamp(min=1.0))
        return torch.cat(parts, dim=-1)  # (..., fields * dim)


def initial_user_vectors(table: AttributeTable, dim: int, generator: torch.Generator) -> torch.Tensor:
    """Every user's starting user embedding: lookups in one seeded table per field, concatenated.

    Users with equal attributes start equal (as with shared tables); from then on
    each user's vector is private and trained on its own device.
    """
    embedding = AttributeEmbedding(table, dim)
    with torch.no_grad():
        for weight in embedding.tables:
            weight.copy_(torch.randn(weight.shape, generator=generator))
            weight[-1] = 0.0
        return embedding(torch.arange(table.num_rows)).detach()  # (users, fields * dim)


class UserEmbedding(nn.Module):
    """One user's embedding vector. Private: it never leaves the device."""

    parameter_role = Role.PRIVATE

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.vector = nn.Parameter(torch.zeros(dim))

    def forward(self) -> torch.Tensor:
        return self.vector


class UserItemModel(nn.Module):
    """Base of the non-sequential baselines (NCF, FedPA): they score one target item from its attribute
    embedding (``items``, width ``hidden``) and the private user vector (``user``, width ``user_dim``)."""

    def __init__(self, config: ModelConfig, data: AttributeSource) -> None:
        super().__init__()
        self.config = config
        self.items = AttributeEmbedding(data.item_attributes, config.attribute_dim)
        self.hidden = self.items.out_dim
        self.user_dim = config.attribute_dim * data.user_attributes.num_fields
        self.user = UserEmbedding(self.user_dim)


DROPOUT_RESOLUTION = 2**16  # a dropout probability is rounded to a multiple of 1 / DROPOUT_RESOLUTION


def dropout_keep_threshold(p: float) -> int:
    """The smallest kept 16-bit draw (a signed value in [-2**15, 2**15)): a draw is dropped with probability p,
    rounded to a multiple of 2**-16 (0.5 exactly)."""
    return round(p * DROPOUT_RESOLUTION) - DROPOUT_RESOLUTION // 2


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout: each element is zeroed with probability p (rounded to a multiple of 2**-16), the rest
    are scaled by 1 / (1 - p).

    The draws are 16-bit pieces of 64-bit random integers (torch's generator): a quarter of the generator calls
    of one float draw per element, which dominates on CPU. The mask is built with float arithmetic (comparisons
    into bool tensors are slow here, and a bool mask is converted to float in the forward and the backward) as
    0 or 1 / (1 - p), so the forward and the backward are one multiplication each. Under `vmap` with
    randomness="different" every client draws its own mask.
    """
    if not training or p == 0.0:
        return x
    n = x.numel()
    # every 64-bit value but 2**63 - 1 (randint's bound is exclusive): four uniform 16-bit pieces per word
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
    draws = words.view(torch.int16)[:n].view(x.shape).to(x.dtype)  # uniform integers in [-2**15, 2**15)
    # draw - (threshold - 0.5) is a nonzero half-integer: its sign is +1 (keep) or -1 (drop), exactly
    keep_sign = draws.sub_(dropout_keep_threshold(p) - 0.5).sign_()
    return x * keep_sign.add_(1.0).mul_(0.5 / (1.0 - p))


def uniform_init_(tensor: torch.Tensor, fan_in: int) -> torch.Tensor:
    bound = 1.0 / math.sqrt(fan_in)
    return nn.init.uniform_(tensor, -bound, bound)


ROUTED_CHANGE_SUFFIX = "_routed_change"


def add_group_parameter(module: nn.Module, name: str, stacked: torch.Tensor) -> None:
    """Register `stacked` (groups, *shape) as parameter `name` of a group module, beside a zero buffer
    `name + ROUTED_CHANGE_SUFFIX` (*shape): the change of the routed group's slot during local training.

    Local training differentiates with respect to that buffer, not the stacked parameter, so that a client's
    gradients and optimizer state have one group's size rather than `groups` times it (the other slots' would
    be zero and are never sent). Outside local training it stays zero; it is not part of a checkpoint.
    """
    module.register_parameter(name, nn.Parameter(stacked))
    module.register_buffer(name + ROUTED_CHANGE_SUFFIX, torch.zeros(stacked.shape[1:]), persistent=False)


def routed_group_weight(module: nn.Module, name: str, route_one_hot: torch.Tensor) -> torch.Tensor:
    """The routed group's slot of the stacked parameter `name` (other slots get exactly zero gradient), plus its
    routed change (see `add_group_parameter`)."""
    return torch.tensordot(route_one_hot, getattr(module, name), dims=1) + getattr(module, name + ROUTED_CHANGE_SUFFIX)


FFN_KINDS = ("relu", "swiglu")


def ffn_parameter_shapes(kind: str, hidden: int) -> dict[str, tuple[tuple[int, ...], int]]:
    """The parameters of one feed-forward part of `kind`: name -> (shape, fan_in used to initialise it).

    relu:   linear, ReLU, linear, with biases (SASRec's point-wise FFN; also HSTU's here).
    swiglu: down(silu(gate x) * up x), no biases, inner size = hidden (LLaMA's feed-forward part).
    """
    if kind == "relu":
        return {
            "w1": ((hidden, hidden), hidden),
            "b1": ((hidden,), hidden),
            "w2": ((hidden, hidden), hidden),
            "b2": ((hidden,), hidden),
        }
    if kind == "swiglu":
        return {
            "w_gate": ((hidden, hidden), hidden),
            "w_up": ((hidden, hidden), hidden),
            "w_down": ((hidden, hidden), hidden),
        }
    raise ValueError(f"feed-forward kind must be one of {FFN_KINDS}, got {kind!r}")


def apply_ffn(kind: str, weights: dict[str, torch.Tensor], x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """One feed-forward part of `kind` with the given (unstacked) weights, dropout `p` after each layer."""
    if kind == "relu":
        h = dropout(F.linear(x, weights["w1"], weights["b1"]), p, training).relu()
        return dropout(F.linear(h, weights["w2"], weights["b2"]), p, training)
    h = F.silu(F.linear(x, weights["w_gate"])) * F.linear(x, weights["w_up"])
    return dropout(F.linear(dropout(h, p, training), weights["w_down"]), p, training)


class FeedForward(nn.Module):
    """A position-wise feed-forward part (no residual here); `kind` in FFN_KINDS."""

    def __init__(self, hidden: int, dropout: float, kind: str = "relu") -> None:
        super().__init__()
        self.kind = kind
        for name, (shape, fan_in) in ffn_parameter_shapes(kind, hidden).items():
            setattr(self, name, nn.Parameter(uniform_init_(torch.empty(shape), fan_in)))
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = {name: getattr(self, name) for name in ffn_parameter_shapes(self.kind, x.shape[-1])}
        return apply_ffn(self.kind, weights, x, self.dropout, self.training)


def causal_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """q k^T / sqrt(head size) with -inf above the diagonal (a query sees itself and earlier keys): q, k
    (heads, seq, head) -> (heads, seq, seq). One baddbmm: the mask and the scaling are fused into the matmul."""
    seq, head = q.shape[-2], q.shape[-1]
    mask = torch.full((seq, seq), float("-inf"), dtype=q.dtype, device=q.device).triu_(1)
    return torch.baddbmm(mask, q, k.transpose(-1, -2), alpha=1.0 / math.sqrt(head))


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with queries from a (layer-normed) input and keys/values from another."""

    def __init__(self, hidden: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if hidden % num_heads:
            raise ValueError(f"hidden size {hidden} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(3 * hidden, hidden)))
        self.in_bias = nn.Parameter(torch.zeros(3 * hidden))
        self.out_weight = nn.Parameter(uniform_init_(torch.empty(hidden, hidden), hidden))
        self.out_bias = nn.Parameter(torch.zeros(hidden))

    def forward(self, query: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        seq, hidden = query.shape
        w_q, w_kv = self.in_weight.split([hidden, 2 * hidden])
        b_q, b_kv = self.in_bias.split([hidden, 2 * hidden])
        q = F.linear(query, w_q, b_q)  # (seq, hidden)
        k, v = F.linear(source, w_kv, b_kv).chunk(2, dim=-1)
        head = hidden // self.num_heads
        q, k, v = (t.view(seq, self.num_heads, head).transpose(0, 1) for t in (q, k, v))  # (heads, seq, head)
        weights = dropout(causal_scores(q, k).softmax(-1), self.dropout, self.training)
        out = (weights @ v).transpose(0, 1).reshape(seq, hidden)
        return F.linear(out, self.out_weight, self.out_bias)


class MLP(nn.Module):
    """Linear layers with ReLU after each hidden layer (and, if `relu_last`, after the last)."""

    def __init__(self, dims: list[int], relu_last: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.relu_last = relu_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1 or self.relu_last:
                x = x.relu()
        return x

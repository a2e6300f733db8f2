"""HSTU (Zhai et al. 2024, "Actions speak louder than words"), optionally with MRFF.

Each block is HSTU's pointwise attention sublayer followed by a feed-forward part:

    U, V, Q, K = split(silu(f1(LN(x))))
    A = silu(Q K^T + rab) / n  on causal, non-padding key positions (no softmax; n = real positions seen)
    x = x + f2(LN(A V) * U)                      (the gating branch U)
    x = x + FFN(LN(x))                           (MRFF: FFN_u + FFN_g; without MRFF: one shared FFN)

rab is a learned relative attention bias per head and relative distance i - j
(positions only: KuaiSAR-R's sequences carry no timestamps the model sees).
MRFF replaces the feed-forward part, as in SASRec; the input and prediction
layers are `sequence_ctr.SequenceCTR`'s.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mrff_secure.config import ModelConfig
from mrff_secure.data.client_data import AttributeSource
from mrff_secure.model.layers import ModelOutput, dropout, uniform_init_
from mrff_secure.model.sequence_ctr import SequenceCTR, feed_forward_part, make_feed_forward


class PointwiseAttention(nn.Module):
    """HSTU's sublayer: SiLU projections, pointwise SiLU attention with relative bias, gated output."""

    def __init__(self, hidden: int, num_heads: int, maxlen: int, dropout: float) -> None:
        super().__init__()
        if hidden % num_heads:
            raise ValueError(f"hidden size {hidden} is not divisible by num_heads {num_heads}")
        self.num_heads, self.dropout = num_heads, dropout
        self.norm = nn.LayerNorm(hidden, eps=1e-8)
        self.in_weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(4 * hidden, hidden)))
        self.in_bias = nn.Parameter(torch.zeros(4 * hidden))
        self.relative_bias = nn.Parameter(torch.zeros(num_heads, maxlen))  # bias of distance 0 .. maxlen - 1
        self.output_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.out_weight = nn.Parameter(uniform_init_(torch.empty(hidden, hidden), hidden))
        self.out_bias = nn.Parameter(torch.zeros(hidden))

    def forward(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        seq, hidden = x.shape
        u, v, q, k = F.silu(F.linear(self.norm(x), self.in_weight, self.in_bias)).chunk(4, dim=-1)
        head = hidden // self.num_heads
        q, k, v = (t.view(seq, self.num_heads, head).transpose(0, 1) for t in (q, k, v))  # (heads, seq, head)
        positions = torch.arange(seq, device=x.device)
        distance = (positions.unsqueeze(1) - positions.unsqueeze(0)).clamp(min=0)  # (seq, seq): i - j
        bias = self.relative_bias[:, distance]  # (heads, seq, seq)
        visible = torch.ones(seq, seq, dtype=x.dtype, device=x.device).tril() * real.unsqueeze(0)  # causal, real keys
        seen = visible.sum(-1, keepdim=True).clamp(min=1.0)  # (seq, 1)
        weights = F.silu(torch.baddbmm(bias, q, k.transpose(-1, -2), alpha=1.0 / math.sqrt(head))) * (visible / seen)
        weights = dropout(weights, self.dropout, self.training)
        attended = (weights @ v).transpose(0, 1).reshape(seq, hidden)
        return F.linear(self.output_norm(attended) * u, self.out_weight, self.out_bias)


class HSTUBlock(nn.Module):
    def __init__(self, hidden: int, user_dim: int, config: ModelConfig) -> None:
        super().__init__()
        self.attention = PointwiseAttention(hidden, config.num_heads, config.maxlen, config.dropout)
        self.ffn_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.ffn = make_feed_forward(config, hidden, user_dim, "relu")

    def forward(
        self, x: torch.Tensor, real: torch.Tensor, user: torch.Tensor, route: torch.Tensor | None
    ) -> ModelOutput:
        x = x + dropout(self.attention(x, real), self.attention.dropout, self.training)
        out, probs, route = feed_forward_part(self.ffn, self.ffn_norm(x), real, user, route)
        return (x + out) * real.unsqueeze(-1), probs, route


class HSTU(SequenceCTR):
    def __init__(self, config: ModelConfig, data: AttributeSource) -> None:
        super().__init__(config, data)
        self._finish(
            [HSTUBlock(self.hidden, self.user_dim, config) for _ in range(config.num_blocks)],
            nn.LayerNorm(self.hidden, eps=1e-8),
        )

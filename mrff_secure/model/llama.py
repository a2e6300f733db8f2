"""A LLaMA-style backbone (Touvron et al. 2023), optionally with MRFF.

Pre-norm blocks with RMSNorm, rotary position embedding on queries and keys
(no absolute position embedding), bias-free projections and a SwiGLU
feed-forward part:

    x = x + attn(rope(RMSNorm(x)))               (causal softmax attention)
    x = x + SwiGLU(RMSNorm(x))                   (MRFF: SwiGLU_u + SwiGLU_g; without MRFF: one shared SwiGLU)

The input and prediction layers are `sequence_ctr.SequenceCTR`'s.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mrff_secure.config import ModelConfig
from mrff_secure.data.client_data import AttributeSource
from mrff_secure.model.layers import ModelOutput, causal_scores, dropout, uniform_init_
from mrff_secure.model.sequence_ctr import SequenceCTR, feed_forward_part, make_feed_forward

ROPE_BASE = 10_000.0


class RMSNorm(nn.Module):
    def __init__(self, hidden: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of x (..., seq, head): pairs (first half, second half) rotated by position."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


class RotaryAttention(nn.Module):
    """Multi-head causal softmax attention, no biases, rotary positions on q and k."""

    cos: torch.Tensor  # buffers (register_buffer): (maxlen, head / 2)
    sin: torch.Tensor

    def __init__(self, hidden: int, num_heads: int, maxlen: int, dropout: float) -> None:
        super().__init__()
        if hidden % num_heads or (hidden // num_heads) % 2:
            raise ValueError(f"hidden size {hidden} must split into {num_heads} heads of even size")
        self.num_heads, self.dropout = num_heads, dropout
        self.in_weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(3 * hidden, hidden)))
        self.out_weight = nn.Parameter(uniform_init_(torch.empty(hidden, hidden), hidden))
        head = hidden // num_heads
        frequencies = ROPE_BASE ** (-torch.arange(0, head, 2, dtype=torch.float64) / head)
        angles = torch.arange(maxlen, dtype=torch.float64).unsqueeze(1) * frequencies  # (maxlen, head / 2)
        self.register_buffer("cos", angles.cos().to(torch.get_default_dtype()), persistent=False)
        self.register_buffer("sin", angles.sin().to(torch.get_default_dtype()), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq, hidden = x.shape
        head = hidden // self.num_heads
        q, k, v = F.linear(x, self.in_weight).chunk(3, dim=-1)
        q, k, v = (t.view(seq, self.num_heads, head).transpose(0, 1) for t in (q, k, v))  # (heads, seq, head)
        cos, sin = self.cos[:seq].to(x.dtype), self.sin[:seq].to(x.dtype)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        weights = dropout(causal_scores(q, k).softmax(-1), self.dropout, self.training)
        return F.linear((weights @ v).transpose(0, 1).reshape(seq, hidden), self.out_weight)


class LLaMABlock(nn.Module):
    def __init__(self, hidden: int, user_dim: int, config: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(hidden)
        self.attention = RotaryAttention(hidden, config.num_heads, config.maxlen, config.dropout)
        self.ffn_norm = RMSNorm(hidden)
        self.ffn = make_feed_forward(config, hidden, user_dim, "swiglu")

    def forward(
        self, x: torch.Tensor, real: torch.Tensor, user: torch.Tensor, route: torch.Tensor | None
    ) -> ModelOutput:
        x = x + dropout(self.attention(self.attention_norm(x)), self.attention.dropout, self.training)
        out, probs, route = feed_forward_part(self.ffn, self.ffn_norm(x), real, user, route)
        return (x + out) * real.unsqueeze(-1), probs, route


class LLaMA(SequenceCTR):
    uses_positions = False

    def __init__(self, config: ModelConfig, data: AttributeSource) -> None:
        super().__init__(config, data)
        self._finish(
            [LLaMABlock(self.hidden, self.user_dim, config) for _ in range(config.num_blocks)], RMSNorm(self.hidden)
        )

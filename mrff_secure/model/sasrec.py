"""SASRec (Kang & McAuley 2018, as used by the MRFF paper), optionally with MRFF.

Each block: Q = LN(x); x = LN(Q + attn(Q, x)); x = FFN(x) + x; padding zeroed.
Without MRFF the FFN is a plain shared FFN (the FedSASRec baseline). The input
and prediction layers are `sequence_ctr.SequenceCTR`'s.
"""

from __future__ import annotations

import torch
from torch import nn

from mrff_secure.config import ModelConfig
from mrff_secure.data.client_data import AttributeSource
from mrff_secure.model.layers import CausalSelfAttention, ModelOutput
from mrff_secure.model.sequence_ctr import SequenceCTR, feed_forward_part, make_feed_forward


class Block(nn.Module):
    def __init__(self, hidden: int, user_dim: int, config: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.attention = CausalSelfAttention(hidden, config.num_heads, config.dropout)
        self.ffn_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.residual = config.ffn_residual
        self.ffn = make_feed_forward(config, hidden, user_dim, "relu")

    def forward(
        self, x: torch.Tensor, real: torch.Tensor, user: torch.Tensor, route: torch.Tensor | None
    ) -> ModelOutput:
        q = self.attention_norm(x)
        x = self.ffn_norm(q + self.attention(q, x))  # (seq, hidden)
        out, probs, route = feed_forward_part(self.ffn, x, real, user, route)
        if self.residual:
            out = out + x
        return out * real.unsqueeze(-1), probs, route


class SASRec(SequenceCTR):
    def __init__(self, config: ModelConfig, data: AttributeSource) -> None:
        super().__init__(config, data)
        self._finish(
            [Block(self.hidden, self.user_dim, config) for _ in range(config.num_blocks)],
            nn.LayerNorm(self.hidden, eps=1e-8),
        )

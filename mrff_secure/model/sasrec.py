"""SASRec CTR model for one user (Kang & McAuley 2018, as used by the MRFF paper), optionally with MRFF.

Input: item sequence (seq,) of item rows (0 = padding). Each item is the
concatenation of its attribute embeddings (hidden = fields x attribute_dim),
scaled by sqrt(hidden), plus a learned position embedding. Each block:
Q = LN(x); x = Q + attn(Q, x); x = LN(x); x = FFN(x) + x; padding zeroed.
Prediction: MLP([x_t ; candidate item ; user embedding]) -> logit.
Without MRFF the FFN is a plain shared FFN (the FedSASRec baseline).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mrff_secure.config import ModelConfig
from mrff_secure.data.client_data import ClientData
from mrff_secure.model.layers import MLP, AttributeEmbedding, CausalSelfAttention, FeedForward, UserEmbedding, dropout
from mrff_secure.model.mrff import MRFFFeedForward


class Block(nn.Module):
    def __init__(self, hidden: int, user_dim: int, config: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.attention = CausalSelfAttention(hidden, config.num_heads, config.dropout)
        self.ffn_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.residual = config.ffn_residual
        if config.mrff:
            self.ffn = MRFFFeedForward(hidden, user_dim, config.num_groups, config.gate_hidden_dims,
                                       config.dropout, config.routing)
        else:
            self.ffn = FeedForward(hidden, config.dropout)

    def forward(self, x: torch.Tensor, real: torch.Tensor, user: torch.Tensor, route: torch.Tensor | None):
        q = self.attention_norm(x)
        x = self.ffn_norm(q + self.attention(q, x))  # (seq, hidden)
        if isinstance(self.ffn, MRFFFeedForward):
            out, probs, route = self.ffn(x, real, user, route)
        else:
            out, probs, route = self.ffn(x), None, None
        if self.residual:
            out = out + x
        return out * real.unsqueeze(-1), probs, route


class SASRec(nn.Module):
    """One user's model. Parameter roles come from module structure (see federation.roles)."""

    def __init__(self, config: ModelConfig, data: ClientData) -> None:
        super().__init__()
        self.config = config
        self.items = AttributeEmbedding(data.item_attributes, config.attribute_dim)
        hidden = self.items.out_dim
        user_dim = config.attribute_dim * data.user_attributes.num_fields
        self.hidden, self.user_dim = hidden, user_dim
        self.user = UserEmbedding(user_dim)
        self.positions = nn.Parameter(torch.randn(config.maxlen, hidden))
        self.blocks = nn.ModuleList(Block(hidden, user_dim, config) for _ in range(config.num_blocks))
        self.final_norm = nn.LayerNorm(hidden, eps=1e-8)
        prediction_dims = [2 * hidden + user_dim, *config.prediction_dims]
        self.predict = MLP(prediction_dims, relu_last=True)
        self.output = nn.Linear(prediction_dims[-1], 1)

    def encode(self, seq: torch.Tensor, routes: torch.Tensor | None = None):
        """seq: (maxlen,) item rows. Returns features (maxlen, hidden), gate probs (blocks, groups), routes (blocks,)."""
        real = (seq != 0).to(self.positions.dtype)  # (seq,)
        user = self.user()
        x = self.items(seq) * math.sqrt(self.hidden) + self.positions  # (seq, hidden)
        x = dropout(x, self.config.dropout, self.training) * real.unsqueeze(-1)
        all_probs, all_routes = [], []
        for i, block in enumerate(self.blocks):
            x, probs, route = block(x, real, user, None if routes is None else routes[i])
            if probs is not None:
                all_probs.append(probs)
                all_routes.append(route)
        x = self.final_norm(x)
        if not all_probs:
            return x, None, None
        return x, torch.stack(all_probs), torch.stack(all_routes)

    def score(self, features: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Logits of the candidates: features (..., hidden), candidates (...) item rows."""
        user = self.user().expand(*candidates.shape, self.user_dim)
        x = torch.cat([features, self.items(candidates), user], dim=-1)
        return self.output(self.predict(x)).squeeze(-1)

    def forward(self, seq: torch.Tensor, targets: torch.Tensor, routes: torch.Tensor | None = None):
        """Logits, gate probs (blocks, groups) and routes (blocks,).

        targets (seq,): training, the next item at every position -> logits (seq,).
        targets (): inference, one candidate scored from the last position -> a scalar logit.
        """
        features, probs, routes = self.encode(seq, routes)
        if targets.dim() == 0:
            features = features[-1]  # (hidden,)
        return self.score(features, targets), probs, routes

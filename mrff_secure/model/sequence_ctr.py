"""What the sequential backbones share: the input layer, a stack of blocks, the prediction layer (Eqs. 1-3).

Input: item sequence (seq,) of item rows (0 = padding). Each item is the
concatenation of its attribute embeddings (hidden = fields x attribute_dim),
scaled by sqrt(hidden), plus a learned position embedding where the backbone
uses one. A backbone supplies its blocks and its final norm. Prediction:
MLP([x_t ; candidate item ; user embedding]) -> logit.

Every block's feed-forward part is either a plain shared FFN (the backbone
without MRFF) or MRFF's user FFN + routed group FFN (`feed_forward_part`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mrff_secure.config import ModelConfig
from mrff_secure.data.client_data import AttributeSource
from mrff_secure.model.layers import MLP, AttributeEmbedding, FeedForward, ModelOutput, UserEmbedding, dropout
from mrff_secure.model.mrff import MRFFFeedForward


def make_feed_forward(config: ModelConfig, hidden: int, user_dim: int, kind: str) -> nn.Module:
    """The block's feed-forward part: MRFF (user + group FFNs of `kind`) or one shared FFN of `kind`."""
    if config.mrff:
        return MRFFFeedForward(
            hidden, user_dim, config.num_groups, config.gate_hidden_dims, config.dropout, config.routing, kind
        )
    return FeedForward(hidden, config.dropout, kind)


def feed_forward_part(
    ffn: nn.Module, x: torch.Tensor, real: torch.Tensor, user: torch.Tensor, route: torch.Tensor | None
) -> ModelOutput:
    """(output, gate probs or None, route or None) of a block's feed-forward part."""
    if isinstance(ffn, MRFFFeedForward):
        return ffn(x, real, user, route)
    return ffn(x), None, None


class SequenceCTR(nn.Module):
    """One user's sequential CTR model. Parameter roles come from module structure (see model.roles).

    Subclasses call `__init__` and then `_finish(blocks, final_norm)`; `uses_positions` says whether a
    learned absolute position embedding is added to the input (LLaMA-style models use rotary positions).
    """

    uses_positions = True

    def __init__(self, config: ModelConfig, data: AttributeSource) -> None:
        super().__init__()
        self.config = config
        self.items = AttributeEmbedding(data.item_attributes, config.attribute_dim)
        hidden = self.items.out_dim
        user_dim = config.attribute_dim * data.user_attributes.num_fields
        self.hidden, self.user_dim = hidden, user_dim
        self.user = UserEmbedding(user_dim)
        if self.uses_positions:
            self.positions = nn.Parameter(torch.randn(config.maxlen, hidden))

    def _finish(self, blocks: list[nn.Module], final_norm: nn.Module) -> None:
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = final_norm
        prediction_dims = [2 * self.hidden + self.user_dim, *self.config.prediction_dims]
        self.predict = MLP(prediction_dims, relu_last=True)
        self.output = nn.Linear(prediction_dims[-1], 1)

    def encode(self, seq: torch.Tensor, routes: torch.Tensor | None = None) -> ModelOutput:
        """seq: (maxlen,) item rows. Returns features (maxlen, hidden), gate probs (blocks, groups), routes (blocks,)."""
        dtype = self.output.weight.dtype
        real = (seq != 0).to(dtype)  # (seq,)
        user = self.user()
        x = self.items(seq) * math.sqrt(self.hidden)
        if self.uses_positions:
            x = x + self.positions
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

    def forward(self, seq: torch.Tensor, targets: torch.Tensor, routes: torch.Tensor | None = None) -> ModelOutput:
        """Logits, gate probs (blocks, groups) and routes (blocks,).

        targets (seq,): training, the next item at every position -> logits (seq,).
        targets (): inference, one candidate scored from the last position -> a scalar logit.
        """
        features, probs, routes = self.encode(seq, routes)
        if targets.dim() == 0:
            features = features[-1]  # (hidden,)
        return self.score(features, targets), probs, routes

"""The MRFF feed-forward part (Eqs. 4-5): user-specific FFN plus the routed group FFN.

A gate `softmax(MLP([mean of non-padding positions ; user embedding]))` picks
one group per user per block (argmax). Group FFNs are independent parameters,
stacked as (groups, ...) so that no two groups can alias. The paper adds the
routed group FFN unscaled ("paper"); "scaled" multiplies it by the gate
probability (Switch-style) so the gate also learns from the task loss.
"""

from __future__ import annotations

import torch
from torch import nn

from mrff_secure.model.layers import (
    MLP,
    FeedForward,
    add_group_parameter,
    apply_ffn,
    ffn_parameter_shapes,
    routed_group_weight,
    uniform_init_,
)
from mrff_secure.model.roles import Role


class UserFeedForward(FeedForward):
    """The user-specific FFN. Private: it never leaves the device."""

    parameter_role = Role.PRIVATE


class GroupFeedForwards(nn.Module):
    """`num_groups` independent FFNs of `kind` stacked along dim 0; one is applied per user."""

    parameter_role = Role.GROUP

    def __init__(self, hidden: int, num_groups: int, dropout: float, kind: str = "relu") -> None:
        super().__init__()
        self.num_groups, self.kind = num_groups, kind
        for name, (shape, fan_in) in ffn_parameter_shapes(kind, hidden).items():
            add_group_parameter(self, name, uniform_init_(torch.empty(num_groups, *shape), fan_in))
        self.dropout = dropout

    def forward(self, x: torch.Tensor, route_one_hot: torch.Tensor) -> torch.Tensor:
        weights = {
            name: routed_group_weight(self, name, route_one_hot)
            for name in ffn_parameter_shapes(self.kind, x.shape[-1])
        }
        return apply_ffn(self.kind, weights, x, self.dropout, self.training)


class MRFFFeedForward(nn.Module):
    """Gate + user FFN + group FFNs. Returns the output, the gate probabilities and the route."""

    def __init__(
        self,
        hidden: int,
        user_dim: int,
        num_groups: int,
        gate_hidden_dims: tuple[int, ...],
        dropout: float,
        routing: str,
        kind: str = "relu",
    ) -> None:
        super().__init__()
        self.gate = MLP([hidden + user_dim, *gate_hidden_dims, num_groups])
        self.user_ffn = UserFeedForward(hidden, dropout, kind)
        self.group_ffns = GroupFeedForwards(hidden, num_groups, dropout, kind)
        self.routing = routing

    def forward(
        self, x: torch.Tensor, real: torch.Tensor, user: torch.Tensor, route: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (seq, hidden); real: (seq,) 1.0 at non-padding positions; user: (user_dim,).

        `route` forces the group (used for local steps after the first, so that a
        client trains and uploads one group per round).
        """
        summary = (x * real.unsqueeze(-1)).sum(0) / real.sum().clamp(min=1.0)  # (hidden,)
        probs = self.gate(torch.cat([summary, user])).softmax(-1)  # (groups,)
        if route is None:
            route = probs.argmax()
        one_hot = (torch.arange(probs.shape[0], device=x.device) == route).to(x.dtype)
        group_out = self.group_ffns(x, one_hot)
        if self.routing == "scaled":
            group_out = group_out * (probs * one_hot).sum()
        return self.user_ffn(x) + group_out, probs, route

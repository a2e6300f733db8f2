"""FedPA's model (Zhang et al., IJCAI 2024): a shared CTR network with personalised low-rank adapters.

A shared MLP over [user ; item] (the "foundation" part, trained here from scratch:
no pre-trained recommender exists for KuaiSAR-R) whose every layer gets two
low-rank adapters, one user-level (private, never leaves the device) and one of
the user's group (group role, averaged over the group's users), mixed by an
adaptive gate per user and layer:

    h = relu(W x + b + a * U_u D_u x + (1 - a) * U_g D_g x),   a = sigmoid(mix(u))

The group is picked as MRFF picks it (argmax of softmax(gate(u)), one route per
user; the balance loss applies), so FedPA runs through the same count phase,
update vector and secure sum. Up-projections start at zero: round 0 is the plain
shared network. The item sequence is not used (a non-sequential baseline).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mrff_secure.config import ModelConfig
from mrff_secure.data.client_data import AttributeSource
from mrff_secure.model.layers import (
    MLP,
    ModelOutput,
    UserItemModel,
    add_group_parameter,
    routed_group_weight,
    uniform_init_,
)
from mrff_secure.model.roles import Role

PA_LAYER_DIMS = (64, 32)
PA_RANK = 4


def _adapter_shapes(dims: list[int]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:])):
        shapes[f"down{i}"] = (PA_RANK, fan_in)
        shapes[f"up{i}"] = (fan_out, PA_RANK)
    return shapes


class UserAdapters(nn.Module):
    """The user-level low-rank adapters of every layer. Private: they never leave the device."""

    parameter_role = Role.PRIVATE

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        for name, shape in _adapter_shapes(dims).items():
            init = uniform_init_(torch.empty(shape), shape[1]) if name.startswith("down") else torch.zeros(shape)
            setattr(self, name, nn.Parameter(init))


class GroupAdapters(nn.Module):
    """`num_groups` groups' low-rank adapters of every layer, stacked along dim 0."""

    parameter_role = Role.GROUP

    def __init__(self, dims: list[int], num_groups: int) -> None:
        super().__init__()
        for name, shape in _adapter_shapes(dims).items():
            init = (
                uniform_init_(torch.empty(num_groups, *shape), shape[1])
                if name.startswith("down")
                else torch.zeros(num_groups, *shape)
            )
            add_group_parameter(self, name, init)


class PA(UserItemModel):
    def __init__(self, config: ModelConfig, data: AttributeSource) -> None:
        super().__init__(config, data)
        dims = [self.user_dim + self.hidden, *PA_LAYER_DIMS]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.user_adapters = UserAdapters(dims)
        self.group_adapters = GroupAdapters(dims, config.num_groups)
        self.gate = MLP([self.user_dim, *config.gate_hidden_dims, config.num_groups])
        self.mix = nn.Linear(self.user_dim, len(self.layers))
        self.output = nn.Linear(dims[-1], 1)

    def forward(self, seq: torch.Tensor, targets: torch.Tensor, routes: torch.Tensor | None = None) -> ModelOutput:
        """Logits of `targets`, gate probs (1, groups), route (1,); `routes` forces the group."""
        user = self.user()
        probs = self.gate(user).softmax(-1)
        route = probs.argmax() if routes is None else routes[0]
        one_hot = (torch.arange(probs.shape[0], device=user.device) == route).to(user.dtype)
        mix = torch.sigmoid(self.mix(user))  # (layers,)
        x = torch.cat([user.expand(*targets.shape, self.user_dim), self.items(targets)], dim=-1)
        for i, layer in enumerate(self.layers):
            own = F.linear(F.linear(x, getattr(self.user_adapters, f"down{i}")), getattr(self.user_adapters, f"up{i}"))
            group_down = routed_group_weight(self.group_adapters, f"down{i}", one_hot)
            group_up = routed_group_weight(self.group_adapters, f"up{i}", one_hot)
            group = F.linear(F.linear(x, group_down), group_up)
            x = (layer(x) + mix[i] * own + (1 - mix[i]) * group).relu()
        return self.output(x).squeeze(-1), probs.unsqueeze(0), route.unsqueeze(0)

"""The flat update vector (README, "How it is built") and its inverse.

    [ shared delta | for each block, for each group: group delta (or zeros) |
      for each block: one-hot of the client's group | number of local examples ]

Every client sends every group slot, so the vector's shape never reveals a
client's group. Private parameters have no place in the layout: `UpdateLayout`
is built from the shared and group parameters only, and refuses any other name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mrff_secure.errors import ConfigError
from mrff_secure.model.roles import Role, parameter_roles


@dataclass(frozen=True)
class UpdateLayout:
    shared_names: tuple[str, ...]
    shared_shapes: tuple[tuple[int, ...], ...]
    group_names: tuple[tuple[str, ...], ...]  # per block: names of that block's stacked group parameters
    group_shapes: tuple[tuple[tuple[int, ...], ...], ...]  # per block: shapes without the group dim
    num_groups: int

    @staticmethod
    def from_model(model: nn.Module) -> "UpdateLayout":
        roles = parameter_roles(model)
        params = dict(model.named_parameters())
        shared = [n for n, r in roles.items() if r is Role.SHARED]
        blocks: list[list[str]] = []
        num_groups = 0
        for module_name, module in model.named_modules():
            if getattr(type(module), "parameter_role", None) is Role.GROUP:
                names = [f"{module_name}.{n}" for n, _ in module.named_parameters()]
                sizes = {params[n].shape[0] for n in names}
                if len(sizes) != 1:
                    raise ConfigError(f"group module {module_name} has parameters with different group counts {sizes}")
                num_groups = sizes.pop()
                blocks.append(names)
        return UpdateLayout(
            shared_names=tuple(shared),
            shared_shapes=tuple(tuple(params[n].shape) for n in shared),
            group_names=tuple(tuple(b) for b in blocks),
            group_shapes=tuple(tuple(tuple(params[n].shape[1:]) for n in b) for b in blocks),
            num_groups=num_groups,
        )

    @property
    def num_blocks(self) -> int:
        return len(self.group_names)

    @property
    def shared_size(self) -> int:
        return sum(math.prod(s) for s in self.shared_shapes)

    @property
    def group_size(self) -> int:
        """Size of one group slot (one group's FFN in one block); equal across blocks."""
        sizes = {sum(math.prod(s) for s in b) for b in self.group_shapes}
        return sizes.pop() if sizes else 0

    @property
    def delta_size(self) -> int:
        """Size of the part that is clipped and noised: shared plus every group slot."""
        return self.shared_size + self.num_blocks * self.num_groups * self.group_size

    @property
    def count_size(self) -> int:
        return self.num_blocks * self.num_groups

    @property
    def size(self) -> int:
        return self.delta_size + self.count_size + 1

    def _check_names(self, deltas: dict[str, torch.Tensor]) -> None:
        unknown = set(deltas) - set(self.shared_names) - {n for b in self.group_names for n in b}
        if unknown:
            raise ConfigError(f"parameters {sorted(unknown)} have no place in the update vector (private?)")

    def _check_slot_shapes(self, deltas: dict[str, torch.Tensor], block: int, clients: int) -> None:
        for name, shape in zip(self.group_names[block], self.group_shapes[block]):
            if tuple(deltas[name].shape) != (clients, *shape):
                raise ConfigError(
                    f"group delta {name} has shape {tuple(deltas[name].shape)}, expected "
                    f"{(clients, *shape)}: one routed slot per client"
                )

    def _routed_slots(self, deltas: dict[str, torch.Tensor], block: int, clients: int) -> torch.Tensor:
        """(clients, group_size): each client's change of its routed slot in `block`, the block's names concatenated."""
        self._check_slot_shapes(deltas, block, clients)
        return torch.cat([deltas[name].reshape(clients, -1) for name in self.group_names[block]], dim=-1)

    def _routes(self, routes: torch.Tensor | None) -> torch.Tensor:
        """The clients' routes (clients, blocks); a layout without groups takes None (an empty tensor here)."""
        if routes is None:
            if self.count_size:
                raise ConfigError("a layout with groups needs each client's routes")
            return torch.zeros(0, 0, dtype=torch.long)
        return routes

    def build(
        self,
        deltas: dict[str, torch.Tensor],
        routes: torch.Tensor | None,
        num_examples: torch.Tensor,
        suppressed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Update vectors (clients, size) from per-client deltas: shared (clients, *param shape); group
        (clients, *slot shape), the change of the client's routed slot, placed in that slot (every other slot
        is zero: what a client did not train is never averaged into a group it is not in). `suppressed`
        (blocks, groups) bool zeroes the slots of groups below the minimum size for every client.
        """
        self._check_names(deltas)
        clients = num_examples.shape[0]
        routes = self._routes(routes)
        parts = [deltas[n].reshape(clients, -1) for n in self.shared_names]
        for block in range(self.num_blocks):
            slot = self._routed_slots(deltas, block, clients)
            routed = torch.nn.functional.one_hot(routes[:, block].long(), self.num_groups).to(slot.dtype)
            if suppressed is not None and bool(suppressed[block].any()):
                routed = routed * (~suppressed[block]).to(slot.dtype)
            parts.append((routed.unsqueeze(-1) * slot.unsqueeze(1)).reshape(clients, -1))  # (clients, groups * size)
        if self.count_size:
            one_hot = torch.nn.functional.one_hot(routes.long(), self.num_groups).to(num_examples.dtype)
            parts.append(one_hot.reshape(clients, -1))  # (clients, blocks * groups)
        parts.append(num_examples.reshape(clients, 1))
        return torch.cat(parts, dim=1)

    def build_sum(
        self,
        deltas: dict[str, torch.Tensor],
        routes: torch.Tensor | None,
        num_examples: torch.Tensor,
        suppressed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`build(...).sum(0)` without materialising the (clients, size) vectors: one reduction per parameter
        and per group (the plain simulation's sum when nothing needs the individual vectors)."""
        self._check_names(deltas)
        clients = num_examples.shape[0]
        routes = self._routes(routes)
        parts = [deltas[n].reshape(clients, -1).sum(0) for n in self.shared_names]
        for block in range(self.num_blocks):
            self._check_slot_shapes(deltas, block, clients)
            routed = torch.nn.functional.one_hot(routes[:, block].long(), self.num_groups).to(num_examples.dtype)
            if suppressed is not None and bool(suppressed[block].any()):
                routed = routed * (~suppressed[block]).to(routed.dtype)
            # per name, the same (clients, groups, n) reduction as `build(...).sum(0)`: the same float sums
            per_name = [
                (routed.unsqueeze(-1) * deltas[n].reshape(clients, 1, -1)).sum(0) for n in self.group_names[block]
            ]
            parts.append(torch.cat(per_name, dim=-1).reshape(-1))  # (groups * group_size,)
        if self.count_size:
            parts.append(
                torch.nn.functional.one_hot(routes.long(), self.num_groups).to(num_examples.dtype).sum(0).reshape(-1)
            )
        parts.append(num_examples.sum().reshape(1))
        return torch.cat(parts)

    def split(
        self, vector: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Inverse of `build` for one vector (e.g. a sum): shared parts, group parts, counts, example count.

        Group parts come back stacked (groups, *shape) per name; counts are (blocks, groups).
        """
        if vector.shape != (self.size,):
            raise ConfigError(f"update vector has shape {tuple(vector.shape)}, layout expects ({self.size},)")
        offset = 0
        shared = {}
        for name, shape in zip(self.shared_names, self.shared_shapes):
            n = math.prod(shape)
            shared[name] = vector[offset : offset + n].view(shape)
            offset += n
        groups = {}
        for names, shapes in zip(self.group_names, self.group_shapes):
            block = vector[offset : offset + self.num_groups * self.group_size].view(self.num_groups, self.group_size)
            inner = 0
            for name, shape in zip(names, shapes):
                n = math.prod(shape)
                groups[name] = block[:, inner : inner + n].reshape(self.num_groups, *shape)
                inner += n
            offset += self.num_groups * self.group_size
        counts = vector[offset : offset + self.count_size].view(self.num_blocks, self.num_groups)
        offset += self.count_size
        return shared, groups, counts, vector[offset]

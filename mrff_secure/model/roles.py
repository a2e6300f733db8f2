"""Parameter roles, decided by module structure: a module class declares the role of its parameters.

private: never leaves the device (user embedding, user-specific FFN).
group:   one slot per group, averaged over the users routed to it (group FFNs).
shared:  everything else, averaged over all participating users.
"""

from __future__ import annotations

import enum

from torch import nn


class Role(enum.Enum):
    PRIVATE = "private"
    GROUP = "group"
    SHARED = "shared"


def parameter_roles(model: nn.Module) -> dict[str, Role]:
    """Role of every parameter: the `parameter_role` of its innermost declaring module, else shared."""
    roles: dict[str, Role] = {}

    def visit(module: nn.Module, prefix: str, inherited: Role) -> None:
        role = getattr(type(module), "parameter_role", None) or inherited
        for name, _ in module.named_parameters(recurse=False):
            roles[prefix + name] = role
        for child_name, child in module.named_children():
            visit(child, f"{prefix}{child_name}.", role)

    visit(model, "", Role.SHARED)
    return roles

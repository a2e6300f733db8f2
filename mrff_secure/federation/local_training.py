"""Vectorized local training: every sampled client's local steps in one batched pass.

`torch.func.vmap` over `torch.func.grad` of one client's loss: shared and group
parameters enter unbatched at the first step (every client starts from the
global model) and batched after it; private parameters are always batched.
The optimizer (Adam or SGD, fresh each round) is written elementwise over the
stacked tensors, matching `torch.optim.Adam` / `torch.optim.SGD` step for step
(with a weight decay: `torch.optim.AdamW` / SGD's, which for SGD is the same).

Group parameters are trained through their routed slot only: the stacked
(groups, *shape) tensors enter undifferentiated and the gradient is taken with
respect to each client's routed change (`model.layers.add_group_parameter`),
so a client's group gradient, optimizer state and delta have one group's size.
That is the per-client loop's computation restricted to what a client sends:
the other slots' gradients are exactly zero and their deltas (a weight decay
alone) are never sent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from mrff_secure.model.layers import ROUTED_CHANGE_SUFFIX
from mrff_secure.round.update_vector import UpdateLayout

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def client_loss(
    model: nn.Module,
    params: dict[str, torch.Tensor],
    seq: torch.Tensor,
    target: torch.Tensor,
    label: torch.Tensor,
    group_fractions: torch.Tensor | None,
    balance_alpha: float,
    routes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 8 for one user: BCE over the non-padding positions + alpha * N * sum_l sum_i f_i^l p_i^l (Eq. 7).

    Returns (loss, routes); routes is an empty tensor without MRFF.
    """
    logits, probs, routes = functional_call(model, params, (seq, target, routes))
    real = (target != 0).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, label, reduction="none")
    loss = (bce * real).sum() / real.sum().clamp(min=1.0)
    if probs is None:
        return loss, torch.zeros(0, dtype=torch.long)
    if balance_alpha:
        loss = loss + balance_alpha * probs.shape[-1] * (group_fractions * probs).sum()
    return loss, routes


@dataclass
class LocalResult:
    deltas: dict[str, torch.Tensor]  # shared: (clients, *shape) final - global; group: (clients, *slot shape),
    #                                   the change of each client's routed slot
    private: dict[str, torch.Tensor]  # private: (clients, *shape) after training
    routes: torch.Tensor  # (clients, blocks) long; (clients, 0) without MRFF


def _adam_step(
    g: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None, step: int, lr: float
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """The change Adam makes to a parameter at `step` (1-based), as torch.optim.Adam computes it, and its new
    state. (A single local step takes `_first_adam_changes_`, which keeps no state.)"""
    beta1, beta2 = ADAM_BETAS
    m, v = state if state is not None else (torch.zeros_like(g), torch.zeros_like(g))
    m = m * beta1 + (1 - beta1) * g
    v = v * beta2 + (1 - beta2) * g * g
    bias1, bias2 = 1 - beta1**step, 1 - beta2**step
    denom = v.sqrt() / (bias2**0.5) + ADAM_EPS
    return -(lr / bias1) * m / denom, (m, v)


def _first_adam_changes_(grads: list[torch.Tensor], lr: float) -> None:
    """Adam's change at the first step from a fresh state, in place on every gradient at once.

    There m_hat = g and v_hat = g^2, so the change is -lr * g / (|g| + eps) (torch.optim.Adam's arithmetic);
    torch._foreach_* makes one call per operation for all tensors (the hot path of the paper's one-step setup).
    """
    denoms = torch._foreach_abs(grads)
    torch._foreach_add_(denoms, ADAM_EPS)
    torch._foreach_div_(grads, denoms)
    torch._foreach_mul_(grads, -lr)


def train_clients(
    model: nn.Module,
    global_params: dict[str, torch.Tensor],
    private: dict[str, torch.Tensor],
    seq: torch.Tensor,
    target: torch.Tensor,
    label: torch.Tensor,
    group_fractions: torch.Tensor | None,
    *,
    balance_alpha: float,
    local_steps: int,
    optimizer: str,
    lr: float,
    weight_decay: float = 0.0,
) -> LocalResult:
    """Train a chunk of clients. private: (clients, *shape); seq/target/label: (clients, maxlen).

    `weight_decay` is decoupled: every step also moves each parameter by -lr * weight_decay * its value.
    """
    layout = UpdateLayout.from_model(model)
    group_block = {n: block for block, names in enumerate(layout.group_names) for n in names}
    stacked = {n: global_params[n] for n in group_block}  # enter undifferentiated
    change_of = {n: n + ROUTED_CHANGE_SUFFIX for n in group_block}
    base = {n: t for n, t in global_params.items() if n not in group_block}
    base.update(
        {change_of[n]: torch.zeros(global_params[n].shape[1:], dtype=global_params[n].dtype) for n in group_block}
    )
    names = list(base) + list(private)  # what is differentiated: shared, routed changes, private
    deltas: dict[str, torch.Tensor] = {}  # accumulated change per name, (clients, *shape)
    state: dict[str, tuple | None] = {}
    routes = None
    routed_global: dict[str, torch.Tensor] = {}  # group name -> (clients, *slot shape), once routes are known

    def loss_fn(
        p: dict[str, torch.Tensor],
        fixed: dict[str, torch.Tensor],
        s: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        r: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return client_loss(model, {**p, **fixed}, s, t, y, group_fractions, balance_alpha, r)

    for step in range(1, local_steps + 1):
        if step == 1:
            params = {**base, **private}
            in_dims = {n: (0 if n in private else None) for n in names}
        else:
            params = {n: (base[n] if n in base else private[n]) + deltas[n] for n in names}
            in_dims = {n: 0 for n in names}
        grads, step_routes = vmap(
            grad(loss_fn, has_aux=True),
            in_dims=(in_dims, None, 0, 0, 0, None if routes is None else 0),
            randomness="different",
        )(params, stacked, seq, target, label, routes)
        if routes is None and step_routes.numel():
            routes = step_routes  # the route of the first step holds for the whole round
            if weight_decay:
                routed_global = {n: t[routes[:, group_block[n]]] for n, t in stacked.items()}
        one_step_adam = optimizer == "adam" and step == local_steps == 1  # the hot path: the paper's setup
        if one_step_adam:
            _first_adam_changes_([grads[n] for n in names], lr)  # in place: the gradients become the changes
        for n in names:
            if one_step_adam:
                change = grads[n]
            elif optimizer == "sgd":
                change = grads[n].mul_(-lr)
            else:
                change, state[n] = _adam_step(grads[n], state.get(n), step, lr)
            if weight_decay:
                change = change.sub_(params[n], alpha=lr * weight_decay)
            deltas[n] = change if n not in deltas else deltas[n].add_(change)
        if weight_decay:  # a routed change decays with its slot's value: the routed global weight plus the change
            for n in group_block:
                deltas[change_of[n]].sub_(routed_global[n], alpha=lr * weight_decay)
    clients = seq.shape[0]
    return LocalResult(
        deltas={n: deltas[change_of.get(n, n)] for n in global_params},
        private={n: private[n] + deltas[n] for n in private},
        routes=routes if routes is not None else torch.zeros(clients, 0, dtype=torch.long),
    )


def predict_clients(
    model: nn.Module,
    global_params: dict[str, torch.Tensor],
    private: dict[str, torch.Tensor],
    seq: torch.Tensor,
    candidate: torch.Tensor,
) -> torch.Tensor:
    """Click probabilities (clients,) of one candidate per client, scored from the last position.

    The model must be in eval mode.
    """
    params = {**global_params, **private}
    in_dims = ({n: (0 if n in private else None) for n in params}, 0, 0)

    def logit(p: dict[str, torch.Tensor], s: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return functional_call(model, p, (s, c))[0]

    with torch.no_grad():
        return torch.sigmoid(vmap(logit, in_dims=in_dims)(params, seq, candidate))

"""Vectorized local training: every sampled client's local steps in one batched pass.

`torch.func.vmap` over `torch.func.grad` of one client's loss: shared and group
parameters enter unbatched at the first step (every client starts from the
global model) and batched after it; private parameters are always batched.
The optimizer (Adam or SGD, fresh each round) is written elementwise over the
stacked tensors, matching `torch.optim.Adam` / `torch.optim.SGD` step for step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def client_loss(model: nn.Module, params: dict[str, torch.Tensor], seq: torch.Tensor, target: torch.Tensor,
                label: torch.Tensor, group_fractions: torch.Tensor | None, balance_alpha: float,
                routes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
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
    deltas: dict[str, torch.Tensor]  # shared and group: (clients, *shape) final - global
    private: dict[str, torch.Tensor]  # private: (clients, *shape) after training
    routes: torch.Tensor  # (clients, blocks) long; (clients, 0) without MRFF


def _optimizer_step(name: str, p: torch.Tensor, g: torch.Tensor, state: dict, step: int, optimizer: str,
                    lr: float) -> torch.Tensor:
    if optimizer == "sgd":
        return p - lr * g
    beta1, beta2 = ADAM_BETAS
    m, v = state.get(name, (torch.zeros_like(g), torch.zeros_like(g)))
    m = m * beta1 + (1 - beta1) * g
    v = v * beta2 + (1 - beta2) * g * g
    state[name] = (m, v)
    bias1, bias2 = 1 - beta1 ** step, 1 - beta2 ** step
    denom = v.sqrt() / (bias2 ** 0.5) + ADAM_EPS
    return p - (lr / bias1) * m / denom


def train_clients(model: nn.Module, global_params: dict[str, torch.Tensor], private: dict[str, torch.Tensor],
                  seq: torch.Tensor, target: torch.Tensor, label: torch.Tensor,
                  group_fractions: torch.Tensor | None, *, balance_alpha: float, local_steps: int,
                  optimizer: str, lr: float) -> LocalResult:
    """Train a chunk of clients. private: (clients, *shape); seq/target/label: (clients, maxlen)."""
    params = {**global_params, **private}
    batched = {name: name in private for name in params}
    state: dict = {}
    routes = None

    def loss_fn(p, s, t, y, r):
        return client_loss(model, p, s, t, y, group_fractions, balance_alpha, r)

    for step in range(1, local_steps + 1):
        in_dims = ({n: (0 if b else None) for n, b in batched.items()}, 0, 0, 0, None if routes is None else 0)
        grads, step_routes = vmap(grad(loss_fn, has_aux=True), in_dims=in_dims, randomness="different")(
            params, seq, target, label, routes
        )
        if routes is None:
            routes = step_routes if step_routes.numel() else None
        params = {n: _optimizer_step(n, params[n], grads[n], state, step, optimizer, lr) for n in params}
        batched = {n: True for n in params}
    deltas = {n: params[n] - global_params[n] for n in global_params}
    clients = seq.shape[0]
    return LocalResult(
        deltas=deltas,
        private={n: params[n].detach() for n in private},
        routes=routes if routes is not None else torch.zeros(clients, 0, dtype=torch.long),
    )


def predict_clients(model: nn.Module, global_params: dict[str, torch.Tensor], private: dict[str, torch.Tensor],
                    seq: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
    """Click probabilities (clients,) of one candidate per client (the model must be in eval mode).

    The candidate is scored from the last position: it is the target there.
    """
    params = {**global_params, **private}
    in_dims = ({n: (0 if n in private else None) for n in params}, 0, 0)
    targets = torch.zeros_like(seq)
    targets[:, -1] = candidate

    def last_logit(p, s, t):
        logits, _, _ = functional_call(model, p, (s, t))
        return logits[-1]

    with torch.no_grad():
        return torch.sigmoid(vmap(last_logit, in_dims=in_dims)(params, seq, targets))

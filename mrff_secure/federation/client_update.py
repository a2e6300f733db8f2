"""One network client's local work in a round: the model it rebuilds from the announced configuration, its
starting private part, the training of its user (a chunk of one of `train_clients`) and its held-out scores.
What it then uploads is `round.participant`'s, as in the simulation; torch (dropout) is seeded from
`torch_seed(...)`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch

from mrff_secure.config import ModelConfig
from mrff_secure.data.client_data import AttributeSource, ClientData
from mrff_secure.errors import ConfigError
from mrff_secure.federation.local_training import predict_clients, train_clients
from mrff_secure.model import build_model
from mrff_secure.model.layers import initial_user_vectors
from mrff_secure.model.roles import Role, parameter_roles
from mrff_secure.round.spec import RoundSpec


def model_config_json(config: ModelConfig) -> str:
    return json.dumps(asdict(config), sort_keys=True)


def model_config_from_json(text: str) -> ModelConfig:
    try:
        fields = json.loads(text)
        if not isinstance(fields, dict):
            raise ValueError("not an object")
        for key in ("gate_hidden_dims", "prediction_dims"):
            if key in fields:
                fields[key] = tuple(fields[key])
        return ModelConfig(**fields)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"model configuration is not valid: {exc}") from exc


def build_global(
    config: ModelConfig, data: AttributeSource, model_seed: int
) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The model and its initial shared and group parameters (as FederatedSimulation builds them)."""
    torch.manual_seed(model_seed)
    model = build_model(config, data)
    roles = parameter_roles(model)
    params = {n: p.detach().clone() for n, p in model.named_parameters() if roles[n] is not Role.PRIVATE}
    return model, params


def initial_private(
    model: torch.nn.Module, data: ClientData, config: ModelConfig, model_seed: int, user: int
) -> dict[str, torch.Tensor]:
    """User `user`'s starting private parameters (no batch dimension)."""
    roles = parameter_roles(model)
    vectors = initial_user_vectors(
        data.user_attributes, config.attribute_dim, torch.Generator().manual_seed(model_seed + 1)
    )  # (users, dim)
    out = {}
    for n, p in model.named_parameters():
        if roles[n] is Role.PRIVATE:
            out[n] = vectors[user].clone() if n == "user.vector" else p.detach().clone()
    return out


def torch_seed(client_seed: int, round_id: int, user: int) -> int:
    digest = hashlib.sha256(f"mrff-dropout|{client_seed}|{round_id}|{user}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class LocalUpdate:
    deltas: dict[str, torch.Tensor]  # (1, *shape)
    private: dict[str, torch.Tensor]  # no batch dimension
    routes: torch.Tensor  # (1, blocks)
    num_examples: torch.Tensor  # (1,)


def train_user(
    model: torch.nn.Module,
    global_params: Mapping[str, torch.Tensor],
    private: Mapping[str, torch.Tensor],
    data: ClientData,
    user: int,
    group_fractions: torch.Tensor | None,
    spec: RoundSpec,
    config: ModelConfig,
    seed: int,
) -> LocalUpdate:
    """Train one user's local steps from the global model (a chunk of one client)."""
    dtype = next(iter(global_params.values())).dtype
    idx = slice(user, user + 1)
    seq = torch.as_tensor(data.train_seq[idx])
    target = torch.as_tensor(data.train_target[idx])
    label = torch.as_tensor(data.train_label[idx]).to(dtype)
    torch.manual_seed(seed)
    model.train()
    result = train_clients(
        model,
        dict(global_params),
        {n: t.unsqueeze(0) for n, t in private.items()},
        seq,
        target,
        label,
        group_fractions,
        balance_alpha=config.balance_alpha,
        local_steps=spec.local_steps,
        optimizer=spec.optimizer,
        lr=spec.lr,
    )
    examples = (target != 0).sum(1).to(dtype)  # (1,)
    return LocalUpdate(result.deltas, {n: t[0].clone() for n, t in result.private.items()}, result.routes, examples)


def evaluate_user(
    model: torch.nn.Module,
    global_params: Mapping[str, torch.Tensor],
    private: Mapping[str, torch.Tensor],
    data: ClientData,
    user: int,
) -> dict[str, tuple[float, int]]:
    """The user's click probability and label of its held-out item of each split (val, test), with the
    model it received and its private part: its input to the federated evaluation (evaluation_sum)."""
    model.eval()
    idx = slice(user, user + 1)
    batch = {n: t.unsqueeze(0) for n, t in private.items()}
    out = {}
    for split in ("val", "test"):
        probability = predict_clients(
            model,
            dict(global_params),
            batch,
            torch.as_tensor(getattr(data, f"{split}_seq")[idx]),
            torch.as_tensor(getattr(data, f"{split}_item")[idx]),
        )
        out[split] = (float(probability[0]), int(getattr(data, f"{split}_label")[user]))
    return out

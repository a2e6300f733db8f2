"""One network client's local work in a round: the model it rebuilds from the announced configuration, its
starting private part, the training of its user (a chunk of one of `train_clients`) and its held-out scores.
What it then uploads is `round.participant`'s, as in the simulation; torch (dropout) is seeded from
`torch_seed(...)`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch

from mrff_secure.config import SEQUENTIAL_BACKBONES, ModelConfig
from mrff_secure.data.client_data import AttributeSource, ClientData
from mrff_secure.errors import ConfigError
from mrff_secure.federation.local_training import predict_clients, train_clients
from mrff_secure.model import build_model
from mrff_secure.model.layers import initial_user_vectors
from mrff_secure.model.roles import Role, parameter_roles
from mrff_secure.round.spec import RoundSpec


def model_config_json(config: ModelConfig) -> str:
    return json.dumps(asdict(config), sort_keys=True)


MAX_MODEL_CONFIG_CHARS = 16 * 1024
"""Longest model configuration JSON a client reads (the real one is a few hundred characters)."""
MAX_MODEL_PARAMETERS = 1 << 27
"""Largest model a client builds: 128 Mi parameters (512 MiB at float32). The shared part travels in one
announcement (at most limits.MAX_ANNOUNCEMENT_BYTES = 256 MiB, 64 Mi float32 values); the cap leaves as
much again for the client's private part and the item tables."""
MAX_LAYERS = 8
"""Most hidden layers of the gate and prediction MLPs."""
MAX_LAYER_WIDTH = 16_384
"""Widest hidden layer of the gate and prediction MLPs."""
_INT_FIELDS = {"attribute_dim": 1024, "num_blocks": 64, "num_heads": 256, "maxlen": 8192, "num_groups": 1024}
_FLOAT_FIELDS = ("dropout", "balance_alpha")
_BOOL_FIELDS = ("mrff", "ffn_residual")
_STR_FIELDS = ("backbone", "routing")
_LAYER_FIELDS = ("gate_hidden_dims", "prediction_dims")


def _field(name: str, value: object) -> object:
    """One announced field, checked for type and size before anything is built from it."""
    if name in _INT_FIELDS:
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= _INT_FIELDS[name]:
            raise ConfigError(
                f"model configuration: {name} must be an integer in [1, {_INT_FIELDS[name]}], got {value!r}"
            )
        return value
    if name in _FLOAT_FIELDS:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ConfigError(f"model configuration: {name} must be a finite number, got {value!r}")
        return float(value)
    if name in _BOOL_FIELDS:
        if not isinstance(value, bool):
            raise ConfigError(f"model configuration: {name} must be true or false, got {value!r}")
        return value
    if name in _STR_FIELDS:
        if not isinstance(value, str) or len(value) > 64:
            raise ConfigError(f"model configuration: {name} must be a short string, got {value!r:.80}")
        return value
    if name in _LAYER_FIELDS:
        if (
            not isinstance(value, list)
            or len(value) > MAX_LAYERS
            or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_LAYER_WIDTH for v in value)
        ):
            raise ConfigError(
                f"model configuration: {name} must be a list of at most {MAX_LAYERS} integers in "
                f"[1, {MAX_LAYER_WIDTH}], got {value!r:.80}"
            )
        return tuple(value)
    raise ConfigError(f"model configuration: unknown field {name!r:.80}")


def model_config_from_json(text: str, data: AttributeSource | None = None) -> ModelConfig:
    """The announced model configuration, every field checked for type and size before any model is built
    (a hostile server's configuration is refused by name, never allocated). With `data` (the client's own
    attribute tables) also: maxlen matches the data's, the heads divide the hidden size, and the model's
    parameter count is at most MAX_MODEL_PARAMETERS."""
    if not isinstance(text, str) or len(text) > MAX_MODEL_CONFIG_CHARS:
        size = len(text) if isinstance(text, str) else type(text).__name__
        raise ConfigError(f"model configuration: at most {MAX_MODEL_CONFIG_CHARS} characters of JSON, got {size}")
    try:
        fields = json.loads(text, parse_constant=lambda c: math.nan)
    except ValueError as exc:
        raise ConfigError(f"model configuration is not valid JSON: {exc}") from exc
    if not isinstance(fields, dict):
        raise ConfigError(f"model configuration must be a JSON object, got {type(fields).__name__}")
    checked = {name: _field(name, value) for name, value in fields.items()}
    try:
        config = ModelConfig(**checked)  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"model configuration is not valid: {exc}") from exc
    lower = minimum_parameter_count(config)
    if lower > MAX_MODEL_PARAMETERS:
        raise ConfigError(
            f"model configuration: num_blocks {config.num_blocks} x attribute_dim {config.attribute_dim} (maxlen "
            f"{config.maxlen}) make at least {lower:,} parameters, over the cap of {MAX_MODEL_PARAMETERS:,}"
        )
    if data is not None:
        maxlen = getattr(data, "maxlen", None)
        if maxlen is not None and config.maxlen != maxlen:
            raise ConfigError(f"model configuration: maxlen {config.maxlen} is not this data's history length {maxlen}")
        check_model_size(config, data)
    return config


def minimum_parameter_count(config: ModelConfig) -> int:
    """A lower bound on the parameters of any model built from `config`, from the configuration alone: the
    hidden size is at least attribute_dim (one item attribute field), each sequential block holds at least
    its attention's 4 h^2 + 4 h, and the position table maxlen x h."""
    if config.backbone not in SEQUENTIAL_BACKBONES:
        return 0
    h = config.attribute_dim
    return config.num_blocks * (4 * h * h + 4 * h) + config.maxlen * h


def check_model_size(config: ModelConfig, data: AttributeSource) -> int:
    """Refuse (ConfigError naming the field) a configuration whose heads do not divide the hidden size of
    `data`'s items or whose model has more than MAX_MODEL_PARAMETERS parameters; returns the parameter count.
    The count builds the model on torch's meta device: shapes only, no memory for values."""
    hidden = config.attribute_dim * len(data.item_attributes.vocab_sizes)
    if config.backbone in SEQUENTIAL_BACKBONES and hidden % config.num_heads:
        raise ConfigError(
            f"model configuration: num_heads {config.num_heads} does not divide the hidden size {hidden} "
            f"(attribute_dim {config.attribute_dim} x {len(data.item_attributes.vocab_sizes)} item fields)"
        )
    with torch.device("meta"):
        count = sum(p.numel() for p in build_model(config, data).parameters())
    if count > MAX_MODEL_PARAMETERS:
        raise ConfigError(
            f"model configuration: {count:,} parameters (attribute_dim {config.attribute_dim}, num_blocks "
            f"{config.num_blocks}, num_groups {config.num_groups}, prediction_dims {config.prediction_dims}) "
            f"is over the cap of {MAX_MODEL_PARAMETERS:,}"
        )
    return count


def build_global(
    config: ModelConfig, data: AttributeSource, model_seed: int
) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The model and its initial shared and group parameters (as FederatedSimulation builds them)."""
    check_model_size(config, data)  # before any allocation
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
        weight_decay=spec.weight_decay,
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

"""One client's round and the server's update, as pure functions shared by the network client
(`client/`), the coordinator (`server/`) and the in-memory reference run that tests compare them to.

Client: train one user (a chunk of 1 of `train_clients`). The secure encoding of its update
(clip, rotate, round, discrete noise share on every coordinate, one-hots only in phase 1) lives in
`federation.client_encoding`, shared with the simulation; `round_plans`, `update_vector`,
`plan_configs`, `public_rotation_seed` and `apply_decoded` below connect a `RoundSpec` and a
`LocalUpdate` to it (network client and coordinator). DP noise and rounding come from
`client_encoding.secure_generator()` (OS entropy); torch (dropout) is seeded from `torch_seed(...)`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np
import torch

from mrff_secure.config import ModelConfig
from mrff_secure.data.client_data import ClientData
from mrff_secure.errors import ConfigError
from mrff_secure.federation.aggregation import apply_sum
from mrff_secure.federation.client_encoding import SecureRoundPlans, secure_round_plans
from mrff_secure.federation.local_training import train_clients
from mrff_secure.model.roles import Role, parameter_roles
from mrff_secure.federation.update_vector import UpdateLayout
from mrff_secure.model import build_model
from mrff_secure.model.layers import initial_user_vectors
from mrff_secure.secagg.config import SecAggConfig

DP_MODES = ("off", "local", "distributed")


@dataclass(frozen=True)
class RoundSpec:
    """What every participant of a round must agree on besides the model (sent signed by the server)."""

    local_steps: int = 1
    optimizer: str = "adam"
    lr: float = 0.1
    dp_mode: str = "off"
    clip: float = 1.0
    noise_multiplier: float = 0.0
    min_survivors: int = 1  # distributed mode: each client's noise is sized for this many survivors
    quant_range: float = 1.0
    levels: int = 4096
    max_examples: int = 65
    min_group_size: int = 5
    mechanism: str = "discrete_gaussian"  # secure rounds: the integer noise of the distributed mode
    modulus_bits: int = 32  # secure rounds: the ring Z_{2^b} of the secure sums
    count_cap: int = 65  # the example count is uploaded as min(count, cap) / cap

    def __post_init__(self) -> None:
        if self.dp_mode not in DP_MODES:
            raise ConfigError(f"dp mode must be one of {DP_MODES}, got {self.dp_mode!r}")
        for name in ("clip", "quant_range", "lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ConfigError(f"noise_multiplier must be finite and >= 0, got {self.noise_multiplier!r}")
        for name in ("local_steps", "levels", "max_examples", "min_survivors"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        if not isinstance(self.min_group_size, int) or self.min_group_size < 2:
            raise ConfigError(f"min_group_size must be an int >= 2 (a group of one leaks), got {self.min_group_size!r}")
        if self.mechanism not in ("discrete_gaussian", "skellam"):
            raise ConfigError(f"mechanism must be 'discrete_gaussian' or 'skellam', got {self.mechanism!r}")
        if isinstance(self.modulus_bits, bool) or not isinstance(self.modulus_bits, int) \
                or not 8 <= self.modulus_bits <= 62:
            raise ConfigError(f"modulus_bits must be an int in [8, 62], got {self.modulus_bits!r}")
        if isinstance(self.count_cap, bool) or not isinstance(self.count_cap, int) or self.count_cap < 1:
            raise ConfigError(f"count_cap must be an int >= 1, got {self.count_cap!r}")


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


def build_global(config: ModelConfig, data: ClientData, model_seed: int) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The model and its initial shared and group parameters (as FederatedSimulation builds them)."""
    torch.manual_seed(model_seed)
    model = build_model(config, data)
    roles = parameter_roles(model)
    params = {n: p.detach().clone() for n, p in model.named_parameters() if roles[n] is not Role.PRIVATE}
    return model, params


def initial_private(model: torch.nn.Module, data: ClientData, config: ModelConfig, model_seed: int,
                    user: int) -> dict[str, torch.Tensor]:
    """User `user`'s starting private parameters (no batch dimension)."""
    roles = parameter_roles(model)
    vectors = initial_user_vectors(data.user_attributes, config.attribute_dim,
                                   torch.Generator().manual_seed(model_seed + 1))  # (users, dim)
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


def train_user(model: torch.nn.Module, global_params: Mapping[str, torch.Tensor], private: Mapping[str, torch.Tensor],
               data: ClientData, user: int, group_fractions: torch.Tensor | None, spec: RoundSpec,
               config: ModelConfig, seed: int) -> LocalUpdate:
    """Train one user's local steps from the global model (a chunk of one client)."""
    dtype = next(iter(global_params.values())).dtype
    idx = slice(user, user + 1)
    seq = torch.as_tensor(data.train_seq[idx])
    target = torch.as_tensor(data.train_target[idx])
    label = torch.as_tensor(data.train_label[idx]).to(dtype)
    torch.manual_seed(seed)
    model.train()
    result = train_clients(model, dict(global_params), {n: t.unsqueeze(0) for n, t in private.items()}, seq, target,
                           label, group_fractions, balance_alpha=config.balance_alpha, local_steps=spec.local_steps,
                           optimizer=spec.optimizer, lr=spec.lr)
    examples = (target != 0).sum(1).to(dtype)  # (1,)
    return LocalUpdate(result.deltas, {n: t[0].clone() for n, t in result.private.items()}, result.routes, examples)


def evaluate_user(model: torch.nn.Module, global_params: Mapping[str, torch.Tensor],
                  private: Mapping[str, torch.Tensor], data: ClientData, user: int) -> dict[str, tuple[float, int]]:
    """The user's click probability and label of its held-out item of each split (val, test), with the
    model it received and its private part: its input to the federated evaluation (evaluation_sum)."""
    from mrff_secure.federation.local_training import predict_clients

    model.eval()
    idx = slice(user, user + 1)
    batch = {n: t.unsqueeze(0) for n, t in private.items()}
    out = {}
    for split in ("val", "test"):
        probability = predict_clients(model, dict(global_params), batch, torch.as_tensor(getattr(data, f"{split}_seq")[idx]),
                                      torch.as_tensor(getattr(data, f"{split}_item")[idx]))
        out[split] = (float(probability[0]), int(getattr(data, f"{split}_label")[user]))
    return out


def counts_input(layout: UpdateLayout, update: LocalUpdate) -> np.ndarray:
    """Phase-1 input before encoding: (blocks * groups,) int64 one-hot of the user's group per block."""
    hot = torch.nn.functional.one_hot(update.routes[0].long(), layout.num_groups)  # (blocks, groups)
    return hot.reshape(-1).numpy().astype(np.int64)


def suppressed_groups(counts: np.ndarray, layout: UpdateLayout, min_group_size: int) -> np.ndarray:
    """(blocks, groups) bool: the slots every client zeroes because the group is too small to hide a user."""
    return np.asarray(counts, dtype=np.int64).reshape(layout.num_blocks, layout.num_groups) < min_group_size


@dataclass(frozen=True)
class AppliedRound:
    params: dict[str, torch.Tensor]
    group_counts: np.ndarray  # (blocks, groups) of the phase-1 counts the step averaged with
    group_fractions: torch.Tensor | None
    examples: float  # the summed example counts (scaled to [0, 1] each and noisy in secure rounds)


# ----------------------------------------------------------------- secure rounds over the network


def round_plans(spec: RoundSpec, layout: UpdateLayout, num_clients: int) -> SecureRoundPlans:
    """The two integer plans of a secure round, from its public parameters only: the server sizes the
    secure sums with them, and each client computes them itself and compares (never trusting the
    announced lengths). Same function as the simulation's secure path (client_encoding)."""
    if spec.dp_mode == "local":
        raise ConfigError("local DP has no secure sum; the network runs DP under secure aggregation "
                          "(--dp distributed) or none (--dp off)")
    return secure_round_plans(delta_size=layout.delta_size, num_blocks=layout.num_blocks if layout.num_groups else 0,
                              num_groups=layout.num_groups, dp_mode=spec.dp_mode, mechanism=spec.mechanism,
                              clip=spec.clip, noise_multiplier=spec.noise_multiplier if spec.dp_mode != "off" else 0.0,
                              n_clients=num_clients, n_min=spec.min_survivors if spec.dp_mode == "distributed" else 1,
                              modulus_bits=spec.modulus_bits, count_cap=spec.count_cap)


def public_rotation_seed(model_seed: int, round_index: int, phase: int) -> int:
    """The public seed of a phase's random rotation, shared by every client and the server (and by the
    simulation: `PrivacyPipeline` derives it the same way from the run seed)."""
    return int(np.random.SeedSequence([model_seed, round_index, phase, 23]).generate_state(1)[0])


def update_vector(layout: UpdateLayout, update: LocalUpdate, suppressed: np.ndarray, count_cap: int) -> np.ndarray:
    """The phase-2 float vector of one client: deltas, one-hots (zeroed by the encoder), the example
    count scaled to min(count, cap) / cap; slots of suppressed groups zeroed. (layout.size,) float64."""
    mask = torch.as_tensor(np.asarray(suppressed, dtype=bool)) if layout.num_groups else None
    examples = update.num_examples.clamp(max=float(count_cap)) / float(count_cap)  # as PrivacyPipeline.scaled_examples
    vector = layout.build(update.deltas, update.routes, examples, mask)[0]  # (size,)
    return vector.detach().to(torch.float64).numpy()


def plan_configs(plans: SecureRoundPlans, num_clients: int, *,
                 options: Mapping[str, int] | None = None) -> tuple[SecAggConfig, SecAggConfig]:
    """(phase-1 config, phase-2 config): the secure sums sized by the round's plans. Without groups,
    phase 1 sums one zero per client (it only fixes the survivors the update phase is bound to)."""
    extra = dict(options or {})
    if plans.counts is None:
        counts = SecAggConfig(num_clients=num_clients, vector_length=1, max_abs=1, **extra)
    else:
        counts = SecAggConfig(num_clients=num_clients, vector_length=plans.counts.padded_dim,
                              max_abs=plans.counts_max_abs, modulus_bits=plans.counts.modulus_bits, **extra)
    update = SecAggConfig(num_clients=num_clients, vector_length=plans.update.padded_dim,
                          max_abs=plans.update_max_abs, modulus_bits=plans.update.modulus_bits, **extra)
    return counts, update


def apply_decoded(global_params: Mapping[str, torch.Tensor], layout: UpdateLayout, summed: np.ndarray, *,
                  survivors: int, phase1_survivors: int, counts: np.ndarray, suppressed: np.ndarray) -> AppliedRound:
    """The global step from a decoded phase-2 sum (float, layout.size): shared parts divided by the
    survivors, group slots by their phase-1 counts (0 where suppressed: the FFN stays), exactly as the
    simulation's secure path does; next round's fractions = phase-1 counts / phase-1 survivors."""
    dtype = next(iter(global_params.values())).dtype
    total = torch.as_tensor(np.asarray(summed, dtype=np.float64), dtype=dtype)
    if total.shape != (layout.size,):
        raise ConfigError(f"decoded sum has shape {tuple(total.shape)}, layout expects ({layout.size},)")
    group_counts = torch.as_tensor(np.asarray(counts), dtype=dtype)
    if layout.num_groups:
        averaging = group_counts.masked_fill(torch.as_tensor(np.asarray(suppressed, dtype=bool)), 0.0)
        fractions = group_counts / phase1_survivors
    else:
        averaging, fractions = group_counts, None
    params = apply_sum(dict(global_params), layout, total, survivors, averaging)
    return AppliedRound(params, np.asarray(counts, dtype=np.int64), fractions, float(total[-1]))

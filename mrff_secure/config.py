"""Frozen, validated configuration objects: one per concern (model, federation).

The secure-aggregation and DP configurations live beside their code
(`mrff_secure.secagg.config`, `mrff_secure.dp.config`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mrff_secure.errors import ConfigError

SEQUENTIAL_BACKBONES = ("sasrec", "hstu", "llama")  # MRFF replaces their feed-forward part
BASELINES = ("ncf", "pa")  # FedNCF's and FedPA's models: no feed-forward part for MRFF to replace
BACKBONES = SEQUENTIAL_BACKBONES + BASELINES
ROUTING_MODES = ("paper", "scaled")
OPTIMIZERS = ("adam", "sgd")
SERVER_OPTIMIZERS = ("avg", "avgm", "adam")  # plain averaging (the paper), FedAvgM, FedAdam (Reddi et al. 2021)
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class ModelConfig:
    """The per-user CTR model. hidden size = attribute_dim x number of item attribute fields."""

    backbone: str = "sasrec"
    attribute_dim: int = 8
    num_blocks: int = 2
    num_heads: int = 1
    dropout: float = 0.5
    maxlen: int = 65
    mrff: bool = True
    num_groups: int = 4
    gate_hidden_dims: tuple[int, ...] = ()
    prediction_dims: tuple[int, ...] = (32,)
    balance_alpha: float = 0.1
    routing: str = "paper"  # paper: FFN_u(h) + FFN_g(h); scaled: FFN_u(h) + p_g * FFN_g(h)
    ffn_residual: bool = True  # standard SASRec residual around the feed-forward part

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        for name in ("attribute_dim", "num_blocks", "num_heads", "maxlen"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.mrff and self.backbone in BASELINES:
            raise ConfigError(f"backbone {self.backbone!r} is a non-sequential baseline with no feed-forward part "
                              "for MRFF to replace; use it with mrff off (--no-mrff)")
        if (self.mrff or self.backbone == "pa") and self.num_groups < 1:
            raise ConfigError(f"num_groups must be >= 1 with MRFF, got {self.num_groups}")
        if any(d < 1 for d in self.gate_hidden_dims + self.prediction_dims):
            raise ConfigError(f"layer sizes must be >= 1, got gate {self.gate_hidden_dims}, prediction {self.prediction_dims}")
        if self.balance_alpha < 0:
            raise ConfigError(f"balance_alpha must be >= 0, got {self.balance_alpha}")
        if self.routing not in ROUTING_MODES:
            raise ConfigError(f"routing must be one of {ROUTING_MODES}, got {self.routing!r}")

    @property
    def groups(self) -> int:
        """Number of group slots per block (0 without MRFF; FedPA's model has its group adapters)."""
        return self.num_groups if self.mrff or self.backbone == "pa" else 0


@dataclass(frozen=True)
class FederationConfig:
    """How rounds run. Defaults are the paper's setup: Adam lr 0.1, fresh each round, one step, all clients."""

    rounds: int = 500
    local_steps: int = 1
    client_fraction: float = 1.0
    optimizer: str = "adam"
    lr: float = 0.1
    seed: int = 0
    min_group_size: int = 1  # plain simulation: no suppression; secure rounds use >= 2 (default 5)
    eval_every: int = 1
    chunk_size: int = 64  # clients per vectorized chunk (0 = all at once); bounds memory, avoids page-fault churn
    # The tuned recipe (defaults: the paper's setup, unchanged)
    server_optimizer: str = "avg"  # avg: x <- mean; avgm / adam: the mean's change is a pseudo-gradient
    server_lr: float = 1.0
    server_momentum: float = 0.9  # FedAvgM's momentum; FedAdam's beta1
    weight_decay: float = 0.0  # the clients' decoupled weight decay (AdamW / SGDW), per local step
    lr_schedule: str = "constant"  # cosine: the clients' lr decays as lr * (1 + cos(pi r / rounds)) / 2
    patience: int = 0  # stop when validation AUC has not improved for this many rounds (0: run every round)

    def __post_init__(self) -> None:
        if self.rounds < 0:
            raise ConfigError(f"rounds must be >= 0, got {self.rounds}")
        if self.local_steps < 1:
            raise ConfigError(f"local_steps must be >= 1, got {self.local_steps}")
        if not 0.0 < self.client_fraction <= 1.0:
            raise ConfigError(f"client_fraction must be in (0, 1], got {self.client_fraction}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.min_group_size < 1:
            raise ConfigError(f"min_group_size must be >= 1, got {self.min_group_size}")
        if self.eval_every < 1:
            raise ConfigError(f"eval_every must be >= 1, got {self.eval_every}")
        if self.chunk_size < 0:
            raise ConfigError(f"chunk_size must be >= 0, got {self.chunk_size}")
        if self.server_optimizer not in SERVER_OPTIMIZERS:
            raise ConfigError(f"server_optimizer must be one of {SERVER_OPTIMIZERS}, got {self.server_optimizer!r}")
        if not self.server_lr > 0:
            raise ConfigError(f"server_lr must be > 0, got {self.server_lr}")
        if not 0.0 <= self.server_momentum < 1.0:
            raise ConfigError(f"server_momentum must be in [0, 1), got {self.server_momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.patience < 0:
            raise ConfigError(f"patience must be >= 0, got {self.patience}")

    def client_lr(self, round_index: int) -> float:
        """The clients' learning rate in round `round_index` (0-based) under `lr_schedule`."""
        if self.lr_schedule == "cosine" and self.rounds > 0:
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(round_index, self.rounds) / self.rounds))
        return self.lr

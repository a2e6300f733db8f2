"""Frozen, validated configuration objects: one per concern (model, federation).

The secure-aggregation and DP configurations live beside their code
(`mrff_secure.secagg.config`, `mrff_secure.dp.config`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mrff_secure.checks import check_choice, check_int, check_number
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
        check_choice("backbone", self.backbone, BACKBONES)
        for name in ("attribute_dim", "num_blocks", "num_heads", "maxlen"):
            check_int(name, getattr(self, name), low=1)
        check_number("dropout", self.dropout, low=0.0, high=1.0, high_open=True)
        if self.mrff and self.backbone in BASELINES:
            raise ConfigError(
                f"backbone {self.backbone!r} is a non-sequential baseline with no feed-forward part "
                "for MRFF to replace; use it with mrff off (--no-mrff)"
            )
        if self.mrff or self.backbone == "pa":
            check_int("num_groups (with MRFF)", self.num_groups, low=1)
        if any(d < 1 for d in self.gate_hidden_dims + self.prediction_dims):
            raise ConfigError(
                f"layer sizes must be >= 1, got gate {self.gate_hidden_dims}, prediction {self.prediction_dims}"
            )
        check_number("balance_alpha", self.balance_alpha, low=0.0)
        check_choice("routing", self.routing, ROUTING_MODES)

    @property
    def groups(self) -> int:
        """Number of group slots per block (0 without MRFF; FedPA's model has its group adapters)."""
        return self.num_groups if self.mrff or self.backbone == "pa" else 0


@dataclass(frozen=True)
class FederationConfig:
    """How rounds run. Defaults are the paper's setup: Adam lr 0.1, fresh each round, one step, all clients."""

    rounds: int  # required: the command line owns the default (mrff_secure.app.options)
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
        check_int("rounds", self.rounds, low=0)
        check_int("local_steps", self.local_steps, low=1)
        check_number("client_fraction", self.client_fraction, low=0.0, high=1.0, low_open=True)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_number("lr", self.lr, low=0.0, low_open=True)
        check_int("min_group_size", self.min_group_size, low=1)
        check_int("eval_every", self.eval_every, low=1)
        check_int("chunk_size", self.chunk_size, low=0)
        check_choice("server_optimizer", self.server_optimizer, SERVER_OPTIMIZERS)
        check_number("server_lr", self.server_lr, low=0.0, low_open=True)
        check_number("server_momentum", self.server_momentum, low=0.0, high=1.0, high_open=True)
        check_number("weight_decay", self.weight_decay, low=0.0)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_int("patience", self.patience, low=0)

    def client_lr(self, round_index: int) -> float:
        """The clients' learning rate in round `round_index` (0-based) under `lr_schedule`."""
        if self.lr_schedule == "cosine" and self.rounds > 0:
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(round_index, self.rounds) / self.rounds))
        return self.lr

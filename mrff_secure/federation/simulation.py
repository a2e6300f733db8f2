"""The vectorized federated simulation: sampling, batched local training, aggregation, evaluation.

One round: sample clients; train them all in one vectorized pass; build each
client's flat update vector (the exact bytes a client would send); aggregate
(the plain sum here); apply shared mean and group sum / group count. Private
parameters stay in `private` and never enter an update vector.

An observer receives a `ServerView` per round: exactly what the server saw
(the individual update vectors when aggregation is plain, only the sums
otherwise) and nothing more. The attacks suite plugs in there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch
from torch.func import functional_call, vmap

from mrff_secure.allocator import keep_freed_memory
from mrff_secure.config import FederationConfig, ModelConfig
from mrff_secure.data.client_data import ClientData
from mrff_secure.federation.aggregation import apply_sum
from mrff_secure.federation.local_training import predict_clients, train_clients
from mrff_secure.federation.roles import Role, parameter_roles
from mrff_secure.federation.update_vector import UpdateLayout
from mrff_secure.metrics import auc, log_loss
from mrff_secure.model import build_model
from mrff_secure.model.layers import initial_user_vectors


@dataclass(frozen=True)
class ServerView:
    """What the server learned in one round."""

    round_index: int
    participants: np.ndarray  # client rows that were sampled
    layout: UpdateLayout
    group_counts: torch.Tensor  # (blocks, groups) from the count phase
    summed_update: torch.Tensor  # (layout.size,)
    individual_updates: torch.Tensor | None  # (clients, layout.size) only when aggregation is plain


class RoundObserver(Protocol):
    def on_round(self, view: ServerView) -> None: ...


@dataclass
class RoundResult:
    round_index: int
    participants: int
    group_counts: list[list[int]]  # (blocks, groups)
    seconds: float


@dataclass
class Evaluation:
    auc: float
    log_loss: float
    probabilities: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)


class FederatedSimulation:
    """All clients of a dataset, trained in vectorized rounds.

    `plain_individual_view` decides the threat model the observer gets: True
    hands it every client's update (no secure aggregation), False only the sums.
    """

    def __init__(self, data: ClientData, model_config: ModelConfig, federation: FederationConfig,
                 observer: RoundObserver | None = None, plain_individual_view: bool = True,
                 update_transform: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> None:
        if model_config.maxlen != data.maxlen:
            model_config = ModelConfig(**{**model_config.__dict__, "maxlen": data.maxlen})
        self.data, self.model_config, self.federation = data, model_config, federation
        self.observer, self.plain_individual_view = observer, plain_individual_view
        self.update_transform = update_transform
        keep_freed_memory()
        torch.manual_seed(federation.seed)
        self.model = build_model(model_config, data)
        self.roles = parameter_roles(self.model)
        self.layout = UpdateLayout.from_model(self.model)
        params = dict(self.model.named_parameters())
        self.global_params = {n: p.detach().clone() for n, p in params.items() if self.roles[n] is not Role.PRIVATE}
        users = data.num_users
        user_init = initial_user_vectors(data.user_attributes, model_config.attribute_dim,
                                         torch.Generator().manual_seed(federation.seed + 1))
        self.private = {}
        for n, p in params.items():
            if self.roles[n] is Role.PRIVATE:
                self.private[n] = user_init.clone() if n == "user.vector" else p.detach().expand(users, *p.shape).clone()
        blocks, groups = self.layout.num_blocks, self.layout.num_groups
        # Balance loss uses last round's fractions; before any round, uniform (its gradient is then zero).
        self.group_fractions = torch.full((blocks, groups), 1.0 / max(groups, 1), dtype=self.global_params[next(iter(self.global_params))].dtype) if groups else None
        self.round_index = 0
        self._tensors = {
            name: torch.as_tensor(getattr(data, name))
            for name in ("train_seq", "train_target", "train_label", "val_seq", "val_item", "val_label",
                         "test_seq", "test_item", "test_label")
        }
        self.dtype = next(self.model.parameters()).dtype
        for name in ("train_label", "val_label", "test_label"):
            self._tensors[name] = self._tensors[name].to(self.dtype)
        self.num_examples = (self._tensors["train_target"] != 0).sum(1).to(self.dtype)

    # ----------------------------------------------------------------- rounds
    def sample_clients(self, round_index: int) -> np.ndarray:
        users = self.data.num_users
        if self.federation.client_fraction >= 1.0:
            return np.arange(users)
        rng = np.random.default_rng([self.federation.seed, round_index])
        k = max(1, int(round(users * self.federation.client_fraction)))
        return np.sort(rng.choice(users, size=k, replace=False))

    def _chunks(self, rows: np.ndarray) -> list[np.ndarray]:
        size = self.federation.chunk_size or len(rows)
        return [rows[i:i + size] for i in range(0, len(rows), size)]

    def train_round(self) -> RoundResult:
        start = time.perf_counter()
        r = self.round_index
        participants = self.sample_clients(r)
        torch.manual_seed(self.federation.seed * 1_000_003 + r)  # dropout noise, reproducible per round
        self.model.train()
        chunks = []
        for rows in self._chunks(participants):
            idx = torch.as_tensor(rows)
            result = train_clients(
                self.model, self.global_params, {n: t[idx] for n, t in self.private.items()},
                self._tensors["train_seq"][idx], self._tensors["train_target"][idx], self._tensors["train_label"][idx],
                self.group_fractions, balance_alpha=self.model_config.balance_alpha,
                local_steps=self.federation.local_steps, optimizer=self.federation.optimizer, lr=self.federation.lr,
            )
            for n, t in result.private.items():
                self.private[n][idx] = t
            chunks.append((idx, result))
        groups = self.layout.num_groups
        routes = torch.cat([result.routes for _, result in chunks])  # (clients, blocks)
        # Phase 1: the group counts alone. Phase 2: the updates, with slots of too-small groups zeroed.
        counts = (torch.nn.functional.one_hot(routes, groups).sum(0).to(self.dtype) if groups
                  else torch.zeros(0, 0))
        suppressed = (counts > 0) & (counts < self.federation.min_group_size) if groups else None
        keep_individual = self.observer is not None and self.plain_individual_view
        summed = torch.zeros(self.layout.size, dtype=self.dtype)
        individual = []
        while chunks:
            idx, result = chunks.pop(0)
            vectors = self.layout.build(result.deltas, result.routes, self.num_examples[idx], suppressed)
            del result
            if self.update_transform is not None:
                vectors = self.update_transform(vectors, r)
            summed += vectors.sum(0)
            if keep_individual:
                individual.append(vectors)
        averaging_counts = counts.masked_fill(suppressed, 0.0) if groups else counts
        self.global_params = apply_sum(self.global_params, self.layout, summed, len(participants), averaging_counts)
        if groups:
            self.group_fractions = counts / len(participants)
        if self.observer is not None:
            self.observer.on_round(ServerView(
                round_index=r, participants=participants, layout=self.layout, group_counts=counts,
                summed_update=summed, individual_updates=torch.cat(individual) if keep_individual else None,
            ))
        self.round_index += 1
        return RoundResult(r, len(participants), counts.to(torch.long).tolist(), time.perf_counter() - start)

    # ------------------------------------------------------------- evaluation
    def predict(self, split: str, rows: np.ndarray | None = None) -> np.ndarray:
        """Click probabilities of each user's held-out item ('val' or 'test')."""
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        rows = np.arange(self.data.num_users) if rows is None else rows
        self.model.eval()
        out = []
        for chunk in self._chunks(rows):
            idx = torch.as_tensor(chunk)
            out.append(predict_clients(
                self.model, self.global_params, {n: t[idx] for n, t in self.private.items()},
                self._tensors[f"{split}_seq"][idx], self._tensors[f"{split}_item"][idx],
            ))
        return torch.cat(out).numpy()

    def evaluate(self, split: str) -> Evaluation:
        probs = self.predict(split)
        labels = getattr(self.data, f"{split}_label")
        return Evaluation(auc(labels, probs), log_loss(labels, probs), probs, labels)

    def routes(self) -> np.ndarray:
        """Every user's current group per block (eval mode, validation sequence): (users, blocks)."""
        if not self.layout.num_groups:
            return np.zeros((self.data.num_users, 0), dtype=np.int64)
        self.model.eval()
        params = {**self.global_params, **self.private}
        in_dims = ({n: (0 if n in self.private else None) for n in params}, 0)
        seq = self._tensors["val_seq"]

        def one(p, s):
            return functional_call(self.model, p, (s, torch.zeros_like(s)))[2]

        with torch.no_grad():
            return vmap(one, in_dims=in_dims)(params, seq).numpy()

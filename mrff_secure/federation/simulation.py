"""The vectorized federated simulation: sampling, batched local training, aggregation, evaluation.

One round: sample clients; train them all in one vectorized pass; build each
client's flat update vector (the exact bytes a client would send); aggregate
(the plain sum here); apply shared mean and group sum / group count. Private
parameters stay in `private` and never enter an update vector.

An observer receives a `ServerView` per round: exactly what the server saw
(the individual update vectors when aggregation is plain, only the sums
otherwise) and nothing more. The attacks suite plugs in there.

With a `PrivacyPipeline` (`federation.privacy_pipeline`) a round runs in local-DP
mode (each client clips and noises its upload; the observer gets the noisy
uploads) or in secure mode (two secure sums, counts then updates, under
distributed DP or none; the observer gets only the sums). Without one, or with
DP off and no secure aggregation, the original plain path runs unchanged.
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
from mrff_secure.federation.privacy_pipeline import PrivacyPipeline, PrivacySettings
from mrff_secure.federation.roles import Role, parameter_roles
from mrff_secure.federation.threat_model import PLAIN, threat_model_for
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
    group_counts: torch.Tensor  # (blocks, groups): the count phase's (noisy under DP; local DP: from the uploads)
    summed_update: torch.Tensor  # (layout.size,) the (decoded) sum the server obtained
    individual_updates: torch.Tensor | None  # (clients, layout.size) without secure aggregation (noisy under local DP)
    threat_model: str = PLAIN  # which view this is (federation.threat_model): attacks check it


class RoundObserver(Protocol):
    def on_round(self, view: ServerView) -> None: ...


@dataclass
class RoundResult:
    round_index: int
    participants: int
    group_counts: list[list[int]]  # (blocks, groups), true counts (the simulation's ground truth)
    seconds: float
    clipped_fraction: float | None = None  # share of uploads whose delta part was clipped (DP modes)
    server_group_counts: list[list[float]] | None = None  # (blocks, groups) the counts the server saw (noisy under DP)


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
    `privacy` (PrivacySettings) turns on local DP or secure aggregation (with or
    without distributed DP); secure modes never hand the observer individual updates.
    `update_transform(vectors, round, rows)` runs on each chunk's plain vectors (rows: the
    chunk's client rows, int64 numpy), before any clipping, noise or encoding (the canary audit
    inserts its canaries there). Every `ServerView` says its `threat_model`.
    """

    def __init__(self, data: ClientData, model_config: ModelConfig, federation: FederationConfig,
                 observer: RoundObserver | None = None, plain_individual_view: bool = True,
                 update_transform: Callable[[torch.Tensor, int, np.ndarray], torch.Tensor] | None = None,
                 privacy: PrivacySettings | None = None) -> None:
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
        self.threat_model = threat_model_for(privacy, plain_individual_view=plain_individual_view)
        self.privacy: PrivacyPipeline | None = None
        if privacy is not None and not privacy.plain:
            self.privacy = PrivacyPipeline(privacy, layout=self.layout, num_users=users, maxlen=data.maxlen,
                                           rounds=federation.rounds, sample_rate=federation.client_fraction,
                                           seed=federation.seed, federation_min_group_size=federation.min_group_size)

    # ----------------------------------------------------------------- checkpoints
    def state_arrays(self) -> dict[str, np.ndarray]:
        """Everything a round changes (the model, every user's private part, last round's group
        fractions), as named arrays for a checkpoint; `round_index` goes beside them."""
        arrays = {f"global/{n}": t.detach().numpy().copy() for n, t in self.global_params.items()}
        arrays.update({f"private/{n}": t.detach().numpy().copy() for n, t in self.private.items()})
        if self.group_fractions is not None:
            arrays["group_fractions"] = self.group_fractions.numpy().copy()
        return arrays

    def load_state_arrays(self, arrays: dict[str, np.ndarray], round_index: int) -> None:
        """The state of `state_arrays`, checked name by name and shape by shape against this model."""
        from mrff_secure.errors import CheckpointError

        expected = self.state_arrays()
        missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
        if missing or extra:
            raise CheckpointError(f"the checkpoint does not match this model and dataset (missing {missing[:3]}, "
                                  f"unexpected {extra[:3]})")
        for name, reference in expected.items():
            if arrays[name].shape != reference.shape or arrays[name].dtype != reference.dtype:
                raise CheckpointError(f"the checkpoint's {name} is {arrays[name].dtype}{list(arrays[name].shape)}, "
                                      f"this model's {reference.dtype}{list(reference.shape)}")
        self.global_params = {n: torch.from_numpy(arrays[f"global/{n}"]) for n in self.global_params}
        self.private = {n: torch.from_numpy(arrays[f"private/{n}"]) for n in self.private}
        if self.group_fractions is not None:
            self.group_fractions = torch.from_numpy(arrays["group_fractions"])
        self.round_index = int(round_index)

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

    def _train_chunks(self, participants: np.ndarray, r: int) -> list:
        """Local training of every participant, chunk by chunk: [(row index tensor, LocalResult)]."""
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
        return chunks

    def train_round(self) -> RoundResult:
        if self.privacy is not None:
            return self._train_round_private()
        start = time.perf_counter()
        r = self.round_index
        participants = self.sample_clients(r)
        chunks = self._train_chunks(participants, r)
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
                vectors = self.update_transform(vectors, r, idx.numpy())
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
                threat_model=self.threat_model,
            ))
        self.round_index += 1
        return RoundResult(r, len(participants), counts.to(torch.long).tolist(), time.perf_counter() - start,
                           server_group_counts=counts.tolist())

    def _train_round_private(self) -> RoundResult:
        """One round under local DP or secure aggregation (see the module docstring)."""
        pipeline = self.privacy
        start = time.perf_counter()
        r = self.round_index
        participants = self.sample_clients(r)
        n = len(participants)
        chunks = self._train_chunks(participants, r)
        groups = self.layout.num_groups
        routes = torch.cat([result.routes for _, result in chunks])  # (clients, blocks)
        true_counts = (torch.nn.functional.one_hot(routes, groups).sum(0).to(self.dtype) if groups
                       else torch.zeros(0, 0))

        def plain_vectors(idx: torch.Tensor, result, suppressed: torch.Tensor | None) -> torch.Tensor:
            vectors = self.layout.build(result.deltas, result.routes, pipeline.scaled_examples(self.num_examples[idx]),
                                        suppressed)
            return self.update_transform(vectors, r, idx.numpy()) if self.update_transform is not None else vectors

        clipped = 0
        if pipeline.mode == "local":
            # No count phase in the clear: the server learns counts only from the noisy uploads.
            generator = pipeline.noise_generator(r, 0)  # OS entropy unless the run is marked not private
            summed = torch.zeros(self.layout.size, dtype=self.dtype)
            individual = []
            while chunks:
                idx, result = chunks.pop(0)
                uploads, norms = pipeline.privatize_local(plain_vectors(idx, result, None), generator)
                del result
                clipped += int((norms > pipeline.clip).sum())
                summed += uploads.sum(0)
                if self.observer is not None:
                    individual.append(uploads)
            _, _, noisy_counts, _ = self.layout.split(summed)
            server_counts = noisy_counts.clone() if groups else torch.zeros(0, 0)
            averaging_counts = pipeline.local_averaging_counts(server_counts, n) if groups else server_counts
            fractions = server_counts.clamp(min=0) / n if groups else None
            individual_view = torch.cat(individual) if self.observer is not None else None
        else:
            # Phase 1: the secure count sum. Phase 2: the updates, slots of too-small groups zeroed.
            one_hots = torch.nn.functional.one_hot(routes, groups).reshape(n, -1).to(self.dtype) if groups else None
            server_counts = pipeline.secure_counts(participants, one_hots, r) if groups else torch.zeros(0, 0)
            suppressed = pipeline.suppressed(server_counts) if groups else None
            norm_rows: list[np.ndarray] = []

            def encoded_chunks():
                while chunks:
                    idx, result = chunks.pop(0)
                    vectors = plain_vectors(idx, result, suppressed)
                    del result
                    head = vectors[:, :self.layout.delta_size].to(torch.float64)
                    norm_rows.append(torch.linalg.vector_norm(head, dim=1).numpy())
                    yield idx.numpy(), vectors.to(torch.float64).numpy()  # client ids are the data rows

            total = pipeline.secure_update_sum(participants, encoded_chunks(), r)
            summed = torch.as_tensor(total, dtype=self.dtype)
            clipped = int(sum((rows > pipeline.clip).sum() for rows in norm_rows))
            averaging_counts = server_counts.masked_fill(suppressed, 0.0) if groups else server_counts
            fractions = server_counts / n if groups else None
            individual_view = None
        self.global_params = apply_sum(self.global_params, self.layout, summed, n, averaging_counts)
        if groups:
            self.group_fractions = fractions
        if self.observer is not None:
            self.observer.on_round(ServerView(
                round_index=r, participants=participants, layout=self.layout, group_counts=server_counts,
                summed_update=summed, individual_updates=individual_view, threat_model=self.threat_model,
            ))
        self.round_index += 1
        seen = [[round(float(c), 4) for c in row] for row in server_counts.tolist()]
        return RoundResult(r, n, true_counts.to(torch.long).tolist(), time.perf_counter() - start,
                           clipped_fraction=clipped / n, server_group_counts=seen)

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

"""The vectorized federated simulation: sampling, batched local training, aggregation, evaluation.

One round: sample clients; train them in vectorized chunks (federation.client_shard: the client
side, one chunk per block of user rows); build each client's flat update vector (the exact bytes a
client would send); aggregate (the plain sum here); apply shared mean and group sum / group count.
Private parameters stay in their shard and never enter an update vector. The clients live in one
in-process shard here; `federation.ray_backend.RaySimulation` spreads them over Ray actors and
shares every line below except how a shard is called.

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

from mrff_secure.allocator import keep_freed_memory
from mrff_secure.config import FederationConfig, ModelConfig
from mrff_secure.data.client_data import ClientData
from mrff_secure.errors import ConfigError
from mrff_secure.federation.client_shard import ClientShard
from mrff_secure.federation.privacy_pipeline import PrivacyPipeline
from mrff_secure.metrics import auc, log_loss
from mrff_secure.model.roles import parameter_roles
from mrff_secure.round.aggregate import ServerOptimizer, aggregate_round, local_count_floor
from mrff_secure.round.participant import group_one_hots, suppressed_groups
from mrff_secure.round.spec import Phase, PrivacySettings, ThreatModel
from mrff_secure.round.update_vector import UpdateLayout


@dataclass(frozen=True)
class ServerView:
    """What the server learned in one round."""

    round_index: int
    participants: np.ndarray  # client rows that were sampled
    layout: UpdateLayout
    group_counts: torch.Tensor  # (blocks, groups): the count phase's (noisy under DP; local DP: from the uploads)
    summed_update: torch.Tensor  # (layout.size,) the (decoded) sum the server obtained
    individual_updates: torch.Tensor | None  # (clients, layout.size) without secure aggregation (noisy under local DP)
    threat_model: ThreatModel = ThreatModel.PLAIN  # which view this is: attacks check it (`round.spec.require_view`)


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

    def __init__(
        self,
        data: ClientData,
        model_config: ModelConfig,
        federation: FederationConfig,
        observer: RoundObserver | None = None,
        plain_individual_view: bool = True,
        update_transform: Callable[[torch.Tensor, int, np.ndarray], torch.Tensor] | None = None,
        privacy: PrivacySettings | None = None,
    ) -> None:
        if model_config.maxlen != data.maxlen:
            model_config = ModelConfig(**{**model_config.__dict__, "maxlen": data.maxlen})
        self.data, self.model_config, self.federation = data, model_config, federation
        self.observer, self.plain_individual_view = observer, plain_individual_view
        self.update_transform = update_transform
        keep_freed_memory()
        self.model, self.global_params = self._build_global()
        self.roles = parameter_roles(self.model)
        self.layout = UpdateLayout.from_model(self.model)
        users = data.num_users
        blocks, groups = self.layout.num_blocks, self.layout.num_groups
        # Balance loss uses last round's fractions; before any round, uniform (its gradient is then zero).
        self.group_fractions = (
            torch.full(
                (blocks, groups), 1.0 / max(groups, 1), dtype=self.global_params[next(iter(self.global_params))].dtype
            )
            if groups
            else None
        )
        self.round_index = 0
        self.server_optimizer = ServerOptimizer(
            federation.server_optimizer, federation.server_lr, federation.server_momentum
        )
        self.dtype = next(self.model.parameters()).dtype
        self.threat_model = ThreatModel.of(privacy, plain_individual_view=plain_individual_view)
        self.privacy: PrivacyPipeline | None = None
        if privacy is not None and not privacy.plain:
            self.privacy = PrivacyPipeline(
                privacy,
                layout=self.layout,
                num_users=users,
                maxlen=data.maxlen,
                rounds=federation.rounds,
                sample_rate=federation.client_fraction,
                seed=federation.seed,
                federation_min_group_size=federation.min_group_size,
            )
        self._start_shards()

    def _pipeline(self) -> PrivacyPipeline:
        """The privacy pipeline of a private run (local DP or secure aggregation); ConfigError in a plain run."""
        if self.privacy is None:
            raise ConfigError("a plain run has no privacy pipeline: no private round can run")
        return self.privacy

    # ------------------------------------------------------------------ shards
    def _build_global(self) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
        """The model and the global parameters; here the in-process shard of every user builds both."""
        self._shard = ClientShard(self.data, self.model_config, self.federation)
        return self._shard.model, self._shard.initial_global

    def _start_shards(self) -> None:
        self._shard.set_pipeline(self.privacy)

    @property
    def private(self) -> dict[str, torch.Tensor]:
        """Every user's private parameters (users, *shape), as the in-process shard holds them."""
        return self._shard.private

    @private.setter
    def private(self, value: dict[str, torch.Tensor]) -> None:
        self._shard.private = value

    def _train(self, participants: np.ndarray, r: int) -> torch.Tensor:
        """Local training of every participant; their routes (clients, blocks) in row order."""
        return self._shard.train(self.global_params, self.group_fractions, participants, r)

    def _plain_sum(
        self, suppressed: torch.Tensor | None, r: int, keep_individual: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(sum of the participants' update vectors, float64; their vectors if kept)."""
        return self._shard.plain_sum(
            suppressed, transform=self.update_transform, round_index=r, keep_individual=keep_individual
        )

    def _local_dp_sum(self, r: int, keep_individual: bool) -> tuple[torch.Tensor, int, torch.Tensor | None]:
        """(float64 sum of the noisy uploads, how many were clipped, the uploads if kept)."""
        return self._shard.local_dp_sum(r, transform=self.update_transform, keep_individual=keep_individual)

    def _secure_update_sum(self, suppressed: torch.Tensor | None, n: int, r: int) -> tuple[np.ndarray, int]:
        """Phase 2 through the configured secure-sum backend: (decoded float sum, uploads clipped)."""
        pipeline = self._pipeline()
        session = pipeline.secure_session(Phase.UPDATE, n, r)
        clipped, session = self._shard.secure_update(suppressed, n, r, session, transform=self.update_transform)
        return pipeline.finish_secure_sum(Phase.UPDATE, n, session.finish(), r), clipped

    # ----------------------------------------------------------------- checkpoints
    def state_arrays(self) -> dict[str, np.ndarray]:
        """Everything a round changes (the model, every user's private part, last round's group
        fractions, the server optimizer's state), as named arrays for a checkpoint; `round_index` goes beside them."""
        arrays = {f"global/{n}": t.detach().numpy().copy() for n, t in self.global_params.items()}
        arrays.update(
            {k: t.detach().numpy().copy() for k, t in self.server_optimizer.state_arrays(self.global_params).items()}
        )
        arrays.update({f"private/{n}": v for n, v in self._private_arrays().items()})
        if self.group_fractions is not None:
            arrays["group_fractions"] = self.group_fractions.numpy().copy()
        return arrays

    def _private_arrays(self) -> dict[str, np.ndarray]:
        return self._shard.private_arrays()

    def _load_private_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self._shard.load_private_arrays(arrays)

    def load_state_arrays(self, arrays: dict[str, np.ndarray], round_index: int) -> None:
        """The state of `state_arrays`, checked name by name and shape by shape against this model."""
        from mrff_secure.errors import CheckpointError

        expected = self.state_arrays()
        missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
        if missing or extra:
            raise CheckpointError(
                f"the checkpoint does not match this model and dataset (missing {missing[:3]}, unexpected {extra[:3]})"
            )
        for name, reference in expected.items():
            if arrays[name].shape != reference.shape or arrays[name].dtype != reference.dtype:
                raise CheckpointError(
                    f"the checkpoint's {name} is {arrays[name].dtype}{list(arrays[name].shape)}, "
                    f"this model's {reference.dtype}{list(reference.shape)}"
                )
        self.global_params = {n: torch.from_numpy(arrays[f"global/{n}"]) for n in self.global_params}
        self.server_optimizer.load_state_arrays(
            {k: torch.from_numpy(v) for k, v in arrays.items() if k.startswith(("server_m/", "server_v/"))}
        )
        self._load_private_arrays({n[len("private/") :]: v for n, v in arrays.items() if n.startswith("private/")})
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

    def _apply(
        self, summed: torch.Tensor, *, uploads: int, counts: torch.Tensor, suppressed: torch.Tensor | None
    ) -> None:
        """The server's step (`round.aggregate`), then the server optimizer's."""
        step = aggregate_round(
            self.global_params,
            self.layout,
            summed,
            uploads=uploads,
            counts=counts,
            suppressed=suppressed,
            counted_clients=uploads,
        )
        self.global_params = self.server_optimizer.step(self.global_params, step.averaged)
        if step.group_fractions is not None:
            self.group_fractions = step.group_fractions

    def _observe(
        self,
        r: int,
        participants: np.ndarray,
        counts: torch.Tensor,
        summed: torch.Tensor,
        individual: torch.Tensor | None,
    ) -> None:
        """Hand the observer exactly what the server saw this round (individual uploads only in the views that
        hold them)."""
        if self.observer is not None:
            self.observer.on_round(
                ServerView(
                    round_index=r,
                    participants=participants,
                    layout=self.layout,
                    group_counts=counts,
                    summed_update=summed,
                    individual_updates=individual,
                    threat_model=self.threat_model,
                )
            )

    def train_round(self) -> RoundResult:
        if self.privacy is not None:
            return self._train_round_private()
        start = time.perf_counter()
        r = self.round_index
        participants = self.sample_clients(r)
        routes = self._train(participants, r)  # (clients, blocks)
        groups = self.layout.num_groups
        # Phase 1: the group counts alone. Phase 2: the updates, with slots of too-small groups zeroed.
        counts = torch.nn.functional.one_hot(routes, groups).sum(0).to(self.dtype) if groups else torch.zeros(0, 0)
        suppressed = suppressed_groups(counts, self.federation.min_group_size) if groups else None
        keep_individual = self.observer is not None and self.plain_individual_view
        summed, individual = self._plain_sum(suppressed, r, keep_individual)
        summed = summed.to(self.dtype)
        self._apply(summed, uploads=len(participants), counts=counts, suppressed=suppressed)
        self._observe(r, participants, counts, summed, individual if keep_individual else None)
        self.round_index += 1
        return RoundResult(
            r,
            len(participants),
            counts.to(torch.long).tolist(),
            time.perf_counter() - start,
            server_group_counts=counts.tolist(),
        )

    def _train_round_private(self) -> RoundResult:
        """One round under local DP or secure aggregation (see the module docstring)."""
        pipeline = self._pipeline()
        start = time.perf_counter()
        r = self.round_index
        participants = self.sample_clients(r)
        n = len(participants)
        routes = self._train(participants, r)  # (clients, blocks)
        groups = self.layout.num_groups
        true_counts = torch.nn.functional.one_hot(routes, groups).sum(0).to(self.dtype) if groups else torch.zeros(0, 0)
        if pipeline.mode == "local":
            # No count phase in the clear: the server learns counts only from the noisy uploads.
            summed, clipped, individual_view = self._local_dp_sum(r, self.observer is not None)
            summed = summed.to(self.dtype)
            _, _, noisy_counts, _ = self.layout.split(summed)
            server_counts = noisy_counts.clone() if groups else torch.zeros(0, 0)
            # a group FFN moves only when its noisy count clears the floor; fractions from counts >= 0
            self._apply(
                summed,
                uploads=n,
                counts=server_counts.clamp(min=0) if groups else server_counts,
                suppressed=server_counts
                < local_count_floor(
                    min_group_size=pipeline.min_group_size,
                    noise_std=pipeline.noise_multiplier * pipeline.clip,
                    uploads=n,
                )
                if groups
                else None,
            )
        else:
            # Phase 1: the secure count sum. Phase 2: the updates, slots of too-small groups zeroed.
            suppressed: torch.Tensor | None = None
            if groups:
                one_hots = group_one_hots(self.layout, routes).to(self.dtype)
                server_counts = pipeline.secure_counts(participants, one_hots, r)
                suppressed = pipeline.suppressed(server_counts)
            else:
                server_counts = torch.zeros(0, 0)
            total, clipped = self._secure_update_sum(suppressed, n, r)
            summed = torch.as_tensor(total, dtype=self.dtype)
            self._apply(summed, uploads=n, counts=server_counts, suppressed=suppressed)
            individual_view = None
        self._observe(r, participants, server_counts, summed, individual_view)
        self.round_index += 1
        seen = [[round(float(c), 4) for c in row] for row in server_counts.tolist()]
        return RoundResult(
            r,
            n,
            true_counts.to(torch.long).tolist(),
            time.perf_counter() - start,
            clipped_fraction=clipped / n,
            server_group_counts=seen,
        )

    # ------------------------------------------------------------- evaluation
    def predict(self, split: str, rows: np.ndarray | None = None) -> np.ndarray:
        """Click probabilities of each user's held-out item ('val' or 'test')."""
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        rows = np.arange(self.data.num_users) if rows is None else np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        probs = np.empty(len(rows), dtype=np.float32 if self.dtype == torch.float32 else np.float64)
        probs[order] = self._predict(split, rows[order])
        return probs

    def _predict(self, split: str, sorted_rows: np.ndarray) -> np.ndarray:
        return self._shard.predict(self.global_params, split, sorted_rows).numpy()

    def evaluate(self, split: str) -> Evaluation:
        probs = self.predict(split)
        labels = getattr(self.data, f"{split}_label")
        return Evaluation(auc(labels, probs), log_loss(labels, probs), probs, labels)

    def routes(self) -> np.ndarray:
        """Every user's current group per block (eval mode, validation sequence): (users, blocks)."""
        if not self.layout.num_groups:
            return np.zeros((self.data.num_users, 0), dtype=np.int64)
        return self._routes()

    def _routes(self) -> np.ndarray:
        return self._shard.routes(self.global_params)

    def close(self) -> None:
        """Release what the simulation holds outside this process: nothing here (the Ray backend stops its actors)."""

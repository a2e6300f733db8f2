"""The client side of the simulation for a slice of the population: a shard.

A shard hosts the users of some whole row blocks (`chunk_blocks`: block k = user rows
[k * chunk_size, (k + 1) * chunk_size)): their data and their private parameters, for the whole run.
Each round it trains its sampled clients in vectorized chunks (a chunk is a row block's sampled clients, its
dropout randomness seeded by (seed, round, block); `block_rows`) and hands back only what clients send: the route of
each client (for the count phase) and then the sum of its clients' update vectors (plain), of their
noisy uploads (local DP) or of their ring residues (secure aggregation, the 'fast' ring sum).

The single-process simulation (`FederatedSimulation`) runs one shard holding every user; the Ray
backend (`federation.ray_backend`) one shard per actor. A chunk is the same chunk in both, so a
client's training and encoding are the same computation whichever process runs it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import functional_call, vmap

from mrff_secure.config import FederationConfig, ModelConfig
from mrff_secure.data.client_data import ClientData
from mrff_secure.errors import ConfigError
from mrff_secure.federation.local_training import LocalResult, predict_clients, train_clients
from mrff_secure.federation.privacy_pipeline import PrivacyPipeline
from mrff_secure.model import build_model
from mrff_secure.model.layers import initial_user_vectors
from mrff_secure.model.roles import Role, parameter_roles
from mrff_secure.round.participant import update_vectors
from mrff_secure.round.secure_sum import SecureSumSession
from mrff_secure.round.spec import Phase
from mrff_secure.round.update_vector import UpdateLayout

# (a chunk's plain update vectors, round index, the chunk's client rows) -> the vectors the clients upload
UpdateTransform = Callable[[torch.Tensor, int, np.ndarray], torch.Tensor]

DATA_ARRAYS = (
    "train_seq",
    "train_target",
    "train_label",
    "val_seq",
    "val_item",
    "val_label",
    "test_seq",
    "test_item",
    "test_label",
)


def chunk_blocks(rows: np.ndarray, chunk_size: int) -> list[tuple[int, np.ndarray]]:
    """The sorted `rows` grouped by row block (block = row // chunk_size; chunk_size 0: one block)."""
    rows = np.asarray(rows, dtype=np.int64)
    if not chunk_size or not len(rows):
        return [(0, rows)] if len(rows) else []
    blocks = rows // chunk_size
    starts = np.flatnonzero(np.r_[True, blocks[1:] != blocks[:-1]])
    ends = np.r_[starts[1:], len(rows)]
    return [(int(blocks[a]), rows[a:b]) for a, b in zip(starts, ends)]


def block_rows(federation: FederationConfig) -> int:
    """User rows per block (0: one block). With all clients in every round a block is `chunk_size` rows; when
    a fraction q is sampled it is ceil(chunk_size / q) rows, so that a chunk (the block's sampled clients)
    still holds about `chunk_size` clients."""
    size = federation.chunk_size
    if not size or federation.client_fraction >= 1.0:
        return size
    return int(np.ceil(size / federation.client_fraction))


def chunk_seed(seed: int, round_index: int, block: int) -> int:
    """The torch seed of one chunk's training randomness (dropout) in one round."""
    return int(np.random.SeedSequence([seed, round_index, block, 7]).generate_state(1, dtype=np.uint64)[0] >> 1)


def model_and_private(
    data: ClientData, model_config: ModelConfig, federation: FederationConfig, rows: np.ndarray
) -> tuple[torch.nn.Module, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The model (initialised from the run seed), its global parameters, and the starting private parameters
    of the users `rows` (each user's own: a function of the seed and that user's attributes only)."""
    torch.manual_seed(federation.seed)
    model = build_model(model_config, data)
    roles = parameter_roles(model)
    params = dict(model.named_parameters())
    global_params = {n: p.detach().clone() for n, p in params.items() if roles[n] is not Role.PRIVATE}
    user_init = initial_user_vectors(
        data.user_attributes, model_config.attribute_dim, torch.Generator().manual_seed(federation.seed + 1)
    )
    index = torch.as_tensor(rows)
    private = {}
    for n, p in params.items():
        if roles[n] is Role.PRIVATE:
            private[n] = (
                user_init[index].clone() if n == "user.vector" else p.detach().expand(len(rows), *p.shape).clone()
            )
    return model, global_params, private


@dataclass
class _Trained:
    block: int
    rows: np.ndarray  # global user rows
    local: torch.Tensor  # their positions in this shard
    result: LocalResult


class ClientShard:
    """The users `rows` (sorted global row ids, whole row blocks) of `data` and their private state."""

    def __init__(
        self,
        data: ClientData,
        model_config: ModelConfig,
        federation: FederationConfig,
        rows: np.ndarray | None = None,
        *,
        threads: int | None = None,
    ) -> None:
        if threads is not None:
            torch.set_num_threads(int(threads))
        self.rows = np.arange(data.num_users) if rows is None else np.asarray(rows, dtype=np.int64)
        if len(self.rows) and (np.any(np.diff(self.rows) <= 0) or self.rows[0] < 0 or self.rows[-1] >= data.num_users):
            raise ConfigError("a shard's rows must be sorted, distinct user rows of the dataset")
        self.model_config, self.federation = model_config, federation
        self.model, self.initial_global, self.private = model_and_private(data, model_config, federation, self.rows)
        self.layout = UpdateLayout.from_model(self.model)
        index = torch.as_tensor(self.rows)
        self.dtype = next(self.model.parameters()).dtype
        self._tensors = {name: torch.as_tensor(getattr(data, name))[index] for name in DATA_ARRAYS}
        for name in ("train_label", "val_label", "test_label"):
            self._tensors[name] = self._tensors[name].to(self.dtype)
        self.num_examples = (self._tensors["train_target"] != 0).sum(1).to(self.dtype)
        self._trained: list[_Trained] = []
        self._pipeline: PrivacyPipeline | None = None

    def set_pipeline(self, pipeline: PrivacyPipeline | None) -> None:
        """The privacy pipeline whose client-side transforms this shard applies (None: plain rounds)."""
        self._pipeline = pipeline

    def _privacy(self) -> PrivacyPipeline:
        """The pipeline set by `set_pipeline`; ConfigError when there is none (the private uploads need it)."""
        if self._pipeline is None:
            raise ConfigError("a private upload needs the shard's privacy pipeline: call set_pipeline first")
        return self._pipeline

    def _local(self, rows: np.ndarray) -> torch.Tensor:
        positions = np.searchsorted(self.rows, rows)
        if len(rows) and (positions.max() >= len(self.rows) or np.any(self.rows[positions] != rows)):
            raise ConfigError("rows outside this shard")
        return torch.as_tensor(positions)

    # ----------------------------------------------------------------- training
    def train(
        self,
        global_params: dict[str, torch.Tensor],
        group_fractions: torch.Tensor | None,
        participants: np.ndarray,
        round_index: int,
    ) -> torch.Tensor:
        """Local training of this shard's participants (sorted global rows), chunk by chunk; their private
        parts are updated here. Returns their routes (clients, blocks), in row order."""
        self.model.train()
        self._trained = []
        routes = []
        for block, rows in chunk_blocks(participants, block_rows(self.federation)):
            torch.manual_seed(chunk_seed(self.federation.seed, round_index, block))
            local = self._local(rows)
            result = train_clients(
                self.model,
                global_params,
                {n: t[local] for n, t in self.private.items()},
                self._tensors["train_seq"][local],
                self._tensors["train_target"][local],
                self._tensors["train_label"][local],
                group_fractions,
                balance_alpha=self.model_config.balance_alpha,
                local_steps=self.federation.local_steps,
                optimizer=self.federation.optimizer,
                lr=self.federation.client_lr(round_index),
                weight_decay=self.federation.weight_decay,
            )
            for n, t in result.private.items():
                self.private[n][local] = t
            self._trained.append(_Trained(block, rows, local, result))
            routes.append(result.routes)
        if not routes:
            return torch.zeros(0, self.layout.num_blocks if self.layout.num_groups else 0, dtype=torch.long)
        return torch.cat(routes)

    def _vectors(self, item: _Trained, suppressed: torch.Tensor | None, scaled: bool) -> torch.Tensor:
        examples = self.num_examples[item.local]
        if scaled:  # what a privacy-preserving client uploads (`round.participant`)
            return update_vectors(
                self.layout,
                item.result.deltas,
                item.result.routes,
                examples,
                suppressed=suppressed,
                count_cap=self._privacy().count_cap,
            )
        return self.layout.build(item.result.deltas, item.result.routes, examples, suppressed)

    def _take(self) -> Iterator[_Trained]:
        while self._trained:
            yield self._trained.pop(0)

    # ----------------------------------------------------------------- uploads
    def plain_sum(
        self,
        suppressed: torch.Tensor | None,
        *,
        transform: UpdateTransform | None = None,
        round_index: int = 0,
        keep_individual: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The sum of the trained clients' update vectors, float64 (and, if asked, the vectors themselves).

        Each chunk's float sum is added into a float64 total: the sum of a few float sums in float64 hardly
        depends on their order, so shards' totals added by the server round to the same floats as one total
        (a float32 result differs only where a float64 sum falls within 2^-53 of a float32 rounding point)."""
        summed = torch.zeros(self.layout.size, dtype=torch.float64)
        individual: list[torch.Tensor] = []
        for item in self._take():
            if transform is None and not keep_individual:  # nothing needs the vectors: sum per parameter
                summed += self.layout.build_sum(
                    item.result.deltas, item.result.routes, self.num_examples[item.local], suppressed
                )
                continue
            vectors = self._vectors(item, suppressed, scaled=False)
            if transform is not None:
                vectors = transform(vectors, round_index, item.rows)
            summed += vectors.sum(0)
            if keep_individual:
                individual.append(vectors)
        return summed, (torch.cat(individual) if keep_individual and individual else None)

    def local_dp_sum(
        self, round_index: int, *, transform: UpdateTransform | None = None, keep_individual: bool = False
    ) -> tuple[torch.Tensor, int, torch.Tensor | None]:
        """Local DP: the float64 sum of the clients' clipped, noised uploads (as `plain_sum`), how many were
        clipped, the uploads."""
        pipeline = self._privacy()
        summed = torch.zeros(self.layout.size, dtype=torch.float64)
        clipped = 0
        individual: list[torch.Tensor] = []
        for item in self._take():
            vectors = self._vectors(item, None, scaled=True)
            if transform is not None:
                vectors = transform(vectors, round_index, item.rows)
            uploads, norms = pipeline.privatize_local(vectors, pipeline.chunk_generator(round_index, 0, item.block))
            clipped += int((norms > pipeline.clip).sum())
            summed += uploads.sum(0)
            if keep_individual:
                individual.append(uploads)
        return summed, clipped, (torch.cat(individual) if keep_individual and individual else None)

    def secure_update(
        self,
        suppressed: torch.Tensor | None,
        num_clients: int,
        round_index: int,
        session: SecureSumSession | None = None,
        *,
        transform: UpdateTransform | None = None,
    ) -> tuple[int, SecureSumSession]:
        """Secure phase 2, the clients' side: each trained client's vector encoded into ring residues and
        added to `session` (None: a partial ring sum of this shard, returned). Returns (uploads whose delta
        part exceeded the clip, the session)."""
        pipeline = self._privacy()
        if session is None:
            session = pipeline.partial_session(Phase.UPDATE, num_clients, round_index)
        clipped = 0
        for item in self._take():
            vectors = self._vectors(item, suppressed, scaled=True)
            if transform is not None:
                vectors = transform(vectors, round_index, item.rows)
            head = vectors[:, : self.layout.delta_size].to(torch.float64)
            clipped += int((torch.linalg.vector_norm(head, dim=1) > pipeline.clip).sum())
            rows64 = vectors.to(torch.float64).numpy()  # client ids are the data rows
            session.add(
                item.rows, pipeline.encode_chunk(Phase.UPDATE, num_clients, item.rows, rows64, round_index, item.block)
            )
        return clipped, session

    # --------------------------------------------------------------- evaluation
    def predict(self, global_params: dict[str, torch.Tensor], split: str, rows: np.ndarray) -> torch.Tensor:
        """Click probabilities of the held-out item of users `rows` (sorted global rows of this shard)."""
        self.model.eval()
        out = []
        for _, chunk in chunk_blocks(rows, self.federation.chunk_size):
            local = self._local(chunk)
            out.append(
                predict_clients(
                    self.model,
                    global_params,
                    {n: t[local] for n, t in self.private.items()},
                    self._tensors[f"{split}_seq"][local],
                    self._tensors[f"{split}_item"][local],
                )
            )
        return torch.cat(out) if out else torch.zeros(0, dtype=self.dtype)

    def routes(self, global_params: dict[str, torch.Tensor]) -> np.ndarray:
        """Every hosted user's current group per block (eval mode, validation sequence): (users, blocks)."""
        self.model.eval()
        params = {**global_params, **self.private}
        in_dims = ({n: (0 if n in self.private else None) for n in params}, 0)
        seq = self._tensors["val_seq"]

        def one(p: dict[str, torch.Tensor], s: torch.Tensor) -> torch.Tensor:
            return functional_call(self.model, p, (s, torch.zeros_like(s)))[2]

        with torch.no_grad():
            return vmap(one, in_dims=in_dims)(params, seq).numpy()

    # -------------------------------------------------------------- checkpoints
    def private_arrays(self) -> dict[str, np.ndarray]:
        return {n: t.detach().numpy().copy() for n, t in self.private.items()}

    def load_private_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        missing = sorted(set(self.private) - set(arrays))
        if missing:
            raise ConfigError(f"private parameters missing: {missing}")
        for n in self.private:
            if arrays[n].shape != tuple(self.private[n].shape):
                raise ConfigError(f"private {n}: shape {arrays[n].shape}, expected {tuple(self.private[n].shape)}")
        self.private = {n: torch.from_numpy(np.array(arrays[n])) for n in self.private}

"""The simulation spread over Ray actors (`mrff train --backend ray`).

The population is cut into contiguous ranges of whole row blocks (a block is `chunk_size` user
rows, the unit of vectorized training: `client_shard.chunk_blocks`), one range per actor. Each actor
is a `ClientShard`: it receives its users' data once, creates their private parameters itself and
keeps both for the whole run; private state never travels. A round: the driver (this process, the
simulated server) puts the global model into Ray's object store once; every actor trains its
sampled clients and returns their routes (the count phase's input); the driver forms the counts
and the suppressed slots and asks each actor for its clients' sum: a float sum (plain or local DP)
or, under secure aggregation, a partial ring sum of the clients' residues, merged at the driver
exactly as a single ring sum would be. Everything the server does after that (decoding, noise of
the 'aggregate' shortcut, `apply_sum`, accounting) is the single-process code, unchanged.

Equal to the single process: a client's chunk, its dropout seed and its DP draws are defined by row
blocks, so they are the same whichever actor trains them. Secure sums are ring sums, so the merged
total is bit-identical; float sums are float64 totals of the same per-chunk float sums, added per actor
and then across actors (`ClientShard.plain_sum`), and round to the same floats as one total except where
a float64 total falls within 2^-53 of a float32 rounding point. Torch's kernels can round differently
with another thread count: equality holds for equal `threads_per_worker` and single-process threads.

On a cluster of several machines (`address`: --ray-address, else RAY_ADDRESS): the actors are placed
with Ray's SPREAD strategy, so they go to as many nodes as have free CPUs, and `placement` says which
node each runs on. Everything an actor needs travels through Ray's object store (its users' data as
an argument, the global model as an object reference); the nodes need no files of the run, only the
same Python environment. A node that leaves mid-run takes its actors' private state with it: the run
stops with ShardLost, and its folder resumes from the last checkpoint.

Not supported here (refused with ConfigError, use the single process): an `update_transform` (a
Python callable of the driver: the canary audit) and the 'inmemory' SecAgg+ protocol (its clients
exchange keys and masks with each other across every shard).

Ray moves arguments and results with its own serializer, which is built on pickle; this module
hands it only numpy arrays, plain numbers and this package's frozen configuration dataclasses, and
never unpickles anything itself. A Ray cluster runs arbitrary code for any of its members: use it
only on machines and a network you trust (README, "Scale-out on Ray").
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import numpy as np
import torch

from mrff_secure.checks import check_int
from mrff_secure.config import FederationConfig, ModelConfig
from mrff_secure.data.client_data import ClientData
from mrff_secure.errors import ConfigError, MrffError
from mrff_secure.federation.client_shard import ClientShard, UpdateTransform, block_rows, model_and_private
from mrff_secure.federation.privacy_pipeline import PrivacyPipeline
from mrff_secure.federation.simulation import FederatedSimulation, RoundObserver
from mrff_secure.round.secure_sum import RingSum
from mrff_secure.round.spec import Phase, PrivacySettings

log = logging.getLogger(__name__)

INSTALL_HINT = "the ray backend needs Ray: pip install -e '.[ray]'"


class ShardLost(MrffError):
    """A Ray actor died (its node left the cluster, or its process was killed): its clients' private state
    went with it, so the run cannot go on; the run folder keeps its last checkpoint."""


def import_ray() -> Any:
    """Ray, or a ConfigError that says how to install it (Any: Ray is an optional dependency)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError as error:
        raise ConfigError(f"{INSTALL_HINT} ({error})") from None
    return ray


def _check_reachable(address: str, timeout: float = 5.0, source: str = "--ray-address") -> None:
    """A HOST:PORT cluster address must accept a TCP connection (Ray itself retries a dead address for
    minutes); 'auto' and ray:// addresses are left to Ray. `source`: where the address came from, for the
    error."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or address == "auto" or "://" in address:
        return
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{source} must be auto or HOST:PORT with a port in 1-65535, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise ConfigError(
            f"{source} {address}: nothing accepts connections there ({error.strerror or error}); "
            "start the cluster with `ray start --head`"
        ) from None


def cluster_address(address: str | None) -> str | None:
    """The cluster to join: `address` (--ray-address, [scale] ray_address), else the RAY_ADDRESS environment
    variable if set and not empty, else None (a local Ray instance)."""
    if address:
        return address
    return os.environ.get("RAY_ADDRESS") or None


def connect(ray: Any, address: str | None, num_cpus: int | None) -> bool:
    """Join the cluster at `cluster_address(address)`, or start a local Ray instance with `num_cpus` CPUs
    (None: all of this machine's) when there is none; nothing when Ray is already initialised. True if this
    call started or joined it (the caller then shuts it down)."""
    if ray.is_initialized():
        return False
    source = "--ray-address" if address else "RAY_ADDRESS"
    address = cluster_address(address)
    if address is None:
        # "local": a new instance even where `ray start` left a cluster's address on this machine (Ray would
        # otherwise join that cluster unasked)
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            logging_level="WARNING",
            configure_logging=False,
        )
    else:
        _check_reachable(address, source=source)
        try:
            ray.init(address=address, logging_level="WARNING", configure_logging=False)
        except ConnectionError as error:
            raise ConfigError(f"{source} {address}: no Ray cluster answers there ({error})") from None
    return True


def writable_copy(data: ClientData) -> ClientData:
    """Ray hands arrays over read-only (from its object store): a process's own writable copy."""
    items = data.item_attributes
    return dataclasses.replace(
        data.subset(np.arange(data.num_users)),
        item_attributes=dataclasses.replace(items, tokens=np.array(items.tokens)),
    )


def shard_rows(num_users: int, rows_per_block: int, actors: int) -> list[np.ndarray]:
    """Contiguous ranges of whole row blocks (`client_shard.block_rows`; 0: one block), as even as blocks
    allow, one per worker (none empty)."""
    check_int("--actors", actors, low=1)
    block = rows_per_block if rows_per_block else max(num_users, 1)
    num_blocks = -(-num_users // block)
    ranges = np.array_split(np.arange(num_blocks), min(actors, max(num_blocks, 1)))
    return [np.arange(r[0] * block, min((r[-1] + 1) * block, num_users)) for r in ranges if len(r)]


class ShardActor:
    """One Ray actor: a ClientShard over a contiguous range of user rows (`first`, `first + users`)."""

    def __init__(
        self,
        data: ClientData,
        first: int,
        model_config: ModelConfig,
        federation: FederationConfig,
        threads: int,
        pipeline_args: dict[str, Any] | None,
    ) -> None:
        self.first = int(first)
        data = writable_copy(data)
        self.shard = ClientShard(data, model_config, federation, np.arange(data.num_users), threads=threads)
        self.shard.rows = self.shard.rows + self.first  # global row ids; the data is this range only
        if pipeline_args is not None:
            self.shard.set_pipeline(PrivacyPipeline(layout=self.shard.layout, **pipeline_args))

    def placement(self) -> dict[str, str]:
        """Where this actor runs: its Ray node's id and IP address, and the machine's host name."""
        import socket

        import ray

        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),
            "host": socket.gethostname(),
        }

    @staticmethod
    def _global(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {n: torch.from_numpy(np.array(a)) for n, a in arrays.items()}

    def train(
        self,
        global_arrays: dict[str, np.ndarray],
        fractions: np.ndarray | None,
        participants: np.ndarray,
        round_index: int,
    ) -> np.ndarray:
        group_fractions = None if fractions is None else torch.from_numpy(np.array(fractions))
        return self.shard.train(self._global(global_arrays), group_fractions, participants, round_index).numpy()

    def plain_sum(
        self, suppressed: np.ndarray | None, round_index: int, keep_individual: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        mask = None if suppressed is None else torch.from_numpy(np.array(suppressed))
        summed, individual = self.shard.plain_sum(mask, round_index=round_index, keep_individual=keep_individual)
        return summed.numpy(), None if individual is None else individual.numpy()

    def local_dp_sum(self, round_index: int, keep_individual: bool) -> tuple[np.ndarray, int, np.ndarray | None]:
        summed, clipped, individual = self.shard.local_dp_sum(round_index, keep_individual=keep_individual)
        return summed.numpy(), clipped, None if individual is None else individual.numpy()

    def secure_update(
        self, suppressed: np.ndarray | None, num_clients: int, round_index: int
    ) -> tuple[int, np.ndarray, np.ndarray]:
        mask = None if suppressed is None else torch.from_numpy(np.array(suppressed))
        clipped, session = self.shard.secure_update(mask, num_clients, round_index)
        if not isinstance(session, RingSum):  # the shard opens its own partial ring sum (`partial_session`)
            raise ConfigError(f"a shard's secure update needs a partial ring sum, got {type(session).__name__}")
        ids, total = session.partial()
        return clipped, ids, total

    def predict(self, global_arrays: dict[str, np.ndarray], split: str, rows: np.ndarray) -> np.ndarray:
        return self.shard.predict(self._global(global_arrays), split, rows).numpy()

    def routes(self, global_arrays: dict[str, np.ndarray]) -> np.ndarray:
        return self.shard.routes(self._global(global_arrays))

    def private_arrays(self) -> dict[str, np.ndarray]:
        return self.shard.private_arrays()

    def load_private_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.shard.load_private_arrays(arrays)


class RaySimulation(FederatedSimulation):
    """`FederatedSimulation` with its clients on `workers` Ray actors (`threads_per_worker` torch threads
    each). `address`: a running cluster ('auto', or host:port of `ray start --head`); None: the cluster at
    RAY_ADDRESS if set, else a local Ray instance for this process (shut down by `close`); nothing is
    started or joined when Ray is already initialised. After the start, `placement` says where each actor
    runs."""

    def __init__(
        self,
        data: ClientData,
        model_config: ModelConfig,
        federation: FederationConfig,
        observer: RoundObserver | None = None,
        plain_individual_view: bool = True,
        update_transform: UpdateTransform | None = None,
        privacy: PrivacySettings | None = None,
        *,
        actors: int = 2,
        threads_per_worker: int = 1,
        address: str | None = None,
    ) -> None:
        if update_transform is not None:
            raise ConfigError(
                "the ray backend does not run update transforms (the canary audit): use the single-process backend"
            )
        if privacy is not None and privacy.secure and privacy.secure_aggregation != "fast":
            raise ConfigError(
                f"the ray backend needs secure_aggregation='fast' (the ring sum); {privacy.secure_aggregation!r} "
                "runs the SecAgg+ protocol between all clients in one process"
            )
        check_int("--threads-per-worker", threads_per_worker, low=1)
        self._ray = import_ray()
        self.actors, self.threads_per_worker, self.address = int(actors), int(threads_per_worker), address
        self._shard_ranges = shard_rows(data.num_users, block_rows(federation), self.actors)
        self._actors: list[Any] = []  # Ray actor handles
        self.placement: list[dict[str, Any]] = []  # per actor: actor, users [first, end), node_id, node_ip, host
        self._started_ray = False
        super().__init__(data, model_config, federation, observer, plain_individual_view, None, privacy)

    # ------------------------------------------------------------------ shards
    def _build_global(self) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
        model, global_params, _ = model_and_private(
            self.data.subset(np.zeros(0, dtype=np.int64)),
            self.model_config,
            self.federation,
            np.zeros(0, dtype=np.int64),
        )
        return model, global_params

    def _start_shards(self) -> None:
        ray = self._ray
        self._started_ray = connect(ray, self.address, self.actors * self.threads_per_worker)
        pipeline_args = None
        if self.privacy is not None:
            p = self.privacy
            # The driver's calibrated noise multiplier, so that no actor calibrates again.
            dp = (
                dataclasses.replace(p.dp, noise_multiplier=p.noise_multiplier, target_epsilon=None)
                if p.dp.enabled
                else p.dp
            )
            pipeline_args = dict(
                settings=dataclasses.replace(p.settings, dp=dp),
                num_users=p.num_users,
                maxlen=self.data.maxlen,
                rounds=p.rounds,
                sample_rate=p.sample_rate,
                seed=p.seed,
                federation_min_group_size=self.federation.min_group_size,
                participants=p.participants,
            )
        needed = len(self._shard_ranges) * self.threads_per_worker
        available = int(ray.cluster_resources().get("CPU", 0))
        if needed > available:  # the actors beyond the cluster's CPUs would wait forever to be placed
            self.close()
            raise ConfigError(
                f"--actors {len(self._shard_ranges)} x --threads-per-worker {self.threads_per_worker} "
                f"needs {needed} CPUs; the Ray cluster has {available}"
            )
        # an actor's CPUs must be on one node: the CPUs in all are not enough where they are split over nodes
        node_cpus = sorted((int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")), reverse=True)
        fits = sum(cpus // self.threads_per_worker for cpus in node_cpus)
        if fits < len(self._shard_ranges):
            self.close()
            raise ConfigError(
                f"--actors {len(self._shard_ranges)} x --threads-per-worker {self.threads_per_worker}: an actor's "
                f"CPUs must be on one node, and the Ray cluster's nodes (CPUs: {', '.join(map(str, node_cpus))}) "
                f"have room for {fits} such actors"
            )
        # SPREAD: the actors take turns over the nodes with free CPUs (Ray's default fills a node before the next)
        remote = ray.remote(num_cpus=self.threads_per_worker, scheduling_strategy="SPREAD")(ShardActor)
        self._actors = [
            remote.remote(
                self.data.subset(rows),
                int(rows[0]),
                self.model_config,
                self.federation,
                self.threads_per_worker,
                pipeline_args,
            )
            for rows in self._shard_ranges
        ]
        where = self._get([a.placement.remote() for a in self._actors])
        self.placement = [
            {"actor": i, "users": [int(rows[0]), int(rows[-1]) + 1], **node}
            for i, (rows, node) in enumerate(zip(self._shard_ranges, where))
        ]
        log.info("%s", self.placement_line())

    def placement_summary(self) -> dict[str, Any]:
        """Where the actors run, for the run's summary: the number of nodes and, per actor, its users
        [first, end) and its node's id (Ray's hex id). IP addresses and host names stay in `placement`."""
        return {
            "nodes": len({p["node_id"] for p in self.placement}),
            "actors": [{k: p[k] for k in ("actor", "users", "node_id")} for p in self.placement],
        }

    def placement_line(self) -> str:
        """One line for the console: how many actors on how many nodes, and which on which."""
        by_node: dict[str, list[int]] = {}
        for p in self.placement:
            by_node.setdefault(f"{p['node_ip']} ({p['host']}, node {p['node_id'][:8]})", []).append(p["actor"])
        nodes = "; ".join(f"{node}: actor{'s' * (len(a) > 1)} {', '.join(map(str, a))}" for node, a in by_node.items())
        return f"ray: {len(self.placement)} actors on {len(by_node)} node{'s' * (len(by_node) > 1)}: {nodes}"

    def _get(self, refs: Any) -> Any:
        """`ray.get(refs)`; ShardLost when an actor died on the way (a node that left the cluster)."""
        ray = self._ray
        try:
            return ray.get(refs)
        except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as error:
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            # Ray's message says why on a line of its own ("The actor died because its node has died. ...")
            why = next((line for line in lines if line.startswith("The actor died because")), lines[0] if lines else "")
            raise ShardLost(
                f"a Ray actor of this run was lost ({type(error).__name__}: {why}); its "
                "clients' private state went with it: the run folder keeps its last checkpoint, continue it with "
                "`mrff train --resume` and the same --run-dir (the checkpoint's rounds are kept)"
            ) from None

    def close(self) -> None:
        """Stop the actors (their private state goes with them) and a Ray instance this run started."""
        ray = self._ray
        for actor in self._actors:
            try:
                ray.kill(actor)
            except Exception:  # an actor whose node is gone: nothing left to stop
                pass
        self._actors = []
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
            self._started_ray = False

    def __enter__(self) -> RaySimulation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _split(self, sorted_rows: np.ndarray) -> list[np.ndarray]:
        """`sorted_rows` cut at the shard boundaries: one (possibly empty) array per actor."""
        starts = [int(r[0]) for r in self._shard_ranges[1:]]
        return np.split(np.asarray(sorted_rows, dtype=np.int64), np.searchsorted(sorted_rows, starts))

    def _global_ref(self) -> Any:
        """The global parameters in Ray's object store (a Ray ObjectRef), put once per call that needs them."""
        return self._ray.put({n: t.detach().numpy() for n, t in self.global_params.items()})

    def _each(self, method: str, *args: Any) -> list[Any]:
        """Every actor's `method(*args)`, in actor order."""
        return self._get([getattr(a, method).remote(*args) for a in self._actors])

    @property
    def private(self) -> dict[str, torch.Tensor]:
        """Every user's private parameters, gathered from the actors (a copy: writes do not reach them)."""
        return {n: torch.from_numpy(v) for n, v in self._private_arrays().items()}

    @private.setter
    def private(self, value: dict[str, torch.Tensor]) -> None:
        self._load_private_arrays({n: t.detach().numpy() for n, t in value.items()})

    def _train(self, participants: np.ndarray, r: int) -> torch.Tensor:
        ref = self._global_ref()
        fractions = None if self.group_fractions is None else self.group_fractions.numpy()
        parts = self._split(participants)
        routes = self._get([a.train.remote(ref, fractions, p, r) for a, p in zip(self._actors, parts)])
        return torch.from_numpy(np.concatenate(routes))

    def _plain_sum(
        self, suppressed: torch.Tensor | None, r: int, keep_individual: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        mask = None if suppressed is None else suppressed.numpy()
        results = self._each("plain_sum", mask, r, keep_individual)
        summed = torch.from_numpy(np.sum([s for s, _ in results], axis=0, dtype=np.float64))
        individual = [i for _, i in results if i is not None]
        return summed, (torch.from_numpy(np.concatenate(individual)) if keep_individual and individual else None)

    def _local_dp_sum(self, r: int, keep_individual: bool) -> tuple[torch.Tensor, int, torch.Tensor | None]:
        results = self._each("local_dp_sum", r, keep_individual)
        summed = torch.from_numpy(np.sum([s for s, _, _ in results], axis=0, dtype=np.float64))
        individual = [i for _, _, i in results if i is not None]
        return (
            summed,
            sum(c for _, c, _ in results),
            torch.from_numpy(np.concatenate(individual)) if keep_individual and individual else None,
        )

    def _secure_update_sum(self, suppressed: torch.Tensor | None, n: int, r: int) -> tuple[np.ndarray, int]:
        pipeline = self._pipeline()
        mask = None if suppressed is None else suppressed.numpy()
        session = pipeline.partial_session(Phase.UPDATE, n, r)  # the shards' partial ring sums merge into it
        clipped = 0
        for shard_clipped, ids, total in self._each("secure_update", mask, n, r):
            session.merge(ids, total)
            clipped += shard_clipped
        return pipeline.finish_secure_sum(Phase.UPDATE, n, session.finish(), r), clipped

    def _private_arrays(self) -> dict[str, np.ndarray]:
        parts = self._each("private_arrays")
        return {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}

    def _load_private_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Each actor gets its users' rows of every array; it checks names and shapes itself."""
        for n, value in arrays.items():
            if len(value) != self.data.num_users:
                raise ConfigError(f"private {n}: {len(value)} users, expected {self.data.num_users}")
        loads = []
        for actor, rows in zip(self._actors, self._shard_ranges):
            lo, hi = int(rows[0]), int(rows[-1]) + 1
            loads.append(
                actor.load_private_arrays.remote({n: np.ascontiguousarray(v[lo:hi]) for n, v in arrays.items()})
            )
        self._get(loads)

    def _predict(self, split: str, sorted_rows: np.ndarray) -> np.ndarray:
        ref = self._global_ref()
        parts = self._split(sorted_rows)
        out = self._get([a.predict.remote(ref, split, p) for a, p in zip(self._actors, parts)])
        return np.concatenate(out)

    def _routes(self) -> np.ndarray:
        return np.concatenate(self._each("routes", self._global_ref()))

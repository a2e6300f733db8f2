"""One client process: its logical clients, each in its own thread, sharing the dataset and one model per
configuration; the command line's user ranges and fault-injection hook."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from client.policy import ClientPolicy
from client.report import EnrolmentReporter, RoundReporter
from client.state import UserStore
from client.transport import ClientFailure, Connection, ServerWait
from client.worker import LogicalClient
from mrff_secure.checks import parse_users
from mrff_secure.config import ModelConfig
from mrff_secure.data.client_data import ClientData
from mrff_secure.data.schema import PublicSchema
from mrff_secure.errors import ConfigError, ConnectionFailed, MrffError
from mrff_secure.federation.client_update import build_global
from mrff_secure.model.roles import Role, parameter_roles
from mrff_secure.round.spec import Phase
from mrff_secure.round.stages import step_named
from mrff_secure.round.update_vector import UpdateLayout
from mrff_secure.secagg.primitives import remember_verified_signatures
from mrff_secure.wire.collector import quiet_collector

log = logging.getLogger("mrff.client")

ParameterSpecs = dict[str, tuple[tuple[int, ...], torch.dtype]]  # name -> (shape, dtype)
ClientModel = tuple[torch.nn.Module, UpdateLayout, ParameterSpecs, ParameterSpecs]  # model, layout, shared, private

__all__ = [
    "ClientFailure",
    "Connection",
    "FaultInjection",
    "ProcessShared",
    "parse_pause",
    "parse_users",
    "run_process",
]


@dataclass
class ProcessShared:
    """What the logical clients of one process share: the dataset, one model per configuration, and
    a lock around local training (torch's global RNG seeds dropout, so training is serialized)."""

    data: ClientData
    waiting: ServerWait | None = None  # the process's line while the server is away
    enrolment: EnrolmentReporter | None = None  # the process's line once its users are enrolled
    train_lock: threading.Lock = field(default_factory=threading.Lock)
    _models: dict[tuple[str, int], ClientModel] = field(default_factory=dict)
    schema_digest: str = field(init=False)  # of our own data: a server announcing another schema is refused
    schema_summary: str = field(init=False)

    def __post_init__(self) -> None:
        schema = PublicSchema.of(self.data)
        self.schema_digest, self.schema_summary = schema.digest(), schema.describe()

    def model(self, config: ModelConfig, seed: int) -> ClientModel:
        """(model, its update layout, shared and private parameter specs name -> (shape, dtype)), built once."""
        key = (repr(config), seed)
        with self.train_lock:
            if key not in self._models:
                model, params = build_global(config, self.data, seed)
                roles = parameter_roles(model)
                private = {
                    n: (tuple(p.shape), p.dtype) for n, p in model.named_parameters() if roles[n] is Role.PRIVATE
                }
                shared = {n: (tuple(t.shape), t.dtype) for n, t in params.items()}
                self._models[key] = (model, UpdateLayout.from_model(model), shared, private)
            return self._models[key]


@dataclass(frozen=True)
class FaultInjection:
    """Testing hook: after submitting (round, phase, stage), stop and call `on_pause` (the test
    then kills the process). None of it runs unless `mrff client --pause-after` is given."""

    round_id: int
    phase: int
    stage: int
    on_pause: Callable[[int], None]


def parse_pause(text: str) -> tuple[int, int, int]:
    """'ROUND:PHASE:STAGE', e.g. '1:update:share_keys'."""
    try:
        r, phase, stage = text.split(":")
        if phase not in (Phase.COUNTS.label, Phase.UPDATE.label):
            raise ValueError(phase)
        return int(r), Phase.from_label(phase), step_named(stage).wire
    except (ValueError, ConfigError) as exc:
        raise ConfigError(f"--pause-after must be ROUND:{{counts,update}}:STAGE, got {text!r}") from exc


def run_process(
    users: list[int],
    connection: Connection,
    state_dir: Path,
    data: ClientData,
    *,
    client_seed: int,
    pause: tuple[int, int, int] | None = None,
    policy: ClientPolicy | None = None,
    reproducible_noise: bool = False,
    emit: Callable[[str], None],
) -> int:
    """Run every logical client of this process in its own thread; 0 if all finished the run. `emit` takes
    the process's lines for the operator (ENROLLED once its users are enrolled, WAITING while the server is away,
    one per round, and PAUSED under fault injection)."""
    torch.set_num_threads(1)
    if max(users) >= data.num_users:
        raise ConfigError(f"user {max(users)} does not exist: the dataset has {data.num_users} users")
    shared = ProcessShared(data, waiting=ServerWait(connection.target, emit), enrolment=EnrolmentReporter(users, emit))
    remember_verified_signatures()  # this process's logical clients check a shared neighbour's signature once
    quiet_collector()  # the dataset is loaded: the logical clients' message objects are what the collector sees
    stop = threading.Event()
    failures: list[str] = []
    paused: set[int] = set()
    pause_lock = threading.Lock()

    def on_pause(user: int) -> None:
        with pause_lock:
            paused.add(user)
            if len(paused) == len(users):
                emit(f"PAUSED users={len(users)}")

    fault = None if pause is None else FaultInjection(*pause, on_pause=on_pause)

    reporter = RoundReporter(users, emit)
    clients: list[LogicalClient] = []
    clients_lock = threading.Lock()
    unreachable: list[ConnectionFailed] = []

    def give_up(exc: ConnectionFailed) -> None:
        """The server cannot be reached: the other logical clients cannot reach it either; stop them now
        (closing a channel ends the calls in flight on it)."""
        with clients_lock:
            unreachable.append(exc)
            stop.set()
            for client in clients:
                client.close()

    def body(user: int) -> None:
        client = None
        try:
            client = LogicalClient(
                user,
                connection,
                UserStore(state_dir, user),
                shared,
                client_seed=client_seed,
                fault=fault,
                stop=stop,
                policy=policy,
                reproducible_noise=reproducible_noise,
                reporter=reporter,
            )
            with clients_lock:
                clients.append(client)
            if stop.is_set():
                raise ClientFailure(f"user {user}: stopped")
            client.run()
        except ConnectionFailed as exc:
            give_up(exc)
        except ClientFailure as exc:
            failures.append(str(exc))
        except MrffError as exc:
            failures.append(f"user {user}: {exc}")
        except Exception as exc:  # noqa: BLE001 - reported, not swallowed; the traceback with -v
            log.info("user %d failed", user, exc_info=True)
            failures.append(f"user {user}: {type(exc).__name__}: {exc}")
        finally:
            if client is not None:
                client.close()

    threads = [threading.Thread(target=body, args=(u,), name=f"user-{u}", daemon=True) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reporter.flush()
    if unreachable:
        raise unreachable[0]  # one line: the cause, the same for every logical client of this process
    if failures:
        raise ClientFailure(f"{len(failures)} of {len(users)} logical clients failed; first: {failures[0]}")
    return 0

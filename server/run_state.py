"""A network run's durable state: what a restarted server needs to continue the run.

`ServerSettings` (how rounds are run, saved with the run) and `RunState`: the run id, the global
shared/group parameters, the server optimizer's state, the round counters, the group fractions, the privacy
ledger, the identity directory (client id -> identity key, never reassigned within a run), the configuration digest and
the signed audit log. `RunState.create` starts a run in an empty folder; `RunState.resume` loads the
checkpoint, checks it against the model and its digest, and re-reads the enrolments audited after
the checkpoint. `save()` writes the checkpoint atomically (server/checkpoint.py). No locks and no
transport here: the round driver (coordinator.py) owns when state changes.

Round ids are never reused within a run: a round's id is consumed (`next_round` saved past it, with
`round_in_progress`) before it is announced, so a server stopped in the middle of round r resumes at
round r + 1, and `resume` records round r as aborted (its releases are in the ledger, saved as they
happen). `completed_rounds` and `aborted_rounds` count the run's rounds of each kind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mrff_secure.audit_log import AuditLog, read_records, software_version
from mrff_secure.checks import check_bool, check_int, check_number
from mrff_secure.config import FederationConfig, ModelConfig
from mrff_secure.data.schema import PublicSchema
from mrff_secure.errors import CheckpointError, ConfigError, PrivacyError
from mrff_secure.federation.client_update import build_global, model_config_json
from mrff_secure.model.roles import Role, parameter_roles
from mrff_secure.round.accountant import RoundAccountant
from mrff_secure.round.aggregate import ServerOptimizer
from mrff_secure.round.spec import RoundSpec
from mrff_secure.round.update_vector import UpdateLayout
from mrff_secure.secagg.config import DEFAULT_CORRUPT_NEIGHBOURS
from mrff_secure.wire import tensors
from server import checkpoint
from server.privacy import ledger_summary


@dataclass(frozen=True)
class ServerSettings:
    """How the coordinator runs rounds (saved in the run folder; `--resume` reads it back)."""

    rounds: int = 3
    seed: int = 0
    client_fraction: float = 1.0
    min_clients: int = 3
    secure: bool = True
    train_timeout: float = 120.0  # announcement -> advertise keys of the counts phase (local training)
    stage_timeout: float = 30.0  # every other stage
    dp_delta: float = 1e-5
    corrupt_neighbours: int = DEFAULT_CORRUPT_NEIGHBOURS  # c_max: colluding survivors the accounting assumes
    max_dropout_fraction: float = 0.3  # distributed DP: noise sized for ceil(n * (1 - f)) survivors
    num_neighbours: int | None = None
    threshold: int | None = None
    eval_every: int = 0  # federated evaluation every this many rounds (and at the last); 0: none
    max_evaluations: int = 5  # at most this many federated evaluations per run (each a release in epsilon)
    final_evaluation: bool = False  # after the last round, one federated evaluation of the final model
    # The tuned recipe's server side, as `mrff train` runs it (`FederationConfig`, which validates them); the
    # clients' weight decay is in the RoundSpec
    server_optimizer: str = "avg"
    server_lr: float = 1.0
    server_momentum: float = 0.9
    lr_schedule: str = "constant"

    def __post_init__(self) -> None:
        check_int("--federated-eval-every", self.eval_every, low=0)
        check_int("--max-evaluations", self.max_evaluations, low=0)
        check_bool("--final-evaluation", self.final_evaluation)
        check_int("rounds", self.rounds, low=0)
        check_int("min_clients (secure aggregation needs 3)", self.min_clients, low=3)
        check_number("client_fraction", self.client_fraction, low=0.0, high=1.0, low_open=True)
        check_number("train_timeout", self.train_timeout, low=0.0, low_open=True)
        check_number("stage_timeout", self.stage_timeout, low=0.0, low_open=True)
        check_number("max_dropout_fraction", self.max_dropout_fraction, low=0.0, high=1.0, high_open=True)
        self.recipe(lr=1.0)  # the recipe's checks: FederationConfig's

    def recipe(self, *, lr: float) -> FederationConfig:
        """The run's recipe as `mrff train` holds it: the server optimizer and the clients' lr schedule from base
        lr `lr` (`FederationConfig.client_lr`, evaluated by the server, announced in each round's body). The weight
        decay is the round spec's (`RoundSpec.weight_decay`, checked there)."""
        return FederationConfig(
            rounds=self.rounds,
            client_fraction=self.client_fraction,
            lr=lr,
            seed=self.seed,
            server_optimizer=self.server_optimizer,
            server_lr=self.server_lr,
            server_momentum=self.server_momentum,
            lr_schedule=self.lr_schedule,
        )

    def server_optimizer_of(self) -> ServerOptimizer:
        """A fresh server optimizer of the run's recipe (its state: zeros, as before the first step)."""
        return ServerOptimizer(self.server_optimizer, self.server_lr, self.server_momentum)

    def secagg_options(self) -> dict[str, int]:
        return {
            k: v for k, v in (("num_neighbours", self.num_neighbours), ("threshold", self.threshold)) if v is not None
        }

    def evaluates(self, round_id: int) -> bool:
        """Round `round_id` is scheduled to end with a federated evaluation of the model it started from (the
        coordinator also stops at `round_evaluations_cap`)."""
        if self.eval_every == 0 or self.round_evaluations_cap == 0:
            return False
        return round_id % self.eval_every == 0 or round_id == self.rounds - 1

    @property
    def evaluates_final_model(self) -> bool:
        """One federated evaluation of the final model after the last round (within --max-evaluations)."""
        return self.final_evaluation and self.max_evaluations > 0

    @property
    def round_evaluations_cap(self) -> int:
        """The evaluations the rounds may release: --max-evaluations, less the final model's, kept for it."""
        return self.max_evaluations - int(self.evaluates_final_model)


class RunState:
    """One run's durable state (see the module docstring). Build with `create` or `resume`."""

    run_id: str
    params: dict[str, torch.Tensor]
    next_round: int  # the id of the next round to announce (ids are never reused)
    last_completed: int
    completed_rounds: int
    aborted_rounds: int
    round_in_progress: int | None  # announced, not ended: aborted if the server stops before it ends
    final_evaluation_round: int | None  # the round id the final evaluation took (attempted once per run)
    group_fractions: torch.Tensor | None
    ledger: RoundAccountant
    identities: dict[int, bytes]

    def __init__(
        self,
        run_dir: Path,
        settings: ServerSettings,
        model_config: ModelConfig,
        schema: PublicSchema,
        spec: RoundSpec,
        signing_key: Ed25519PrivateKey,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.settings, self.model_config, self.spec = settings, model_config, spec
        self.model, self._initial_params = build_global(model_config, schema, settings.seed)  # the public schema only
        self.schema_digest, self.schema_summary = schema.digest(), schema.describe()
        self.layout = UpdateLayout.from_model(self.model)
        self.server_optimizer = settings.server_optimizer_of()
        self.config_digest = hashlib.sha256(
            json.dumps(
                {
                    "settings": dataclasses.asdict(settings),
                    "spec": dataclasses.asdict(spec),
                    "model_config": model_config_json(model_config),
                    "schema": self.schema_digest,
                },
                sort_keys=True,
            ).encode()
        ).hexdigest()
        self.audit = AuditLog(self.run_dir / "audit.jsonl", signing_key, config_digest=self.config_digest)

    # ------------------------------------------------------------- creation
    @classmethod
    def create(
        cls,
        run_dir: Path,
        settings: ServerSettings,
        model_config: ModelConfig,
        schema: PublicSchema,
        spec: RoundSpec,
        signing_key: Ed25519PrivateKey,
    ) -> "RunState":
        state = cls(run_dir, settings, model_config, schema, spec, signing_key)
        if (state.run_dir / checkpoint.FILENAME).exists():
            raise ConfigError(f"{state.run_dir} already holds a run; use --resume {state.run_dir} or a new folder")
        state.run_id = secrets.token_hex(8)
        state.params = state._initial_params
        state.next_round, state.last_completed = 0, -1
        state.completed_rounds, state.aborted_rounds, state.round_in_progress = 0, 0, None
        state.final_evaluation_round = None
        groups = state.layout.num_groups
        dtype = next(iter(state.params.values())).dtype
        state.group_fractions = (
            torch.full((state.layout.num_blocks, groups), 1.0 / groups, dtype=dtype) if groups else None
        )
        state.ledger = RoundAccountant(delta=settings.dp_delta)
        state.identities = {}
        state.save()
        state.audit.append(
            {
                "type": "run_started",
                "run_id": state.run_id,
                "settings": dataclasses.asdict(settings),
                "spec": dataclasses.asdict(spec),
                "model_config": model_config_json(model_config),
                "model_digest": state.model_digest(),
                "software": software_version(),
                "config_digest": state.config_digest,
            },
            sync=True,
        )
        return state

    @classmethod
    def resume(
        cls,
        run_dir: Path,
        settings: ServerSettings,
        model_config: ModelConfig,
        schema: PublicSchema,
        spec: RoundSpec,
        signing_key: Ed25519PrivateKey,
    ) -> "RunState":
        state = cls(run_dir, settings, model_config, schema, spec, signing_key)
        if state.audit.finished:
            raise ConfigError(
                f"the run in {state.run_dir} has finished (its audit log ends with a signed "
                "run_finished): it is not resumed; start a new run in another --run-dir"
            )
        params, meta, optimizer_state = checkpoint.load_with_optimizer(state.run_dir)
        state._restore(params, meta, optimizer_state)
        records = list(read_records(state.audit.path))
        for record in records:  # bindings made after the checkpoint
            if record.get("type") == "enrolled":
                state.identities.setdefault(int(record["client"]), bytes.fromhex(record["identity_key"]))
        if "completed_rounds" not in meta:  # a checkpoint of an older version: count the log's rounds
            state.completed_rounds = sum(r.get("type") == "round" for r in records)
            state.aborted_rounds = sum(r.get("type") == "round_aborted" for r in records)
        state.audit.append(
            {
                "type": "resumed",
                "next_round": state.next_round,
                "completed_rounds": state.completed_rounds,
                "model_digest": state.model_digest(),
                "repaired": state.audit.repaired,
            },
            sync=True,
        )
        interrupted = state.round_in_progress
        if interrupted is not None and not any(
            r.get("type") in ("round", "round_aborted") and r.get("round") == interrupted for r in records
        ):
            state.aborted_rounds += 1
            state.round_in_progress = None
            state.save()
            state.audit.append(
                {
                    "type": "round_aborted",
                    "round": interrupted,
                    "reason": "the server stopped during this round (found on --resume); its id is not reused",
                    "interrupted": True,
                    "model_digest": state.model_digest(),
                    "epsilon": ledger_summary(state.ledger),  # what was released before the stop is accounted
                },
                sync=True,
            )
        elif interrupted is not None:  # its record was written, the checkpoint after it was not
            state.round_in_progress = None
            state.save()
        return state

    def _restore(
        self, params: dict[str, torch.Tensor], meta: dict[str, Any], optimizer_state: dict[str, torch.Tensor]
    ) -> None:
        template = self.params_template()
        if list(params) != list(template):
            raise CheckpointError(f"{self.run_dir}: checkpoint parameters do not match the model")
        for name, (shape, dtype) in template.items():
            if tuple(params[name].shape) != shape or params[name].dtype != dtype:
                raise CheckpointError(f"{self.run_dir}: parameter {name} has the wrong shape or dtype")
        if meta.get("model_config") != model_config_json(self.model_config):
            raise CheckpointError(f"{self.run_dir}: the checkpoint was made with another model configuration")
        if tensors.digest(params).hex() != meta.get("model_digest"):
            raise CheckpointError(f"{self.run_dir}: checkpoint parameters do not match their recorded digest")
        expected = self.server_optimizer.state_arrays(params)
        if sorted(optimizer_state) != sorted(expected):
            raise CheckpointError(
                f"{self.run_dir}: the checkpoint's server optimizer state ({len(optimizer_state)} arrays) is not that "
                f"of --server-optimizer {self.settings.server_optimizer} ({len(expected)} arrays)"
            )
        for name, reference in expected.items():
            if optimizer_state[name].shape != reference.shape or optimizer_state[name].dtype != reference.dtype:
                raise CheckpointError(f"{self.run_dir}: the server optimizer's {name} has the wrong shape or dtype")
        self.server_optimizer.load_state_arrays(optimizer_state)
        self.params = params
        self.run_id = str(meta["run_id"])
        self.next_round = int(meta["next_round"])
        self.last_completed = int(meta["last_completed_round"])
        self.completed_rounds = int(meta.get("completed_rounds", 0))
        self.aborted_rounds = int(meta.get("aborted_rounds", 0))
        in_progress = meta.get("round_in_progress")
        self.round_in_progress = None if in_progress is None else int(in_progress)
        final = meta.get("final_evaluation_round")
        self.final_evaluation_round = None if final is None else int(final)
        fractions = meta.get("group_fractions")
        dtype = next(iter(params.values())).dtype
        self.group_fractions = None if fractions is None else torch.tensor(fractions, dtype=dtype)
        self.ledger = RoundAccountant(delta=self.settings.dp_delta)
        try:
            self.ledger.load_state_dict(meta["ledger"])
        except PrivacyError as exc:
            raise CheckpointError(f"the checkpoint's privacy ledger is not readable: {exc}") from exc
        self.identities = {int(c): bytes.fromhex(k) for c, k in meta.get("identities", {}).items()}

    # ---------------------------------------------------------------- state
    def model_digest(self) -> str:
        return tensors.digest(self.params).hex()

    def params_template(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        roles = parameter_roles(self.model)
        return {n: (tuple(p.shape), p.dtype) for n, p in self.model.named_parameters() if roles[n] is not Role.PRIVATE}

    def save(self) -> None:
        """The checkpoint, written atomically."""
        meta: dict[str, Any] = {
            "run_id": self.run_id,
            "next_round": self.next_round,
            "last_completed_round": self.last_completed,
            "completed_rounds": self.completed_rounds,
            "aborted_rounds": self.aborted_rounds,
            "round_in_progress": self.round_in_progress,
            "final_evaluation_round": self.final_evaluation_round,
            "group_fractions": None if self.group_fractions is None else self.group_fractions.tolist(),
            "ledger": self.ledger.state_dict(),
            "rng": {"sampling": "numpy.default_rng([seed, round])", "seed": self.settings.seed},
            "identities": {str(c): k.hex() for c, k in sorted(self.identities.items())},
            "model_digest": self.model_digest(),
            "model_config": model_config_json(self.model_config),
        }
        checkpoint.save(self.run_dir, self.params, meta, self.server_optimizer.state_arrays(self.params))

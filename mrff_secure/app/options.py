"""The run configuration: one table of every quantity the commands share, one name and one default each.

A quantity lives in one table per concern (data, model, federation, privacy, network, audit, scale) and has
one flag (`privacy.noise_multiplier` is `--noise-multiplier` in every command that takes it). A
command's value of a quantity is, by increasing precedence: the default here, the `--config` TOML
file (tables named like the concerns), `--set table.key=value` overrides, then the flag. The resolved
configuration is written as `config.toml` into every run folder, so `--config RUN/config.toml`
repeats a run.

This module imports nothing heavy (no torch, no opacus): `mrff --help` builds every parser from it.
Values are checked here, against the flag's name ("--noise-multiplier must be >= 0"), before any
configuration object of the library sees them.
"""

from __future__ import annotations

import argparse
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from mrff_secure.checks import check_bool
from mrff_secure.errors import ConfigError
from mrff_secure.federation.planted_defects import PLANTED_DEFECTS

if TYPE_CHECKING:  # imported where used: this module imports nothing heavy
    from mrff_secure.config import ModelConfig
    from mrff_secure.data.client_data import ClientData

TABLES = ("data", "model", "federation", "privacy", "network", "audit", "scale")


@dataclass(frozen=True)
class Option:
    table: str
    name: str  # the key in the table; the flag is --name with dashes
    kind: type  # int, float, str, bool, Path, or list (of `item`)
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    low: float | None = None  # inclusive bound
    high: float | None = None  # inclusive bound
    above: float | None = None  # exclusive lower bound
    below: float | None = None  # exclusive upper bound
    item: type = float  # element type of a list option
    optional: bool = False  # None is a value ("not set": the help says what happens then)
    negative_flag: str | None = None  # bool options that default to True: the flag that sets False

    @property
    def key(self) -> str:
        return f"{self.table}.{self.name}"

    @property
    def flag(self) -> str:
        if self.negative_flag:
            return self.negative_flag
        return "--" + self.name.replace("_", "-")

    @property
    def dest(self) -> str:
        return self.name

    def check(self, value: Any, source: str) -> Any:
        """The value, converted and checked; ConfigError naming `source` (a flag or a config key)."""
        if value is None:
            if self.optional:
                return None
            raise ConfigError(f"{source} needs a value")
        if self.kind is bool:
            return check_bool(source, value)
        if self.kind is list:
            if not isinstance(value, list) or not value:
                raise ConfigError(f"{source} must be a non-empty list, got {value!r}")
            return [self._scalar(v, source, self.item) for v in value]
        return self._scalar(value, source, self.kind)

    def _scalar(self, value: Any, source: str, kind: type) -> Any:
        if kind is Path:
            if not isinstance(value, (str, Path)) or not str(value):
                raise ConfigError(f"{source} must be a path, got {value!r}")
            return str(value)
        if kind is str:
            if not isinstance(value, str):
                raise ConfigError(f"{source} must be a string, got {value!r}")
            if self.choices is not None and value not in self.choices:
                raise ConfigError(f"{source} must be one of {', '.join(self.choices)}; got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source} must be a number, got {value!r}")
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ConfigError(f"{source} must be an integer, got {value!r}")
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise ConfigError(f"{source} must be finite, got {value!r}")
        if self.low is not None and value < self.low:
            raise ConfigError(f"{source} must be >= {self.low:g}, got {value:g}")
        if self.high is not None and value > self.high:
            raise ConfigError(f"{source} must be <= {self.high:g}, got {value:g}")
        if self.above is not None and not value > self.above:
            raise ConfigError(f"{source} must be > {self.above:g}, got {value:g}")
        if self.below is not None and not value < self.below:
            raise ConfigError(f"{source} must be < {self.below:g}, got {value:g}")
        return value


def _o(table: str, name: str, kind: type, default: Any, help: str, **kw: Any) -> Option:
    return Option(table, name, kind, default, help, **kw)


# One option per line: the table reads as a table (the formatter leaves it as written).
# fmt: off
OPTIONS: tuple[Option, ...] = (
    # ---------------------------------------------------------------- data
    _o("data", "dataset", str, "synthetic", "synthetic (embedded, no download), kuaisar-r or recbole",
       choices=("synthetic", "kuaisar-r", "recbole")),
    _o("data", "data_dir", Path, None, "folder of the dataset files (kuaisar-r, recbole)", optional=True),
    _o("data", "recbole_name", str, None, "recbole: atomic file stem (not set: the folder name)", optional=True),
    _o("data", "label_field", str, "label", "recbole: 0/1 label column, else rating >= --rating-threshold"),
    _o("data", "rating_threshold", float, 4.0, "recbole: a rating at least this is a click"),
    _o("data", "synthetic_users", int, 400, "users of the synthetic dataset", low=3),
    _o("data", "synthetic_rare_values", int, 0, "synthetic: attribute values each touched by exactly one user (rare "
                                                "rows, as real data has; the audit plants 20)", low=0),
    _o("data", "data_seed", int, 0, "seed of the synthetic generator", low=0),
    _o("data", "maxlen", int, 0, "history length; 0 = the dataset's default (kuaisar-r 65, recbole 50, synthetic 30)",
       low=0),
    # ---------------------------------------------------------------- model
    _o("model", "backbone", str, "sasrec", "the model: a sequential backbone (sasrec, hstu, llama) or a "
       "non-sequential baseline (ncf: FedNCF, pa: FedPA; both need --no-mrff)",
       choices=("sasrec", "hstu", "llama", "ncf", "pa")),
    _o("model", "mrff", bool, True, "MRFF's user and group feed-forward parts; --no-mrff: one shared feed-forward "
                                     "part (the plain backbone, e.g. FedSASRec)", negative_flag="--no-mrff"),
    _o("model", "groups", int, 4, "user groups per block", low=1),
    _o("model", "blocks", int, 2, "transformer blocks", low=1),
    _o("model", "heads", int, 1, "attention heads", low=1),
    _o("model", "attribute_dim", int, 8, "embedding size of each attribute", low=1),
    _o("model", "dropout", float, 0.5, "dropout rate", low=0.0, below=1.0),
    _o("model", "routing", str, "paper", "paper: FFN_u(h) + FFN_g(h); scaled: FFN_u(h) + p_g FFN_g(h)",
       choices=("paper", "scaled")),
    _o("model", "balance_alpha", float, 0.1, "weight of the group-balance loss", low=0.0),
    # ---------------------------------------------------------------- federation
    _o("federation", "rounds", int, 30, "training rounds", low=1),
    _o("federation", "local_steps", int, 1, "optimizer steps per client per round", low=1),
    _o("federation", "client_fraction", float, 1.0, "fraction of the clients sampled each round", above=0.0, high=1.0),
    _o("federation", "optimizer", str, "adam", "the clients' optimizer (fresh each round)", choices=("adam", "sgd")),
    _o("federation", "lr", float, 0.1, "the clients' learning rate", above=0.0),
    _o("federation", "seed", int, 0, "model initialisation, client sampling and dropout", low=0),
    _o("federation", "weight_decay", float, 0.0, "the clients' decoupled weight decay per local step (AdamW / SGDW; "
                                                 "network: signed in each round, lr x weight decay below 1)", low=0.0),
    _o("federation", "lr_schedule", str, "constant", "the clients' lr over rounds: constant, or cosine decay toward 0 "
                                                      "at --rounds (network: the server signs each round's lr)",
       choices=("constant", "cosine")),
    _o("federation", "server_optimizer", str, "avg", "avg: the new model is the clients' mean (the paper); avgm: "
       "FedAvgM; adam: FedAdam (Reddi et al. 2021), on the mean's change", choices=("avg", "avgm", "adam")),
    _o("federation", "server_lr", float, 1.0, "the server optimizer's learning rate (avg with 1: the mean itself)",
       above=0.0),
    _o("federation", "server_momentum", float, 0.9, "avgm: momentum; adam: beta1", low=0.0, below=1.0),
    _o("federation", "patience", int, 0, "early stopping: stop once validation AUC has not improved for this many "
                                         "rounds (0: run every round; not with --dp: the stopping round would "
                                         "depend on private data outside the guarantee)", low=0),
    _o("federation", "eval_every", int, 1, "rounds between evaluations", low=1),
    _o("federation", "federated_eval_every", int, 0, "network: rounds between federated evaluations (0: none; "
                                                     "else also the last round); each is a DP release in epsilon",
       low=0),
    _o("federation", "max_evaluations", int, 5, "network: at most this many federated evaluations per run", low=0),
    _o("federation", "final_evaluation", bool, False, "network: after the last round, one federated evaluation of "
                                                      "the final model (a DP release in epsilon, one of "
                                                      "--max-evaluations; each client may refuse it)"),
    _o("federation", "chunk_size", int, 64, "simulation: clients per vectorized chunk (0 = all)", low=0),
    _o("federation", "checkpoint_every", int, 10, "mrff train: rounds between checkpoints (--resume continues from "
                                                  "the last)", low=1),
    _o("federation", "min_clients", int, 3, "network: a round starts once this many clients are enrolled", low=1),
    # ---------------------------------------------------------------- privacy
    _o("privacy", "dp", str, "off", "off: no noise (epsilon inf); local: every client adds the full noise z*C; "
                                    "distributed: noise shares under secure aggregation",
       choices=("off", "local", "distributed")),
    _o("privacy", "clip", float, 1.0, "L2 clip bound C of each update's delta part", above=0.0),
    _o("privacy", "noise_multiplier", float, None, "z: noise std / C (or --target-epsilon)", low=0.0, optional=True),
    _o("privacy", "target_epsilon", float, None, "calibrate z to spend this epsilon over --rounds", above=0.0,
       optional=True),
    _o("privacy", "delta", float, None, "delta of (epsilon, delta); not set: 1/n^1.1 for n users", above=0.0,
       below=1.0, optional=True),
    _o("privacy", "mechanism", str, None, "local: gaussian; distributed: discrete_gaussian (not set) or skellam",
       choices=("gaussian", "discrete_gaussian", "skellam"), optional=True),
    _o("privacy", "max_dropout_fraction", float, 0.3, "distributed: the noise shares stay sufficient if at most "
                                                      "this fraction of the clients drops", low=0.0, below=1.0),
    _o("privacy", "secure_aggregation", str, None, "on: the server learns only group-wise sums; off: plain "
                                                   "uploads; inmemory (mrff train): the real protocol state machines "
                                                   "in memory. Not set: on with --dp distributed and for the network "
                                                   "server, off otherwise", choices=("off", "on", "inmemory"),
       optional=True),
    _o("privacy", "corrupt_neighbours", int, 2, "network: c_max, the colluding survivors the accounting assumes "
                                                "(only the other survivors' noise shares are counted; the clients' "
                                                "default policy assumes 2)", low=0),
    _o("privacy", "modulus_bits", int, 32, "the secure sums' ring Z_{2^B}", low=8, high=62),
    _o("privacy", "min_group_size", int, 5, "secure aggregation: groups with fewer clients in phase 1 send zeros",
       low=2),
    _o("privacy", "noise_sampling", str, "per_client", "mrff train, distributed: aggregate draws the summed noise "
                                                      "shares once (a simulation shortcut)",
       choices=("per_client", "aggregate")),
    _o("privacy", "count_cap", int, None, "the example count is uploaded as min(count, cap)/cap (not set: the "
                                          "history length)", low=1, optional=True),
    _o("privacy", "clip_from_private_data", bool, False, "declare that C was chosen from private data (listed as "
                                                         "released outside the guarantee)"),
    _o("privacy", "insecure_reproducible_noise", bool, False, "DEBUGGING ONLY, NOT PRIVATE: draw the DP noise from "
                                                              "the seed instead of the OS's entropy"),
    # ---------------------------------------------------------------- network
    _o("network", "address", str, "127.0.0.1:50051", "host:port (the server binds it, clients connect to it; "
                                                     "port 0: any free port, server only)"),
    _o("network", "certs", Path, "certs", "folder written by `mrff certs`"),
    _o("network", "mtls", bool, True, "mutual TLS: the server accepts only clients presenting a certificate of "
                                     "its CA, clients present CERTS/client.crt; turning it off makes the server "
                                     "print a warning", negative_flag="--insecure-no-mtls"),
    _o("network", "insecure", bool, False, "plaintext gRPC (no TLS): only for debugging on loopback"),
    _o("network", "train_timeout", float, 120.0, "seconds for local training (announcement to keys)", above=0.0),
    _o("network", "stage_timeout", float, 30.0, "seconds per secure-aggregation stage", above=0.0),
    _o("network", "num_neighbours", int, None, "secure aggregation graph degree k (not set: the smallest k, with t, that keeps a split "
                                            "view below 2^-40 with 5%% corrupt and 10%% dropped clients; at least "
                                            "2 ceil(log2 n))",
       low=2, optional=True),
    _o("network", "threshold", int, None, "Shamir threshold t (not set: from the client policy's rule)", low=2,
       optional=True),
    _o("network", "max_upload_mib", int, 64, "largest accepted client message", low=1),
    _o("network", "max_workers", int, 2048, "server request threads (one per waiting client)", low=1),
    _o("network", "linger", float, 60.0, "after the last round, serve until every client has the end-of-run "
                                         "message, at most this long", low=0.0),
    _o("network", "retry_timeout", float, 120.0, "client: keep reconnecting for this long while the server is "
                                                 "unavailable, before the first contact too (clients may start "
                                                 "before their server)", above=0.0),
    # ---------------------------------------------------------------- audit
    _o("audit", "rounds_per_cell", int, 5, "training rounds of every cell", low=1),
    _o("audit", "canaries", int, 1000, "canaries (m) per cell: contributions inserted in the release, not users; "
                                       "0: no canary, so no DP claim can be tested", low=0),
    _o("audit", "levels", list, [0.1, 0.3, 0.5], "noise multipliers of the DP cells", above=0.0),
    _o("audit", "targets", list, [1.0, 4.0], "calibrated target epsilons of the DP cells", above=0.0),
    _o("audit", "seeds", list, [0], "seeds: every cell once per seed", item=int, low=0),
    _o("audit", "sampled_fraction", float, 0.1, "client fraction of the disaggregation cells (0 = none)", low=0.0,
       high=1.0),
    _o("audit", "cells", list, None, "run only the cells whose name contains one of these", item=str, optional=True),
    _o("audit", "confidence", float, 0.99, "every test of the audit together at this confidence: an honest "
                                           "implementation gets a verdict other than 'holds' with probability at "
                                           "most 1 - confidence (the stated false-alarm rate)", low=0.5, below=1.0),
    _o("audit", "misreport_noise", float, 1.0, "TESTING THE AUDIT ONLY: claim z x FACTOR while adding z", above=0.0),
    _o("audit", "network_cell", bool, True, "play a lying server against real client processes on loopback "
                                           "(attacks/network_cell.py, ~40 s); --no-network-cell leaves it out "
                                           "(the verdict then says so)", negative_flag="--no-network-cell"),
    _o("audit", "planted_defect", str, None, "TESTING THE AUDIT ONLY: plant this privacy defect in every DP cell "
                                             "(mrff_secure/federation/planted_defects.py)", optional=True,
       choices=tuple(PLANTED_DEFECTS)),
    # ---------------------------------------------------------------- scale
    _o("scale", "backend", str, "single", "single: this process; ray: clients sharded over Ray actors (train) or "
                                         "cells as Ray tasks (audit); needs pip install -e '.[ray]'",
       choices=("single", "ray")),
    _o("scale", "ray_address", str, None, "ray: a running cluster (auto, or HOST:PORT of `ray start --head`); not "
                                          "set: the cluster at RAY_ADDRESS if that is set, else a local Ray "
                                          "instance for this command", optional=True),
    _o("scale", "actors", int, 2, "ray, train: Ray actors the clients are sharded over", low=1),
    _o("scale", "threads_per_worker", int, 1, "ray: torch threads (and Ray CPUs) of each actor or audit cell", low=1),
)
# fmt: on
BY_KEY = {o.key: o for o in OPTIONS}
RENAMED_KEYS = {"scale.workers": "scale.actors"}  # old configuration keys, named in the refusal
# old flags: refused with their new name (one concept, one flag: `--workers` meant processes in `audit` and
# Ray actors in `train`; the client's `--server` is everyone else's `--address`)
RENAMED_FLAGS: dict[str, dict[str, str]] = {
    "train": {"--workers": "--actors"},
    "audit": {"--workers": "--processes"},
    "client": {"--server": "--address"},
}
BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
assert len(BY_NAME) == len(OPTIONS), "option names must be unique across tables"

# Which quantities each command takes (by name); the rest of a --config file is ignored by it.
# Which command takes which options: one tuple per line (the formatter leaves it as written).
# fmt: off
_DATA = ("dataset", "data_dir", "recbole_name", "label_field", "rating_threshold", "synthetic_users", "data_seed",
         "maxlen")
_MODEL = ("backbone", "mrff", "groups", "blocks", "heads", "attribute_dim", "dropout", "routing", "balance_alpha")
_TRAINING = ("rounds", "local_steps", "client_fraction", "optimizer", "lr", "seed")
_RECIPE = ("weight_decay", "lr_schedule", "server_optimizer", "server_lr", "server_momentum")  # train and network
_NETWORK_PRIVACY = ("dp", "clip", "noise_multiplier", "target_epsilon", "delta", "mechanism", "max_dropout_fraction",
                    "secure_aggregation", "modulus_bits", "min_group_size")
_SERVER_PRIVACY = ("corrupt_neighbours",)
COMMAND_OPTIONS: dict[str, tuple[str, ...]] = {
    "train": _DATA + _MODEL + _TRAINING + ("eval_every", "chunk_size", "checkpoint_every") + _RECIPE + ("patience",)
             + _NETWORK_PRIVACY
             + ("noise_sampling", "count_cap", "clip_from_private_data", "insecure_reproducible_noise")
             + ("backend", "ray_address", "actors", "threads_per_worker"),
    "server": _DATA + _MODEL + _TRAINING + _RECIPE + ("min_clients", "federated_eval_every", "max_evaluations",
                                                          "final_evaluation")
              + _NETWORK_PRIVACY
              + _SERVER_PRIVACY
              + ("address", "certs", "mtls", "insecure", "train_timeout", "stage_timeout", "num_neighbours",
                 "threshold", "max_upload_mib", "max_workers", "linger"),
    "run-local": _DATA + _MODEL + _TRAINING + _RECIPE + ("min_clients", "federated_eval_every", "max_evaluations",
                                                          "final_evaluation")
                 + _NETWORK_PRIVACY + _SERVER_PRIVACY
                 + ("insecure", "train_timeout", "stage_timeout", "num_neighbours", "threshold",
                    "insecure_reproducible_noise"),
    "client": _DATA + ("address", "certs", "mtls", "insecure", "retry_timeout", "insecure_reproducible_noise"),
    "schema": _DATA,
    "privacy": ("rounds", "client_fraction", "dp", "clip", "noise_multiplier", "target_epsilon", "delta", "mechanism",
                "max_dropout_fraction", "modulus_bits", "noise_sampling", "blocks", "groups", "mrff"),
    "audit": ("dataset", "data_dir", "recbole_name", "synthetic_users", "synthetic_rare_values", "clip", "rounds_per_cell", "canaries",
              "levels", "targets", "seeds", "sampled_fraction", "cells", "confidence", "misreport_noise",
              "planted_defect", "network_cell", "backend", "ray_address", "threads_per_worker"),
}
# fmt: on
# A network run is private by default: distributed DP (its noise calibrated to NETWORK_TARGET_EPSILON over
# --rounds unless --noise-multiplier or --target-epsilon is given), which the clients' default policy requires.
AUDIT_RARE_VALUES = 20  # the audit's synthetic data has rare rows, so rare-value attacks and disaggregation run
COMMAND_DEFAULTS: dict[str, dict[str, Any]] = {
    "server": {"dp": "distributed"},
    "run-local": {"dp": "distributed"},
    "audit": {"synthetic_rare_values": AUDIT_RARE_VALUES},
}
NETWORK_TARGET_EPSILON = 8.0  # below the clients' default cap (10) over every release of their data


def default_of(option: Option, command: str) -> Any:
    """The option's default for `command` (a network run's privacy defaults differ from a simulation's)."""
    return COMMAND_DEFAULTS.get(command, {}).get(option.name, option.default)


def _default_text(option: Option, command: str = "") -> str:
    default = default_of(option, command)
    if default is None:
        return "not set"
    if option.kind is bool:
        return "on" if default else "off"
    if isinstance(default, list):
        return " ".join(str(v) for v in default)
    return str(default)


def add_options(parser: argparse.ArgumentParser, command: str) -> None:
    """Every option of `command`, grouped by table, with its default in the help; plus --config and --set."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="TOML",
        help="run configuration (tables data, model, federation, privacy, network, audit, scale); "
        "flags and --set win over it",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="TABLE.KEY=VALUE",
        dest="overrides",
        help="override one configuration value (repeatable), e.g. --set privacy.clip=0.5",
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name in COMMAND_OPTIONS[command]:
        option = BY_NAME[name]
        group = groups.get(option.table)
        if group is None:
            group = groups[option.table] = parser.add_argument_group(f"[{option.table}]")
        text = f"{option.help} (default: {_default_text(option, command)})"
        if option.kind is bool:
            if option.negative_flag:
                group.add_argument(
                    option.flag, dest=option.dest, action="store_const", const=False, default=None, help=text
                )
            else:
                group.add_argument(
                    option.flag, dest=option.dest, action="store_const", const=True, default=None, help=text
                )
        elif option.kind is list:
            group.add_argument(
                option.flag, dest=option.dest, nargs="+", type=_arg_type(option.item, option), default=None, help=text
            )
        else:
            group.add_argument(
                option.flag,
                dest=option.dest,
                type=_arg_type(option.kind, option),
                default=None,
                choices=option.choices,
                help=text,
            )
    add_renamed_flags(parser, command)


def _arg_type(kind: type, option: Option) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        if kind in (str, Path):
            return text
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{'an integer' if kind is int else 'a number'} expected, got {text!r}")

    convert.__name__ = "integer" if kind is int else ("number" if kind is float else "value")
    return convert


def load_toml(path: Path) -> dict[str, dict[str, Any]]:
    """The tables of a configuration file; unknown tables or keys are refused, naming them."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc.strerror or exc})") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path} is not valid TOML: {exc}") from exc
    for table, body in raw.items():
        if table not in TABLES:
            raise ConfigError(f"--config {path}: unknown table [{table}]; known: {', '.join(TABLES)}")
        if not isinstance(body, dict):
            raise ConfigError(f"--config {path}: {table} must be a table ([{table}])")
        unknown = sorted(k for k in body if f"{table}.{k}" not in BY_KEY)
        if unknown:
            known = sorted(o.name for o in OPTIONS if o.table == table)
            renamed = "".join(
                f"; {table}.{k} is now {RENAMED_KEYS[f'{table}.{k}']}"
                for k in unknown
                if f"{table}.{k}" in RENAMED_KEYS
            )
            raise ConfigError(f"--config {path}: unknown keys {unknown} in [{table}]{renamed}; known: {known}")
    return raw


def _parse_override(text: str) -> tuple[Option, Any]:
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep:
        raise ConfigError(f"--set {text!r}: expected TABLE.KEY=VALUE")
    option = BY_KEY.get(key) or BY_NAME.get(key)
    if option is None:
        raise ConfigError(f"--set {text!r}: unknown key {key!r} (e.g. privacy.clip, federation.rounds)")
    value = value.strip()
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value  # a bare word: a string
    if value in ("none", "null", ""):
        parsed = None
    return option, parsed


def resolve(args: argparse.Namespace, command: str) -> dict[str, dict[str, Any]]:
    """The command's configuration (defaults < --config < --set < flags), checked; also set on `args`
    under each option's name, so that handlers read `args.noise_multiplier` whatever the source."""
    names = COMMAND_OPTIONS[command]
    values: dict[str, tuple[Any, str]] = {n: (default_of(BY_NAME[n], command), BY_NAME[n].flag) for n in names}
    if getattr(args, "config", None) is not None:
        for table, body in load_toml(args.config).items():
            for key, value in body.items():
                if key in values:
                    values[key] = (value, f"{table}.{key} in {args.config}")
    for text in getattr(args, "overrides", []) or []:
        option, value = _parse_override(text)
        if option.name not in values:
            raise ConfigError(f"--set {option.key}: `mrff {command}` has no such setting")
        values[option.name] = (value, f"--set {option.key}")
    for name in names:
        given = getattr(args, name, None)
        if given is not None:
            values[name] = (str(given) if isinstance(given, Path) else given, BY_NAME[name].flag)
    config: dict[str, dict[str, Any]] = {}
    for name in names:
        option = BY_NAME[name]
        value, source = values[name]
        checked = option.check(value, source)
        config.setdefault(option.table, {})[name] = checked
        setattr(args, name, Path(checked) if option.kind is Path and checked is not None else checked)
    return config


def flat(config: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {k: v for body in config.values() for k, v in body.items()}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def to_toml(config: dict[str, dict[str, Any]], header: str = "") -> str:
    """The configuration as TOML (a value that is not set is a comment: TOML has no null)."""
    lines = [f"# {line}" for line in header.splitlines()]
    for table in TABLES:
        body = config.get(table)
        if not body:
            continue
        lines += ["", f"[{table}]"]
        for key, value in body.items():
            lines.append(f"# {key} is not set" if value is None else f"{key} = {_toml_value(value)}")
    return "\n".join(lines).lstrip("\n") + "\n"


def write_config(folder: Path, config: dict[str, dict[str, Any]], command: str) -> Path:
    """config.toml in `folder`: the resolved configuration, readable back with --config."""
    from mrff_secure.atomic import write_bytes_atomic

    path = Path(folder) / "config.toml"
    write_bytes_atomic(
        path,
        to_toml(
            config, f"the resolved configuration of `mrff {command}`; repeat it with `mrff {command} --config {path}`"
        ).encode(),
    )
    return path


def check_port(address: str, *, flag: str = "--address", allow_any: bool = False) -> str:
    """host:port with a port in 1-65535 (0 too, for a server asking for any free port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{flag} must be HOST:PORT, got {address!r}")
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"{flag} {address!r}: the port must be a number") from None
    if not (1 <= number <= 65535 or (allow_any and number == 0)):
        raise ConfigError(
            f"{flag} {address!r}: the port must be in 1-65535{' (or 0: any free port)' if allow_any else ''}"
        )
    return address


def load_dataset(args: argparse.Namespace) -> ClientData:
    """The dataset the resolved [data] options name (imports the data package only now)."""
    from mrff_secure.data import load_kuaisar_r, load_recbole, make_synthetic

    maxlen = getattr(args, "maxlen", 0) or 0
    if args.dataset == "synthetic":
        return make_synthetic(num_users=args.synthetic_users, seed=getattr(args, "data_seed", 0), maxlen=maxlen or 30)
    if args.data_dir is None:
        raise ConfigError(f"--dataset {args.dataset} needs --data-dir DIR")
    if args.dataset == "kuaisar-r":
        return load_kuaisar_r(Path(args.data_dir), maxlen=maxlen or 65)
    return load_recbole(
        Path(args.data_dir),
        name=args.recbole_name,
        maxlen=maxlen or 50,
        label_field=args.label_field,
        rating_threshold=args.rating_threshold,
    )


def model_config(args: argparse.Namespace, maxlen: int) -> ModelConfig:
    """The ModelConfig of the resolved [model] options."""
    from mrff_secure.config import ModelConfig

    return ModelConfig(
        backbone=args.backbone,
        attribute_dim=args.attribute_dim,
        num_blocks=args.blocks,
        num_heads=args.heads,
        dropout=args.dropout,
        maxlen=maxlen,
        mrff=args.mrff,
        num_groups=args.groups,
        balance_alpha=args.balance_alpha,
        routing=args.routing,
    )


def fmt_epsilon(value: Any) -> str:
    """An epsilon as every command prints it: "inf" for no guarantee, else 4 significant digits."""
    if value is None or value == "inf" or (isinstance(value, float) and math.isinf(value)):
        return "inf"
    return f"{float(value):.4g}"


def writable_folder(path: Path, flag: str) -> Path:
    """`path` as a folder this process can write (created if missing); ConfigError naming `flag`."""
    import os

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{flag} {path} is not writable ({exc.strerror or exc})") from exc
    if not os.access(path, os.W_OK):
        raise ConfigError(f"{flag} {path} is not writable")
    return path


def writable_file(path: Path, flag: str) -> Path:
    """`path` as a file this process can write: not a folder, its folder writable."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; give a file name")
    writable_folder(path.parent, f"{flag} {path}: its folder")
    return path


class _RenamedFlag(argparse.Action):
    """An old flag: a usage error that names the new one."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        parser.error(f"{option_string} is now {self.metavar} (one name per concept across the commands)")


def add_renamed_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """The old flags of `command`, hidden from --help, refused with their new names."""
    for old, new in RENAMED_FLAGS.get(command, {}).items():
        parser.add_argument(old, action=_RenamedFlag, metavar=new, help=argparse.SUPPRESS, nargs="?")

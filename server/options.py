"""Command-line option tables shared by `mrff server`, `mrff client` and `mrff run-local`.

Each table is a list of (flag, argparse keyword arguments); `add` puts a table on a parser and
`to_argv` turns parsed values back into flags (run-local forwards them to its child processes).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mrff_secure.config import ModelConfig
from mrff_secure.errors import ConfigError
from mrff_secure.federation.client_update import RoundSpec

NETWORK_DP_MODES = ("off", "distributed")

Option = tuple[str, dict[str, Any]]

DATA: list[Option] = [
    ("--dataset", dict(choices=("synthetic", "kuaisar-r", "recbole"), default="synthetic")),
    ("--data-dir", dict(type=Path, help="folder of the dataset files (kuaisar-r, recbole)")),
    ("--recbole-name", dict(help="atomic file stem (default: the folder name)")),
    ("--label-field", dict(default="label")),
    ("--rating-threshold", dict(type=float, default=4.0)),
    ("--synthetic-users", dict(type=int, default=100)),
    ("--data-seed", dict(type=int, default=0)),
    ("--maxlen", dict(type=int, default=0, help="0 = dataset default")),
]

MODEL: list[Option] = [
    ("--no-mrff", dict(action="store_true")),
    ("--groups", dict(type=int, default=4)),
    ("--blocks", dict(type=int, default=2)),
    ("--heads", dict(type=int, default=1)),
    ("--attribute-dim", dict(type=int, default=8)),
    ("--dropout", dict(type=float, default=0.5)),
    ("--routing", dict(choices=("paper", "scaled"), default="paper")),
    ("--balance-alpha", dict(type=float, default=0.1)),
]

ROUNDS: list[Option] = [
    ("--rounds", dict(type=int, default=3)),
    ("--seed", dict(type=int, default=0, help="model initialisation and client sampling")),
    ("--client-fraction", dict(type=float, default=1.0)),
    ("--min-clients", dict(type=int, default=3, help="a round starts once this many clients are enrolled")),
    ("--aggregation", dict(choices=("secure", "plain"), default="secure",
                           help="plain: unmasked sums over the same transport (a baseline for benchmarks)")),
    ("--train-timeout", dict(type=float, default=120.0, help="seconds for local training (announcement to keys)")),
    ("--stage-timeout", dict(type=float, default=30.0, help="seconds per secure-aggregation stage")),
    ("--dp", dict(choices=NETWORK_DP_MODES, default="off",
                  help="distributed: discrete noise shares under secure aggregation; off: secure aggregation "
                       "alone (protects only against an honest-but-curious server)")),
    ("--clip", dict(type=float, default=1.0, help="L2 bound C of the delta part")),
    ("--noise-multiplier", dict(type=float, default=None, help="z: total noise std z*C (or --target-epsilon)")),
    ("--target-epsilon", dict(type=float, default=None, help="calibrate z to spend this epsilon over --rounds")),
    ("--dp-mechanism", dict(choices=("discrete_gaussian", "skellam"), default="discrete_gaussian")),
    ("--dp-delta", dict(type=float, default=None, help="default 1/n^1.1, n = the dataset's users (as mrff train)")),
    ("--max-dropout-fraction", dict(type=float, default=0.3)),
    ("--modulus-bits", dict(type=int, default=32, help="the ring Z_{2^b} of the secure sums")),
    ("--min-group-size", dict(type=int, default=5)),
    ("--local-steps", dict(type=int, default=1)),
    ("--optimizer", dict(choices=("adam", "sgd"), default="adam")),
    ("--lr", dict(type=float, default=0.1)),
    ("--num-neighbours", dict(type=int, default=None)),
    ("--threshold", dict(type=int, default=None)),
]


def add(parser: argparse.ArgumentParser, table: list[Option]) -> None:
    for flag, kwargs in table:
        parser.add_argument(flag, **kwargs)


def to_argv(args: argparse.Namespace, table: list[Option]) -> list[str]:
    out: list[str] = []
    for flag, kwargs in table:
        value = getattr(args, flag[2:].replace("-", "_"))
        if kwargs.get("action") == "store_true":
            if value:
                out.append(flag)
        elif value is not None:
            out += [flag, str(value)]
    return out


def load_data(args: argparse.Namespace):
    from mrff_secure.cli import load_dataset

    return load_dataset(args)


def model_config(args: argparse.Namespace, maxlen: int) -> ModelConfig:
    return ModelConfig(attribute_dim=args.attribute_dim, num_blocks=args.blocks, num_heads=args.heads,
                       dropout=args.dropout, maxlen=maxlen, mrff=not args.no_mrff, num_groups=args.groups,
                       balance_alpha=args.balance_alpha, routing=args.routing)


def round_spec(args: argparse.Namespace, maxlen: int) -> RoundSpec:
    """The round parameters the server proposes, validated as `mrff train` validates its own.

    Refused: distributed DP without secure aggregation; DP with no noise; both --noise-multiplier and
    --target-epsilon. z from --target-epsilon is calibrated by the server once the model's layout is
    known (see server.command), so here it is a placeholder of 1.0 until then.
    """
    secure = getattr(args, "aggregation", "secure") == "secure"
    z = args.noise_multiplier
    target = getattr(args, "target_epsilon", None)
    if args.dp == "distributed":
        if not secure:
            raise ConfigError("--dp distributed needs secure aggregation: its noise is split among the clients "
                              "and only the secure sum carries all of it (drop --aggregation plain)")
        if z is not None and target is not None:
            raise ConfigError("give --noise-multiplier or --target-epsilon, not both")
        if target is None and (z is None or z <= 0):
            raise ConfigError("--dp distributed with no noise gives no privacy: give --noise-multiplier > 0 "
                              "or --target-epsilon (or run --dp off, and say so)")
        if target is not None and not (target > 0):
            raise ConfigError(f"--target-epsilon must be > 0, got {target}")
    elif z not in (None, 0.0) or target is not None:
        raise ConfigError("--noise-multiplier/--target-epsilon need --dp distributed")
    return RoundSpec(local_steps=args.local_steps, optimizer=args.optimizer, lr=args.lr, dp_mode=args.dp,
                     clip=args.clip, noise_multiplier=(z if z is not None else (1.0 if target else 0.0)),
                     min_group_size=args.min_group_size, mechanism=args.dp_mechanism, modulus_bits=args.modulus_bits,
                     count_cap=maxlen, max_examples=maxlen)

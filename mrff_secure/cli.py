"""`mrff ...`: the command line. Thin: parse, build configs, call the library, print."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from mrff_secure.config import FederationConfig, ModelConfig
from mrff_secure.errors import MrffError

DATASETS = ("synthetic", "kuaisar-r", "recbole")


def load_dataset(args: argparse.Namespace):
    from mrff_secure.data import load_kuaisar_r, load_recbole, make_synthetic

    if args.dataset == "synthetic":
        return make_synthetic(num_users=args.synthetic_users, seed=args.data_seed,
                              maxlen=args.maxlen or 30)
    if args.data_dir is None:
        raise MrffError(f"--dataset {args.dataset} needs --data-dir DIR")
    if args.dataset == "kuaisar-r":
        return load_kuaisar_r(args.data_dir, maxlen=args.maxlen or 65)
    return load_recbole(args.data_dir, name=args.recbole_name, maxlen=args.maxlen or 50,
                        label_field=args.label_field, rating_threshold=args.rating_threshold)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=DATASETS, default="synthetic", help="synthetic needs no download")
    p.add_argument("--data-dir", type=Path, help="folder of the dataset files (kuaisar-r, recbole)")
    p.add_argument("--recbole-name", help="atomic file stem (default: the folder name)")
    p.add_argument("--label-field", default="label", help="recbole: 0/1 label column, else rating >= threshold")
    p.add_argument("--rating-threshold", type=float, default=4.0)
    p.add_argument("--synthetic-users", type=int, default=400)
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic generator")
    p.add_argument("--backbone", choices=("sasrec",), default="sasrec")
    p.add_argument("--no-mrff", action="store_true", help="plain shared FFN: the FedSASRec baseline")
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--attribute-dim", type=int, default=8)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--maxlen", type=int, default=0, help="0 = dataset default (kuaisar-r 65, recbole 50, synthetic 30)")
    p.add_argument("--routing", choices=("paper", "scaled"), default="paper")
    p.add_argument("--balance-alpha", type=float, default=0.1)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--local-steps", type=int, default=1)
    p.add_argument("--client-fraction", type=float, default=1.0)
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--eval-every", type=int, default=1)
    p.add_argument("--chunk-size", type=int, default=64, help="clients per vectorized chunk (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    privacy = p.add_argument_group("privacy", "differential privacy and secure aggregation")
    privacy.add_argument("--dp", choices=("off", "local", "distributed"), default="off",
                         help="off: no noise (epsilon inf); local: every client adds the full noise z*C; "
                              "distributed: noise shares under secure aggregation")
    privacy.add_argument("--clip", type=float, default=None, metavar="C",
                         help="L2 clip bound of each update's delta part (needed with --dp local/distributed "
                              "or --secure-aggregation)")
    noise = privacy.add_mutually_exclusive_group()
    noise.add_argument("--noise-multiplier", type=float, default=None, metavar="Z", help="noise std / C")
    noise.add_argument("--target-epsilon", type=float, default=None, metavar="E",
                       help="calibrate z to reach this epsilon over --rounds (PRV accountant)")
    privacy.add_argument("--delta", type=float, default=None, help="delta (default 1/n^1.1 for n users)")
    privacy.add_argument("--dp-mechanism", choices=("gaussian", "ddg", "discrete_gaussian", "skellam"), default=None,
                         help="local: gaussian; distributed: ddg (= discrete_gaussian, default) or skellam")
    privacy.add_argument("--max-dropout-fraction", type=float, default=0.0, metavar="F",
                         help="distributed: noise shares assume at most this fraction of clients drops")
    privacy.add_argument("--secure-aggregation", choices=("off", "fast", "inmemory"), default=None,
                         help="secure sum of the updates: fast (the ring sum the protocol outputs) or inmemory "
                              "(the real secagg state machines; small rounds); default fast with --dp distributed")
    privacy.add_argument("--modulus-bits", type=int, default=None, metavar="B",
                         help="secure-aggregation ring Z_{2^B} (default 48)")
    privacy.add_argument("--noise-sampling", choices=("per_client", "aggregate"), default="per_client",
                         help="distributed with the fast path: aggregate draws the summed noise shares once "
                              "(a simulation shortcut)")
    privacy.add_argument("--min-group-size", type=int, default=None,
                         help="groups below this phase-1 count send zeros (default 5 with secure aggregation)")
    privacy.add_argument("--count-cap", type=int, default=None,
                         help="the example count is uploaded as min(count, cap)/cap (default: the sequence length)")
    privacy.add_argument("--clip-from-private-data", action="store_true",
                         help="declare that C was chosen by looking at private data (e.g. measured update norms): "
                              "the run then lists that choice as released outside the guarantee")
    privacy.add_argument("--insecure-reproducible-noise", action="store_true",
                         help="DEBUGGING ONLY: draw the DP noise from --seed instead of the OS's entropy; anyone who "
                              "knows the seed can remove it, and every output of the run says 'not private'")
    p.add_argument("--out", type=Path, default=Path("runs/latest"), help="run folder")
    p.add_argument("--json", action="store_true", help="print the summary as JSON to stdout")
    p.add_argument("--no-progress", action="store_true")


def privacy_settings(args: argparse.Namespace):
    """PrivacySettings from the train arguments (ConfigError names the bad combination)."""
    from mrff_secure.dp import DPConfig
    from mrff_secure.errors import ConfigError
    from mrff_secure.federation.privacy_pipeline import DEFAULT_MODULUS_BITS, PrivacySettings

    secure = args.secure_aggregation or ("fast" if args.dp == "distributed" else "off")
    if args.dp == "off" and (args.noise_multiplier not in (None, 0.0) or args.target_epsilon is not None):
        raise ConfigError("--noise-multiplier/--target-epsilon need --dp local or --dp distributed")
    if (args.dp != "off" or secure != "off") and args.clip is None:
        raise ConfigError("--clip C is required with --dp local/distributed or secure aggregation")
    if args.dp != "off" and args.noise_multiplier is None and args.target_epsilon is None:
        raise ConfigError(f"--dp {args.dp} needs --noise-multiplier Z or --target-epsilon E")
    mechanism = {"ddg": "discrete_gaussian"}.get(args.dp_mechanism, args.dp_mechanism)
    dp = DPConfig(mode=args.dp, clip=args.clip if args.clip is not None else 1.0,
                  noise_multiplier=args.noise_multiplier if args.dp != "off" else None,
                  target_epsilon=args.target_epsilon, delta=args.delta,
                  mechanism=mechanism if args.dp != "off" else None, max_dropout_fraction=args.max_dropout_fraction)
    if args.dp == "off" and mechanism is not None and secure == "off":
        raise ConfigError("--dp-mechanism needs --dp local or --dp distributed")
    return PrivacySettings(dp=dp, secure_sum=secure,
                           modulus_bits=args.modulus_bits if args.modulus_bits is not None else DEFAULT_MODULUS_BITS,
                           noise_sampling=args.noise_sampling, count_cap=args.count_cap,
                           min_group_size=args.min_group_size,
                           insecure_reproducible_noise=args.insecure_reproducible_noise,
                           clip_from_private_data=args.clip_from_private_data)


def train_main(args: argparse.Namespace) -> int:
    from mrff_secure.experiment import run_training

    privacy = privacy_settings(args)
    data = load_dataset(args)
    model_config = ModelConfig(
        backbone=args.backbone, attribute_dim=args.attribute_dim, num_blocks=args.blocks, num_heads=args.heads,
        dropout=args.dropout, maxlen=data.maxlen, mrff=not args.no_mrff, num_groups=args.groups,
        balance_alpha=args.balance_alpha, routing=args.routing,
    )
    federation = FederationConfig(
        rounds=args.rounds, local_steps=args.local_steps, client_fraction=args.client_fraction,
        optimizer=args.optimizer, lr=args.lr, seed=args.seed, eval_every=args.eval_every, chunk_size=args.chunk_size,
    )
    summary = run_training(data, model_config, federation, args.out, progress=not args.no_progress,
                           extra_config={"dataset": args.dataset}, privacy=privacy)
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        from mrff_secure.experiment import OPERATOR_ONLY

        p = summary["privacy"]
        evaluation = summary[OPERATOR_ONLY]
        auc = evaluation.get("test_auc")
        guarantee = (f"epsilon {p['epsilon']} at delta {p['delta']:.3g} ({p['adjacency']}, {p['mechanism']})"
                     if p["private"] else f"NOT PRIVATE (epsilon {p['epsilon']})")
        print(f"{data.name}: {guarantee}; wrote {args.out}/summary.json, metrics.jsonl. Operator only (outside the "
              f"guarantee, in {args.out}/{OPERATOR_ONLY}/): best validation round {evaluation.get('best_round')}, "
              f"test AUC {auc if auc is None else round(auc, 4)}, test LogLoss {evaluation.get('test_logloss')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mrff", description="MRFF federated recommendation with secure aggregation and DP")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train in the vectorized simulation and write a run folder")
    add_train_arguments(train)
    train.set_defaults(handler=train_main)
    from mrff_secure.dp.command import add_privacy_arguments, privacy_main

    privacy = sub.add_parser("privacy", help="epsilon for a noise multiplier, or the noise for a target epsilon")
    add_privacy_arguments(privacy)
    privacy.set_defaults(handler=privacy_main)
    # The network commands (server, client, certs, run-local, audit-log), the attack grid, the audit and the
    # report register themselves.
    for module_name in ("server.command", "client.command", "attacks.grid", "attacks.audit", "mrff_secure.report.write"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except MrffError as exc:
        print(f"mrff {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

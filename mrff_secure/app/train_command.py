"""`mrff train`: the run folder's life cycle (new, --overwrite, --resume, Ctrl-C) around `run_training`."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from mrff_secure.app import options
from mrff_secure.app.run_folder import NewRunFolder
from mrff_secure.errors import ConfigError

if TYPE_CHECKING:  # imported where used: the command line starts without torch
    from mrff_secure.round.spec import PrivacySettings

RUN_FILES = (
    "config.toml",
    "metrics.jsonl",
    "metrics.csv",
    "summary.json",
    "checkpoint.npz",
    "report.json",
    "report.md",
    "report.html",
    "report.json.sig",
)
RUN_FOLDERS = ("operator-only", "plots")


def _holds_a_run(run_dir: Path) -> bool:
    return any((run_dir / name).exists() for name in RUN_FILES + RUN_FOLDERS)


def _prepare_run_dir(args: argparse.Namespace) -> None:
    run_dir = args.run_dir
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir} is a file, not a folder")
    if args.resume:
        if not (run_dir / "checkpoint.npz").exists():
            raise ConfigError(f"--resume: {run_dir} holds no checkpoint.npz to continue from")
        return
    if _holds_a_run(run_dir):
        if not args.overwrite:
            raise ConfigError(
                f"--run-dir {run_dir} already holds a run: --resume continues it, --overwrite "
                "replaces it, or choose another --run-dir"
            )
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
        for name in RUN_FOLDERS:
            shutil.rmtree(run_dir / name, ignore_errors=True)
    options.writable_folder(run_dir, "--run-dir")


def _resume_configuration(args: argparse.Namespace) -> None:
    """--resume runs with the run's own configuration: it reads RUN/config.toml; other settings are refused,
    except the [scale] ones (--backend, --actors, ...): they do not change the result, so a run may continue
    on another backend."""
    given = [
        options.BY_NAME[n].flag
        for n in options.COMMAND_OPTIONS["train"]
        if getattr(args, n, None) is not None and options.BY_NAME[n].table != "scale"
    ]
    if given or args.config is not None or args.overrides:
        raise ConfigError(
            f"--resume continues the run with its own configuration ({args.run_dir}/config.toml); "
            f"drop {', '.join(given) or '--config/--set'}"
        )
    if not (args.run_dir / "config.toml").exists():
        raise ConfigError(f"--resume: {args.run_dir}/config.toml is missing")
    args.config = args.run_dir / "config.toml"


def privacy_settings(args: argparse.Namespace) -> PrivacySettings:
    """PrivacySettings from the resolved train options (ConfigError names the flag)."""
    from mrff_secure.dp import DPConfig
    from mrff_secure.round.spec import PrivacySettings, SecureAggregation

    dp = args.dp
    secure = args.secure_aggregation or ("on" if dp == "distributed" else "off")
    secure_aggregation = SecureAggregation.from_option(secure)
    if dp == "off" and (args.noise_multiplier not in (None, 0.0) or args.target_epsilon is not None):
        raise ConfigError("--noise-multiplier/--target-epsilon need --dp local or --dp distributed")
    if dp != "off" and args.noise_multiplier is None and args.target_epsilon is None:
        raise ConfigError(f"--dp {dp} needs --noise-multiplier Z or --target-epsilon E")
    if dp != "off" and args.noise_multiplier is not None and args.target_epsilon is not None:
        raise ConfigError("give --noise-multiplier or --target-epsilon, not both")
    if dp == "distributed" and secure == "off":
        raise ConfigError(
            "--dp distributed needs secure aggregation: its noise is split among the clients and only "
            "the secure sum carries all of it (drop --secure-aggregation off)"
        )
    if args.mechanism is not None and dp == "off":
        raise ConfigError("--mechanism needs --dp local or --dp distributed")
    if dp == "local" and args.mechanism not in (None, "gaussian"):
        raise ConfigError(f"--dp local adds Gaussian noise; --mechanism {args.mechanism} is for --dp distributed")
    if dp == "distributed" and args.mechanism == "gaussian":
        raise ConfigError("--dp distributed uses an integer mechanism: --mechanism discrete_gaussian or skellam")
    config = DPConfig(
        mode=dp,
        clip=args.clip,
        noise_multiplier=args.noise_multiplier if dp != "off" else None,
        target_epsilon=args.target_epsilon,
        delta=args.delta,
        mechanism=args.mechanism if dp != "off" else None,
        max_dropout_fraction=args.max_dropout_fraction if dp == "distributed" else 0.0,
    )
    return PrivacySettings(
        dp=config,
        secure_aggregation=secure_aggregation,
        modulus_bits=args.modulus_bits,
        noise_sampling=args.noise_sampling,
        count_cap=args.count_cap,
        min_group_size=args.min_group_size if secure_aggregation is not SecureAggregation.OFF else None,
        insecure_reproducible_noise=args.insecure_reproducible_noise,
        clip_from_private_data=args.clip_from_private_data,
    )


def fingerprint(config: dict) -> str:
    """What a checkpoint must match: the configuration minus the settings that do not change the result."""
    kept = {
        t: {k: v for k, v in body.items() if k not in ("eval_every", "checkpoint_every")}
        for t, body in config.items()
        if t != "scale"
    }  # a run may continue on another backend
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def train_main(args: argparse.Namespace) -> int:
    with NewRunFolder(args.run_dir) as run_folder:  # a start that fails (before a round is done) leaves no run
        return _train(args, run_folder)


def _train(args: argparse.Namespace, run_folder: NewRunFolder) -> int:
    if args.resume and args.overwrite:
        raise ConfigError("give --resume or --overwrite, not both")
    if args.resume:
        _resume_configuration(args)
    config = options.resolve(args, "train")
    privacy = privacy_settings(args)
    _prepare_run_dir(args)

    from mrff_secure.app.experiment import OPERATOR_ONLY, TrainingInterrupted, run_training
    from mrff_secure.config import FederationConfig

    data = options.load_dataset(args)
    model_config = options.model_config(args, data.maxlen)
    federation = FederationConfig(
        rounds=args.rounds,
        local_steps=args.local_steps,
        client_fraction=args.client_fraction,
        optimizer=args.optimizer,
        lr=args.lr,
        seed=args.seed,
        eval_every=args.eval_every,
        chunk_size=args.chunk_size,
        weight_decay=args.weight_decay,
        lr_schedule=args.lr_schedule,
        server_optimizer=args.server_optimizer,
        server_lr=args.server_lr,
        server_momentum=args.server_momentum,
        patience=args.patience,
    )
    if args.patience and privacy.dp.enabled:
        raise ConfigError(
            "--patience stops on the validation AUC, computed on private data without noise: the "
            "stopping round would be a release outside the DP guarantee; give a fixed --rounds"
        )
    if not args.resume:
        options.write_config(args.run_dir, config, "train")
    stop_requested = []

    def on_interrupt(signum: int, frame: FrameType | None) -> None:
        # the first Ctrl-C ends the run after the current round (checkpointed); a second one at once
        stop_requested.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("\nmrff train: stopping after this round (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def round_done() -> bool:  # asked after every round: the run exists from the first one on
        run_folder.started()
        return bool(stop_requested)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        summary = run_training(
            data,
            model_config,
            federation,
            args.run_dir,
            progress=not args.no_progress,
            extra_config={"dataset": args.dataset, "backend": args.backend},
            privacy=privacy,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            fingerprint=fingerprint(config),
            should_stop=round_done,
            backend=args.backend,
            actors=args.actors,
            threads_per_worker=args.threads_per_worker,
            ray_address=args.ray_address,
        )
    except TrainingInterrupted as stop:
        print(
            f"mrff train: interrupted after round {stop.rounds_done}; {args.run_dir} is consistent (checkpoint of "
            f"round {stop.rounds_done}): continue with `mrff train --resume --run-dir {args.run_dir}`",
            file=sys.stderr,
            flush=True,
        )
        return 130
    except KeyboardInterrupt:
        print(
            f"mrff train: interrupted mid-round; {args.run_dir} keeps its last checkpoint: continue with "
            f"`mrff train --resume --run-dir {args.run_dir}`",
            file=sys.stderr,
            flush=True,
        )
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return 0
    from mrff_secure.run_summary import format_run_summary

    print(f"{data.name}: {format_run_summary(summary, args.run_dir)}")
    print(
        f"wrote {args.run_dir}/summary.json, metrics.jsonl, metrics.csv, config.toml. Operator only (outside the "
        f"guarantee): {args.run_dir}/{OPERATOR_ONLY}/ (evaluation.json, metrics.jsonl, metrics.csv, "
        "predictions.npz, training.png)"
    )
    # the evaluation's warnings (training may be diverging) were logged when they arose: not repeated here
    for warning in summary["privacy"].get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    return 0

"""The ``mrff privacy`` subcommand: epsilon for a noise multiplier, or the multiplier for a target.

``mrff_secure/cli.py`` builds the parser from the shared options (`mrff_secure.options`) and calls
:func:`privacy_main` with the parsed arguments. The numbers come from :func:`privacy_report`
(a pure function returning a JSON-able dict), which describes the round with `release.RoundRelease`
and accounts it with `release.account_rounds` / `release.calibrate_noise_multiplier`: the same
function `mrff train` uses, so a z calibrated here spends exactly the target in training. JSON has no infinity: an infinite epsilon (z = 0:
no noise, no guarantee) is printed as the string "inf"; an epsilon the PRV accountant could not
compute reliably is null, with the reason in "notes".
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from mrff_secure.errors import ConfigError, MrffError

from .config import DPConfig
from .release import RoundRelease, account_rounds, calibrate_noise_multiplier, participants_per_round


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def privacy_report(
    *, rounds: int, clients: int, sample_rate: float = 1.0, mode: str = "local",
    noise_multiplier: float | None = None, target_epsilon: float | None = None, delta: float | None = None,
    clip: float = 1.0, blocks: int = 2, groups: int = 4, dim: int | None = None, mechanism: str | None = None,
    max_dropout_fraction: float = 0.0, modulus_bits: int = 48, noise_sampling: str = "per_client",
) -> dict[str, Any]:
    """All the figures ``mrff privacy`` prints, as a dict, from `dp.release` (the accountant of `mrff train`)."""
    config = DPConfig(mode=mode, clip=clip, noise_multiplier=noise_multiplier, target_epsilon=target_epsilon,
                      delta=delta, mechanism=mechanism, max_dropout_fraction=max_dropout_fraction)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"--rounds must be an integer >= 1, got {rounds!r}")
    if not 0.0 < sample_rate <= 1.0:
        raise ConfigError(f"--sample-rate must be in (0, 1], got {sample_rate!r}")
    for name, value in (("--blocks", blocks), ("--groups", groups)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
    if mode == "distributed" and dim is None:
        raise ConfigError("--mode distributed accounts the integer mechanism itself: pass --dim (the length of the "
                          "clipped delta part; a run prints it as privacy.update_plan.dim - blocks*groups - 1)")
    d = config.resolve_delta(clients)
    n = participants_per_round(clients, sample_rate)
    with_groups = groups > 0 and blocks > 0
    release = RoundRelease(
        dp_mode=mode, secure_aggregation=mode == "distributed", clip=clip, noise_multiplier=0.0,
        num_blocks=blocks if with_groups else 0, num_groups=groups if with_groups else 0,
        delta_size=dim if dim is not None else 1, participants=n,
        n_min=config.min_survivors(n) if mode == "distributed" else None,
        mechanism=config.mechanism_name if mode == "distributed" else None, modulus_bits=modulus_bits,
        single_noise_draw=noise_sampling == "aggregate")
    if config.target_epsilon is not None:
        z = calibrate_noise_multiplier(release, target_epsilon=config.target_epsilon, rounds=rounds, delta=d)
    else:
        z = float(config.noise_multiplier)  # type: ignore[arg-type]
    release = release.with_noise_multiplier(z)
    account = account_rounds(release, rounds=rounds, delta=d, sample_rate=sample_rate)
    report: dict[str, Any] = {
        "mode": mode, "noise_multiplier": z, "clip": clip, "noise_std": z * clip,
        "blocks": release.num_blocks, "groups": release.num_groups,
        "delta_source": "given" if delta is not None else f"default 1/n^1.1 with n={clients}",
        "rounds": rounds, "clients": clients, "sample_rate": sample_rate, "participants_per_round": n,
        "target_epsilon": target_epsilon, **account.to_json(),
    }
    if mode == "distributed":
        plans = release.plans()
        report.update({
            "n_min": plans.n_min, "max_dropout_fraction": max_dropout_fraction, "dim": dim,
            "modulus_bits": modulus_bits, "scale": plans.update.scale, "padded_dim": plans.update.padded_dim,
            "modular_clipping_probability": plans.update.clipping.any_coordinate,
            "share_variance": plans.update.share_variance,
        })
    return _jsonable(report)


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.6g}"
    return str(value)


def format_report(report: dict[str, Any]) -> str:
    """Human-readable lines for :func:`privacy_report`'s dict."""
    lines = [
        f"mode: {report['mode']}   mechanism: {report['mechanism']}   adjacency: {report['adjacency']}",
        f"noise multiplier z: {_fmt(report['noise_multiplier'])} (accounted {_fmt(report['accounted_noise_multiplier'])})"
        f"   clip C: {_fmt(report['clip'])}   noise std: {_fmt(report['noise_std'])}",
        f"rounds: {report['rounds']}   clients: {report['clients']}   per round: {report['participants_per_round']}"
        f"   blocks x groups: {report['blocks']} x {report['groups']}",
        f"delta: {_fmt(report['delta'])} ({report['delta_source']})",
        f"epsilon (headline, a user in every round): {_fmt(report['epsilon'])}   bound: {report['epsilon_bound']}",
        f"Gaussian limit (reference only): PRV {_fmt(report['gaussian_limit']['epsilon_prv'])}, "
        f"RDP {_fmt(report['gaussian_limit']['epsilon_rdp'])}",
        f"epsilon of one round: {_fmt(report['epsilon_per_round'])}",
    ]
    if "typical_user" in report:
        t = report["typical_user"]
        lines.append(f"typical user ({t['rounds']} rounds; not a guarantee for every user): {_fmt(t['epsilon'])}")
    if "epsilon_replace_one" in report:
        lines.append(f"the same release under replace-one adjacency: {_fmt(report['epsilon_replace_one'])}")
    if "n_min" in report:
        lines.append(f"noise shares assume >= {report['n_min']} survivors; scale {_fmt(report['scale'])}; modular "
                     f"clipping probability {_fmt(report['modular_clipping_probability'])}")
    lines.append(f"sampling: {report['sampling']}")
    lines.extend(f"note: {n}" for n in report["notes"])
    return "\n".join(lines)


def privacy_main(args: argparse.Namespace) -> int:
    """Run ``mrff privacy`` (parser in mrff_secure.cli, options from mrff_secure.options); print the report."""
    from mrff_secure import options

    options.resolve(args, "privacy")
    if args.dp == "off":
        raise ConfigError("--dp off adds no noise: epsilon is inf. Give --dp local or --dp distributed")
    if (args.noise_multiplier is None) == (args.target_epsilon is None):
        raise ConfigError("give exactly one of --noise-multiplier Z and --target-epsilon E")
    if isinstance(args.clients, bool) or args.clients < 2:
        raise ConfigError(f"--clients must be >= 2, got {args.clients}")
    if args.dp == "local" and args.mechanism not in (None, "gaussian"):
        raise ConfigError(f"--dp local adds Gaussian noise; --mechanism {args.mechanism} is for --dp distributed")
    if args.dp == "distributed" and args.mechanism == "gaussian":
        raise ConfigError("--dp distributed uses an integer mechanism: --mechanism discrete_gaussian or skellam")
    report = privacy_report(
        rounds=args.rounds, clients=args.clients, sample_rate=args.client_fraction, mode=args.dp,
        noise_multiplier=args.noise_multiplier, target_epsilon=args.target_epsilon, delta=args.delta,
        clip=args.clip, blocks=args.blocks, groups=args.groups if args.mrff else 0, dim=args.dim,
        mechanism=args.mechanism if args.dp == "distributed" else None,
        max_dropout_fraction=args.max_dropout_fraction if args.dp == "distributed" else 0.0,
        modulus_bits=args.modulus_bits,
        noise_sampling=args.noise_sampling,
    )
    if args.json:
        print(json.dumps(report, sort_keys=True, allow_nan=False))
    else:
        print(format_report(report))
    return 0

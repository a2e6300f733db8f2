"""The ``mrff privacy`` subcommand: epsilon for a noise multiplier, or the multiplier for a target.

``mrff_secure/cli.py`` calls :func:`add_privacy_arguments` on its subparser and
:func:`privacy_main` with the parsed arguments. The numbers come from :func:`privacy_report`
(a pure function returning a JSON-able dict). JSON has no infinity: an infinite epsilon (z = 0:
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

from .accounting import discrete_epsilon, epsilon, local_upload_epsilon
from .calibration import noise_multiplier_for_epsilon
from .config import DPConfig
from .distributed import plan_distributed
from .rotation import next_power_of_two
from .sensitivity import effective_noise_multiplier


def add_privacy_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``mrff privacy`` options to ``parser``."""
    noise = parser.add_mutually_exclusive_group(required=True)
    noise.add_argument("--noise-multiplier", type=float, metavar="Z",
                       help="noise std / clip bound (z); 0 means no noise (epsilon = inf)")
    noise.add_argument("--target-epsilon", type=float, metavar="E",
                       help="calibrate z to reach this epsilon (PRV accountant)")
    parser.add_argument("--rounds", type=int, required=True, metavar="R", help="training rounds")
    parser.add_argument("--clients", type=int, required=True, metavar="N",
                        help="number of users (clients); sets the default delta 1/N^1.1")
    parser.add_argument("--sample-rate", type=float, default=1.0, metavar="Q",
                        help="Poisson client-sampling rate per round (default 1: every client every round)")
    parser.add_argument("--mode", choices=("local", "distributed"), default="local",
                        help="local: each client adds the full noise; distributed: shares under secure aggregation")
    parser.add_argument("--delta", type=float, default=None, metavar="D", help="delta (default 1/N^1.1)")
    parser.add_argument("--clip", type=float, default=1.0, metavar="C", help="L2 clip bound of the delta part (default 1.0)")
    parser.add_argument("--count-sensitivity", type=float, default=0.0, metavar="S",
                        help="L2 sensitivity of the unclipped count part riding in the same noisy vector "
                             "(sqrt(blocks + max_count^2)); accounted via z*C/sqrt(C^2+S^2) (default 0)")
    parser.add_argument("--mechanism", choices=("discrete_gaussian", "skellam"), default=None,
                        help="distributed mode's integer mechanism (default discrete_gaussian)")
    parser.add_argument("--max-dropout-fraction", type=float, default=0.0, metavar="F",
                        help="distributed mode: noise shares assume at most this fraction drops (default 0)")
    parser.add_argument("--dim", type=int, default=None, metavar="D",
                        help="distributed mode: update length, to account the discrete mechanism")
    parser.add_argument("--modulus-bits", type=int, default=None, metavar="B",
                        help="distributed mode: secure-aggregation modulus 2^B (with --dim)")
    parser.add_argument("--scale", type=float, default=None,
                        help="distributed mode: integer scale (default: the largest the modulus allows)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


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
    clip: float = 1.0, count_sensitivity: float = 0.0, mechanism: str | None = None,
    max_dropout_fraction: float = 0.0, dim: int | None = None, modulus_bits: int | None = None,
    scale: float | None = None,
) -> dict[str, Any]:
    """All the figures ``mrff privacy`` prints, as a dict (floats may be inf; see module doc)."""
    config = DPConfig(mode=mode, clip=clip, noise_multiplier=noise_multiplier, target_epsilon=target_epsilon,
                      delta=delta, mechanism=mechanism, max_dropout_fraction=max_dropout_fraction)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"--rounds must be an integer >= 1, got {rounds!r}")
    if not 0.0 < sample_rate <= 1.0:
        raise ConfigError(f"--sample-rate must be in (0, 1], got {sample_rate!r}")
    if not math.isfinite(count_sensitivity) or count_sensitivity < 0:
        raise ConfigError(f"--count-sensitivity must be finite and >= 0, got {count_sensitivity!r}")
    d = config.resolve_delta(clients)
    notes: list[str] = []
    ratio = clip / math.sqrt(clip * clip + count_sensitivity * count_sensitivity)  # z_eff / z
    if config.target_epsilon is not None:
        z_eff = noise_multiplier_for_epsilon(target_epsilon=config.target_epsilon, delta=d,
                                             sample_rate=sample_rate, rounds=rounds, accountant="prv")
        z = z_eff / ratio
    else:
        z = float(config.noise_multiplier)  # type: ignore[arg-type]
        z_eff = effective_noise_multiplier(noise_multiplier=z, clip=clip, extra_sensitivity=count_sensitivity)
    overall = epsilon(noise_multiplier=z_eff, sample_rate=sample_rate, rounds=rounds, delta=d)
    report: dict[str, Any] = {
        "mechanism": config.mechanism_name, "mode": mode, "noise_multiplier": z,
        "effective_noise_multiplier": z_eff, "clip": clip, "count_sensitivity": count_sensitivity,
        "noise_std": z * clip, "delta": d,
        "delta_source": "given" if delta is not None else f"default 1/n^1.1 with n={clients}",
        "epsilon_prv": overall.prv, "epsilon_rdp": overall.rdp, "rounds": rounds, "clients": clients,
        "sample_rate": sample_rate, "target_epsilon": target_epsilon,
    }
    if overall.prv_note:
        notes.append(f"over all rounds: {overall.prv_note}")
    if sample_rate < 1.0:
        notes.append("amplification by sampling assumes the adversary does not learn which users took part")
    if mode == "local":
        upload = local_upload_epsilon(noise_multiplier=z_eff, delta=d)
        report["epsilon_per_upload"] = upload.headline
        report["epsilon_per_upload_prv"] = upload.prv
        report["epsilon_per_upload_rdp"] = upload.rdp
        if upload.prv_note:
            notes.append(f"per upload: {upload.prv_note}")
    else:
        n_min = config.min_survivors(clients)
        report["max_dropout_fraction"] = max_dropout_fraction
        report["n_min"] = n_min
        notes.append(f"epsilon_prv/rdp: the Gaussian limit of the secure sum (total std z*C over >= {n_min} "
                     "surviving shares); a round with fewer survivors must be refused")
        report["epsilon_discrete"] = None
        if dim is not None and modulus_bits is not None:
            plan = plan_distributed(mechanism=config.mechanism_name, dim=dim, n_clients=clients,
                                    max_dropout_fraction=max_dropout_fraction, clip=clip, noise_multiplier=z,
                                    modulus_bits=modulus_bits, scale=scale,
                                    clip_len=dim - 1 if count_sensitivity > 0 and dim > 1 else None,
                                    extra_sensitivity=count_sensitivity if dim > 1 else 0.0,
                                    beta=config.rounding_beta)
            acc = plan.account(rounds=rounds, delta=d)
            report.update({
                "epsilon_discrete": acc.epsilon, "dim": dim, "padded_dim": plan.padded_dim,
                "modulus_bits": modulus_bits, "scale": plan.scale,
                "rounded_l2_sensitivity": acc.l2_sensitivity, "share_variance": plan.share_variance,
                "modular_clipping_probability": plan.clipping.any_coordinate,
                "modular_clipping_probability_per_coordinate": plan.clipping.per_coordinate,
            })
            notes.append("epsilon_discrete: RDP bound of the integer mechanism, every round counted "
                         "(no amplification by sampling)")
        elif dim is not None:
            padded = next_power_of_two(dim)
            if scale is None:
                notes.append("epsilon_discrete needs --modulus-bits or --scale with --dim")
            else:
                acc = discrete_epsilon(mechanism=config.mechanism_name, noise_multiplier=z, clip=clip,
                                       scale=scale, dim=padded, n_min=n_min, rounds=rounds, delta=d,
                                       beta=config.rounding_beta,
                                       l2_bound=math.sqrt(clip * clip + count_sensitivity**2))
                report.update({"epsilon_discrete": acc.epsilon, "dim": dim, "padded_dim": padded,
                               "scale": scale, "rounded_l2_sensitivity": acc.l2_sensitivity})
        else:
            notes.append("pass --dim and --modulus-bits to account the discrete mechanism itself")
    report["notes"] = notes
    return report


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.6g}"
    return str(value)


def format_report(report: dict[str, Any]) -> str:
    """Human-readable lines for :func:`privacy_report`'s dict."""
    lines = [
        f"mode: {report['mode']}   mechanism: {report['mechanism']}",
        f"noise multiplier z: {_fmt(report['noise_multiplier'])} (effective {_fmt(report['effective_noise_multiplier'])})"
        f"   clip C: {_fmt(report['clip'])}   noise std: {_fmt(report['noise_std'])}",
        f"rounds: {report['rounds']}   clients: {report['clients']}   sample rate: {_fmt(report['sample_rate'])}",
        f"delta: {_fmt(report['delta'])} ({report['delta_source']})",
        f"epsilon (PRV, headline): {_fmt(report['epsilon_prv'])}   epsilon (RDP, cross-check): {_fmt(report['epsilon_rdp'])}",
    ]
    if "epsilon_per_upload" in report:
        lines.append(f"epsilon of one upload: {_fmt(report['epsilon_per_upload'])}")
    if "n_min" in report:
        lines.append(f"noise shares assume >= {report['n_min']} survivors")
        lines.append(f"epsilon of the discrete mechanism: {_fmt(report.get('epsilon_discrete'))}")
    if "modular_clipping_probability" in report:
        lines.append(f"scale: {_fmt(report['scale'])}   modular clipping probability (any coordinate): "
                     f"{_fmt(report['modular_clipping_probability'])}")
    lines.extend(f"note: {n}" for n in report["notes"])
    return "\n".join(lines)


def privacy_main(args: argparse.Namespace) -> int:
    """Run ``mrff privacy`` with parsed ``args``; print the report; return the exit status."""
    try:
        report = privacy_report(
            rounds=args.rounds, clients=args.clients, sample_rate=args.sample_rate, mode=args.mode,
            noise_multiplier=args.noise_multiplier, target_epsilon=args.target_epsilon, delta=args.delta,
            clip=args.clip, count_sensitivity=args.count_sensitivity, mechanism=args.mechanism,
            max_dropout_fraction=args.max_dropout_fraction, dim=args.dim, modulus_bits=args.modulus_bits,
            scale=args.scale,
        )
    except MrffError as exc:
        print(f"mrff privacy: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(_jsonable(report), sort_keys=True, allow_nan=False))
    else:
        print(format_report(report))
    return 0

"""The ``mrff privacy`` subcommand: epsilon for a noise multiplier, or the multiplier for a target.

``mrff_secure/app/cli.py`` builds the parser from the shared options (`mrff_secure.app.options`) and calls
:func:`privacy_main` with the parsed arguments. The numbers come from :func:`privacy_report`
(a pure function returning a JSON-able dict), which describes the round with `release.RoundRelease`
and accounts it with `release.account_rounds` / `release.calibrate_noise_multiplier`: the same
function `mrff train` uses, so a z calibrated here spends exactly the target in training (the
headline: the proven bound of the mechanism used, discrete under --dp distributed).

Epsilon one way: JSON has no infinity, so an infinite epsilon (z = 0: no noise, no guarantee) is
the string "inf" in the JSON and printed as "inf" (never null, never 0.0). Where the PRV accountant
is out of its range (a huge epsilon, or so many rounds that its grid would take minutes), the
Gaussian limit's "epsilon_prv" carries the RDP bound instead, with "accountant": "rdp" and the
reason in "notes". "warnings" lists no noise, epsilon > 10 and delta >= 1/n; the text output
prints them as "warning: ..." and epsilons to 4 significant digits.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from mrff_secure.app import options
from mrff_secure.checks import check_int, check_number
from mrff_secure.dp.accounting import json_epsilon
from mrff_secure.dp.config import DPConfig
from mrff_secure.errors import ConfigError
from mrff_secure.round.accountant import account_rounds, calibrate_release, privacy_warnings
from mrff_secure.round.release import RoundRelease, participants_per_round


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return json_epsilon(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def privacy_report(
    *,
    rounds: int,
    clients: int,
    sample_rate: float = 1.0,
    mode: str = "local",
    noise_multiplier: float | None = None,
    target_epsilon: float | None = None,
    delta: float | None = None,
    clip: float = 1.0,
    blocks: int = 2,
    groups: int = 4,
    dim: int | None = None,
    mechanism: str | None = None,
    max_dropout_fraction: float = 0.0,
    modulus_bits: int = options.BY_NAME["modulus_bits"].default,
    noise_sampling: str = "per_client",
) -> dict[str, Any]:
    """All the figures ``mrff privacy`` prints, as a dict, from `round.accountant` (the accountant of `mrff train`)."""
    config = DPConfig(
        mode=mode,
        clip=clip,
        noise_multiplier=noise_multiplier,
        target_epsilon=target_epsilon,
        delta=delta,
        mechanism=mechanism,
        max_dropout_fraction=max_dropout_fraction,
    )
    check_int("--rounds", rounds, low=1)
    check_number("--client-fraction", sample_rate, low=0.0, high=1.0, low_open=True)
    check_int("--blocks", blocks, low=0)
    check_int("--groups", groups, low=0)
    if mode == "distributed" and dim is None:
        raise ConfigError(
            "--dp distributed accounts the integer mechanism itself: pass --dim (the length of the "
            "clipped delta part: a run's summary.json states it as privacy.release.delta_size)"
        )
    d = config.resolve_delta(clients)
    n = participants_per_round(clients, sample_rate)
    with_groups = groups > 0 and blocks > 0
    release = RoundRelease(
        dp_mode=mode,
        secure_aggregation=mode == "distributed",
        clip=clip,
        noise_multiplier=0.0,
        num_blocks=blocks if with_groups else 0,
        num_groups=groups if with_groups else 0,
        delta_size=dim if dim is not None else 1,
        participants=n,
        n_min=config.min_survivors(n) if mode == "distributed" else None,
        mechanism=config.mechanism_name if mode == "distributed" else None,
        modulus_bits=modulus_bits if mode == "distributed" else None,
        count_cap=1,  # the example count is uploaded scaled to [0, 1]: its cap does not enter the accounting
        single_noise_draw=noise_sampling == "aggregate",
    )
    calibration_notes: tuple[str, ...] = ()
    if config.target_epsilon is not None:
        calibration = calibrate_release(release, target_epsilon=config.target_epsilon, rounds=rounds, delta=d)
        z, calibration_notes = calibration.noise_multiplier, calibration.notes
    elif config.noise_multiplier is not None:
        z = float(config.noise_multiplier)
    else:
        raise ConfigError(f"--dp {mode} adds no noise to account: give --noise-multiplier or --target-epsilon")
    release = release.with_noise_multiplier(z)
    account = account_rounds(release, rounds=rounds, delta=d, sample_rate=sample_rate)
    accounted = account.to_json()
    accounted["notes"] = [*(f"calibration: {n}" for n in calibration_notes), *accounted["notes"]]
    report: dict[str, Any] = {
        "mode": mode,
        "noise_multiplier": z,
        "clip": clip,
        "noise_std": z * clip,
        "blocks": release.num_blocks,
        "groups": release.num_groups,
        "delta_source": "given" if delta is not None else f"default 1/n^1.1 with n={clients}",
        "rounds": rounds,
        "clients": clients,
        "sample_rate": sample_rate,
        "participants_per_round": n,
        "target_epsilon": target_epsilon,
        **accounted,
        "warnings": privacy_warnings(epsilon=account.epsilon, delta=d, noise_multiplier=z, n_users=clients),
    }
    if mode == "distributed":
        plans = release.plans()
        if plans is None:  # a distributed release always has secure plans (`RoundRelease.plans`)
            raise ConfigError("--dp distributed: the release has no secure-aggregation plans")
        report.update(
            {
                "n_min": plans.n_min,
                "max_dropout_fraction": max_dropout_fraction,
                "dim": dim,
                "modulus_bits": modulus_bits,
                "scale": plans.update.scale,
                "padded_dim": plans.update.padded_dim,
                "modular_clipping_probability": plans.update.clipping.any_coordinate,
                "share_variance": plans.update.share_variance,
            }
        )
    return _jsonable(report)


def _fmt(value: Any, digits: int = 4) -> str:
    """A number as the text report prints it: ``digits`` significant digits, "inf" for infinity."""
    if value is None:
        return "n/a"
    if value == "inf" or (isinstance(value, float) and math.isinf(value) and value > 0):
        return "inf"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _fmt_eps(value: Any) -> str:
    """An epsilon: 4 significant digits rounded up (a bound is never printed below itself), "inf" for no
    guarantee (as every command prints it)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        exponent = math.floor(math.log10(value)) - 3
        value = math.ceil(value / 10.0**exponent - 1e-9) * 10.0**exponent
    return _fmt(float(value) if isinstance(value, int) and not isinstance(value, bool) else value, 4)


def format_report(report: dict[str, Any]) -> str:
    """Human-readable lines for :func:`privacy_report`'s dict (epsilons to 4 significant digits; z to 6, the
    calibrated z being rounded up to 6 so that the printed z is the one accounted)."""
    limit = report["gaussian_limit"]
    prv = (
        _fmt_eps(limit["epsilon_prv"])
        if limit.get("accountant", "prv") == "prv"
        else "out of range (RDP bound used, see notes)"
    )
    lines = [
        f"mode: {report['mode']}   mechanism: {report['mechanism']}   adjacency: {report['adjacency']}",
        f"noise multiplier z: {_fmt(report['noise_multiplier'], 6)} (accounted "
        f"{_fmt(report['accounted_noise_multiplier'], 4)})   clip C: {_fmt(report['clip'], 6)}   noise std: "
        f"{_fmt(report['noise_std'], 6)}",
        f"rounds: {report['rounds']}   clients: {report['clients']}   per round: {report['participants_per_round']}"
        f"   blocks x groups: {report['blocks']} x {report['groups']}",
        f"delta: {_fmt(report['delta'], 4)} ({report['delta_source']})",
    ]
    if report.get("target_epsilon") is not None:
        lines.append(f"target epsilon: {_fmt_eps(float(report['target_epsilon']))}")
    lines += [
        f"epsilon (headline, a user in every round): {_fmt_eps(report['epsilon'])}   bound: {report['epsilon_bound']}",
        f"Gaussian limit (reference only): PRV {prv}, RDP {_fmt_eps(limit['epsilon_rdp'])}",
        f"epsilon of one round: {_fmt_eps(report['epsilon_per_round'])}",
    ]
    if "typical_user" in report:
        t = report["typical_user"]
        lines.append(f"typical user ({t['rounds']} rounds; not a guarantee for every user): {_fmt_eps(t['epsilon'])}")
    if "epsilon_replace_one" in report:
        lines.append(f"the same release under replace-one adjacency: {_fmt_eps(report['epsilon_replace_one'])}")
    if "n_min" in report:
        lines.append(
            f"noise shares assume >= {report['n_min']} survivors; scale {_fmt(report['scale'], 6)}; modular "
            f"clipping probability {_fmt(report['modular_clipping_probability'], 3)}"
        )
    lines.append(f"sampling: {report['sampling']}")
    lines.extend(f"note: {n}" for n in report["notes"])
    lines.extend(f"warning: {w}" for w in report.get("warnings", []))
    return "\n".join(lines)


def privacy_main(args: argparse.Namespace) -> int:
    """Run ``mrff privacy`` (parser in mrff_secure.app.cli, options from mrff_secure.app.options); print the report."""
    options.resolve(args, "privacy")
    if (args.noise_multiplier is None) == (args.target_epsilon is None):
        raise ConfigError("give exactly one of --noise-multiplier Z and --target-epsilon E")
    if args.dp == "off":
        given = "--noise-multiplier" if args.noise_multiplier is not None else "--target-epsilon"
        raise ConfigError(
            f"{given} needs a DP mode (--dp is off: no noise, epsilon inf): add --dp local (each client adds "
            "Gaussian noise to its own update, as `mrff train --dp local`) or --dp distributed --dim D (noise "
            "shares summed under secure aggregation, as `mrff server`)"
        )
    check_int("--clients", args.clients, low=2)
    if args.dp == "local" and args.mechanism not in (None, "gaussian"):
        raise ConfigError(f"--dp local adds Gaussian noise; --mechanism {args.mechanism} is for --dp distributed")
    if args.dp == "distributed" and args.mechanism == "gaussian":
        raise ConfigError("--dp distributed uses an integer mechanism: --mechanism discrete_gaussian or skellam")
    report = privacy_report(
        rounds=args.rounds,
        clients=args.clients,
        sample_rate=args.client_fraction,
        mode=args.dp,
        noise_multiplier=args.noise_multiplier,
        target_epsilon=args.target_epsilon,
        delta=args.delta,
        clip=args.clip,
        blocks=args.blocks,
        groups=args.groups if args.mrff else 0,
        dim=args.dim,
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

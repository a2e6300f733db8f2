"""`mrff audit`: the product's main job. Train under each threat model and noise level of the grid, run
every attack, evaluate the rules, write the report.

    mrff audit --out runs/audit                      # synthetic data, the default grid, <= 5 min on 2 cores
    mrff audit --dataset kuaisar-r --data-dir DIR --out runs/audit-kuaisar
    mrff audit --config audit.json --cells "local-dp" "plain" --out runs/audit

The audit folder:
    audit-config.json   the resolved configuration and its SHA-256 (a resumed audit must match it)
    cells/<cell>.json   one finished cell each, written atomically: an interrupted audit resumes from them
    grid.json           every cell, the malicious-server cells and the rules (attacks.grid)
    report.json / report.md / report.html and the plots: `mrff report` (mrff_secure.report)

Exit code: 0 when every claim holds (each rule "holds", "not refutable at m" (no evidence against it
that m canaries could give) or "not applicable" (no cell of its kind)), 3 when a claim fails or the
audit is inconclusive (no attack had power, or the canary audit that R1-R3 rest on had none; an
attack without power is named in R0 and its results prove nothing), 1 on errors (bad configuration,
unreadable data).

`--config FILE`: a JSON object with any of the option names below (underscores), e.g.
{"dataset": "synthetic", "rounds": 5, "levels": [0.1, 0.3, 0.5]}; flags given on the command line win.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from attacks.grid import Cell, default_cells, grid_report, run_cell
from mrff_secure.atomic import write_json_atomic
from mrff_secure.config import ModelConfig
from mrff_secure.errors import ConfigError

AUDIT_DEFAULTS: dict[str, Any] = {
    "dataset": "synthetic", "data_dir": None, "recbole_name": None, "users": 400, "rounds": 5, "canaries": 100,
    "clip": 1.0, "levels": [0.1, 0.3, 0.5], "targets": [1.0, 4.0], "seeds": [0], "sampled_fraction": 0.1,
    "cells": None, "misreport_noise": 1.0, "confidence": 0.95,
}
EXIT_HOLDS, EXIT_ERROR, EXIT_CLAIM_FAILS = 0, 1, 3


def load_config(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the audit configuration {path}: {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"the audit configuration {path} must be a JSON object")
    unknown = sorted(set(value) - set(AUDIT_DEFAULTS))
    if unknown:
        raise ConfigError(f"the audit configuration {path} has unknown keys {unknown}; known: {sorted(AUDIT_DEFAULTS)}")
    return value


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults, then the --config file, then the flags given."""
    config = dict(AUDIT_DEFAULTS)
    if args.config is not None:
        config.update(load_config(args.config))
    for key in AUDIT_DEFAULTS:
        value = getattr(args, key, None)
        if value is not None:
            config[key] = str(value) if isinstance(value, Path) else value
    if config["dataset"] not in ("synthetic", "kuaisar-r", "recbole"):
        raise ConfigError(f"dataset must be synthetic, kuaisar-r or recbole, got {config['dataset']!r}")
    if config["dataset"] != "synthetic" and not config["data_dir"]:
        raise ConfigError(f"--dataset {config['dataset']} needs --data-dir DIR")
    for key in ("users", "rounds", "canaries"):
        if isinstance(config[key], bool) or not isinstance(config[key], int) or config[key] < (0 if key == "canaries" else 1):
            raise ConfigError(f"{key} must be a positive integer, got {config[key]!r}")
    confidence = config["confidence"]
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.5 <= confidence < 1.0:
        raise ConfigError(f"--confidence must be in [0.5, 1), got {confidence!r}")
    return config


def config_digest(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def load_data(config: dict[str, Any]):
    from mrff_secure.data import load_kuaisar_r, load_recbole, make_synthetic

    if config["dataset"] == "synthetic":
        return make_synthetic(num_users=config["users"])
    if config["dataset"] == "kuaisar-r":
        return load_kuaisar_r(Path(config["data_dir"]))
    return load_recbole(Path(config["data_dir"]), name=config["recbole_name"])


def audit_cells(config: dict[str, Any]) -> list[Cell]:
    cells = default_cells(levels=tuple(config["levels"]), targets=tuple(config["targets"]),
                          seeds=tuple(config["seeds"]), sampled=config["sampled_fraction"] or None)
    if config["misreport_noise"] != 1.0:
        cells = [Cell(**{**c.to_dict(), "misreport_noise": float(config["misreport_noise"])})
                 if c.noise_multiplier > 0 or c.target_epsilon is not None else c for c in cells]
    if config["cells"]:
        chosen = [c for c in cells if any(pattern in c.name for pattern in config["cells"])]
        if not chosen:
            raise ConfigError(f"--cells {config['cells']} matches none of the grid's cells: "
                              f"{[c.name for c in cells]}")
        cells = chosen
    return cells


def _prepare(out: Path, config: dict[str, Any]) -> None:
    """Write the configuration, or check that a resumed audit has the same one."""
    path = out / "audit-config.json"
    digest = config_digest(config)
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path} is unreadable ({exc}): remove it or use another --out") from exc
        if stored.get("digest") != digest:
            differ = sorted(k for k in set(config) | set(stored.get("config", {}))
                            if config.get(k) != stored.get("config", {}).get(k))
            raise ConfigError(f"{out} holds an audit with another configuration (differs in {differ}): resume it "
                              "with the same options, or use another --out")
        return
    write_json_atomic(path, {"config": config, "digest": digest})


def _cell_worker(payload: tuple[dict, dict, str]) -> dict:
    cell_dict, config, path = payload
    import torch

    torch.set_num_threads(1)
    cell = Cell(**cell_dict)
    data = load_data(config)
    result = run_cell(cell, data, model=ModelConfig(maxlen=data.maxlen), rounds=config["rounds"],
                      canaries=config["canaries"], clip=config["clip"])
    write_json_atomic(path, result)
    return result


def run_audit(out: Path, config: dict[str, Any], *, workers: int = 1, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the audit in `out`; returns the grid report (also written to out/grid.json)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _prepare(out, config)
    data = load_data(config)
    model = ModelConfig(maxlen=data.maxlen)
    cells = audit_cells(config)
    results: dict[str, dict] = {}
    todo = []
    for cell in cells:
        path = out / "cells" / f"{cell.slug}.json"
        if path.exists():
            try:
                stored = json.loads(path.read_text())
            except ValueError:
                stored = None  # a damaged result (never written atomically?): run the cell again
            if stored is not None and stored.get("cell") == cell.name:
                results[cell.name] = stored
                print(f"{cell.name}: resumed from {path}", flush=True)
                continue
        todo.append((cell, path))
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            payloads = [(c.to_dict(), config, str(p)) for c, p in todo]
            for (cell, _), result in zip(todo, pool.map(_cell_worker, payloads)):
                results[cell.name] = result
                if progress:
                    print(f"{cell.name}: done in {result['seconds']:.1f} s", flush=True)
    else:
        for cell, path in todo:
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=cell.rounds or config["rounds"], desc=cell.name, unit="round", leave=True)
            result = run_cell(cell, data, model=model, rounds=config["rounds"], canaries=config["canaries"],
                              clip=config["clip"], on_round=(lambda done, total: bar.update(1)) if bar else None)
            if bar is not None:
                bar.close()
            write_json_atomic(path, result)
            results[cell.name] = result
    ordered = [results[c.name] for c in cells]
    report = grid_report(data, ordered, rounds=config["rounds"], canaries=config["canaries"], clip=config["clip"],
                         family_confidence=config["confidence"])
    report["config"], report["config_digest"] = config, config_digest(config)
    write_json_atomic(out / "grid.json", report)
    return report


def exit_code(rules: dict[str, Any]) -> int:
    """0 when every claim holds, 3 when one fails or the audit is inconclusive (see the module docstring)."""
    verdicts = {name: rule["verdict"] for name, rule in rules.items()}
    if "fails" in verdicts.values():
        return EXIT_CLAIM_FAILS
    r0 = rules.get("R0", {})
    lacking = set(r0.get("attacks_without_power", []))
    if r0.get("verdict") == "inconclusive" and (not r0.get("thresholds") or lacking >= set(r0["thresholds"])
                                                or "canary_auc" in lacking):
        return EXIT_CLAIM_FAILS
    if any(v == "inconclusive" for n, v in verdicts.items() if n != "R0"):
        return EXIT_CLAIM_FAILS
    return EXIT_HOLDS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, help="JSON file with any of these options (flags win)")
    p.add_argument("--dataset", choices=("synthetic", "kuaisar-r", "recbole"), default=None)
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--recbole-name", default=None)
    p.add_argument("--users", type=int, default=None, help="synthetic users (default 400)")
    p.add_argument("--rounds", type=int, default=None, help="rounds per cell (default 5)")
    p.add_argument("--canaries", type=int, default=None, help="canary clients per cell (default 100)")
    p.add_argument("--clip", type=float, default=None, help="the public clip bound C of the DP cells (default 1)")
    p.add_argument("--levels", type=float, nargs="+", default=None, help="noise multipliers (default 0.1 0.3 0.5)")
    p.add_argument("--targets", type=float, nargs="+", default=None, help="calibrated target epsilons (default 1 4)")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--sampled-fraction", type=float, default=None,
                   help="client fraction of the disaggregation cells (default 0.1; 0 = none)")
    p.add_argument("--cells", nargs="+", default=None, help="run only the cells whose name contains one of these")
    p.add_argument("--misreport-noise", type=float, default=None,
                   help="TESTING THE AUDIT ONLY: claim z x FACTOR while adding z (a false claim the audit must catch)")
    p.add_argument("--confidence", type=float, default=None,
                   help="R1-R3 hold together over the DP cells at this confidence (default 0.95): an honest "
                        "mechanism fails by chance with probability at most 1 - confidence")
    p.add_argument("--workers", type=int, default=1, help="cells run in parallel processes (default 1)")
    p.add_argument("--signing-key", type=Path, default=None, help="Ed25519 key (PEM) that signs report.json's SHA-256")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", type=Path, required=True, help="the audit folder (resumable)")


def audit_main(args: argparse.Namespace) -> int:
    from mrff_secure.errors import MrffError

    try:
        return _audit(args)
    except MrffError as exc:
        print(f"mrff audit: error: {exc}")
        return EXIT_ERROR


def _audit(args: argparse.Namespace) -> int:
    from mrff_secure.report import write_report

    config = resolve_config(args)
    if args.workers < 1 or args.workers > (os.cpu_count() or 1) * 4:
        raise ConfigError(f"--workers must be in [1, {(os.cpu_count() or 1) * 4}], got {args.workers}")
    grid = run_audit(args.out, config, workers=args.workers, progress=not args.no_progress)
    paths = write_report(args.out, signing_key=args.signing_key)
    code = exit_code(grid["rules"])
    for name, rule in grid["rules"].items():
        print(f"{name}: {rule['verdict']}")
    print(f"report: {paths['html']} ({'every claim holds' if code == 0 else 'A CLAIM FAILS OR THE AUDIT IS INCONCLUSIVE'})")
    return code


def register(sub) -> None:
    parser = sub.add_parser("audit", help="the privacy audit: every threat model and noise level, attacks, rules, report")
    add_arguments(parser)
    parser.set_defaults(handler=audit_main)

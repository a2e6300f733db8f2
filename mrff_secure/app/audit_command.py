"""`mrff audit`: the product's main job. Train under each threat model and noise level of the grid, run
every attack, evaluate the rules, write the report.

    mrff audit --run-dir runs/audit                  # synthetic data, the default grid, <= 5 min on 2 cores
    mrff audit --dataset kuaisar-r --data-dir DIR --run-dir runs/audit-kuaisar
    mrff audit --config run.toml --cells "local-dp" "plain" --run-dir runs/audit

The audit folder:
    config.toml         the resolved configuration (tables data, privacy, audit), for --config
    audit-config.json   the same as the grid reads it, with its SHA-256 (a resumed audit must match it)
    cells/<cell>.json   one finished cell each, written atomically: an interrupted audit resumes from them
    grid.json           every cell, the malicious-server cells and the rules (attacks.grid)
    report.json / report.md / report.html and the plots: `mrff report` (mrff_secure.report)

Exit code: the one verdict (`attacks.rules.overall_verdict`, the same in the console, the report's banner
and report.json): 0 when every claim holds (and at least one DP claim could have been refuted), 3 when a
claim fails, the audit is inconclusive (an attack without power: R0) or no DP claim was tested (no DP cell,
or every claim above what the canaries can certify; --canaries 0 is refused); 2 on a usage error (a bad option or
configuration), 1 on other errors (unreadable data). An honest implementation gets 3 by chance with
probability at most 1 - confidence (default 1%: every test of the audit shares that budget).

`--config FILE`: the TOML run configuration shared by every command (`mrff_secure.app.options`): the audit
reads [data] dataset, data_dir, recbole_name, synthetic_users, synthetic_rare_values (default 20 here); [privacy] clip; and its own [audit]
table (rounds_per_cell, canaries, levels, targets, seeds, sampled_fraction, cells, confidence,
misreport_noise, planted_defect). Flags and --set win over the file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mrff_secure.app import options
from mrff_secure.atomic import write_json_atomic
from mrff_secure.checks import check_int
from mrff_secure.errors import ConfigError

if TYPE_CHECKING:  # imported where used: `mrff --help` starts without torch
    from attacks.grid import Cell
    from mrff_secure.data.client_data import ClientData

EXIT_HOLDS, EXIT_ERROR, EXIT_USAGE, EXIT_CLAIM_FAILS = 0, 1, 2, 3


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    """The audit's configuration from the shared options (defaults < --config < --set < flags)."""
    config = options.flat(options.resolve(args, "audit"))
    if config["dataset"] != "synthetic" and not config["data_dir"]:
        raise ConfigError(f"--dataset {config['dataset']} needs --data-dir DIR")
    return {
        "dataset": config["dataset"],
        "data_dir": config["data_dir"],
        "recbole_name": config["recbole_name"],
        "users": config["synthetic_users"],
        "rare_values": config["synthetic_rare_values"],
        "rounds": config["rounds_per_cell"],
        "canaries": config["canaries"],
        "clip": config["clip"],
        "levels": config["levels"],
        "targets": config["targets"],
        "seeds": config["seeds"],
        "sampled_fraction": config["sampled_fraction"],
        "cells": config["cells"],
        "misreport_noise": config["misreport_noise"],
        "planted_defect": config["planted_defect"],
        "network_cell": config["network_cell"],
        "confidence": config["confidence"],
    }


def config_digest(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def load_data(config: dict[str, Any]) -> ClientData:
    from mrff_secure.data import load_kuaisar_r, load_recbole, make_synthetic

    if config["dataset"] == "synthetic":
        return make_synthetic(num_users=config["users"], rare_values=config.get("rare_values", 0))
    if config["dataset"] == "kuaisar-r":
        return load_kuaisar_r(Path(config["data_dir"]))
    return load_recbole(Path(config["data_dir"]), name=config["recbole_name"])


def audit_cells(config: dict[str, Any]) -> list:
    from attacks.grid import Cell, default_cells

    cells = default_cells(
        levels=tuple(config["levels"]),
        targets=tuple(config["targets"]),
        seeds=tuple(config["seeds"]),
        sampled=config["sampled_fraction"] or None,
    )
    lies = {}
    if config["misreport_noise"] != 1.0:
        lies["misreport_noise"] = float(config["misreport_noise"])
    if config.get("planted_defect"):
        lies["planted_defect"] = config["planted_defect"]
    if lies:
        cells = [
            Cell(**{**c.to_dict(), **lies}) if c.noise_multiplier > 0 or c.target_epsilon is not None else c
            for c in cells
        ]
    if config["cells"]:
        chosen = [c for c in cells if any(pattern in c.name for pattern in config["cells"])]
        if not chosen:
            raise ConfigError(f"--cells {config['cells']} matches none of the grid's cells: {[c.name for c in cells]}")
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
            raise ConfigError(f"{path} is unreadable ({exc}): remove it or use another --run-dir") from exc
        if stored.get("digest") != digest:
            differ = sorted(
                k
                for k in set(config) | set(stored.get("config", {}))
                if config.get(k) != stored.get("config", {}).get(k)
            )
            raise ConfigError(
                f"{out} holds an audit with another configuration (differs in {differ}): resume it "
                "with the same options, or use another --run-dir"
            )
        return
    write_json_atomic(path, {"config": config, "digest": digest})


def _cell_alone(cell_dict: dict[str, Any], data: ClientData, config: dict[str, Any], threads: int) -> dict[str, Any]:
    """One cell in a process of its own (a pool worker or a Ray task), on `threads` torch threads."""
    import torch

    from attacks.grid import Cell, run_cell
    from mrff_secure.config import ModelConfig

    torch.set_num_threads(int(threads))
    return run_cell(
        Cell(**cell_dict),
        data,
        model=ModelConfig(maxlen=data.maxlen),
        rounds=config["rounds"],
        canaries=config["canaries"],
        clip=config["clip"],
    )


def _cell_worker(payload: tuple[dict, dict, str]) -> dict:
    cell_dict, config, path = payload
    result = _cell_alone(cell_dict, load_data(config), config, 1)
    write_json_atomic(path, result)
    return result


def _ray_cell(cell_dict: dict[str, Any], data: ClientData, config: dict[str, Any], threads: int) -> dict[str, Any]:
    """One cell as a Ray task (anywhere in the cluster): the result comes back to the driver, which writes it."""
    from mrff_secure.federation.ray_backend import writable_copy

    return _cell_alone(cell_dict, writable_copy(data), config, threads)


def _run_on_ray(
    todo: list[tuple[Cell, Path]],
    data: ClientData,
    config: dict[str, Any],
    results: dict[str, dict],
    *,
    address: str | None,
    threads: int,
    progress: bool,
) -> None:
    """Every cell of `todo` as a Ray task of `threads` CPUs; each result written as soon as it arrives."""
    from mrff_secure.federation.ray_backend import connect, import_ray

    ray = import_ray()
    started = connect(ray, address, None)
    try:
        task = ray.remote(num_cpus=threads, scheduling_strategy="SPREAD")(_ray_cell)  # over every node
        data_ref = ray.put(data)  # once, for every task: the nodes need no copy of the dataset on disk
        pending = {task.remote(cell.to_dict(), data_ref, config, threads): (cell, path) for cell, path in todo}
        cpus, nodes = int(ray.cluster_resources().get("CPU", 0)), sum(1 for n in ray.nodes() if n.get("Alive"))
        print(f"{len(pending)} cells as Ray tasks on {cpus} CPUs of {nodes} node{'s' * (nodes > 1)}", flush=True)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            cell, path = pending.pop(done[0])
            result = ray.get(done[0])
            write_json_atomic(path, result)
            results[cell.name] = result
            if progress:
                print(f"{cell.name}: done in {result['seconds']:.1f} s", flush=True)
    finally:
        if started:
            ray.shutdown()


def run_audit(
    out: Path,
    config: dict[str, Any],
    *,
    processes: int = 1,
    progress: bool = True,
    backend: str = "single",
    ray_address: str | None = None,
    threads_per_worker: int = 1,
) -> dict[str, Any]:
    """Run (or resume) the audit in `out`; returns the grid report (also written to out/grid.json).

    backend "single": the cells in this process, or in `processes` processes; "ray": every cell a Ray task
    of `threads_per_worker` CPUs on the cluster at `ray_address` (None: a local Ray instance)."""
    from attacks.grid import grid_report, run_cell
    from mrff_secure.config import ModelConfig

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _prepare(out, config)
    data = load_data(config)
    model = ModelConfig(maxlen=data.maxlen)
    cells = audit_cells(config)
    results: dict[str, dict] = {}
    todo: list[tuple[Cell, Path]] = []
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
    if backend == "ray" and todo:
        (out / "cells").mkdir(parents=True, exist_ok=True)
        _run_on_ray(todo, data, config, results, address=ray_address, threads=threads_per_worker, progress=progress)
    elif processes > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=processes) as pool:
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
            result = run_cell(
                cell,
                data,
                model=model,
                rounds=config["rounds"],
                canaries=config["canaries"],
                clip=config["clip"],
                on_round=(lambda done, total: bar.update(1)) if bar else None,
            )
            if bar is not None:
                bar.close()
            write_json_atomic(path, result)
            results[cell.name] = result
    ordered = [results[c.name] for c in cells]
    report = grid_report(
        data,
        ordered,
        rounds=config["rounds"],
        canaries=config["canaries"],
        clip=config["clip"],
        family_confidence=config["confidence"],
        network_cell=config.get("network_cell", True),
    )
    report["config"], report["config_digest"] = config, config_digest(config)
    write_json_atomic(out / "grid.json", report)
    return report


def exit_code(grid: dict[str, Any]) -> int:
    """The verdict's exit code: 0 when every claim holds, 3 when one fails, the audit is inconclusive or no DP
    claim was tested (see attacks.rules.overall_verdict)."""
    return int(grid["verdict"]["exit_code"])


def audit_main(args: argparse.Namespace) -> int:
    """`mrff audit` (parser in mrff_secure.app.cli); errors propagate to the CLI's one-line handler."""
    from mrff_secure.report import write_report

    check_int("--processes", args.processes, low=1, high=(os.cpu_count() or 1) * 4)
    resolved = options.resolve(args, "audit")
    config = resolve_config(args)
    if config["canaries"] == 0:
        raise ConfigError(
            "--canaries 0 leaves no DP claim the audit could test (its verdict could only be NO CLAIM TESTED, "
            "exit 3): give --canaries m (default 1000)"
        )
    from attacks.rules import DP_THREAT_MODELS

    if not any(cell.threat_model in DP_THREAT_MODELS for cell in audit_cells(config)):
        print(
            "NOTE no cell of this grid makes a DP claim (no secagg+dp or local-dp cell): the attacks run, but the "
            "verdict will be NO CLAIM TESTED (exit 3)",
            flush=True,
        )
    if args.backend == "ray" and args.processes != 1:
        raise ConfigError(
            "--processes is the single backend's process pool; with --backend ray every cell is a Ray "
            "task and the cluster's CPUs (--threads-per-worker each) decide how many run at once"
        )
    from mrff_secure.app.run_folder import NewRunFolder

    with NewRunFolder(Path(args.run_dir)) as run_folder:  # a refused start leaves no folder behind
        out = options.writable_folder(args.run_dir, "--run-dir")
        _prepare(out, config)
        options.write_config(out, resolved, "audit")
        run_folder.started()  # from here, finished cells stay for a resume
    grid = run_audit(
        out,
        config,
        processes=args.processes,
        progress=not args.no_progress,
        backend=args.backend,
        ray_address=args.ray_address,
        threads_per_worker=args.threads_per_worker,
    )
    paths = write_report(out, signing_key=args.signing_key)
    verdict = grid["verdict"]
    print(f"VERDICT: {verdict['headline']} (exit {verdict['exit_code']})")
    for problem in verdict["problems"]:
        print(f"  {problem['rule']} {problem['cell']}: {problem['what']}\n    next: {problem['next']}")
    for line in verdict["not_tested"]:
        print(f"  not tested: {line}")
    rules = {
        name: rule["verdict"] for name, rule in grid["rules"].items() if isinstance(rule, dict) and "verdict" in rule
    }
    print("rules: " + ", ".join(f"{name} {v}" for name, v in rules.items()))
    print(f"report: {paths['html']}")
    return exit_code(grid)

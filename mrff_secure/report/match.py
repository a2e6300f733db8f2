"""Which audit covers a run: the privacy configuration of a network or training run matched, by digest, to
an audited cell of the same configuration.

The configuration is exactly PRIVACY_CONFIG_FIELDS: the noise mechanism, the clip C, the noise multiplier z,
the secure-aggregation graph's k (neighbours) and t (threshold), and the rounds. `privacy_config_digest` is
the SHA-256 of their canonical JSON (sorted keys, no spaces; clip and z as floats, k, t and rounds as
integers, an absent k or t as null), so the same configuration gets the same digest in any folder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mrff_secure.errors import ConfigError

PRIVACY_CONFIG_FIELDS = ("mechanism", "clip", "noise_multiplier", "num_neighbours", "threshold", "rounds")
_FLOATS = ("clip", "noise_multiplier")
_INTS = ("num_neighbours", "threshold", "rounds")


def _canonical(fields: dict[str, Any]) -> dict[str, Any]:
    keys = set(fields)
    if keys != set(PRIVACY_CONFIG_FIELDS):
        raise ConfigError(
            f"a privacy configuration has exactly the fields {list(PRIVACY_CONFIG_FIELDS)}; "
            f"missing {sorted(set(PRIVACY_CONFIG_FIELDS) - keys)}, unknown {sorted(keys - set(PRIVACY_CONFIG_FIELDS))}"
        )
    out: dict[str, Any] = {}
    for key in PRIVACY_CONFIG_FIELDS:
        value = fields[key]
        try:
            if value is None:
                out[key] = None
            elif key in _FLOATS:
                out[key] = float(value)
            elif key in _INTS:
                if float(value) != int(value):
                    raise ValueError
                out[key] = int(value)
            else:
                out[key] = str(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"privacy configuration field {key} = {value!r} is not a valid value") from exc
    return out


def privacy_config_digest(fields: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of exactly PRIVACY_CONFIG_FIELDS."""
    text = json.dumps(_canonical(fields), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def run_privacy_fields(run_dir: Path) -> dict[str, Any]:
    """The privacy configuration of a network run (its audit log's run_started record) or a training run
    (summary.json's privacy); {"dp_mode": ...} is added beside the digest's fields."""
    from mrff_secure.audit_log import read_records

    run_dir = Path(run_dir)
    log = run_dir / "audit.jsonl"
    if log.is_file():
        started = next((r for r in read_records(log) if r.get("type") == "run_started"), None)
        if started is None:
            raise ConfigError(f"{log} has no run_started record: its privacy configuration is unknown")
        spec, settings = started.get("spec", {}), started.get("settings", {})
        fields = {
            "mechanism": spec.get("mechanism") if spec.get("dp_mode", "off") != "off" else None,
            "clip": spec.get("clip"),
            "noise_multiplier": spec.get("noise_multiplier"),
            "num_neighbours": settings.get("num_neighbours"),
            "threshold": settings.get("threshold"),
            "rounds": settings.get("rounds"),
        }
        return {**fields, "dp_mode": spec.get("dp_mode", "off")}
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        privacy = _read(summary_path).get("privacy", {})
        fields = {
            "mechanism": privacy.get("mechanism") if privacy.get("mode", "off") != "off" else None,
            "clip": privacy.get("clip"),
            "noise_multiplier": privacy.get("noise_multiplier"),
            "num_neighbours": None,  # the simulation's fast ring sum has no neighbour graph
            "threshold": None,
            "rounds": privacy.get("rounds_accounted"),
        }
        return {**fields, "dp_mode": privacy.get("mode", "off")}
    raise ConfigError(f"{run_dir} holds no audit.jsonl (network run) or summary.json (training run)")


def audit_cell_fields(cell: dict[str, Any]) -> dict[str, Any]:
    """The privacy configuration an audited cell tested (from its claim)."""
    claim = cell.get("claim", {})
    return {
        "mechanism": claim.get("mechanism"),
        "clip": claim.get("clip"),
        "noise_multiplier": claim.get("noise_multiplier") if claim.get("mechanism") else None,
        "num_neighbours": claim.get("num_neighbours"),
        "threshold": claim.get("threshold"),
        "rounds": claim.get("rounds"),
    }


def audit_match(run_dir: Path, audit_dir: Path) -> dict[str, Any]:
    """Whether the audit in `audit_dir` (its grid.json) tested the privacy configuration of the run in
    `run_dir`: {"audited", "digest", "fields", "audit", "cells", "verdict", "cell_verdicts", "text"}.
    A cell matches when its configuration's digest equals the run's; without a match the closest cell
    and how it differs are named."""
    from mrff_secure.report.tables import fmt
    from mrff_secure.report.verdict import overall_verdict

    run = run_privacy_fields(run_dir)
    fields = {k: run[k] for k in PRIVACY_CONFIG_FIELDS}
    digest = privacy_config_digest(fields)
    grid_path = Path(audit_dir) / "grid.json"
    grid = _read(grid_path)
    cells = grid.get("cells", [])
    matched, closest, closest_diff = [], None, None
    for cell in cells:
        theirs = audit_cell_fields(cell)
        if privacy_config_digest(theirs) == digest:
            matched.append(cell)
            continue
        canon_ours, canon_theirs = _canonical(fields), _canonical(theirs)
        diff = [k for k in PRIVACY_CONFIG_FIELDS if canon_ours[k] != canon_theirs[k]]
        if closest_diff is None or len(diff) < len(closest_diff):
            closest, closest_diff = (cell, canon_theirs), diff
    out: dict[str, Any] = {
        "audited": bool(matched),
        "digest": digest,
        "fields": _canonical(fields),
        "audit": str(grid_path),
        "audit_config_digest": grid.get("config_digest"),
        "cells": [c["cell"] for c in matched],
    }
    if matched:
        names = {c["cell"] for c in matched}
        rules = grid.get("rules", {})
        out["cell_verdicts"] = {
            rule: {name: body["cells"][name]["verdict"] for name in names if name in body.get("cells", {})}
            for rule, body in rules.items()
            if isinstance(body.get("cells"), dict)
        }
        out["verdict"] = overall_verdict(grid)["verdict"]
        failing = sorted(
            {
                f"{rule} in {name}"
                for rule, cells_ in out["cell_verdicts"].items()
                for name, v in cells_.items()
                if v == "fails"
            }
        )
        out["text"] = (
            f"audited: {', '.join(sorted(names))} of {grid_path} tested this privacy configuration (digest "
            f"{digest[:16]}); the audit's overall verdict: {out['verdict']}"
            + (f"; failing for this configuration: {', '.join(failing)}" if failing else "")
        )
    else:
        out["verdict"] = "not audited"
        out["cell_verdicts"] = {}
        if closest is not None and closest_diff is not None:
            cell, theirs = closest
            ours = _canonical(fields)
            differs = ", ".join(f"{k} {fmt(theirs[k])} there, {fmt(ours[k])} here" for k in closest_diff)
            out["text"] = (
                f"not audited: no cell of {grid_path} has this privacy configuration (digest {digest[:16]}); "
                f"the closest, {cell['cell']}, differs in {differs}"
            )
        else:
            out["text"] = f"not audited: {grid_path} has no cell"
    return out

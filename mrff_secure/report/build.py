"""report.json: what the report says, built from the files of an audit, training or network run folder.

Schema `mrff-report/1` (keys in this order, each section present whatever the source, with
`"applicable": false` and a reason where the source has nothing for it):

- `schema`, `kind` ("audit" | "training" | "network"), `source` (the folder), `created_utc`
- `verdicts`: [{"claim", "rule", "verdict", "evidence"}] one line per claim
- `privacy_statement`: {"unit", "adjacency", "epsilon", "delta", "accountant", "sampling",
  "not_accounted", "text"} in plain language
- `threat_models`: [{"name", "server_saw"}] exactly what the server saw in each
- `mechanism`: clip, noise multipliers, mechanism, modulus, minimum group size, random number source
- `attacks`: [{"cell", "threat_model", "noise_multiplier", "claimed_epsilon", <score>, <score>_se ...}]
  (the grid's results, one row per cell: the table of every rendering comes from these rows)
- `power`: R0's evidence (which attacks have power at plain noise 0)
- `utility`: [{"cell", "threat_model", "noise_multiplier", "test_auc"}] (operator only: private data)
- `network`: audit-log verification and what left each device per round (network runs)
- `plots`: file names of the PNG plots beside report.json
- `reproducibility`: commit, configuration and its digest, dataset checksum, seeds, package versions
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mrff_secure.audit_log import read_records, verify
from mrff_secure.errors import ConfigError
from mrff_secure.provenance import source_commit
from mrff_secure.round.spec import ThreatModel

REPORT_SCHEMA = "mrff-report/1"
SCORE_COLUMNS = (
    "reconstruction_f1",
    "reconstruction_auc",
    "membership_auc",
    "attribute_advantage",
    "group_accuracy",
    "group_advantage",
    "canary_auc",
    "disaggregation_rare_auc",
)
RULE_CLAIMS = {
    "R0": "the attacks have power where nothing protects the data (plain, no noise)",
    "R1": "no canary audit shows more privacy loss than the accountant's epsilon",
    "R2": "the noise actually released is at least the noise the accountant was told",
    "R3": "no test beats the claimed (epsilon, delta) trade-off curve",
    "R4": "secure aggregation shows the server no individual update and nothing per user beyond the population",
    "R5": "attacks do not get stronger with more noise",
    "malicious-server": "a lying server's active attacks are refused by the client code",
}
SERVER_SAW = {
    "plain": "every client's update vector, identified (shared delta, every group slot, group one-hots, example "
    "count), every round",
    "secagg": "only each round's sums: the phase-1 group counts and the phase-2 sum of the update vectors; who "
    "took part",
    "secagg+dp": "only each round's sums, each with distributed discrete noise (counts included; in a network "
    "run's evaluated rounds also the noisy sum of held-out score histograms); who took part",
    "local-dp": "every client's update vector with its own noise on every coordinate, identified, every round",
    "malicious-server": "whatever it chooses to send and receive in the secure-aggregation protocol, with "
    "colluding clients (active attacks against the real client code)",
}
PACKAGES = ("mrff-secure", "torch", "numpy", "scipy", "opacus", "cryptography", "grpcio", "pandas", "matplotlib")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def dataset_checksum(config: dict[str, Any]) -> dict[str, Any]:
    """SHA-256 of the dataset's files (a real dataset) or of the generator's parameters (synthetic)."""
    if config.get("dataset", "synthetic") == "synthetic":
        params = {"generator": "mrff_secure.data.make_synthetic", "users": config.get("users", 400)}
        return {
            "dataset": "synthetic",
            "sha256": hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest(),
            "of": params,
        }
    folder = Path(config["data_dir"])
    digest, files = hashlib.sha256(), []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        files.append(path.relative_to(folder).as_posix())
    return {"dataset": config["dataset"], "sha256": digest.hexdigest(), "files": files}


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _attack_rows(cells: list[dict]) -> list[dict[str, Any]]:
    rows = []
    for c in cells:
        row = {
            "cell": c["cell"],
            "threat_model": c["threat_model"],
            "seed": c["seed"],
            "noise_multiplier": _number(c["noise_multiplier"]),
            "claimed_epsilon": c["claim"]["epsilon"],
        }
        bound = (c.get("canary") or {}).get("bound") or {}
        row["epsilon_lower_bound"] = _number(bound.get("epsilon_lower_bound"))
        for key in SCORE_COLUMNS:
            row[key] = _number(c["scores"].get(key))
            row[f"{key}_se"] = _number(
                c.get("standard_errors", {}).get(key.replace("_f1", "_auc") if key == "reconstruction_f1" else key)
            )
        rows.append(row)
    return rows


def _verdicts(rules: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for rule, body in rules.items():
        evidence = ""
        if rule == "R0":
            lacking = body.get("attacks_without_power", [])
            evidence = (
                "every attack has power"
                if not lacking
                else f"without power (their results prove nothing): {', '.join(lacking)}"
            )
        elif rule == "malicious-server":
            evidence = f"{len(body.get('refused', []))} refused, {len(body.get('leaked', []))} leaked"
        elif "cells" in body or "series" in body:
            items = body.get("cells", body.get("series", {}))
            counts: dict[str, int] = {}
            for item in items.values():
                counts[item["verdict"]] = counts.get(item["verdict"], 0) + 1
            evidence = ", ".join(f"{n} {v}" for v, n in sorted(counts.items())) or "no applicable cell"
            if "family_confidence" in body and items:
                evidence += f" (together at {body['family_confidence']:g} confidence over {body['cells_tested']} cells)"
        out.append(
            {"claim": RULE_CLAIMS.get(rule, rule), "rule": rule, "verdict": body["verdict"], "evidence": evidence}
        )
    return out


def _statement(cells: list[dict]) -> dict[str, Any]:
    dp = [c for c in cells if c["claim"].get("adjacency")]
    adjacency = sorted({f"{c['threat_model']}: {c['claim']['adjacency']}" for c in dp})
    deltas = sorted({c["claim"]["delta"] for c in dp})
    epsilons = {c["cell"]: c["claim"]["epsilon"] for c in dp}
    rounds = sorted({c["claim"]["rounds"] for c in dp})
    not_accounted = [
        "the plain and secagg cells (no noise: epsilon is infinite there)",
        "the choice of the clip bound C (stated by the operator; the audit uses C = 1 without looking at the data)",
        "utility (test AUC) evaluated on private held-out data without noise: operator only",
        "the participant lists: who took part in each round is visible to the server",
    ]
    text = (
        "The unit of privacy is one user: everything a user's device contributes. "
        f"Each epsilon below is for a user who takes part in every one of the {', '.join(map(str, rounds)) or '?'} "
        f"rounds of its cell, at delta {', '.join(f'{d:.3g}' for d in deltas) or '?'}, from the project's one "
        "accountant (the proven bound of the mechanism used: the grid discrete Gaussian for local DP, the "
        "distributed discrete Gaussian for secure aggregation). No amplification by sampling is claimed: the "
        "server sees who takes part. Adjacency: replace-one where the server sees identified uploads "
        "(local DP), zero-out under secure aggregation. Not accounted for: " + "; ".join(not_accounted) + "."
    )
    return {
        "unit": "one user (all of a user's data)",
        "adjacency": adjacency,
        "epsilon": epsilons,
        "delta": deltas,
        "accountant": "mrff_secure.round.accountant.account_rounds (opacus RDP/PRV; discrete bounds)",
        "sampling": "none claimed: a user in every round",
        "not_accounted": not_accounted,
        "text": text,
    }


def _mechanism(grid: dict[str, Any]) -> dict[str, Any]:
    dp = [c for c in grid["cells"] if c["claim"].get("mechanism")]
    return {
        "clip": grid.get("clip"),
        "noise_multipliers": sorted({_number(c["noise_multiplier"]) for c in dp}),
        "mechanisms": sorted({f"{c['threat_model']}: {c['claim']['mechanism']}" for c in dp}),
        "noise_source": sorted({c["claim"].get("noise_source", "") for c in dp}),
        "modulus_bits": sorted({c["claim"]["modulus_bits"] for c in dp if c["claim"].get("modulus_bits")}),
        "min_group_size": sorted({c["claim"]["min_group_size"] for c in dp if c["claim"].get("min_group_size")}),
        "notes": "secure cells: the fast ring sum of the SecAgg+ protocol (bit-identical to the in-memory "
        "state machines, tested); every coordinate, counts included, carries its noise share",
    }


def _audit_report(folder: Path) -> dict[str, Any]:
    grid = _read_json(folder / "grid.json")
    config = grid.get("config", {"dataset": "synthetic", "users": grid.get("users")})
    cells = grid["cells"]
    plain = next((c for c in cells if c["threat_model"] == "plain"), None)
    return {
        "verdicts": _verdicts(grid["rules"]),
        "privacy_statement": _statement(cells),
        "threat_models": [
            {"name": name, "server_saw": SERVER_SAW[name]}
            for name in dict.fromkeys([c["threat_model"] for c in cells] + ["malicious-server"])
        ],
        "mechanism": _mechanism(grid),
        "attacks": _attack_rows(cells),
        "power": grid["rules"].get("R0", {}),
        "malicious_server": grid.get("malicious_server"),
        "rules": grid["rules"],
        "utility": [
            {
                "cell": c["cell"],
                "threat_model": c["threat_model"],
                "noise_multiplier": _number(c["noise_multiplier"]),
                "target_epsilon": c.get("target_epsilon"),
                "test_auc": _number(c["utility"]["test_auc"]),
            }
            for c in cells
        ],
        "network": {"applicable": False, "reason": "an audit runs in the simulation; see a network run's report"},
        "reproducibility": {
            "commit": grid.get("commit", source_commit()),
            "config": config,
            "config_digest": grid.get("config_digest"),
            "dataset": dataset_checksum(config),
            "seeds": sorted({c["seed"] for c in cells}),
            "versions": _versions(),
            "plain_cell_example": plain["cell"] if plain else None,
        },
    }


def _training_report(folder: Path) -> dict[str, Any]:
    summary = _read_json(folder / "summary.json")
    privacy = summary.get("privacy", {})
    model = ThreatModel.of_modes(
        dp_mode=privacy.get("mode", "off"), secure_aggregation=privacy.get("secure_aggregation", "off") != "off"
    )
    eps = privacy.get("epsilon", "inf")
    statement = {
        "unit": "one user (all of a user's data)",
        "adjacency": [f"{model}: {privacy.get('adjacency')}"],
        "epsilon": {"run": eps},
        "delta": [privacy.get("delta")],
        "accountant": privacy.get("epsilon_bound"),
        "sampling": privacy.get("sampling"),
        "not_accounted": privacy.get("notes", []),
        "text": f"This training run claims epsilon {eps} at delta {privacy.get('delta')} for a user in every round "
        f"({privacy.get('adjacency')} adjacency, {privacy.get('mechanism')}). It was not audited: run "
        "`mrff audit` for attack evidence.",
    }
    return {
        "verdicts": [
            {
                "claim": "the run's epsilon",
                "rule": "accounted",
                "verdict": "not audited",
                "evidence": f"epsilon {eps} ({'private' if privacy.get('private') else 'NOT private'})",
            }
        ],
        "privacy_statement": statement,
        "threat_models": [{"name": model, "server_saw": SERVER_SAW[model]}],
        "mechanism": {
            k: privacy.get(k)
            for k in (
                "clip",
                "noise_multiplier",
                "mechanism",
                "noise_source",
                "min_group_size",
                "modulus_bits",
                "secure_aggregation",
            )
        },
        "attacks": [],
        "power": {"applicable": False, "reason": "no attacks were run on a training run"},
        "rules": {},
        "malicious_server": None,
        "utility": [],
        "network": {"applicable": False, "reason": "a simulation run"},
        "reproducibility": {
            "commit": source_commit(),
            "config": summary.get("config"),
            "versions": _versions(),
            "seeds": [summary.get("config", {}).get("federation", {}).get("seed")],
        },
    }


def _network_report(folder: Path, audit_public_key: Ed25519PublicKey | None = None) -> dict[str, Any]:
    log = folder / "audit.jsonl"
    check = verify(log, audit_public_key)
    records = read_records(log) if log.is_file() else []
    started = next((r for r in records if r.get("type") == "run_started"), {})
    rounds = [r for r in records if r.get("type") in ("round", "round_aborted")]
    per_round = []
    released_evaluations, exact_evaluations = 0, 0
    for r in rounds:
        wire = r.get("wire_bytes", {})
        n = max(1, len(r.get("participants", [])))
        ledger = r.get("epsilon")
        evaluation = r.get("evaluation") or {}
        row = {
            "round": r.get("round"),
            "completed": r.get("type") == "round",
            "participants": n,
            "bytes_from_devices_per_participant": round(wire.get("received", 0) / n, 1),
            "bytes_to_devices_per_participant": round(wire.get("sent", 0) / n, 1),
            "epsilon": ledger.get("epsilon") if isinstance(ledger, dict) else ledger,
        }
        if evaluation:  # the federated evaluation of this round: a release in the ledger when available
            row["evaluation"] = (
                "failed: nothing released"
                if not evaluation.get("available")
                else f"released in epsilon (noise std {evaluation.get('noise_std', 0):.3g})"
                if evaluation.get("in_epsilon")
                else "released exactly: NOT in any epsilon"
            )
            if evaluation.get("available"):
                released_evaluations += 1
                exact_evaluations += not evaluation.get("in_epsilon")
        per_round.append(row)
    last_eps = next((r["epsilon"] for r in reversed(per_round) if r["epsilon"] is not None), "inf")
    evaluations_text = (
        f", including its {released_evaluations} federated evaluation(s) (each a DP release of the noisy sum of "
        "held-out score histograms)"
        if released_evaluations
        else "; no federated evaluation was released"
    )
    settings = started.get("settings", {})
    network_model = ThreatModel.of_modes(
        dp_mode=started.get("spec", {}).get("dp_mode", "off"), secure_aggregation=settings.get("secure", True)
    )
    return {
        "verdicts": [
            {
                "claim": "the audit log is intact and signed by the server through the end of the run",
                "rule": "audit-log",
                "verdict": (
                    "not audited" if audit_public_key is None and check.ok else "holds" if check.ok else "fails"
                ),
                "evidence": f"{check.records} records"
                + (
                    ": chain intact; signatures NOT checked (give `mrff report --signing-pub`)"
                    if audit_public_key is None and check.ok
                    else ""
                    if check.ok
                    else f": {check.problem}"
                ),
            }
        ],
        "privacy_statement": {
            "unit": "one user",
            "epsilon": {"run": last_eps},
            "delta": [settings.get("delta")],
            "adjacency": [f"{network_model}: zero-out"],
            "accountant": "the coordinator's ledger",
            "sampling": "none claimed: a user in every round",
            "not_accounted": (
                [f"{exact_evaluations} exact federated evaluation(s) (DP off): held-out score histograms without noise"]
                if exact_evaluations
                else []
            ),
            "text": f"The coordinator's ledger records epsilon {last_eps} after the last round{evaluations_text}.",
        },
        "threat_models": [{"name": network_model, "server_saw": SERVER_SAW[network_model]}],
        "mechanism": {
            k: settings.get(k)
            for k in ("dp_mode", "clip", "noise_multiplier", "mechanism", "modulus_bits", "min_group_size")
        },
        "attacks": [],
        "power": {"applicable": False, "reason": "no attacks were run on a network run"},
        "rules": {},
        "malicious_server": None,
        "utility": [],
        "network": {
            "applicable": True,
            "audit_log": {
                "ok": check.ok,
                "records": check.records,
                "last_digest": check.last_digest,
                "problem": check.problem,
            },
            "left_each_device": (
                "per round, per secure sum: the key bundle (ADVERTISE_KEYS), the seed reveal, "
                "encrypted Shamir shares for its k neighbours (SHARE_KEYS), the masked ring vector "
                "(MASKED_INPUT), a consistency signature and the unmask response; nothing in "
                "the clear about its update"
            ),
            "rounds": per_round,
        },
        "reproducibility": {
            "commit": source_commit(),
            "config": settings,
            "run_id": started.get("run_id"),
            "versions": _versions(),
        },
    }


def build_report(folder: Path, *, audit_public_key: Ed25519PublicKey | None = None) -> dict[str, Any]:
    """The report of an audit folder (grid.json), a network run (audit.jsonl; its signatures checked under
    `audit_public_key`, the server's signing public key, when given) or a training run (summary.json)."""
    folder = Path(folder)
    if (folder / "grid.json").is_file():
        kind, body = "audit", _audit_report(folder)
    elif (folder / "audit.jsonl").is_file():
        kind, body = "network", _network_report(folder, audit_public_key)
    elif (folder / "summary.json").is_file():
        kind, body = "training", _training_report(folder)
    else:
        raise ConfigError(
            f"{folder} holds no grid.json (mrff audit), audit.jsonl (mrff server) or summary.json "
            "(mrff train): nothing to report on"
        )
    return {
        "schema": REPORT_SCHEMA,
        "kind": kind,
        "source": str(folder),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **body,
    }

"""report.json: what the report says, built from the files of an audit, training or network run folder.

Schema `mrff-report/1` (keys in this order, each section present whatever the source, with
`"applicable": false` and a reason where the source has nothing for it):

- `schema`, `kind` ("audit" | "training" | "network"), `source` (the folder), `created_utc`
- `verdict`: the one overall verdict, shown first: {"verdict" (holds | fails | inconclusive | no claim
  tested), "exit_code", "headline", "alpha", "tests", "problems": [{"rule", "cell", "what", "next"}],
  "not_tested", "source"} (report.verdict)
- `terms`: {term: plain-language definition} of the terms the report uses
- `verdicts`: [{"claim", "rule", "verdict", "evidence"}] one line per claim
- `privacy_statement`: {"unit", "adjacency", "epsilon", "delta", "accountant", "sampling",
  "not_accounted", "text", "cells": [{"cell", "text", ...}] one plain sentence per cell}
- `bounds` (audits): R1 per DP cell: claimed epsilon (and under replace-one), canary lower bound, max
  certifiable, m, verdict
- `low_fpr` (audits): per cell and attack: AUC, TPR at 0.1% and 1% FPR, non-members (the FPR step)
- `audit_match` (network and training runs): the audit of the same privacy configuration, or "not
  audited" (report.match)
- `outside_the_guarantee` (network and training runs): what the run wrote that its epsilon does not cover
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
import math
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

if TYPE_CHECKING:
    from mrff_secure.round.spec import ThreatModel

from mrff_secure.audit_log import read_records, verify
from mrff_secure.errors import ConfigError
from mrff_secure.provenance import source_commit
from mrff_secure.report.match import audit_match
from mrff_secure.report.tables import fmt, number
from mrff_secure.report.verdict import FAILS, NO_CLAIM, TERMS, overall_verdict

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
    "R1": "no canary audit shows more privacy loss than the accountant's epsilon (or its Gaussian mu)",
    "R2": "the release is exactly the claimed mechanism: the claimed noise, the claimed sensitivity, noise not "
    "from the public seed, small groups suppressed, every release accounted",
    "R3": "no test beats the claimed (epsilon, delta) trade-off curve",
    "R4": "secure aggregation shows the server no individual update and nothing per user beyond the population",
    "R5": "attacks do not get stronger with more noise",
    "malicious-server": "a lying server's active attacks are refused by the client code",
    "network": "a lying server on the network gets no release the client's ledger does not account",
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


def _number(value: Any) -> float | str | None:
    """A JSON-safe number: finite floats as they are, infinities as "inf" / "-inf", NaN and non-numbers as None
    (report.json is written without NaN; every rendering says "not computed" or "n/a" for None)."""
    x = number(value)
    if x is None or math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def _attack_rows(cells: list[dict], r1: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per cell; the canary lower bound is R1's (every test at the audit's alpha per test) where
    grid.json has it, else the cell's own (an older grid.json)."""
    rows = []
    r1 = r1 or {}
    for c in cells:
        row = {
            "cell": c["cell"],
            "threat_model": c["threat_model"],
            "seed": c["seed"],
            "noise_multiplier": _number(c["noise_multiplier"]),
            "claimed_epsilon": _number(c["claim"]["epsilon"]),
        }
        bound = r1.get(c["cell"]) or (c.get("canary") or {}).get("bound") or {}
        disaggregation = c.get("disaggregation") or {}
        no_rare_rows = (
            disaggregation.get("applicable") and (disaggregation.get("rare_rows") or {}).get("applicable") is False
        )
        row["epsilon_lower_bound"] = _number(bound.get("epsilon_lower_bound"))
        row["not_computed"] = []
        for key in SCORE_COLUMNS:
            raw = number(c["scores"].get(key))
            if (raw is not None and math.isnan(raw)) or (key == "disaggregation_rare_auc" and no_rare_rows):
                row["not_computed"].append(key)
            row[key] = _number(raw)
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
        elif rule == "network":
            evidence = ", ".join(f"{k}: {v}" for k, v in body.get("outcomes", {}).items()) or "no lie judged"
        elif rule == "budget" or "verdict" not in body:
            continue
        elif "cells" in body or "series" in body:
            items = body.get("cells", body.get("series", {}))
            counts: dict[str, int] = {}
            for item in items.values():
                counts[item["verdict"]] = counts.get(item["verdict"], 0) + 1
            evidence = ", ".join(f"{n} {v}" for v, n in sorted(counts.items())) or "no applicable cell"
            if rule == "R2" and body.get("pooled_noise"):
                evidence += "; noise " + ", ".join(
                    f"{label} {fmt(number(t['variance_ratio']))} of the claimed variance over {t['samples']} samples"
                    for label, t in body["pooled_noise"].items()
                )
            budget = rules.get("budget", {})
            if budget and items:
                evidence += (
                    f" (each test at {fmt(number(body.get('alpha_per_test')))}; all {budget.get('total_tests')} tests "
                    f"together: a false alarm in at most {fmt(number(budget.get('alpha')))} of honest audits)"
                )
        out.append(
            {"claim": RULE_CLAIMS.get(rule, rule), "rule": rule, "verdict": body["verdict"], "evidence": evidence}
        )
    return out


NOT_ACCOUNTED_SHORT = "the choice of C; who took part in each round; utility on private held-out data"
NOT_ACCOUNTED = (
    "the choice of the clip bound C (stated by the operator; the audit uses C = 1 without looking at the data)",
    "who took part in each round (visible to the server)",
    "utility (test AUC) evaluated on private held-out data without noise (operator only)",
)


def cell_statement(cell: dict[str, Any]) -> dict[str, Any]:
    """One cell's privacy statement in a plain sentence, with the numbers it states."""
    claim = cell["claim"]
    name, rounds = cell["cell"], claim.get("rounds")
    if not claim.get("adjacency"):
        return {
            "cell": name,
            "dp": False,
            "epsilon": "inf",
            "text": f"{name}: no DP claim: no noise is added, so epsilon is unbounded (∞) over its "
            f"{fmt(rounds)} rounds; the server saw {SERVER_SAW.get(cell['threat_model'], 'its view')}.",
        }
    eps, delta, adjacency = _number(claim.get("epsilon")), _number(claim.get("delta")), claim["adjacency"]
    replace = _number(claim.get("epsilon_replace_one"))
    other = (
        f" (under replace-one adjacency, one user's data swapped for another's: epsilon {fmt(replace)})"
        if replace is not None and adjacency != "replace-one"
        else ""
    )
    text = (
        f"{name}: each user's data, over {fmt(rounds)} rounds, is ({fmt(eps)}, {fmt(delta)})-DP under "
        f"{adjacency} adjacency{other}; mechanism: {claim.get('mechanism')} with noise multiplier "
        f"z = {fmt(_number(claim.get('noise_multiplier')))} at clip C = {fmt(_number(claim.get('clip')))}; "
        f"accountant: {claim.get('epsilon_bound') or 'the project accountant'}; sampling: no amplification "
        f"claimed (accounted for a user in every round); not accounted: {NOT_ACCOUNTED_SHORT} (see above)."
    )
    return {
        "cell": name,
        "dp": True,
        "epsilon": eps,
        "epsilon_replace_one": replace,
        "delta": delta,
        "adjacency": adjacency,
        "rounds": rounds,
        "mechanism": claim.get("mechanism"),
        "accountant": claim.get("epsilon_bound"),
        "text": text,
    }


def _statement(cells: list[dict]) -> dict[str, Any]:
    statements = [cell_statement(c) for c in cells]
    dp = [c for c in cells if c["claim"].get("adjacency")]
    text = (
        "The unit of privacy is one user: everything a user's device contributes. Each cell's guarantee is "
        "stated below for a user who takes part in every round of that cell, from the project's one "
        "accountant (the proven bound of the mechanism used: the grid discrete Gaussian for local DP, the "
        "distributed discrete Gaussian under secure aggregation). No amplification by sampling is claimed: "
        "the server sees who takes part. Adjacency: replace-one (one user's data swapped for another's) where "
        "the server sees identified uploads (local DP), zero-out (one user's data replaced by nothing) under "
        "secure aggregation. Not accounted for in any cell: " + "; ".join(NOT_ACCOUNTED) + "."
    )
    return {
        "unit": "one user (all of a user's data)",
        "adjacency": sorted({f"{c['threat_model']}: {c['claim']['adjacency']}" for c in dp}),
        "epsilon": {c["cell"]: _number(c["claim"]["epsilon"]) for c in dp},
        "delta": sorted({d for c in dp if (d := _number(c["claim"]["delta"])) is not None}, key=str),
        "accountant": "mrff_secure.round.accountant.account_rounds (opacus RDP/PRV; discrete bounds)",
        "sampling": "none claimed: a user in every round",
        "not_accounted": ["the plain and secagg cells (no noise: epsilon is unbounded there)", *NOT_ACCOUNTED],
        "text": text,
        "cells": statements,
    }


def _mechanism(grid: dict[str, Any]) -> dict[str, Any]:
    dp = [c for c in grid["cells"] if c["claim"].get("mechanism")]
    return {
        "clip C": _number(grid.get("clip")),
        "noise multipliers z": sorted({x for c in dp if isinstance(x := _number(c["noise_multiplier"]), float)}),
        "mechanisms": sorted({f"{c['threat_model']}: {c['claim']['mechanism']}" for c in dp}),
        "random number source": sorted({c["claim"].get("noise_source", "") for c in dp}),
        "modulus (bits)": sorted(
            {f"{c['threat_model']}: {c['claim']['modulus_bits']}" for c in dp if c["claim"].get("modulus_bits")}
        ),
        "minimum group size": sorted(
            {f"{c['threat_model']}: {c['claim']['min_group_size']}" for c in dp if c["claim"].get("min_group_size")}
        ),
        "secure sums": "the fast ring sum of the SecAgg+ protocol (bit-identical to the in-memory state machines, "
        "tested); every coordinate, counts included, carries its noise share",
    }


def _bounds(grid: dict[str, Any]) -> list[dict[str, Any]]:
    r1 = grid.get("rules", {}).get("R1", {}).get("cells", {})
    by_name = {c["cell"]: c for c in grid["cells"]}
    rows = []
    for name, body in r1.items():
        claim = by_name.get(name, {}).get("claim", {})
        rows.append(
            {
                "cell": name,
                "adjacency": claim.get("adjacency"),
                "claimed_epsilon": _number(body.get("claimed_epsilon")),
                "epsilon_replace_one": _number(claim.get("epsilon_replace_one")),
                "epsilon_lower_bound": _number(body.get("epsilon_lower_bound")),
                "max_certifiable": _number(body.get("max_certifiable_epsilon", body.get("max_certifiable"))),
                "claimed_mu": _number(body.get("claimed_mu")),
                "mu_lower_bound": _number(body.get("mu_lower_bound")),
                "max_certifiable_mu": _number(body.get("max_certifiable_mu")),
                "canary_epsilon_if_as_claimed": _number(body.get("canary_epsilon_if_as_claimed")),
                "canaries": body.get("canaries"),
                "confidence_per_cell": _number(body.get("confidence_per_test", body.get("confidence_per_cell"))),
                "one_run_second_opinion": _number(
                    (body.get("second_opinions") or {}).get(
                        "one_run_steinke_epsilon", body.get("one_run_second_opinion")
                    )
                ),
                "verdict": body.get("verdict"),
            }
        )
    return rows


def tpr_at_fpr(scores: list[float], included: list[bool], fpr: float) -> float | None:
    """The largest TPR over thresholds whose empirical FPR is <= fpr (None without both classes)."""
    inside = sorted((s for s, i in zip(scores, included) if i), reverse=True)
    outside = sorted((s for s, i in zip(scores, included) if not i), reverse=True)
    if not inside or not outside:
        return None
    allowed = math.floor(fpr * len(outside))
    bar = outside[allowed] if allowed < len(outside) else -math.inf
    return sum(s > bar for s in inside) / len(inside)


def _tpr_interval(tpr: Any, positives: Any) -> list[float] | None:
    """The 95% Clopper-Pearson interval of a TPR measured on `positives` members (None where unknown).
    It covers the members' sampling only: the FPR's own uncertainty (1/n steps) is stated beside it."""
    rate = number(tpr)
    if rate is None or math.isnan(rate) or not isinstance(positives, int) or positives <= 0:
        return None
    from scipy.stats import beta

    hits = round(rate * positives)
    low = 0.0 if hits == 0 else float(beta.ppf(0.025, hits, positives - hits + 1))
    high = 1.0 if hits == positives else float(beta.ppf(0.975, hits + 1, positives - hits))
    return [low, high]


def _low_fpr(cells: list[dict]) -> list[dict[str, Any]]:
    rows = []
    for c in cells:
        canary = c.get("canary") or {}
        if canary.get("scores") and canary.get("included"):
            scores, included = canary["scores"], [bool(i) for i in canary["included"]]
            rows.append(
                {
                    "cell": c["cell"],
                    "attack": "canary",
                    "auc": _number(canary.get("canary_auc")),
                    "tpr_at_0.1%_fpr": tpr_at_fpr(scores, included, 0.001),
                    "tpr_at_1%_fpr": tpr_at_fpr(scores, included, 0.01),
                    "negatives": sum(not i for i in included),
                    "positives": sum(included),
                    "note": "",
                }
            )
        membership = c.get("membership") or {}
        if membership:
            rows.append(
                {
                    "cell": c["cell"],
                    "attack": "interaction MIA",
                    "auc": _number(membership.get("auc")),
                    "tpr_at_0.1%_fpr": _number(membership.get("tpr_at_0.1pct_fpr")),  # when the grid keeps it
                    "tpr_at_1%_fpr": _number(membership.get("tpr_at_1pct_fpr")),
                    "negatives": membership.get("negatives"),
                    "positives": membership.get("positives"),
                    "note": "",
                }
            )
        disaggregation = c.get("disaggregation") or {}
        for part, label in (("all_rows", "disaggregation (all rows)"), ("rare_rows", "disaggregation (rare rows)")):
            body = disaggregation.get(part) if disaggregation.get("applicable") else None
            if not isinstance(body, dict):
                continue
            note = ""
            if body.get("applicable") is False:
                note = f"not computed: no rare rows in this data (values touched by at most {disaggregation.get('rare_users', '?')} users)"
            rows.append(
                {
                    "cell": c["cell"],
                    "attack": label,
                    "auc": _number(body.get("auc")),
                    "tpr_at_0.1%_fpr": _number(body.get("tpr_at_0.1pct_fpr")),
                    "tpr_at_1%_fpr": _number(body.get("tpr_at_1pct_fpr")),
                    "negatives": body.get("negatives"),
                    "positives": body.get("positives"),
                    "note": note,
                }
            )
    for row in rows:
        for key in ("tpr_at_0.1%_fpr", "tpr_at_1%_fpr"):
            row[f"{key}_95"] = _tpr_interval(row.get(key), row.get("positives"))
    for row in rows:
        missing = [k for k in ("auc", "tpr_at_1%_fpr") if row[k] is None]
        if missing and row["note"].startswith("not computed"):
            continue
        if missing and not row["note"]:
            row["note"] = "not computed: the attack had no members or no non-members in this cell"
        elif missing:
            row["note"] += "; not computed where empty: no members or no non-members in this cell"
    return rows


def _terms(grid: dict[str, Any], verdict: dict[str, Any]) -> dict[str, str]:
    terms = dict(TERMS)
    m = grid.get("canaries")
    terms["m (canaries per cell)"] = f"m = {fmt(m)} in this audit: " + terms["m (canaries per cell)"]
    budget = grid.get("rules", {}).get("budget", {})
    alpha = number(budget.get("alpha")) if budget.get("alpha") is not None else None
    family = (1 - alpha) if alpha is not None else grid.get("rules", {}).get("R1", {}).get("family_confidence")
    if family is not None:
        terms["family confidence"] = f"{fmt(number(family))} in this audit: " + terms["family confidence"]
    if verdict.get("alpha") is not None:
        terms["alpha (false-alarm rate)"] = (
            f"alpha = {fmt(number(verdict['alpha']))} over {fmt(verdict.get('tests'))} statistical tests in this "
            "audit: " + terms["alpha (false-alarm rate)"]
        )
    return terms


def _audit_report(folder: Path) -> dict[str, Any]:
    grid = _read_json(folder / "grid.json")
    config = grid.get("config", {"dataset": "synthetic", "users": grid.get("users")})
    cells = grid["cells"]
    plain = next((c for c in cells if c["threat_model"] == "plain"), None)
    verdict = overall_verdict(grid)
    return {
        "verdict": verdict,
        "terms": _terms(grid, verdict),
        "verdicts": _verdicts(grid["rules"]),
        "privacy_statement": _statement(cells),
        "threat_models": [
            {"name": name, "server_saw": SERVER_SAW[name]}
            for name in dict.fromkeys([c["threat_model"] for c in cells] + ["malicious-server"])
        ],
        "mechanism": _mechanism(grid),
        "bounds": _bounds(grid),
        "low_fpr": _low_fpr(cells),
        "attacks": _attack_rows(cells, grid.get("rules", {}).get("R1", {}).get("cells")),
        "power": grid["rules"].get("R0", {}),
        "malicious_server": grid.get("malicious_server"),
        "rules": _json_safe(grid["rules"]),
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


def _json_safe(value: Any) -> Any:
    """NaN to None and infinities to "inf" strings, through dicts and lists (report.json has no NaN)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float):
        return _number(value)
    return value


def _threat_model(dp_mode: str, secure_aggregation: bool) -> ThreatModel:
    """round.spec.ThreatModel of a run's modes (imported here: round.spec brings in the accountant's torch and
    opacus, which an audit's report does not need)."""
    from mrff_secure.round.spec import ThreatModel

    return ThreatModel.of_modes(dp_mode=dp_mode, secure_aggregation=secure_aggregation)


def _plot_files(folder: Path) -> list[str]:
    """The PNG plots a training or network run wrote (operator-only/ included), relative to its folder."""
    return [p for p in ("training.png", "operator-only/training.png") if (folder / p).is_file()]


def _run_verdict(
    *,
    what: str,
    epsilon: Any,
    delta: Any,
    match: dict[str, Any] | None,
    broken: str | None = None,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    """A run's overall verdict: fails when its audit log is broken; else the verdict of the audit of the same
    privacy configuration when one is given and matches; else no claim tested ("not audited")."""
    claim = f"this {what}'s epsilon {fmt(number(epsilon))} at delta {fmt(number(delta))} is the accountant's claim"
    base: dict[str, Any] = {
        "alpha": None,
        "tests": 0,
        "problems": [],
        "not_tested": [],
        "warnings": list(warnings or []),
        "source": "the run folder",
    }
    if broken is not None:
        return {
            **base,
            "verdict": FAILS,
            "exit_code": 3,
            "headline": f"This {what}'s audit log does not verify: {broken}",
            "problems": [
                {
                    "rule": "audit-log",
                    "cell": "the run's audit.jsonl",
                    "what": broken,
                    "next": "do not trust this run's records; compare with the server's own copy and its signing key",
                }
            ],
        }
    if match is not None and match.get("audited"):
        return {
            **base,
            "verdict": match["verdict"],
            "exit_code": 0 if match["verdict"] in ("holds", NO_CLAIM) else 3,
            "headline": f"Audited: {claim}, and {match['text']}.",
        }
    eps = number(epsilon)
    if eps is None or math.isinf(eps):
        return {
            **base,
            "verdict": NO_CLAIM,
            "exit_code": 0,
            "headline": f"No privacy claim: this {what}'s epsilon is unbounded (∞), so there is nothing to test.",
        }
    why = match["text"] if match is not None else "no audit was given"
    return {
        **base,
        "verdict": NO_CLAIM,
        "exit_code": 0,
        "headline": f"Not audited: {claim}, untested by attacks ({why}).",
        "not_tested": [
            "the run's privacy claim: only an audit (`mrff audit`) of the same privacy configuration tests it"
        ],
    }


def _training_report(folder: Path, audit_dir: Path | None = None) -> dict[str, Any]:
    summary = _read_json(folder / "summary.json")
    privacy = summary.get("privacy", {})
    secure = privacy.get("secure_aggregation", "off") not in ("off", None, False)
    model = _threat_model(privacy.get("mode", "off"), secure)
    eps, delta = _number(privacy.get("epsilon", "inf")), _number(privacy.get("delta"))
    rounds = privacy.get("rounds_accounted", summary.get("rounds_run"))
    release = privacy.get("release") or {}
    replace = _number(privacy.get("epsilon_replace_one"))
    other = (
        f" (under replace-one adjacency, one user's data swapped for another's: epsilon {fmt(replace)})"
        if replace is not None and privacy.get("adjacency") != "replace-one"
        else ""
    )
    dp = privacy.get("mode", "off") != "off"
    outside = summary.get("outputs", {}).get("outside_the_guarantee", {})
    not_accounted = [f"{name}: {why}" for name, why in outside.items()] + list(privacy.get("notes", []))
    match = audit_match(folder, audit_dir) if audit_dir is not None else None
    text = (
        f"{model} training run: each user's data, over {fmt(rounds)} rounds, is ({fmt(eps)}, {fmt(delta)})-DP "
        f"under {privacy.get('adjacency')} adjacency{other}; mechanism: {privacy.get('mechanism')} with noise "
        f"multiplier z = {fmt(_number(privacy.get('noise_multiplier')))} at clip C = "
        f"{fmt(_number(privacy.get('clip')))}; accountant: {privacy.get('epsilon_bound')}; sampling: "
        f"{privacy.get('sampling')}."
        if dp
        else f"{model} training run: no DP: epsilon is unbounded (∞)."
    )
    mechanism = {
        "threat model": model,
        "dp mode": privacy.get("mode", "off"),
        "mechanism": privacy.get("mechanism") if dp else "none (no noise)",
        "clip C": _number(privacy.get("clip")),
        "noise multiplier z": _number(privacy.get("noise_multiplier")),
        "noise multiplier as accounted (summary.json privacy.accounted_noise_multiplier)": _number(
            privacy.get("accounted_noise_multiplier")
        ),
        "rounds (accounted)": rounds,
        "secure aggregation": {
            "fast": "fast: the simulation's ring sum of the SecAgg+ protocol (bit-identical to its state machines)",
            "inmemory": "inmemory: the SecAgg+ state machines, in one process",
        }.get(str(privacy.get("secure_aggregation")), privacy.get("secure_aggregation", "off")),
        "k, t (neighbours, threshold)": "not applicable: the simulation's fast ring sum has no neighbour graph"
        if secure
        else "not applicable: no secure aggregation",
        "modulus (bits)": privacy.get("modulus_bits") if secure else "not applicable",
        "minimum group size": privacy.get("min_group_size"),
        "noise shares sized for (survivors)": release.get("n_min"),
        "max dropout fraction": _number(privacy.get("max_dropout_fraction")),
        "count cap": release.get("count_cap"),
        "noise sampling": privacy.get("noise_sampling"),
        "random number source": privacy.get("noise_source"),
        "clip choice": privacy.get("clip_choice"),
        "delta": delta,
        "delta source": privacy.get("delta_source"),
    }
    return {
        "verdict": _run_verdict(
            what="training run", epsilon=eps, delta=delta, match=match, warnings=privacy.get("warnings", [])
        ),
        "terms": {
            k: v for k, v in TERMS.items() if k in ("epsilon, delta", "zero-out adjacency", "replace-one adjacency")
        },
        "verdicts": [
            {
                "claim": "the run's epsilon",
                "rule": "accounted",
                "verdict": match["verdict"] if match is not None and match.get("audited") else "not audited",
                "evidence": f"epsilon {fmt(eps)} ({'private' if privacy.get('private') else 'NOT private'})"
                + (f"; {match['text']}" if match is not None else ""),
            }
        ],
        "privacy_statement": {
            "unit": "one user (all of a user's data)",
            "adjacency": [f"{model}: {privacy.get('adjacency')}"],
            "epsilon": {"run": eps},
            "delta": [delta],
            "accountant": privacy.get("epsilon_bound"),
            "sampling": privacy.get("sampling"),
            "not_accounted": not_accounted,
            "text": text,
            "cells": [],
        },
        "threat_models": [{"name": model, "server_saw": SERVER_SAW[model]}],
        "mechanism": mechanism,
        "audit_match": match or {"audited": False, "verdict": "not audited", "text": "not audited: no audit given"},
        "outside_the_guarantee": not_accounted,
        "warnings": list(privacy.get("warnings", [])),
        "attacks": [],
        "power": {"applicable": False, "reason": "no attacks were run on a training run"},
        "rules": {},
        "malicious_server": None,
        "utility": [],
        "network": {"applicable": False, "reason": "a simulation run"},
        "run_plots": _plot_files(folder),
        "reproducibility": {
            "commit": source_commit(),
            "config": summary.get("config"),
            "versions": _versions(),
            "seeds": [summary.get("config", {}).get("federation", {}).get("seed")],
        },
    }


def _network_report(
    folder: Path, audit_public_key: Ed25519PublicKey | None = None, audit_dir: Path | None = None
) -> dict[str, Any]:
    log = folder / "audit.jsonl"
    check = verify(log, audit_public_key)
    records = read_records(log) if log.is_file() else []
    started = next((r for r in records if r.get("type") == "run_started"), {})
    rounds = [r for r in records if r.get("type") in ("round", "round_aborted")]
    per_round = []
    released_evaluations, exact_evaluations = 0, 0
    last_ledger: dict[str, Any] = {}
    for r in rounds:
        wire = r.get("wire_bytes", {})
        n = max(1, len(r.get("participants", [])))
        ledger = r.get("epsilon")
        if isinstance(ledger, dict):
            last_ledger = ledger
        evaluation = r.get("evaluation") or {}
        row = {
            "round": r.get("round"),
            "completed": r.get("type") == "round",
            "participants": n,
            "bytes_from_devices_per_participant": round(wire.get("received", 0) / n),
            "bytes_to_devices_per_participant": round(wire.get("sent", 0) / n),
            "epsilon": _number(ledger.get("epsilon") if isinstance(ledger, dict) else ledger),
        }
        if evaluation:  # the federated evaluation of this round: a release in the ledger when available
            row["evaluation"] = (
                "failed: nothing released"
                if not evaluation.get("available")
                else f"released in epsilon (noise std {fmt(number(evaluation.get('noise_std', 0)))})"
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
    settings, spec = started.get("settings", {}), started.get("spec", {})
    dp_mode = spec.get("dp_mode", "off")
    secure = bool(settings.get("secure", True))
    network_model = _threat_model(dp_mode, secure)
    delta = _number(last_ledger.get("delta", settings.get("dp_delta")))
    adjacency = last_ledger.get("adjacency", "zero-out")
    completed = sum(r["completed"] for r in per_round)
    match = audit_match(folder, audit_dir) if audit_dir is not None else None
    not_accounted = [
        "who took part in each round (the server sees every participant list)",
        "the choice of the clip bound C (stated by the operator)",
    ]
    if exact_evaluations:
        not_accounted.append(
            f"{exact_evaluations} exact federated evaluation(s) (DP off): held-out score histograms without noise"
        )
    if dp_mode == "off":
        not_accounted.insert(0, "everything: DP is off, so the sums are released without noise (epsilon ∞)")
    broken = None if check.ok else str(check.problem)
    mechanism = {
        "threat model": network_model,
        "dp mode": dp_mode,
        "mechanism": spec.get("mechanism") if dp_mode != "off" else "none (no noise)",
        "clip C": _number(spec.get("clip")),
        "noise multiplier z": _number(spec.get("noise_multiplier")) if dp_mode != "off" else None,
        "rounds (planned)": settings.get("rounds"),
        "rounds completed": completed,
        "secure aggregation": "SecAgg+ over gRPC" if secure else "off: the server sees each update",
        "k (neighbours)": settings.get("num_neighbours")
        if settings.get("num_neighbours") is not None
        else "chosen per round (the smallest k that keeps a split view below 2^-40)",
        "t (threshold)": settings.get("threshold")
        if settings.get("threshold") is not None
        else "chosen per round with k",
        "modulus (bits)": spec.get("modulus_bits"),
        "minimum group size": spec.get("min_group_size"),
        "noise shares sized for (survivors)": spec.get("min_survivors") if dp_mode == "distributed" else None,
        "max dropout fraction": _number(settings.get("max_dropout_fraction")),
        "colluding neighbours tolerated": settings.get("corrupt_neighbours"),
        "count cap": spec.get("count_cap"),
        "minimum clients per round": settings.get("min_clients"),
        "client fraction": _number(settings.get("client_fraction")),
        "delta": delta,
    }
    log_verdict = "not audited" if audit_public_key is None and check.ok else "holds" if check.ok else "fails"
    verdicts = [
        {
            "claim": "the audit log is intact and signed by the server through the end of the run",
            "rule": "audit-log",
            "verdict": log_verdict,
            "evidence": f"{check.records} records"
            + (
                ": chain intact; signatures NOT checked (give `mrff report --signing-pub`)"
                if audit_public_key is None and check.ok
                else ""
                if check.ok
                else f": {check.problem}"
            ),
        },
        {
            "claim": "the run's epsilon",
            "rule": "accounted",
            "verdict": match["verdict"] if match is not None and match.get("audited") else "not audited",
            "evidence": f"epsilon {fmt(last_eps)} at delta {fmt(delta)}"
            + (f"; {match['text']}" if match is not None else "; no audit given"),
        },
    ]
    replace = _number(last_ledger.get("epsilon_replace_one"))
    other = (
        f" (under replace-one adjacency, one user's data swapped for another's: epsilon {fmt(replace)})"
        if replace is not None and adjacency != "replace-one"
        else ""
    )
    text = (
        f"{network_model} network run: each user's data, over the {completed} completed round(s), is "
        f"({fmt(last_eps)}, {fmt(delta)})-DP under {adjacency} adjacency{other}; mechanism: the distributed "
        f"{spec.get('mechanism')} with noise multiplier z = {fmt(_number(spec.get('noise_multiplier')))} at clip "
        f"C = {fmt(_number(spec.get('clip')))}; accountant: the coordinator's ledger, "
        f"{last_ledger.get('bound', 'its bound not recorded')}{evaluations_text}. Not accounted: "
        f"{'; '.join(not_accounted)}."
        if dp_mode != "off"
        else f"{network_model} network run: no DP: epsilon is unbounded (∞){evaluations_text}."
    )
    return {
        "verdict": _run_verdict(
            what="network run",
            epsilon=last_eps,
            delta=delta,
            match=match,
            broken=broken,
            warnings=list(last_ledger.get("warnings", [])),
        ),
        "terms": {
            k: v for k, v in TERMS.items() if k in ("epsilon, delta", "zero-out adjacency", "replace-one adjacency")
        },
        "verdicts": verdicts,
        "privacy_statement": {
            "unit": "one user",
            "epsilon": {"run": last_eps},
            "delta": [delta],
            "adjacency": [f"{network_model}: {adjacency}"],
            "accountant": "the coordinator's ledger",
            "sampling": "none claimed: a user in every round",
            "not_accounted": not_accounted,
            "text": text,
            "cells": [],
        },
        "threat_models": [{"name": network_model, "server_saw": SERVER_SAW[network_model]}],
        "mechanism": mechanism,
        "audit_match": match or {"audited": False, "verdict": "not audited", "text": "not audited: no audit given"},
        "outside_the_guarantee": not_accounted,
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
        "run_plots": _plot_files(folder),
        "reproducibility": {
            "commit": source_commit(),
            "settings": settings,
            "round_parameters": spec,
            "config_digest": started.get("config_digest"),
            "model_digest": started.get("model_digest"),
            "run_id": started.get("run_id"),
            "versions": _versions(),
        },
    }


def build_report(
    folder: Path, *, audit_public_key: Ed25519PublicKey | None = None, audit_dir: Path | None = None
) -> dict[str, Any]:
    """The report of an audit folder (grid.json), a network run (audit.jsonl; its signatures checked under
    `audit_public_key`, the server's signing public key, when given) or a training run (summary.json).
    `audit_dir`: for a network or training run, an audit folder whose cell of the same privacy configuration
    the report cites (report.match.audit_match); without it the run is "not audited"."""
    folder = Path(folder)
    if (folder / "grid.json").is_file():
        kind, body = "audit", _audit_report(folder)
    elif (folder / "audit.jsonl").is_file():
        kind, body = "network", _network_report(folder, audit_public_key, audit_dir)
    elif (folder / "summary.json").is_file():
        kind, body = "training", _training_report(folder, audit_dir)
    else:
        raise ConfigError(
            f"{folder} holds no grid.json (mrff audit), audit.jsonl (mrff server) or summary.json "
            "(mrff train): nothing to report on"
        )
    verdict = body.pop("verdict")
    return {
        "schema": REPORT_SCHEMA,
        "kind": kind,
        "source": str(folder),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "verdict": verdict,
        **body,
    }

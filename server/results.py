"""A network run's results, in the files `mrff train` writes: metrics.jsonl, metrics.csv, summary.json,
training.png.

Everything here is derived from the run's audit log (`mrff_secure/audit_log.py`), so it says exactly what the
server saw and released, nothing more:

RUN_DIR/metrics.jsonl  one line per round: completed or aborted, participants, survivors of each
                       phase, dropouts (per phase, and `dropped`: the distinct clients that dropped out in
                       any phase), seconds, the group counts the server decoded (noisy under DP:
                       covered by the epsilon), the epsilon spent so far with its delta and adjacency
                       (the federated evaluations released so far included: `evaluations_accounted`),
                       and the bytes on the wire per participant
RUN_DIR/metrics.csv    the same rows as CSV for plotting, lists left out (mrff_secure/metrics_csv.py)
RUN_DIR/summary.json   rounds planned / completed / aborted, whether the run finished, the final model
                       digest, participants per round (min / median / max) and dropouts (in all, most in a
                       round), the round parameters, the privacy account of the last completed round (the
                       mechanism actually used), and the evaluation available (`mrff server` prints it with
                       mrff_secure/run_summary.py's format_run_summary)
RUN_DIR/training.png   epsilon, survivors and seconds per round

Evaluation is federated (federation/evaluation_sum.py), only in the rounds the operator asked for
(`--federated-eval-every`, at most `--max-evaluations`): each update survivor scores its own held-out
validation and test items with the model the round started from (after the previous round) and its
private part, and the secure sum of their score histograms by label, log-losses and counts, under the
round's distributed DP noise, gives the server a noisy binned AUC and mean LogLoss. Each released
evaluation is stepped into the ledger, so every epsilon here includes it (`evaluations_accounted`).
The metrics row of round r carries them (`val_auc`, ..., `evaluated_after_round`: the last completed round
before r, which aborted rounds' ids may separate from it, -1 for the starting model; `evaluation_clients`, `evaluation_noise_std`, `evaluation_in_epsilon`); the summary's `best` is the row
with the best validation AUC. With DP off the evaluation is exact and outside any guarantee, and both
files say so (`outside_the_guarantee`).

With `--final-evaluation` the server evaluates the final model once more after the last round (the audit log's
`final_evaluation` record): summary.json's `final_evaluation` gives its AUC and LogLoss, or why there is none
(not released, every client kept its scores out, or the server stopped first); the summary's privacy account
then includes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mrff_secure.atomic import write_bytes_atomic, write_json_atomic
from mrff_secure.metrics_csv import write_metrics_csv
from mrff_secure.run_summary import spread

ROUND_TYPES = ("round", "round_aborted")
NO_EVALUATION = "no round of this run completed a federated evaluation"


def _dropped(record: dict[str, Any]) -> int:
    """The distinct clients that dropped out of the round in any phase."""
    return len(
        {
            client
            for phase in record.get("phases", {}).values()
            for stage in phase.get("dropouts", {}).values()
            for client in stage
        }
    )


def _phase_rows(record: dict[str, Any]) -> dict[str, Any]:
    phases = record.get("phases", {})
    out: dict[str, Any] = {}
    for name, phase in phases.items():
        dropouts = sorted({c for stage in phase.get("dropouts", {}).values() for c in stage})
        out[name] = {"survivors": len(phase.get("survivors", [])), "dropouts": len(dropouts)}
    return out


def metrics_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    last_epsilon: dict[str, Any] | None = None
    last_completed = -1  # the round whose model the next round starts from
    for record in records:
        if record.get("type") not in ROUND_TYPES:
            continue
        completed = record["type"] == "round"
        if completed and isinstance(record.get("epsilon"), dict):
            last_epsilon = record["epsilon"]
        wire = record.get("wire_bytes", {})
        row: dict[str, Any] = {
            "round": record.get("round"),
            "completed": completed,
            "participants": len(record.get("participants", [])),
            "dropped": _dropped(record),
            "phases": _phase_rows(record),
            "seconds": record.get("seconds"),
            "bytes_per_participant": wire.get("per_participant"),
            "epsilon": (last_epsilon or {}).get("epsilon", "inf"),
            "delta": (last_epsilon or {}).get("delta"),
            "adjacency": (last_epsilon or {}).get("adjacency"),
            "evaluations_accounted": (last_epsilon or {}).get("evaluations_accounted", 0),
        }
        if completed:
            row["group_counts_seen_by_server"] = record.get("group_counts")
            row.update(_evaluation_row(record, last_completed))
            last_completed = record["round"]
        else:
            row["reason"] = record.get("reason")
        rows.append(row)
    return rows


def _evaluation_row(record: dict[str, Any], evaluated_after: int) -> dict[str, Any]:
    evaluation = record.get("evaluation")
    if not evaluation:
        return {}
    if not evaluation.get("available"):
        return {"evaluation_failed": evaluation.get("reason")}
    return {
        "val_auc": evaluation["val"]["auc"],
        "val_logloss": evaluation["val"]["log_loss"],
        "test_auc": evaluation["test"]["auc"],
        "test_logloss": evaluation["test"]["log_loss"],
        "evaluation_clients": evaluation.get("clients"),
        "evaluated_after_round": evaluated_after,
        "evaluated_model": evaluation.get("evaluated_model"),
        "evaluation_noise_std": evaluation.get("noise_std"),
        "evaluation_in_epsilon": bool(evaluation.get("in_epsilon")),
    }


def evaluation_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The best evaluated row on validation AUC, and what the evaluation is (in the run's epsilon, or exact)."""
    from mrff_secure.federation.evaluation_sum import BINS, IN_THE_GUARANTEE, OUTSIDE_THE_GUARANTEE

    evaluated = [r for r in rows if r.get("val_auc") is not None or r.get("evaluation_clients") is not None]
    if not evaluated:
        return {"available": False, "reason": NO_EVALUATION}
    scored = [r for r in evaluated if r.get("val_auc") is not None]
    best = max(scored, key=lambda r: r["val_auc"]) if scored else evaluated[-1]
    keys = (
        "val_auc",
        "val_logloss",
        "test_auc",
        "test_logloss",
        "evaluation_clients",
        "evaluated_after_round",
        "evaluated_model",
        "evaluation_noise_std",
    )
    out: dict[str, Any] = {
        "available": True,
        "kind": f"federated: secure sum of held-out score histograms ({BINS} bins per label), noisy under DP",
        "rounds_evaluated": len(evaluated),
        "best": {"round": best["round"], **{k: best.get(k) for k in keys}},
        "guarantee": IN_THE_GUARANTEE,
    }
    if not all(r.get("evaluation_in_epsilon") for r in evaluated):
        out["guarantee"] = OUTSIDE_THE_GUARANTEE
        out["outside_the_guarantee"] = OUTSIDE_THE_GUARANTEE
    return out


def summary_of(records: list[dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, Any]:
    started = next((r for r in records if r.get("type") == "run_started"), {})
    finished = next((r for r in records if r.get("type") == "run_finished"), None)
    completed = [r for r in records if r.get("type") == "round"]
    final = next((r for r in records if r.get("type") == "final_evaluation"), None)
    planned = started.get("settings", {}).get("rounds")
    accounted = [r for r in records if r.get("type") in ("round", "final_evaluation")]  # the last account
    privacy = (
        dict(accounted[-1]["epsilon"])
        if completed and isinstance(accounted[-1].get("epsilon"), dict)
        else {"epsilon": "inf", "note": "no completed round"}
    )
    spec = started.get("spec", {})
    privacy.update(
        mode=spec.get("dp_mode"),
        mechanism=spec.get("mechanism") if spec.get("dp_mode") != "off" else None,
        noise_multiplier=spec.get("noise_multiplier"),
        clip=spec.get("clip"),
        private=spec.get("dp_mode") not in (None, "off") and privacy.get("epsilon") != "inf",
    )
    return {
        "kind": "network",
        "run_id": started.get("run_id"),
        "rounds": planned,
        "rounds_completed": len(completed),
        "rounds_aborted": sum(not r["completed"] for r in rows),
        "finished": finished is not None,
        "model_digest": (finished or (completed[-1] if completed else {})).get("model_digest"),
        "participants_per_round": spread([r["participants"] for r in rows]),
        "dropped": {
            "total": sum(r.get("dropped", 0) for r in rows),
            "max_per_round": max((r.get("dropped", 0) for r in rows), default=0),
        },
        "round_parameters": spec,
        "settings": started.get("settings", {}),
        "privacy": privacy,
        "evaluation": evaluation_summary(rows),
        "final_evaluation": final_evaluation_summary(final, started.get("settings", {})),
    }


def final_evaluation_summary(record: dict[str, Any] | None, settings: dict[str, Any]) -> dict[str, Any]:
    """The final model's federated evaluation (`--final-evaluation`), or why there is none."""
    if record is None:
        reason = (
            "the server stopped before it" if settings.get("final_evaluation") else "not asked (--final-evaluation)"
        )
        return {"available": False, "reason": reason}
    evaluation = record.get("evaluation") or {}
    if not evaluation.get("available"):
        return {"available": False, "reason": evaluation.get("reason"), "evaluated_model": record.get("model_digest")}
    out: dict[str, Any] = {
        "available": True,
        "round": record.get("round"),
        "evaluated_model": evaluation.get("evaluated_model"),
        "participants": len(record.get("participants", [])),
        "clients": evaluation.get("clients"),
        "val_auc": evaluation["val"]["auc"],
        "val_logloss": evaluation["val"]["log_loss"],
        "test_auc": evaluation["test"]["auc"],
        "test_logloss": evaluation["test"]["log_loss"],
        "noise_std": evaluation.get("noise_std"),
        "in_epsilon": bool(evaluation.get("in_epsilon")),
        "guarantee": evaluation.get("guarantee"),
    }
    if not evaluation.get("clients"):
        out["refused"] = "every client kept its scores out (its policy or its epsilon budget): they sent zeros"
    if evaluation.get("outside_the_guarantee"):
        out["outside_the_guarantee"] = evaluation["outside_the_guarantee"]
    return out


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in rows]
    epsilon = [float(r["epsilon"]) if r["epsilon"] not in (None, "inf") else float("nan") for r in rows]
    survivors = [r["phases"].get("update", {}).get("survivors", 0) if r["completed"] else 0 for r in rows]
    seconds = [r["seconds"] or 0.0 for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    axes[0].plot(rounds, epsilon, marker="o")
    axes[0].set_title("epsilon spent (inf: not drawn)")
    axes[1].bar(rounds, survivors)
    axes[1].set_title("survivors of the update phase")
    axes[2].plot(rounds, seconds, marker="o")
    axes[2].set_title("seconds per round")
    for ax in axes:
        ax.set_xlabel("round")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())


def write_results(run_dir: Path) -> dict[str, Any]:
    """metrics.jsonl, metrics.csv, summary.json and training.png of the run in `run_dir`, from its audit log
    (each rewritten whole, atomically: a resumed run's files hold every round once)."""
    from mrff_secure.audit_log import read_records

    run_dir = Path(run_dir)
    records = read_records(run_dir / "audit.jsonl")
    rows = metrics_rows(records)
    write_bytes_atomic(run_dir / "metrics.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())
    write_metrics_csv(run_dir / "metrics.csv", rows)
    summary = summary_of(records, rows)
    write_json_atomic(run_dir / "summary.json", summary)
    if rows:
        plot(rows, run_dir / "training.png")
    return summary

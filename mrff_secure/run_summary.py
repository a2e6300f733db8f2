"""The end-of-run summary table that `mrff train` and `mrff server` print, and the one epsilon format.

`format_run_summary(summary)` reads the summary.json of either kind of run: a training run's (with, when
`run_training` returned it, its operator-only evaluation under "operator-only") or a network run's
(`"kind": "network"`, server/results.py). Plain text, aligned columns, no colour codes.

`format_epsilon` is how every command prints an epsilon: two decimals rounded up (a bound is never
printed below itself), "inf" for no guarantee.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any

OPERATOR_ONLY = "operator-only"  # the key under which run_training returns the operator's evaluation
NOT_EVALUATED = "not evaluated"


def format_epsilon(value: Any) -> str:
    """An epsilon with two decimals, rounded up (7.9996 -> "8.00", 8.7771 -> "8.78"); "inf" for None, "inf"
    or an infinite value (no guarantee); "nan" for NaN. Accepts a number or its JSON form (a string)."""
    if value is None:
        return "inf"
    number = float(value)
    if math.isnan(number):
        return "nan"
    if math.isinf(number):
        return "inf"
    # Decimal of the shortest repr: 1.1 stays 1.10, where ceil(1.1 * 100) / 100 would give 1.11
    return f"{Decimal(repr(number)).quantize(Decimal('0.01'), rounding=ROUND_CEILING):f}"


def format_delta(value: Any) -> str:
    """A delta to three significant digits ("1e-05", "0.00137")."""
    return f"{float(value):.3g}"


def spread(values: Sequence[float]) -> dict[str, float] | None:
    """min, median and max of `values` (JSON-ready), None when there are none."""
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _metric(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.4f}"


def _guarantee(privacy: Mapping[str, Any]) -> str:
    epsilon = privacy.get("epsilon")
    if not privacy.get("private"):
        what = "no DP" if privacy.get("mode") in (None, "off") else "no DP guarantee"
        return f"NOT PRIVATE: {what} (epsilon {format_epsilon(epsilon)})"
    details = ", ".join(str(privacy[k]) for k in ("adjacency", "mechanism") if privacy.get(k))
    text = f"epsilon {format_epsilon(epsilon)} at delta {format_delta(privacy['delta'])}"
    if details:
        text += f" ({details})"
    if privacy.get("target_epsilon") is not None:
        text += f"; target {format_epsilon(privacy['target_epsilon'])}"
    return text


def _participants(stats: Mapping[str, Any] | None, what: str) -> str:
    if not stats:
        return "n/a"
    return f"min {_number(stats['min'])}, median {_number(stats['median'])}, max {_number(stats['max'])} ({what})"


def _training_lines(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    rounds_run, planned = summary.get("rounds_run"), summary.get("rounds")
    rounds = f"{rounds_run} of {planned} completed"
    if summary.get("stopped_early"):
        rounds += " (stopped early: validation AUC no longer improving)"
    lines = [
        ("rounds", rounds),
        ("participants/round", _participants(summary.get("participants_per_round"), "sampled clients")),
        ("privacy", _guarantee(summary.get("privacy", {}))),
    ]
    evaluation = summary.get(OPERATOR_ONLY)
    if evaluation is None:
        where = f"not in summary.json: see {OPERATOR_ONLY}/evaluation.json"
        return lines + [("best validation", where), ("test", where)]
    if evaluation.get("best_round") is None:
        return lines + [("best validation", NOT_EVALUATED), ("test", NOT_EVALUATED)]
    round_ = evaluation["best_round"]
    interval = evaluation.get("test_auc_ci95") or [None, None]
    ci = f" (95% CI {_metric(interval[0])}-{_metric(interval[1])})" if None not in interval else ""
    return lines + [
        ("best validation", f"AUC {_metric(evaluation.get('val_auc'))} at round {round_} (operator only)"),
        (
            "test",
            f"AUC {_metric(evaluation.get('test_auc'))}{ci}, LogLoss {_metric(evaluation.get('test_logloss'))} "
            f"at round {round_} (operator only)",
        ),
    ]


def _network_lines(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    rounds = f"{summary.get('rounds_completed')} of {summary.get('rounds')} completed"
    rounds += f", {summary.get('rounds_aborted', 0)} aborted"
    if not summary.get("finished"):
        rounds += "; run NOT FINISHED"
    dropped = summary.get("dropped")
    lines = [
        ("rounds", rounds),
        ("participants/round", _participants(summary.get("participants_per_round"), "clients starting a round")),
        (
            "dropped",
            "n/a" if dropped is None else f"{dropped['total']} in all, at most {dropped['max_per_round']} in a round",
        ),
        ("privacy", _guarantee(summary.get("privacy", {}))),
    ]
    evaluation = summary.get("evaluation") or {}
    best = evaluation.get("best") if evaluation.get("available") else None
    final = _final_model_line(summary)
    if not best:
        return lines + [("best validation", NOT_EVALUATED), ("test", NOT_EVALUATED)] + final
    after = best.get("evaluated_after_round")
    noisy = "noisy under DP" if summary.get("privacy", {}).get("private") else "exact"
    what = f"federated, {noisy}, {evaluation.get('rounds_evaluated', 1)} evaluated"
    if after is not None:
        what += f"; the model after round {after}"
    return (
        lines
        + [
            (
                "best validation",
                f"AUC {_metric(best.get('val_auc'))}, LogLoss {_metric(best.get('val_logloss'))} at round "
                f"{best['round']} ({what})",
            ),
            (
                "test",
                f"AUC {_metric(best.get('test_auc'))}, LogLoss {_metric(best.get('test_logloss'))} at round {best['round']}",
            ),
        ]
        + final
    )


def _final_model_line(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The final model's evaluation (`--final-evaluation`) as one line, or why there is none; nothing when it
    was not asked for."""
    final = summary.get("final_evaluation") or {}
    if not final:
        return []
    if not final.get("available"):
        reason = str(final.get("reason") or "no evaluation")
        return [] if reason.startswith("not asked") else [("final model", f"not evaluated: {reason}")]
    if final.get("refused"):
        return [("final model", f"not evaluated: {final['refused']}")]
    noisy = "noisy under DP" if final.get("in_epsilon") else "exact"
    return [
        (
            "final model",
            f"validation AUC {_metric(final.get('val_auc'))}, LogLoss {_metric(final.get('val_logloss'))}; test AUC "
            f"{_metric(final.get('test_auc'))}, LogLoss {_metric(final.get('test_logloss'))} (federated, {noisy}, "
            f"{final.get('clients')} of {final.get('participants')} clients scored)",
        )
    ]


def format_run_summary(summary: Mapping[str, Any], run_dir: str | Path | None = None) -> str:
    """The end-of-run table of a run's summary (summary.json of `mrff train` or of `mrff server`)."""
    network = summary.get("kind") == "network"
    lines = _network_lines(summary) if network else _training_lines(summary)
    if run_dir is not None:
        lines.append(("run folder", str(run_dir)))
    width = max(len(label) for label, _ in lines)
    title = "network run summary" if network else "training run summary"
    return "\n".join([title] + [f"  {label.ljust(width)}  {value}" for label, value in lines])

"""The report's tables, each a pandas DataFrame taken from report.json, with one number format, so that
report.json, report.md and report.html cannot disagree."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

ATTACK_COLUMNS = {
    "cell": "cell",
    "claimed_epsilon": "claimed epsilon",
    "epsilon_lower_bound": "canary lower bound (95%)",
    "reconstruction_f1": "reconstruction F1",
    "reconstruction_auc": "reconstruction AUC",
    "membership_auc": "IMIA AUC",
    "attribute_advantage": "attributes: acc - majority",
    "group_advantage": "groups: acc - majority",
    "canary_auc": "canary AUC",
    "disaggregation_rare_auc": "disaggregation AUC (rare rows)",
}


def fmt(value: Any) -> str:
    """The one number format of every rendering: 4 significant digits; text as it is; '-' for none."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        if isinstance(value, float) and math.isnan(value):
            return "nan"
        if isinstance(value, float) and math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.4g}"
    return str(value)


def grid_frame(report: dict[str, Any]) -> pd.DataFrame:
    """The grid's results, one row per cell: the DataFrame every attack table is cut from."""
    frame = pd.DataFrame(report.get("attacks", []))
    utility = pd.DataFrame(report.get("utility", []))
    if not frame.empty and not utility.empty:
        frame = frame.merge(utility[["cell", "test_auc"]], on="cell", how="left")
    return frame


def verdict_table(report: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(report["verdicts"], columns=["rule", "claim", "verdict", "evidence"])


def attack_table(report: dict[str, Any]) -> pd.DataFrame:
    """Scores with their standard errors ("0.8791 +- 0.0123"), one row per cell."""
    frame = grid_frame(report)
    if frame.empty:
        return pd.DataFrame(columns=list(ATTACK_COLUMNS.values()))
    out = pd.DataFrame()
    for key, label in ATTACK_COLUMNS.items():
        if key not in frame:
            continue
        se = frame.get(f"{key}_se")
        if se is None:
            out[label] = [fmt(v) for v in frame[key]]
        else:
            out[label] = [
                fmt(v) if e is None or (isinstance(e, float) and math.isnan(e)) else f"{fmt(v)} +- {fmt(e)}"
                for v, e in zip(frame[key].where(frame[key].notna(), None), se.where(se.notna(), None))
            ]
    return out


def utility_table(report: dict[str, Any]) -> pd.DataFrame:
    frame = grid_frame(report)
    if frame.empty or "test_auc" not in frame:
        return pd.DataFrame(columns=["cell", "noise multiplier", "test AUC (operator only)"])
    return pd.DataFrame(
        {
            "cell": frame["cell"],
            "noise multiplier": [fmt(v) for v in frame["noise_multiplier"]],
            "test AUC (operator only)": [fmt(v) for v in frame["test_auc"]],
        }
    )


def network_table(report: dict[str, Any]) -> pd.DataFrame:
    rows = report.get("network", {}).get("rounds", [])
    return pd.DataFrame([{k: fmt(v) for k, v in row.items()} for row in rows])


def to_markdown(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_(none)_\n"
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(fmt(v).replace("|", "\\|") for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def to_html(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "<p><em>(none)</em></p>"
    return frame.map(fmt).to_html(index=False, escape=True, border=0, classes="table")

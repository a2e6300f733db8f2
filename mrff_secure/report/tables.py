"""The report's tables, each a pandas DataFrame taken from report.json, with one number format, so that
report.json, report.md and report.html cannot disagree."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

ATTACK_COLUMNS = {
    "cell": "cell",
    "claimed_epsilon": "claimed epsilon",
    "epsilon_lower_bound": "canary epsilon lower bound (R1)",
    "reconstruction_f1": "reconstruction F1",
    "reconstruction_auc": "reconstruction AUC",
    "membership_auc": "IMIA AUC",
    "attribute_advantage": "attributes: acc - majority",
    "group_advantage": "groups: acc - majority",
    "canary_auc": "canary AUC",
    "disaggregation_rare_auc": "disaggregation AUC (rare rows)",
}


NOT_COMPUTED = "not computed"
NOT_APPLICABLE = "n/a"


def number(value: Any) -> float | None:
    """A number of report.json as a float (the grid writes infinities and NaN as the strings "inf", "nan");
    None where the value is absent or not a number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def fmt(value: Any) -> str:
    """The one number format of every rendering: 3 significant digits; infinity as "∞"; a NaN as "not
    computed" (the reason sits in the table's note); "n/a" for a value that does not apply; text as it is."""
    if value is None:
        return NOT_APPLICABLE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str) and value.strip().lower() in ("inf", "+inf", "infinity", "-inf", "nan"):
        value = float(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return NOT_COMPUTED
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        text = f"{value:#.3g}"  # 3 significant digits, trailing zeros kept: 1.00, 0.00631
        if "e" in text:  # 1.00e-05 -> 1e-05
            mantissa, exponent = text.split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"
        return text.rstrip(".")
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
    """Scores with their standard errors ("0.879 ± 0.0123"), one row per cell; "n/a" where an attack does not
    apply to the cell, "not computed" where it applies but its score is undefined (see the table's note)."""
    rows = report.get("attacks", [])
    if not rows:
        return pd.DataFrame(columns=list(ATTACK_COLUMNS.values()))
    out = []
    for row in rows:
        missing = set(row.get("not_computed", []))
        shown: dict[str, str] = {}
        for key, label in ATTACK_COLUMNS.items():
            value, error = row.get(key), row.get(f"{key}_se")
            if key in missing:
                shown[label] = NOT_COMPUTED
            elif value is None or error is None:
                shown[label] = fmt(value)
            else:
                shown[label] = f"{fmt(value)} ± {fmt(error)}"
        out.append(shown)
    frame = pd.DataFrame(out)
    frame.attrs["note"] = (
        "± one standard error. n/a: the attack does not apply to the cell (e.g. no canaries where clients are "
        "sampled, no disaggregation where every client takes part). not computed: the attack applies but its "
        "score is undefined there (it had no members or no non-members to tell apart, e.g. no rare rows)."
    )
    return frame


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


def bounds_table(report: dict[str, Any]) -> pd.DataFrame:
    """R1 per DP cell: the claim (and under replace-one when known), the canary bound, what m canaries can
    certify at all, and the verdict."""
    rows = report.get("bounds", [])
    frame = pd.DataFrame(
        [
            {
                "cell": r["cell"],
                "adjacency": r.get("adjacency") or NOT_APPLICABLE,
                "claimed epsilon": fmt(r.get("claimed_epsilon")),
                "claimed epsilon, replace-one": fmt(r.get("epsilon_replace_one"))
                if r.get("epsilon_replace_one") is not None
                else ("same" if r.get("adjacency") == "replace-one" else "not stated"),
                "canary lower bound": fmt(r.get("epsilon_lower_bound")),
                "max certifiable": fmt(r.get("max_certifiable")),
                "claimed mu": fmt(r.get("claimed_mu")),
                "canary mu lower bound": fmt(r.get("mu_lower_bound")),
                "max certifiable mu": fmt(r.get("max_certifiable_mu")),
                "most these canaries can show (as claimed)": fmt(r.get("canary_epsilon_if_as_claimed")),
                "m": fmt(r.get("canaries")),
                "confidence per test": fmt(r.get("confidence_per_cell")),
                "one-run bound (second opinion)": fmt(r.get("one_run_second_opinion")),
                "verdict": r.get("verdict"),
            }
            for r in rows
        ]
    )
    frame.attrs["note"] = (
        "A claim fails R1 when the canary lower bound is above it. Max certifiable: the largest lower bound m "
        "canaries could ever show at this confidence; a claim above it is 'not refutable at m' (R1 cannot test "
        "it; not a pass). The claim is under the cell's adjacency; 'not stated' where grid.json gives no "
        "replace-one epsilon."
    )
    return frame


def _with_interval(row: dict[str, Any], key: str) -> str:
    if row.get(key) is None:
        return NOT_COMPUTED
    interval = row.get(f"{key}_95")
    return f"{fmt(row[key])} [{fmt(interval[0])}, {fmt(interval[1])}]" if interval else fmt(row[key])


def low_fpr_table(report: dict[str, Any]) -> pd.DataFrame:
    """Per cell and attack: AUC, TPR at 0.1% and 1% FPR, and the non-members that set the FPR's step."""
    rows = report.get("low_fpr", [])
    frame = pd.DataFrame(
        [
            {
                "cell": r["cell"],
                "attack": r["attack"],
                "AUC": fmt(r.get("auc")) if r.get("auc") is not None else NOT_COMPUTED,
                "TPR at 0.1% FPR [95%]": _with_interval(r, "tpr_at_0.1%_fpr"),
                "TPR at 1% FPR [95%]": _with_interval(r, "tpr_at_1%_fpr"),
                "non-members (FPR step 1/n)": fmt(r.get("negatives")),
                "note": r.get("note") or "",
            }
            for r in rows
        ]
    )
    frame.attrs["note"] = (
        "TPR at x% FPR: the members an attack finds while flagging at most x% of non-members. With n non-members "
        "the FPR moves in steps of 1/n: below 1/n the TPR shown is the one at zero false positives. 'not computed' "
        "where grid.json keeps no such point. [95%]: the Clopper-Pearson interval over the members (the FPR's 1/n "
        "step is its own uncertainty)."
    )
    return frame


def network_table(report: dict[str, Any]) -> pd.DataFrame:
    rows = report.get("network", {}).get("rounds", [])
    return pd.DataFrame([{k.replace("_", " "): fmt(v) for k, v in row.items()} for row in rows])


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

"""report.md and report.html from report.json (and the plots beside it). The HTML is one self-contained
file: styles inline, plots as base64 PNG, no script, no network access; it prints readably.

Both open with the one overall verdict (report.verdict): in the HTML a coloured banner on the first
screen (green HOLDS, red FAILS, amber INCONCLUSIVE, grey NO CLAIM TESTED) with the headline, every
problem (rule, cell, what was measured, what to do next), the false-alarm rate and what was not tested;
in the Markdown the same text in its first lines. Then the terms, then the details."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import pandas as pd

from mrff_secure.report.tables import (
    attack_table,
    bounds_table,
    fmt,
    low_fpr_table,
    network_table,
    number,
    to_html,
    to_markdown,
    utility_table,
    verdict_table,
)
from mrff_secure.report.verdict import BANNER_TEXT

PLOT_TITLES = {
    "canary_roc.png": "Canary audit ROC (log-log), with each cell's claimed (epsilon, delta) trade-off curve",
    "attack_vs_noise.png": "Attack scores against noise",
    "bound_vs_claim.png": "Empirical epsilon lower bound against the claimed epsilon (log axes)",
    "utility_vs_noise.png": "Utility against noise (operator only)",
    "training.png": "The run's rounds (epsilon, survivors, seconds per round)",
    "operator-only/training.png": "Training curve (operator only: private held-out data, outside the guarantee)",
}
BANNER_PROBLEMS = 4  # problems shown in the banner; all of them in the Problems section below it


def _flat(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """A nested dict as (dotted key, value) pairs."""
    if isinstance(value, dict):
        out: list[tuple[str, Any]] = []
        for k, v in value.items():
            out += _flat(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return [(prefix, value)]


def _kv_value(value: Any) -> str:
    """A value of a key-value section in words: numbers formatted, lists joined, dicts as key = value."""
    if isinstance(value, (list, tuple)):
        return "; ".join(_kv_value(v) for v in value) if value else "none"
    if isinstance(value, dict):
        return "; ".join(f"{k} = {_kv_value(v)}" for k, v in _flat(value)) if value else "none"
    return fmt(value)


def _audit_sections(report: dict[str, Any]) -> list[tuple[str, str, Any]]:
    statement = report["privacy_statement"]
    out: list[tuple[str, str, Any]] = [
        ("Verdicts", "table", verdict_table(report)),
        ("Privacy statement", "text", statement["text"]),
        ("Privacy statement per cell", "list", [c["text"] for c in statement.get("cells", [])]),
        ("Claimed epsilon per cell", "kv", statement.get("epsilon", {})),
        (
            "Claimed epsilon against the canary bound (R1)",
            "table",
            bounds_table(report),
        ),
        ("Threat models: what the server saw", "kv", {t["name"]: t["server_saw"] for t in report["threat_models"]}),
        ("Mechanism", "kv", report["mechanism"]),
        ("Attacks (score ± standard error)", "table", attack_table(report)),
        ("TPR at low FPR", "table", low_fpr_table(report)),
        ("Power of the attacks (R0)", "kv", {k: v for k, v in report.get("power", {}).items() if k != "evidence"}),
    ]
    ms = report.get("malicious_server")
    if ms:
        out.append(
            (
                "Malicious server: active attacks",
                "kv",
                {name: f"{r['outcome']}: {r['error']}" for name, r in ms["attacks"].items()},
            )
        )
    out.append(("Plots", "plots", report.get("plots", [])))
    out.append(("Utility", "table", utility_table(report)))
    out.append(("Network run", "text", f"Not applicable: {report.get('network', {}).get('reason', '')}"))
    return out


def _run_sections(report: dict[str, Any]) -> list[tuple[str, str, Any]]:
    statement = report["privacy_statement"]
    match = report.get("audit_match") or {}
    out: list[tuple[str, str, Any]] = [
        ("Verdicts", "table", verdict_table(report)),
        ("Privacy statement", "text", statement["text"]),
        ("Audit of this privacy configuration", "text", match.get("text", "not audited")),
        ("Threat models: what the server saw", "kv", {t["name"]: t["server_saw"] for t in report["threat_models"]}),
        ("Mechanism", "kv", report["mechanism"]),
        (
            "Outside the guarantee",
            "list",
            report.get("outside_the_guarantee") or ["nothing the run wrote is outside its epsilon"],
        ),
    ]
    if report.get("warnings"):
        out.append(("Warnings", "list", report["warnings"]))
    out.append(("Plots", "plots", report.get("plots", [])))
    network = report.get("network", {})
    if network.get("applicable"):
        out.append(("Network run: audit log", "kv", network["audit_log"]))
        out.append(("What left each device", "text", network["left_each_device"]))
        out.append(("Rounds: bytes per participant and epsilon so far", "table", network_table(report)))
    else:
        out.append(("Network run", "text", f"Not applicable: {network.get('reason', '')}"))
    return out


def _sections(report: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(title, kind, content) in the report's order; kind: text | list | table | kv | plots."""
    out = [("What the terms mean", "kv", report.get("terms", {}))]
    out += _audit_sections(report) if report["kind"] == "audit" else _run_sections(report)
    repro = dict(report["reproducibility"])
    out.append(("Reproducibility", "kv", repro))
    return out


def _alpha_text(verdict: dict[str, Any]) -> str:
    alpha = number(verdict.get("alpha"))
    if alpha is None:
        return "No statistical test decided this verdict (no false-alarm rate applies)."
    note = f" ({verdict['alpha_note']})" if verdict.get("alpha_note") else ""
    return (
        f"False-alarm rate alpha = {fmt(alpha)}{note} over {fmt(verdict.get('tests'))} statistical tests: the "
        "probability that an honest implementation gets a verdict other than holds by chance."
    )


def _problem_text(problem: dict[str, Any]) -> tuple[str, str, str]:
    return f"{problem['rule']}, {problem['cell']}", str(problem["what"]), str(problem["next"])


def render_markdown(report: dict[str, Any], *, digest: str, signature: str | None) -> str:
    verdict = report["verdict"]
    lines = [f"# Verdict: {BANNER_TEXT[verdict['verdict']]}", "", str(verdict.get("headline", "")), ""]
    for problem in verdict.get("problems", []):
        where, what, then = _problem_text(problem)
        lines.append(f"- **{where}**: {what}. Next: {then}.")
    if verdict.get("problems"):
        lines.append("")
    lines += [_alpha_text(verdict), ""]
    lines += [f"Warning: {warning}" for warning in verdict.get("warnings", [])]
    if verdict.get("warnings"):
        lines.append("")
    if verdict.get("not_tested"):
        lines += ["Not tested:", ""] + [f"- {line}" for line in verdict["not_tested"]] + [""]
    lines += [
        f"# mrff-secure privacy report ({report['kind']})",
        "",
        f"Source: `{report['source']}`; created {report['created_utc']}; schema {report['schema']}.",
        "",
    ]
    for title, kind, content in _sections(report):
        lines += [f"## {title}", ""]
        if kind == "table":
            lines.append(to_markdown(content))
            if isinstance(content, pd.DataFrame) and content.attrs.get("note"):
                lines += [f"_{content.attrs['note']}_", ""]
        elif kind == "text":
            lines += [content, ""]
        elif kind == "list":
            lines += [f"- {item}" for item in content] + [""]
        elif kind == "kv":
            lines += [f"- **{k}**: {_kv_value(v)}" for k, v in content.items()] + [""]
        elif kind == "plots":
            lines += [f"![{PLOT_TITLES.get(p, p)}]({p})" for p in content] + [""]
    lines += [
        "## Integrity",
        "",
        f"SHA-256 of report.json: `{digest}`",
        f"Signature (Ed25519, report.json.sig): `{signature}`" if signature else "Not signed.",
        "",
    ]
    return "\n".join(lines)


STYLE = """
body{font-family:system-ui,sans-serif;max-width:1180px;margin:0 auto 2em;padding:0 1em;color:#111;line-height:1.4}
.banner{margin:.8em 0 1em;padding:.8em 1.2em;border-radius:8px;color:#fff}
.banner .word{font-size:2.6em;font-weight:800;letter-spacing:.04em;line-height:1.1}
.banner .headline{font-size:1.15em;margin:.3em 0 .5em;font-weight:600}
.banner ul{margin:.3em 0;padding-left:1.2em} .banner li{margin:.25em 0}
.banner p{margin:.35em 0} .banner .small{font-size:.9em;opacity:.95}
.banner-holds{background:#1b7f2a} .banner-fails{background:#b3151b}
.banner-inconclusive{background:#c77700} .banner-no-claim-tested{background:#5f6368}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0 1.5em}
td,th{border:1px solid #bbb;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#eee} td:first-child{white-space:nowrap} img{max-width:100%;border:1px solid #ddd;margin:.5em 0}
.holds{color:#0a6b0a;font-weight:bold} .fails{color:#b00;font-weight:bold} .other{color:#a60;font-weight:bold}
td.holds,td.fails,td.other{white-space:nowrap}
.note{font-size:.85em;color:#444;margin-top:-1em}
h1{font-size:1.4em} code{font-size:.85em;word-break:break-all}
@media print{body{max-width:none;margin:0} img{page-break-inside:avoid;max-width:90%}
 .banner{-webkit-print-color-adjust:exact;print-color-adjust:exact}}
"""


def _banner_html(verdict: dict[str, Any]) -> str:
    word = verdict["verdict"]
    css = "banner-" + word.replace(" ", "-")
    parts = [
        f"<section id='verdict' class='banner {css}' role='status' aria-label='overall verdict'>",
        f"<div class='word'>{html.escape(BANNER_TEXT[word])}</div>",
        f"<p class='headline'>{html.escape(str(verdict.get('headline', '')))}</p>",
    ]
    problems = verdict.get("problems", [])
    if problems:
        parts.append("<ul class='problems'>")
        for problem in problems[:BANNER_PROBLEMS]:
            where, what, then = (html.escape(t) for t in _problem_text(problem))
            parts.append(f"<li><b>{where}</b>: {what}. <b>Next:</b> {then}.</li>")
        if len(problems) > BANNER_PROBLEMS:
            parts.append(f"<li>and {len(problems) - BANNER_PROBLEMS} more: see <a href='#problems'>Problems</a></li>")
        parts.append("</ul>")
    parts.append(f"<p class='small'>{html.escape(_alpha_text(verdict))}</p>")
    for warning in verdict.get("warnings", []):
        parts.append(f"<p class='small'><b>Warning:</b> {html.escape(str(warning))}</p>")
    not_tested = verdict.get("not_tested", [])
    if not_tested:
        parts.append("<p class='small'><b>Not tested:</b></p><ul class='small'>")
        parts += [f"<li>{html.escape(line)}</li>" for line in not_tested]
        parts.append("</ul>")
    parts.append("</section>")
    return "\n".join(parts)


def _verdict_cells(table: str) -> str:
    for verdict, css in (
        ("holds", "holds"),
        ("fails", "fails"),
        ("inconclusive", "other"),
        ("not refutable at m", "other"),
        ("not audited", "other"),
    ):
        table = table.replace(f"<td>{verdict}</td>", f"<td class='{css}'>{verdict}</td>")
    return table


def render_html(report: dict[str, Any], folder: Path, *, digest: str, signature: str | None) -> str:
    verdict = report["verdict"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{html.escape(BANNER_TEXT[verdict['verdict']])}: mrff-secure privacy report "
        f"({html.escape(report['kind'])})</title>",
        f"<style>{STYLE}</style></head><body>",
        _banner_html(verdict),
        f"<h1>mrff-secure privacy report ({html.escape(report['kind'])})</h1>",
        f"<p>Source: <code>{html.escape(report['source'])}</code>; created {html.escape(report['created_utc'])}; "
        f"schema {html.escape(report['schema'])}.</p>",
    ]
    if len(verdict.get("problems", [])) > BANNER_PROBLEMS:
        parts.append("<h2 id='problems'>Problems</h2><ul>")
        for problem in verdict["problems"]:
            where, what, then = (html.escape(t) for t in _problem_text(problem))
            parts.append(f"<li><b>{where}</b>: {what}. <b>Next:</b> {then}.</li>")
        parts.append("</ul>")
    for title, kind, content in _sections(report):
        anchor = "verdicts" if title == "Verdicts" else ""
        parts.append(f"<h2{' id=' + repr(anchor) if anchor else ''}>{html.escape(title)}</h2>")
        if kind == "table":
            table = to_html(content)
            parts.append(
                _verdict_cells(table)
                if title in ("Verdicts", "Claimed epsilon against the canary bound (R1)")
                else table
            )
            if isinstance(content, pd.DataFrame) and content.attrs.get("note"):
                parts.append(f"<p class='note'>{html.escape(content.attrs['note'])}</p>")
        elif kind == "text":
            parts.append(f"<p>{html.escape(content)}</p>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{html.escape(str(item))}</li>" for item in content) + "</ul>")
        elif kind == "kv":
            parts.append(
                "<table>"
                + "".join(
                    f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_kv_value(v))}</td></tr>"
                    for k, v in content.items()
                )
                + "</table>"
            )
        elif kind == "plots":
            for name in content:
                data = base64.b64encode((folder / name).read_bytes()).decode()
                label = html.escape(PLOT_TITLES.get(name, name))
                parts.append(
                    f"<figure><img alt='{label}' src='data:image/png;base64,{data}'>"
                    f"<figcaption>{label}</figcaption></figure>"
                )
    parts.append("<h2>Integrity</h2>")
    parts.append(f"<p>SHA-256 of report.json: <code>{digest}</code></p>")
    parts.append(
        f"<p>Signature (Ed25519, report.json.sig): <code>{signature}</code></p>" if signature else "<p>Not signed.</p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)

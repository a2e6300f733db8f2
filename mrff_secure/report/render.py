"""report.md and report.html from report.json (and the plots beside it). The HTML is one self-contained
file: styles inline, plots as base64 PNG, no script, no network access; it prints readably."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from mrff_secure.report.tables import (
    attack_table,
    fmt,
    network_table,
    to_html,
    to_markdown,
    utility_table,
    verdict_table,
)

PLOT_TITLES = {
    "canary_roc.png": "Canary audit ROC (log-log)",
    "attack_vs_noise.png": "Attack scores against noise",
    "bound_vs_claim.png": "Empirical epsilon lower bound against the claimed epsilon",
    "utility_vs_noise.png": "Utility against noise (operator only)",
}


def _sections(report: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(title, kind, content) in the report's order; kind: text | list | table | kv | plots."""
    statement = report["privacy_statement"]
    out: list[tuple[str, str, Any]] = [
        ("Verdicts", "table", verdict_table(report)),
        ("Privacy statement", "text", statement["text"]),
        ("Claimed epsilon per cell", "kv", statement.get("epsilon", {})),
        ("Threat models: what the server saw", "kv", {t["name"]: t["server_saw"] for t in report["threat_models"]}),
        ("Mechanism", "kv", report["mechanism"]),
        ("Attacks (score +- standard error)", "table", attack_table(report)),
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
    network = report.get("network", {})
    if network.get("applicable"):
        out.append(("Network run: audit log", "kv", network["audit_log"]))
        out.append(("What left each device", "text", network["left_each_device"]))
        out.append(("Bytes per round and participant", "table", network_table(report)))
    else:
        out.append(("Network run", "text", f"Not applicable: {network.get('reason', '')}"))
    repro = dict(report["reproducibility"])
    out.append(
        (
            "Reproducibility",
            "kv",
            {k: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v for k, v in repro.items()},
        )
    )
    return out


def _kv_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "; ".join(fmt(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return fmt(value)


def render_markdown(report: dict[str, Any], *, digest: str, signature: str | None) -> str:
    lines = [
        f"# mrff-secure privacy report ({report['kind']})",
        "",
        f"Source: `{report['source']}`; created {report['created_utc']}; schema {report['schema']}.",
        "",
    ]
    for title, kind, content in _sections(report):
        lines += [f"## {title}", ""]
        if kind == "table":
            lines.append(to_markdown(content))
        elif kind == "text":
            lines += [content, ""]
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
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#111}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0 1.5em}
td,th{border:1px solid #bbb;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#eee} img{max-width:100%;border:1px solid #ddd;margin:.5em 0}
.holds{color:#0a6b0a;font-weight:bold} .fails{color:#b00;font-weight:bold} .other{color:#a60;font-weight:bold}
code{font-size:.85em;word-break:break-all}
@media print{body{max-width:none;margin:0} img{page-break-inside:avoid;max-width:90%}}
"""


def render_html(report: dict[str, Any], folder: Path, *, digest: str, signature: str | None) -> str:
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>mrff-secure privacy report ({html.escape(report['kind'])})</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>mrff-secure privacy report ({html.escape(report['kind'])})</h1>",
        f"<p>Source: <code>{html.escape(report['source'])}</code>; created {html.escape(report['created_utc'])}; "
        f"schema {html.escape(report['schema'])}.</p>",
    ]
    for title, kind, content in _sections(report):
        anchor = "verdicts" if title == "Verdicts" else ""
        parts.append(f"<h2{' id=' + repr(anchor) if anchor else ''}>{html.escape(title)}</h2>")
        if kind == "table":
            table = to_html(content)
            if title == "Verdicts":
                for verdict, css in (
                    ("holds", "holds"),
                    ("fails", "fails"),
                    ("inconclusive", "other"),
                    ("not refutable at m", "other"),
                ):
                    table = table.replace(f"<td>{verdict}</td>", f"<td class='{css}'>{verdict}</td>")
            parts.append(table)
        elif kind == "text":
            parts.append(f"<p>{html.escape(content)}</p>")
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

"""The compliance report: one document (report.json, the source of truth) rendered as report.md and a
self-contained report.html, from an audit folder (`mrff audit`), a training run folder (`mrff train`)
or a network run folder (`mrff server`, with its audit log). `write_report(folder)` does all three."""

from mrff_secure.report.build import REPORT_SCHEMA, build_report
from mrff_secure.report.write import write_report

__all__ = ["REPORT_SCHEMA", "build_report", "write_report"]

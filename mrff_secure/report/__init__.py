"""The compliance report: one document (report.json, the source of truth) rendered as report.md and a
self-contained report.html, from an audit folder (`mrff audit`), a training run folder (`mrff train`)
or a network run folder (`mrff server`, with its audit log). `write_report(folder)` does all three;
`audit_match(run_dir, audit_dir)` finds the audited cell of a run's privacy configuration, matched by
`privacy_config_digest`."""

from mrff_secure.report.build import REPORT_SCHEMA, build_report
from mrff_secure.report.match import audit_match, privacy_config_digest
from mrff_secure.report.write import write_report

__all__ = ["REPORT_SCHEMA", "audit_match", "build_report", "privacy_config_digest", "write_report"]

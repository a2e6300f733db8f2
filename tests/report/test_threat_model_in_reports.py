"""Each report names the threat model from the run's own settings, through `round.spec.ThreatModel`: a
training summary by its DP mode and secure aggregation, a network run by the spec it started with (a
distributed-DP network run is secagg+dp, not secagg)."""

from __future__ import annotations

import json

import pytest

from mrff_secure.audit_log import AuditLog
from mrff_secure.errors import ConfigError
from mrff_secure.report.build import build_report
from mrff_secure.round.spec import ThreatModel
from mrff_secure.secagg.primitives import generate_identity_key


@pytest.mark.parametrize("dp_mode,expected", [("distributed", "secagg+dp"), ("off", "secagg")])
def test_a_network_report_names_the_threat_model_of_its_spec(tmp_path, dp_mode, expected):
    log = AuditLog(tmp_path / "audit.jsonl", generate_identity_key())
    log.append(
        {
            "type": "run_started",
            "run_id": "r1",
            "settings": {"secure": True, "rounds": 1},
            "spec": {"dp_mode": dp_mode},
        },
        sync=True,
    )
    report = build_report(tmp_path)
    assert [t["name"] for t in report["threat_models"]] == [expected]
    assert report["privacy_statement"]["adjacency"] == [f"{expected}: zero-out"]


@pytest.mark.parametrize(
    "mode,secure,expected",
    [
        ("off", "off", "plain"),
        ("off", "fast", "secagg"),
        ("local", "off", "local-dp"),
        ("distributed", "fast", "secagg+dp"),
    ],
)
def test_a_training_report_names_the_threat_model_of_its_summary(tmp_path, mode, secure, expected):
    summary = {
        "privacy": {"mode": mode, "secure_aggregation": secure, "epsilon": "inf", "adjacency": "zero-out"},
        "config": {},
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    report = build_report(tmp_path)
    assert [t["name"] for t in report["threat_models"]] == [expected]


def test_the_threat_model_follows_the_modes():
    assert ThreatModel.of_modes(dp_mode="off", secure_aggregation=False) is ThreatModel.PLAIN
    assert ThreatModel.of_modes(dp_mode="off", secure_aggregation=False, individual_view=False) is ThreatModel.SECAGG
    assert ThreatModel.of_modes(dp_mode="distributed", secure_aggregation=True) is ThreatModel.SECAGG_DP
    with pytest.raises(ConfigError, match="dp mode"):
        ThreatModel.of_modes(dp_mode="partial", secure_aggregation=True)

"""The model-inconsistency attack (Pasquini et al., CCS 2022) against the network client's own secure-sum code
(attacks/active.py): a server that sends the target one round body and every other client a crafted one (a model
whose update is zero) inside one secure sum would get the target's update alone. Each client's session is bound to
the whole round body it accepted (W21 in SECURITY.md), so the clients refuse each other, each saying why. The
control is the client as it was before W21 (sessions bound to run, phase, round and nonce only): the sum finishes
and is the target's update alone."""

from __future__ import annotations

import re

import pytest

from attacks.active import (
    DEFAULT_POLICY,
    MODEL_INCONSISTENCY,
    TARGET,
    ClientsRefused,
    _model_inconsistency,
    run_active_attacks,
)

REFUSAL = (
    r"the other clients of this session accepted another round body: the server showed different rounds to "
    r"different clients \(model inconsistency\)"
)


def test_clients_shown_different_round_bodies_refuse_and_say_why():
    """Every client runs the real `SecureSums.run` on the body it was sent: the target refuses the other eleven,
    the others refuse the target, each with the reason, before any graph seed (let alone an input) is revealed."""
    with pytest.raises(ClientsRefused) as refused:
        _model_inconsistency(DEFAULT_POLICY)
    target_line, other_line = refused.value.evidence
    assert target_line.startswith(f"user {TARGET}: secure aggregation refused or aborted: client {TARGET}: ")
    assert f"participants {[c for c in range(11) if c != TARGET][:10]} are bound to round body" in target_line
    assert f"participant [{TARGET}] is bound to round body" in other_line
    for line in (target_line, other_line):
        assert re.search(REFUSAL, line)


def test_the_audit_reports_it_refused_with_the_clients_refusal():
    report = run_active_attacks()
    result = report["attacks"][MODEL_INCONSISTENCY]
    assert result["outcome"] == "refused" and MODEL_INCONSISTENCY not in report["leaked"]
    assert "model inconsistency" in result["error"]
    assert any(line.startswith(f"user {TARGET}: ") and "another round body" in line for line in result["evidence"])


def test_without_the_binding_one_sum_over_two_models_isolates_the_targets_update():
    """The control: the clients as they were before W21 finish one sum together, and it is the target's update."""
    obtained = _model_inconsistency(DEFAULT_POLICY, bind_round_body=False)
    assert obtained["max_abs_error"] < 1e-6  # the sum is the target's update (DP off: exact up to the encoding)
    first, second = obtained["evidence"]
    assert f"the target (user {TARGET})" in first and "all 12 finished one secure sum together" in first
    assert "the target's update alone" in second

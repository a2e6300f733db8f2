"""The model-inconsistency attack (Pasquini et al., CCS 2022) against the network client's own secure-sum code
(attacks/active.py): a server that sends the target one model and every other client a crafted one (whose update
is zero) inside one secure sum gets the target's update alone, because a client's session is bound to the run,
phase, round and nonce but not to the model it was sent. The control binds the model digest into the session
nonce: the clients then refuse each other's keys and nothing is summed."""

from __future__ import annotations

import pytest

from attacks.active import DEFAULT_POLICY, MODEL_INCONSISTENCY, TARGET, _model_inconsistency, run_active_attacks
from mrff_secure.errors import AggregationAborted


def test_one_sum_over_two_models_isolates_the_targets_update():
    obtained = _model_inconsistency(DEFAULT_POLICY)
    assert obtained["max_abs_error"] < 1e-6  # the sum is the target's update (DP off: exact up to the encoding)
    first, second = obtained["evidence"]
    assert f"the target (user {TARGET})" in first and "all 12 finished one secure sum together" in first
    assert "the target's update alone" in second


def test_the_audit_reports_it_leaked_with_the_evidence():
    report = run_active_attacks()
    result = report["attacks"][MODEL_INCONSISTENCY]
    assert result["outcome"] == "leaked" and MODEL_INCONSISTENCY in report["leaked"]
    assert any("finished one secure sum together" in line for line in result["evidence"])


def test_a_session_bound_to_its_model_makes_the_clients_refuse():
    """The control: the same lie when each session's nonce binds the model digest it was sent. The server lies
    (it admits every bundle and reveal); a client refuses the target's reveal, so the sum never finishes."""
    with pytest.raises(AggregationAborted, match=r"user \d+: secure aggregation refused or aborted: the reveal of"):
        _model_inconsistency(DEFAULT_POLICY, bind_model=True)

import json
import math

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from mrff_secure.dp.ledger import PrivacyLedger
from mrff_secure.errors import PrivacyError


def test_ledger_matches_opacus_stepping():
    ledger = PrivacyLedger(delta=1e-5)
    prv, rdp = PRVAccountant(), RDPAccountant()
    for r in range(60):
        z, q = (1.0, 0.1) if r < 40 else (1.2, 0.05)
        ledger.record_round(noise_multiplier=z, sample_rate=q)
        prv.step(noise_multiplier=z, sample_rate=q)
        rdp.step(noise_multiplier=z, sample_rate=q)
    assert ledger.rounds == 60
    assert ledger.history == [(1.0, 0.1, 40), (1.2, 0.05, 20)]
    e_prv, e_rdp = ledger.epsilon()
    assert e_prv == prv.get_epsilon(delta=1e-5)
    assert e_rdp == rdp.get_epsilon(delta=1e-5)


def test_empty_ledger_is_zero_and_dp_off_is_inf():
    ledger = PrivacyLedger(delta=1e-5)
    assert ledger.epsilon() == (0.0, 0.0)
    ledger.record_round(noise_multiplier=0.0, sample_rate=1.0)
    assert ledger.epsilon() == (math.inf, math.inf)
    ledger.record_round(noise_multiplier=5.0, sample_rate=1.0)
    assert ledger.epsilon() == (math.inf, math.inf)  # a noiseless round is never forgotten


def test_state_dict_is_plain_json_and_round_trips():
    ledger = PrivacyLedger(delta=2e-6)
    for _ in range(3):
        ledger.record_round(noise_multiplier=0.9, sample_rate=0.2)
    ledger.record_round(noise_multiplier=1.1, sample_rate=0.2)
    text = json.dumps(ledger.state_dict())
    other = PrivacyLedger(delta=0.5)
    other.load_state_dict(json.loads(text))
    assert other.delta == 2e-6 and other.history == ledger.history
    assert other.epsilon() == ledger.epsilon()
    other.record_round(noise_multiplier=1.1, sample_rate=0.2)
    assert other.history[-1] == (1.1, 0.2, 2)


@pytest.mark.parametrize("state", [
    {}, {"version": 2, "delta": 1e-5, "history": []}, {"version": 1, "delta": 0.0, "history": []},
    {"version": 1, "delta": 1e-5, "history": [[1.0, 0.1]]}, {"version": 1, "delta": 1e-5, "history": [[1.0, 2.0, 1]]},
    {"version": 1, "delta": 1e-5, "history": [[-1.0, 0.1, 1]]}, {"version": 1, "delta": 1e-5, "history": [[1.0, 0.1, 0]]},
    {"version": 1, "delta": 1e-5, "history": "x"},
])
def test_malformed_state_is_refused(state):
    ledger = PrivacyLedger(delta=1e-5)
    ledger.record_round(noise_multiplier=1.0, sample_rate=1.0)
    with pytest.raises(PrivacyError):
        ledger.load_state_dict(state)
    assert ledger.rounds == 1  # unchanged


def test_bad_round_parameters():
    ledger = PrivacyLedger(delta=1e-5)
    with pytest.raises(PrivacyError):
        ledger.record_round(noise_multiplier=-1.0, sample_rate=0.1)
    with pytest.raises(PrivacyError):
        ledger.record_round(noise_multiplier=1.0, sample_rate=1.1)
    with pytest.raises(PrivacyError):
        PrivacyLedger(delta=1.0)

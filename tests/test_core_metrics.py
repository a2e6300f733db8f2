import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrff_secure.errors import ConfigError
from mrff_secure.metrics import auc, auc_confidence_interval, log_loss


def brute_force_auc(labels, scores):
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 5)), min_size=2, max_size=40))
def test_auc_matches_pair_counting(pairs):
    labels = [p[0] for p in pairs]
    scores = [p[1] / 5 for p in pairs]
    if len(set(labels)) < 2:
        assert np.isnan(auc(labels, scores))
    else:
        assert auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores))


def test_log_loss_known_value():
    assert log_loss([1, 0], [0.8, 0.4]) == pytest.approx(-(np.log(0.8) + np.log(0.6)) / 2)
    assert np.isfinite(log_loss([1], [0.0]))  # clipped, not infinite


def test_delong_interval_covers_and_shrinks():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 2000)
    scores = labels * 0.5 + rng.normal(size=2000)
    value, low, high = auc_confidence_interval(labels, scores)
    assert low < value < high and value == pytest.approx(auc(labels, scores))
    _, low_small, high_small = auc_confidence_interval(labels[:200], scores[:200])
    assert (high - low) < (high_small - low_small)


def test_bad_labels():
    with pytest.raises(ConfigError, match="0 or 1"):
        auc([0, 2], [0.1, 0.2])
    with pytest.raises(ConfigError, match="differ in length"):
        log_loss([0, 1], [0.1])


def test_temperature_scaling_fixes_overconfidence_and_keeps_auc():
    from mrff_secure.metrics import apply_temperature, fit_temperature

    rng = np.random.default_rng(1)
    true_logit = rng.normal(0.0, 1.5, 20000)
    labels = (rng.random(20000) < 1 / (1 + np.exp(-true_logit))).astype(int)
    overconfident = 1 / (1 + np.exp(-3.0 * true_logit))  # logits three times too large
    t = fit_temperature(labels, overconfident)
    assert t == pytest.approx(3.0, rel=0.1)
    calibrated = apply_temperature(overconfident, t)
    assert log_loss(labels, calibrated) < log_loss(labels, overconfident)
    assert auc(labels, calibrated) == pytest.approx(auc(labels, overconfident))

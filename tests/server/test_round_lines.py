"""The server's round line says how far a noisy federated evaluation can be trusted: the LogLoss's error scale
beside the AUC's (20 clients under DP printed "LogLoss 0.0000", the noisy mean clipped at 0, with no scale)."""

from __future__ import annotations

from server.coordinator import _evaluation_text


def _evaluation(clients: int, log_loss: float) -> dict:
    return {
        "available": True,
        "in_epsilon": True,
        "noise_std": 4.36,
        "clients": clients,
        "val": {"auc": None, "log_loss": log_loss},
        "auc_error_scale": {"val": None},
    }


def test_the_noisy_log_loss_comes_with_its_error_scale():
    few = _evaluation_text(_evaluation(20, 0.0))
    assert "LogLoss 0.0000" in few and "LogLoss error of order 3.5" in few  # 4.36 x 16 / 20: noise dominates
    many = _evaluation_text(_evaluation(20_000, 0.62))
    assert "LogLoss error of order 0.0035" in many and "AUC error of order unbounded" in many


def test_an_exact_evaluation_says_it_is_outside_the_guarantee():
    exact = {**_evaluation(20, 0.6), "in_epsilon": False}
    assert "exact: outside any guarantee" in _evaluation_text(exact) and "error of order" not in _evaluation_text(exact)

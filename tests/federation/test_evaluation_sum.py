"""Federated evaluation's encoding: the exact sum of the clients' vectors gives the AUC within the stated
quantisation bound and the LogLoss, one client's vector stays within its stated L2 bound, and a malformed
exact sum is refused. (The noisy sum: tests/federation/test_evaluation_dp.py.)"""

import numpy as np
import pytest

from mrff_secure.errors import ConfigError
from mrff_secure.federation import evaluation_sum as ev
from mrff_secure.metrics import auc


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_summed_vectors_give_the_auc_within_the_bin_bound_and_the_logloss(seed):
    rng = np.random.default_rng(seed)
    n = 500
    labels = {s: rng.integers(0, 2, n) for s in ev.SPLITS}
    probs = {s: np.clip(rng.beta(2, 2, n) * 0.6 + 0.2 * labels[s], 1e-9, 1 - 1e-9) for s in ev.SPLITS}
    probs["test"][:3] = [0.0, 1.0, np.nan]  # the edges: clipped losses, a non-finite score
    total = sum(ev.client_vector({s: (probs[s][u], int(labels[s][u])) for s in ev.SPLITS}) for u in range(n))
    result = ev.decode(total, exact=True)
    for split in ev.SPLITS:
        y, p = labels[split], np.nan_to_num(probs[split], nan=0.5)
        bins = np.minimum((p * ev.BINS).astype(int), ev.BINS - 1)
        same_bin = sum(
            int(((bins == b) & (y == 1)).sum()) * int(((bins == b) & (y == 0)).sum()) for b in range(ev.BINS)
        ) / (int(y.sum()) * int((1 - y).sum()))
        assert result[split].clients == n and result[split].positives == int(y.sum())
        assert abs(result[split].auc - auc(y, p)) <= same_bin / 2 + 1e-12
        clipped = np.clip(np.where(y == 1, p, 1 - p), np.exp(-ev.LOSS_CAP), 1.0)
        assert result[split].log_loss == pytest.approx(float(np.mean(-np.log(clipped))), abs=1e-9)
    assert 0.5 < result["val"].auc < 1.0  # the planted signal shows


def test_one_label_gives_no_auc_and_a_malformed_sum_is_refused():
    only_clicks = sum(ev.client_vector({s: (0.7, 1) for s in ev.SPLITS}) for _ in range(4))
    assert ev.decode(only_clicks, exact=True)["val"].auc is None
    assert ev.decode(only_clicks, exact=True)["val"].to_json()["auc"] is None
    bad = only_clicks.copy()
    bad[3] += 1  # one more histogram entry than clients counted
    with pytest.raises(ConfigError, match="inconsistent"):
        ev.decode(bad, exact=True)
    with pytest.raises(ConfigError, match="entries"):
        ev.decode(np.zeros(5, dtype=np.int64))
    with pytest.raises(ConfigError, match="label"):
        ev.client_vector({"val": (0.5, 2), "test": (0.5, 0)})
    worst = ev.client_vector({s: (0.0, 1) for s in ev.SPLITS})  # every loss at the cap
    assert np.linalg.norm(worst) == pytest.approx(ev.L2_BOUND) and ev.L2_BOUND == pytest.approx(np.sqrt(5))


def test_a_clients_held_out_scores_are_the_simulations_predictions():
    from mrff_secure.config import FederationConfig, ModelConfig
    from mrff_secure.data import make_synthetic
    from mrff_secure.federation.client_update import evaluate_user
    from mrff_secure.federation.simulation import FederatedSimulation

    data = make_synthetic(num_users=10, maxlen=6)
    sim = FederatedSimulation(data, ModelConfig(maxlen=6, attribute_dim=4), FederationConfig(rounds=1))
    sim.train_round()
    for split in ev.SPLITS:
        expected = sim.predict(split)
        for user in range(data.num_users):
            scores = evaluate_user(
                sim.model, sim.global_params, {n: t[user] for n, t in sim.private.items()}, data, user
            )
            assert scores[split][0] == pytest.approx(float(expected[user]), abs=1e-6)
            assert scores[split][1] == int(getattr(data, f"{split}_label")[user])

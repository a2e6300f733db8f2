"""The federated evaluation under distributed DP (`federation.evaluation_sum` with `round.evaluation_release`):
the noisy sum decodes within the stated error, never to NaN, and two evaluations over sets that differ in one
client no longer give that client's held-out labels: their difference carries noise of the stated std."""

import math

import numpy as np
import pytest

from mrff_secure.federation import evaluation_sum as ev
from mrff_secure.round.evaluation_release import EvaluationRelease

N, N_MIN, Z = 200, 140, 1.0
SEED = 5  # the rotation's public seed


def release(participants=N, z=Z):
    return EvaluationRelease(
        dp_mode="distributed",
        noise_multiplier=z,
        participants=participants,
        n_min=N_MIN,
        modulus_bits=32,
        mechanism="discrete_gaussian",
    )


def vectors(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        scores = {}
        for split in ev.SPLITS:
            label = int(rng.random() < 0.4)
            scores[split] = (float(np.clip(rng.beta(2, 3) + 0.3 * label, 0.0, 1.0)), label)
        out.append(ev.client_vector(scores))
    return out


def noisy_sum(rel, xs, seed):
    """The decoded float sum of the clients' residues, each client with its own generator (as on the network)."""
    rng = np.random.default_rng(seed)
    ring = sum(ev.encode(rel, x, rotation_seed=SEED, rng=rng) for x in xs) % (1 << rel.modulus_bits)
    from mrff_secure.round.encoding import decode_sum

    return decode_sum(rel.plan(), ring, survivors=len(xs), rotation_seed=SEED)


def test_the_noisy_evaluation_decodes_within_the_stated_error():
    rel, xs = release(), vectors(N)
    exact_sum = np.sum(xs, axis=0)
    exact = ev.decode(exact_sum, exact=True)
    rng = np.random.default_rng(1)
    ring = sum(ev.encode(rel, x, rotation_seed=SEED, rng=rng) for x in xs) % (1 << 32)
    noisy = ev.decode_ring(rel, ring, survivors=N, rotation_seed=SEED)
    # N shares of variance sigma^2 / n_min each: std sigma sqrt(N / n_min) per coordinate
    std = rel.noise_std * math.sqrt(N / N_MIN)
    for split in ev.SPLITS:
        e, d = exact[split], noisy[split]
        assert abs(d.clients - e.clients) <= 5 * std + 0.5
        assert abs(d.positives - e.positives) <= 5 * std * math.sqrt(ev.BINS)
        assert abs(d.negatives - e.negatives) <= 5 * std * math.sqrt(ev.BINS)
        assert d.log_loss is not None and e.log_loss is not None
        assert abs(d.log_loss - e.log_loss) <= 5 * std * ev.LOSS_CAP / e.clients + e.log_loss * 5 * std / e.clients
        assert d.auc is not None and e.auc is not None and 0.0 <= d.auc <= 1.0
        assert abs(d.auc - e.auc) <= 3 * ev.auc_error_scale(rel, e.positives, e.negatives)
        assert not any(isinstance(v, float) and math.isnan(v) for v in d.to_json().values())
    # the same sum without noise is the exact evaluation (DP off: exact, and refused if malformed)
    off = EvaluationRelease(dp_mode="off", noise_multiplier=0.0, participants=N, n_min=1, modulus_bits=32)
    ring = sum(ev.encode(off, x, rotation_seed=SEED, rng=rng) for x in xs) % (1 << 32)
    decoded = ev.decode_ring(off, ring, survivors=N, rotation_seed=SEED)
    assert {s: (decoded[s].auc, decoded[s].positives) for s in ev.SPLITS} == {
        s: (exact[s].auc, exact[s].positives) for s in ev.SPLITS
    }


def test_few_clients_and_heavy_noise_give_no_nan():
    rel = release(participants=N, z=20.0)
    few = vectors(N_MIN)[: N_MIN // 20] + [ev.ZERO_VECTOR] * (N_MIN - N_MIN // 20)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        ring = sum(ev.encode(rel, x, rotation_seed=SEED, rng=rng) for x in few) % (1 << 32)
        out = ev.decode_ring(rel, ring, survivors=N_MIN, rotation_seed=SEED)
        for split in ev.SPLITS:
            js = out[split].to_json()
            assert js["auc"] is None or 0.0 <= js["auc"] <= 1.0
            assert js["log_loss"] is None or 0.0 <= js["log_loss"] <= ev.LOSS_CAP
            assert js["positives"] >= 0 and js["negatives"] >= 0 and js["clients"] >= 0


def test_a_sum_below_the_noise_survivors_is_not_decoded():
    rel, xs = release(), vectors(N_MIN - 1)
    rng = np.random.default_rng(0)
    ring = sum(ev.encode(rel, x, rotation_seed=SEED, rng=rng) for x in xs) % (1 << 32)
    with pytest.raises(Exception, match="sized for"):
        ev.decode_ring(rel, ring, survivors=N_MIN - 1, rotation_seed=SEED)
    with pytest.raises(Exception, match="L2 norm"):
        ev.encode(rel, 3 * xs[0], rotation_seed=SEED, rng=rng)


def test_two_evaluations_differing_in_one_client_no_longer_give_its_labels():
    """W14: the server evaluates all N clients, then the same N without the target. Exactly, the difference is the
    target's vector; under DP it is the target's vector plus noise of std sigma sqrt((N + N - 1) / n_min) on every
    coordinate (each sum's noise is its own survivors' shares), so reading the target's (label, bin) from it fails."""
    rel = release()
    xs = vectors(N + 1, seed=3)
    target, others = xs[0], xs[1:]
    with_target = noisy_sum(rel, [target, *others[: N - 1]], seed=10)
    without = noisy_sum(rel, others[: N - 1] + [others[N - 1]], seed=11)  # the target replaced by another client
    exact_difference = target - others[N - 1]
    residual = (with_target - without) - exact_difference
    stated = rel.noise_std * math.sqrt((N + N) / N_MIN)
    measured = float(residual.std())
    assert 0.85 * stated < measured < 1.15 * stated  # ~515 coordinates: the std is estimated to ~3%
    assert abs(float(residual.mean())) < 4 * stated / math.sqrt(residual.size)
    # exact sums would give the target's labels exactly; the noisy difference does not
    histogram = np.r_[0 : 2 * ev.BINS, 2 * ev.BINS + 1 : 4 * ev.BINS + 1]  # the (label, bin) one-hots of both splits
    exact = np.sum([target, *others[: N - 1]], axis=0) - np.sum(others, axis=0)
    np.testing.assert_array_equal(np.rint(exact[histogram]), exact_difference[histogram])
    assert not np.array_equal(np.rint((with_target - without)[histogram]), exact_difference[histogram])
    # the target's (label, bin) one-hot is not even the largest entry of its split's histogram difference
    hits = 0
    for i in range(len(ev.SPLITS)):
        block = slice(i * (2 * ev.BINS + 1), i * (2 * ev.BINS + 1) + 2 * ev.BINS)
        hits += int(np.argmax((with_target - without)[block]) == np.argmax(target[block]))
    assert hits < len(ev.SPLITS)

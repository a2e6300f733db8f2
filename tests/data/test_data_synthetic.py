import numpy as np

from mrff_secure.data import make_synthetic


def test_deterministic_and_seed_dependent():
    a, b, c = make_synthetic(seed=4), make_synthetic(seed=4), make_synthetic(seed=5)
    assert np.array_equal(a.train_seq, b.train_seq) and np.array_equal(a.test_label, b.test_label)
    assert np.array_equal(a.ground_truth_groups, b.ground_truth_groups)
    assert not np.array_equal(a.train_seq, c.train_seq)


def test_click_rate_depends_on_planted_group():
    data = make_synthetic(num_users=600, seed=1)
    rates = []
    for g in range(4):
        rows = data.ground_truth_groups == g
        real = data.train_target[rows] != 0
        rates.append(data.train_label[rows][real].mean())
    # the planted groups must differ in behaviour, or there is nothing to find
    assert max(rates) - min(rates) > 0.05
    segment = data.user_attributes.tokens[:, 0]
    assert (segment == data.ground_truth_groups).mean() > 0.6  # a noisy copy of the group


def test_shapes():
    data = make_synthetic(num_users=50, maxlen=12)
    assert data.train_seq.shape == (50, 12) and data.test_item.shape == (50,)
    assert (data.train_seq[:, -1] != 0).all()

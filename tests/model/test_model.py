"""The SASRec + MRFF model: independent group FFNs, routing, gate summary over real positions only."""

import pytest
import torch

from mrff_secure.config import ModelConfig
from mrff_secure.data import make_synthetic
from mrff_secure.errors import ConfigError
from mrff_secure.model import build_model
from mrff_secure.model.mrff import GroupFeedForwards, MRFFFeedForward


@pytest.fixture(scope="module")
def data():
    return make_synthetic(num_users=20, num_items=50, min_interactions=5, max_interactions=20, maxlen=10, seed=2)


def test_group_ffns_are_independent_parameters():
    torch.manual_seed(0)
    groups = GroupFeedForwards(hidden=6, num_groups=4, dropout=0.0)
    # distinct initial values: four separate FFNs, not one module repeated
    for a in range(4):
        for b in range(a + 1, 4):
            assert not torch.equal(groups.w1[a], groups.w1[b])
    x = torch.randn(5, 6)
    one_hot = torch.tensor([0.0, 0.0, 1.0, 0.0])
    groups(x, one_hot).sum().backward()
    for name in ("w1", "b1", "w2", "b2"):
        grad = getattr(groups, name).grad
        assert grad[2].abs().sum() > 0
        assert grad[[0, 1, 3]].abs().sum() == 0  # only the routed group learns


def test_routed_group_changes_the_output(data):
    torch.manual_seed(0)
    model = build_model(ModelConfig(dropout=0.0, maxlen=10, num_groups=3), data).eval()
    seq, target = torch.as_tensor(data.train_seq[0]), torch.as_tensor(data.train_target[0])
    outs = [model(seq, target, torch.tensor([g, g]))[0] for g in range(3)]
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])
    logits, probs, routes = model(seq, target)
    assert probs.shape == (2, 3) and torch.allclose(probs.sum(-1), torch.ones(2))
    assert torch.equal(routes, probs.argmax(-1))
    assert torch.allclose(logits, model(seq, target, routes)[0])


def test_gate_summary_ignores_padding():
    torch.manual_seed(0)
    ffn = MRFFFeedForward(hidden=4, user_dim=3, num_groups=2, gate_hidden_dims=(), dropout=0.0, routing="paper")
    x = torch.randn(6, 4)
    real = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    user = torch.randn(3)
    _, probs, _ = ffn(x, real, user)
    x_changed_padding = x.clone()
    x_changed_padding[:2] += 100.0
    _, probs_changed, _ = ffn(x_changed_padding, real, user)
    assert torch.allclose(probs, probs_changed)


def test_scaled_routing_sends_task_gradient_into_the_gate(data):
    seq, target = torch.as_tensor(data.train_seq[1]), torch.as_tensor(data.train_target[1])
    for routing, expect_gradient in (("paper", False), ("scaled", True)):
        torch.manual_seed(0)
        model = build_model(ModelConfig(dropout=0.0, maxlen=10, routing=routing), data)
        logits, _, _ = model(seq, target)
        logits.sum().backward()
        gate_grad = model.blocks[0].ffn.gate.layers[0].weight.grad
        has_gradient = gate_grad is not None and gate_grad.abs().sum() > 0
        assert has_gradient == expect_gradient, routing


def test_fedsasrec_has_no_groups(data):
    model = build_model(ModelConfig(mrff=False, maxlen=10), data)
    logits, probs, routes = model(torch.as_tensor(data.train_seq[0]), torch.as_tensor(data.train_target[0]))
    assert probs is None and routes is None and logits.shape == (10,)


@pytest.mark.parametrize(
    "field,value", [("num_blocks", 0), ("dropout", 1.0), ("routing", "soft"), ("num_groups", 0), ("backbone", "bert")]
)
def test_bad_model_config_names_the_value(field, value):
    with pytest.raises(ConfigError, match=field if field != "num_groups" else "num_groups"):
        ModelConfig(**{field: value})

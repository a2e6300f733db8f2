"""The vectorized round equals a plain per-client loop (torch.optim, one model per client) to 1e-5.

Run in float64: Adam's first step is -lr * g / (|g| + 1e-8), which turns float32
rounding differences in a tiny gradient (|g| ~ 1e-8) into visible differences
in the step; float64 separates the semantics (what we test) from that rounding.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from mrff_secure.config import FederationConfig, ModelConfig
from mrff_secure.data import make_synthetic
from mrff_secure.federation.simulation import FederatedSimulation
from mrff_secure.model.roles import Role


def reference_round(
    sim: FederatedSimulation, fractions, local_steps: int, lr: float, optimizer: str, weight_decay: float = 0.0
):
    """One round, one client at a time, with torch.optim and autograd: the semantics the engine vectorizes."""
    data, roles = sim.data, sim.roles
    shared_sum = {n: torch.zeros_like(p) for n, p in sim.global_params.items() if roles[n] is Role.SHARED}
    group_sum = {n: torch.zeros_like(p) for n, p in sim.global_params.items() if roles[n] is Role.GROUP}
    blocks, groups = sim.layout.num_blocks, sim.layout.num_groups
    counts = torch.zeros(blocks, groups)
    new_private = {n: t.clone() for n, t in sim.private.items()}
    for u in range(data.num_users):
        model = copy.deepcopy(sim.model)
        model.train()
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(sim.global_params[n] if n in sim.global_params else sim.private[n][u])
        if optimizer == "adam":
            opt = (
                torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
                if weight_decay
                else torch.optim.Adam(model.parameters(), lr=lr)
            )
        else:
            opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay)
        seq = torch.as_tensor(data.train_seq[u])
        target = torch.as_tensor(data.train_target[u])
        label = torch.as_tensor(data.train_label[u]).double()
        route = None
        for _ in range(local_steps):
            opt.zero_grad()
            logits, probs, routes = model(seq, target, route)
            real = (target != 0).double()
            loss = (
                F.binary_cross_entropy_with_logits(logits, label, reduction="none") * real
            ).sum() / real.sum().clamp(min=1)
            if probs is not None:
                loss = loss + sim.model_config.balance_alpha * groups * (fractions * probs).sum()
            loss.backward()
            opt.step()
            if route is None and routes is not None:
                route = routes.detach()
        params = dict(model.named_parameters())
        for n in shared_sum:
            shared_sum[n] += params[n].detach() - sim.global_params[n]
        for n in group_sum:
            block = sim.layout.group_names.index(next(b for b in sim.layout.group_names if n in b))
            g = int(route[block])
            group_sum[n][g] += params[n].detach()[g] - sim.global_params[n][g]
        for b in range(blocks):
            counts[b, int(route[b])] += 1
        for n in new_private:
            new_private[n][u] = params[n].detach()
    expected = {}
    for n in shared_sum:
        expected[n] = sim.global_params[n] + shared_sum[n] / data.num_users
    for n in group_sum:
        block = sim.layout.group_names.index(next(b for b in sim.layout.group_names if n in b))
        c = counts[block].view(-1, *([1] * (group_sum[n].dim() - 1)))
        expected[n] = torch.where(c > 0, sim.global_params[n] + group_sum[n] / c.clamp(min=1), sim.global_params[n])
    return expected, new_private, counts


@pytest.fixture(autouse=True)
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize(
    "local_steps,optimizer,routing", [(1, "adam", "paper"), (3, "adam", "scaled"), (2, "sgd", "paper")]
)
def test_vectorized_round_matches_per_client_loop(local_steps, optimizer, routing):
    data = make_synthetic(num_users=24, num_items=60, min_interactions=5, max_interactions=20, maxlen=10, seed=3)
    model_config = ModelConfig(dropout=0.0, maxlen=10, num_groups=3, routing=routing)
    lr = 0.1 if optimizer == "adam" else 0.5
    sim = FederatedSimulation(
        data,
        model_config,
        FederationConfig(rounds=2, local_steps=local_steps, optimizer=optimizer, lr=lr, chunk_size=7),
    )
    for _ in range(2):  # the second round uses the first round's group fractions in the balance loss
        fractions = sim.group_fractions.clone()
        expected, expected_private, counts = reference_round(sim, fractions, local_steps, lr, optimizer)
        result = sim.train_round()
        assert torch.equal(torch.tensor(result.group_counts, dtype=counts.dtype), counts)
        for n, value in expected.items():
            torch.testing.assert_close(sim.global_params[n], value, atol=1e-5, rtol=1e-5)
        for n, value in expected_private.items():
            torch.testing.assert_close(sim.private[n], value, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "backbone,mrff", [("hstu", True), ("hstu", False), ("llama", True), ("llama", False), ("ncf", False), ("pa", False)]
)
def test_every_backbone_and_baseline_round_matches_per_client_loop(backbone, mrff):
    """Each model's vectorized rounds (two local Adam steps, so the forced route of the later step is used;
    two rounds, so the balance loss has non-uniform fractions) equal one model per client with torch.optim."""
    data = make_synthetic(num_users=20, num_items=50, min_interactions=5, max_interactions=18, maxlen=10, seed=4)
    model_config = ModelConfig(backbone=backbone, mrff=mrff, dropout=0.0, maxlen=10, num_groups=3)
    sim = FederatedSimulation(data, model_config, FederationConfig(rounds=2, local_steps=2, lr=0.05, chunk_size=6))
    assert (sim.layout.num_groups > 0) == (mrff or backbone == "pa")
    for _ in range(2):
        fractions = sim.group_fractions.clone() if sim.group_fractions is not None else None
        expected, expected_private, counts = reference_round(sim, fractions, 2, 0.05, "adam")
        result = sim.train_round()
        if sim.layout.num_groups:
            assert torch.equal(torch.tensor(result.group_counts, dtype=counts.dtype), counts)
        for n, value in expected.items():
            torch.testing.assert_close(sim.global_params[n], value, atol=1e-5, rtol=1e-5)
        for n, value in expected_private.items():
            torch.testing.assert_close(sim.private[n], value, atol=1e-5, rtol=1e-5)
        assert expected_private, "every model has private parameters (at least the user embedding)"


@pytest.mark.parametrize("optimizer,local_steps", [("adam", 1), ("adam", 3), ("sgd", 2)])
def test_weight_decay_matches_torch_adamw_and_sgd(optimizer, local_steps):
    data = make_synthetic(num_users=18, num_items=50, min_interactions=5, max_interactions=15, maxlen=9, seed=8)
    lr = 0.05 if optimizer == "adam" else 0.5
    sim = FederatedSimulation(
        data,
        ModelConfig(dropout=0.0, maxlen=9, num_groups=2),
        FederationConfig(rounds=1, local_steps=local_steps, optimizer=optimizer, lr=lr, weight_decay=0.3, chunk_size=5),
    )
    expected, expected_private, _ = reference_round(
        sim, sim.group_fractions.clone(), local_steps, lr, optimizer, weight_decay=0.3
    )
    sim.train_round()
    for n, value in expected.items():
        torch.testing.assert_close(sim.global_params[n], value, atol=1e-5, rtol=1e-5)
    for n, value in expected_private.items():
        torch.testing.assert_close(sim.private[n], value, atol=1e-5, rtol=1e-5)


def test_fedsasrec_round_matches_per_client_loop():
    data = make_synthetic(num_users=16, num_items=40, min_interactions=5, max_interactions=15, maxlen=8, seed=5)
    sim = FederatedSimulation(
        data, ModelConfig(dropout=0.0, maxlen=8, mrff=False), FederationConfig(rounds=1, chunk_size=5)
    )
    before = {n: p.clone() for n, p in sim.global_params.items()}
    deltas = {n: torch.zeros_like(p) for n, p in before.items()}
    for u in range(data.num_users):
        model = copy.deepcopy(sim.model)
        model.train()
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(before[n] if n in before else sim.private[n][u])
        opt = torch.optim.Adam(model.parameters(), lr=0.1)
        target = torch.as_tensor(data.train_target[u])
        logits, _, _ = model(torch.as_tensor(data.train_seq[u]), target)
        real = (target != 0).double()
        loss = (
            F.binary_cross_entropy_with_logits(logits, torch.as_tensor(data.train_label[u]).double(), reduction="none")
            * real
        ).sum() / real.sum().clamp(min=1)
        loss.backward()
        opt.step()
        for n, p in model.named_parameters():
            if n in deltas:
                deltas[n] += p.detach() - before[n]
    sim.train_round()
    for n in before:
        torch.testing.assert_close(sim.global_params[n], before[n] + deltas[n] / data.num_users, atol=1e-5, rtol=1e-5)

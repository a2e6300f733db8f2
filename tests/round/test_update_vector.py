"""Parameter roles come from module structure; private parameters can never enter the update vector."""

import pytest
import torch

from mrff_secure.config import FederationConfig, ModelConfig
from mrff_secure.data import make_synthetic
from mrff_secure.errors import ConfigError
from mrff_secure.federation.simulation import FederatedSimulation
from mrff_secure.model import build_model
from mrff_secure.model.layers import UserEmbedding
from mrff_secure.model.mrff import GroupFeedForwards, UserFeedForward
from mrff_secure.model.roles import Role, parameter_roles
from mrff_secure.round.update_vector import UpdateLayout


@pytest.fixture(scope="module")
def data():
    return make_synthetic(num_users=12, num_items=30, min_interactions=5, max_interactions=12, maxlen=8, seed=1)


def test_roles_follow_module_types(data):
    model = build_model(ModelConfig(maxlen=8), data)
    roles = parameter_roles(model)
    for module_name, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            if isinstance(module, (UserEmbedding, UserFeedForward)):
                assert roles[full] is Role.PRIVATE
            elif isinstance(module, GroupFeedForwards):
                assert roles[full] is Role.GROUP
    private = {n for n, r in roles.items() if r is Role.PRIVATE}
    assert private == {"user.vector"} | {
        f"blocks.{b}.ffn.user_ffn.{p}" for b in range(2) for p in ("w1", "b1", "w2", "b2")
    }
    # the gate is shared even though it sits inside the MRFF module
    assert roles["blocks.0.ffn.gate.layers.0.weight"] is Role.SHARED


def test_layout_has_no_private_parameter_and_refuses_one(data):
    model = build_model(ModelConfig(maxlen=8, num_groups=3), data)
    layout = UpdateLayout.from_model(model)
    roles = parameter_roles(model)
    in_vector = set(layout.shared_names) | {n for b in layout.group_names for n in b}
    assert not any(roles[n] is Role.PRIVATE for n in in_vector)
    params = dict(model.named_parameters())
    private_size = sum(p.numel() for n, p in params.items() if roles[n] is Role.PRIVATE)
    total = sum(p.numel() for p in params.values())
    assert layout.delta_size == total - private_size
    assert layout.size == layout.delta_size + 2 * 3 + 1
    deltas = {n: torch.zeros(2, *params[n].shape) for n in in_vector}
    deltas["user.vector"] = torch.zeros(2, *params["user.vector"].shape)
    with pytest.raises(ConfigError, match="user.vector"):
        layout.build(deltas, torch.zeros(2, 2, dtype=torch.long), torch.ones(2))


def test_private_values_are_not_recoverable_from_what_the_server_sees(data):
    """Change only the private state of one client: the server's view changes only through training, and
    the vector has no coordinate equal to the private vector (it is not a copy)."""
    seen = []

    class Observer:
        def on_round(self, view):
            seen.append(view)

    sim = FederatedSimulation(data, ModelConfig(maxlen=8, dropout=0.0), FederationConfig(rounds=1), observer=Observer())
    marker = torch.full_like(sim.private["user.vector"][3], 12345.0)
    sim.private["user.vector"][3] = marker
    sim.train_round()
    vectors = seen[0].individual_updates
    assert vectors.shape == (data.num_users, sim.layout.size)
    assert not torch.isclose(vectors, torch.tensor(12345.0)).any()


def test_build_split_round_trip(data):
    model = build_model(ModelConfig(maxlen=8, num_groups=3), data)
    layout = UpdateLayout.from_model(model)
    params = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(0)
    deltas = {n: torch.randn(1, *params[n].shape, generator=gen) for n in layout.shared_names}
    routes = torch.tensor([[2, 0]])
    for block, names in enumerate(layout.group_names):
        for n in names:
            deltas[n] = torch.randn(1, *params[n].shape[1:], generator=gen)  # the routed slot's change
    vector = layout.build(deltas, routes, torch.tensor([7.0]))[0]
    shared, groups, counts, examples = layout.split(vector)
    for n in layout.shared_names:
        assert torch.equal(shared[n], deltas[n][0])
    for block, names in enumerate(layout.group_names):
        for n in names:
            expected = torch.zeros(params[n].shape)
            expected[routes[0, block]] = deltas[n][0]
            assert torch.equal(groups[n], expected)
    assert counts.tolist() == [[0, 0, 1], [1, 0, 0]] and examples == 7
    with pytest.raises(ConfigError, match="shape"):
        layout.split(vector[:-1])


def _layout_with_unit_deltas(data, num_groups: int, clients: int):
    """A model's layout, its parameters, and all-ones deltas: shared (clients, *shape), group (clients, *slot)."""
    model = build_model(ModelConfig(maxlen=8, num_groups=num_groups), data)
    layout = UpdateLayout.from_model(model)
    params = dict(model.named_parameters())
    deltas = {n: torch.ones(clients, *params[n].shape) for n in layout.shared_names}
    deltas.update({n: torch.ones(clients, *params[n].shape[1:]) for b in layout.group_names for n in b})
    return layout, params, deltas


def test_suppressed_groups_send_zeros(data):
    layout, params, deltas = _layout_with_unit_deltas(data, num_groups=2, clients=2)
    suppressed = torch.tensor([[True, False], [False, False]])
    # client 0 is in block 0's suppressed group 0, client 1 in its group 1
    vectors = layout.build(deltas, torch.tensor([[0, 0], [1, 0]]), torch.ones(2), suppressed)
    first, second = layout.split(vectors[0])[1], layout.split(vectors[1])[1]
    name = layout.group_names[0][0]
    assert first[name].abs().sum() == 0
    assert second[name][1].abs().sum() > 0 and second[name][0].abs().sum() == 0


def test_only_the_routed_slot_is_sent(data):
    """A client's group delta lands in its routed slot only; a delta holding every slot is refused, by name."""
    layout, params, deltas = _layout_with_unit_deltas(data, num_groups=3, clients=1)
    for vector in (
        layout.build(deltas, torch.tensor([[2, 1]]), torch.ones(1))[0],
        layout.build_sum(deltas, torch.tensor([[2, 1]]), torch.ones(1)),
    ):
        groups = layout.split(vector)[1]
        for block, route in enumerate((2, 1)):
            for name in layout.group_names[block]:
                assert groups[name][route].abs().min() == 1
                assert groups[name].abs().sum() == groups[name][route].abs().sum()
    name = layout.group_names[0][0]
    deltas[name] = torch.ones(1, *params[name].shape)
    with pytest.raises(ConfigError, match=f"group delta {name} has shape .*one routed slot per client"):
        layout.build(deltas, torch.tensor([[2, 1]]), torch.ones(1))


@pytest.mark.parametrize(
    "backbone,mrff,private_modules",
    [
        ("hstu", True, {"user", "user_ffn"}),
        ("llama", True, {"user", "user_ffn"}),
        ("ncf", False, {"user"}),
        ("pa", False, {"user", "user_adapters"}),
    ],
)
def test_every_model_declares_private_and_group_parts_structurally(data, backbone, mrff, private_modules):
    """Private parameters are exactly those of the user-level modules; group ones are stacked per group; the
    update vector holds neither a private name nor a parameter of the wrong size."""
    model = build_model(ModelConfig(backbone=backbone, mrff=mrff, maxlen=8, num_groups=3), data)
    roles = parameter_roles(model)
    private = {n for n, r in roles.items() if r is Role.PRIVATE}
    assert private and all(set(n.split(".")) & private_modules for n in private)
    layout = UpdateLayout.from_model(model)
    params = dict(model.named_parameters())
    in_vector = set(layout.shared_names) | {n for b in layout.group_names for n in b}
    assert not in_vector & private and in_vector | private == set(params)
    for names in layout.group_names:
        assert all(params[n].shape[0] == 3 for n in names)
    assert layout.num_blocks == (2 if mrff else 1 if backbone == "pa" else 0)


@pytest.mark.parametrize("backbone", ["ncf", "pa"])
def test_baselines_refuse_mrff_by_name(backbone):
    with pytest.raises(ConfigError, match=f"{backbone}.*--no-mrff"):
        ModelConfig(backbone=backbone, mrff=True)


@pytest.mark.parametrize("backbone,mrff", [("sasrec", True), ("sasrec", False), ("pa", False)])
def test_build_sum_is_the_sum_of_the_built_vectors(data, backbone, mrff):
    model = build_model(ModelConfig(backbone=backbone, mrff=mrff, maxlen=8, num_groups=3), data)
    layout = UpdateLayout.from_model(model)
    params = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(1)
    names = layout.shared_names + tuple(x for b in layout.group_names for x in b)
    deltas = {
        n: torch.randn(9, *(params[n].shape if n in layout.shared_names else params[n].shape[1:]), generator=gen)
        for n in names
    }
    routes = torch.randint(0, 3, (9, layout.num_blocks), generator=gen)
    examples = torch.arange(9.0)
    suppressed = torch.zeros(layout.num_blocks, 3, dtype=torch.bool)
    if layout.num_blocks:
        suppressed[0, 1] = True
    for mask in (None, suppressed):
        expected = layout.build(deltas, routes, examples, mask).sum(0)
        torch.testing.assert_close(layout.build_sum(deltas, routes, examples, mask), expected, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("backbone,mrff", [("hstu", True), ("llama", False), ("ncf", False), ("pa", False)])
def test_a_network_client_builds_the_simulations_model_for_every_backbone(data, backbone, mrff):
    """The server sends the model configuration as JSON; the client rebuilds the same initial global model."""
    from mrff_secure.federation.client_update import build_global, model_config_from_json, model_config_json

    config = ModelConfig(backbone=backbone, mrff=mrff, maxlen=8, num_groups=3)
    received = model_config_from_json(model_config_json(config))
    assert received == config
    _, client_params = build_global(received, data, 3)
    sim = FederatedSimulation(data, config, FederationConfig(rounds=1, seed=3))
    assert client_params.keys() == sim.global_params.keys()
    for name, value in sim.global_params.items():
        assert torch.equal(client_params[name], value), name

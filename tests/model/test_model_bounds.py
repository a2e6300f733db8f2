"""W19: the model configuration a (possibly hostile) server announces is bounded and validated before any
model is built from it; a huge one is refused by name without allocating it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from mrff_secure.config import ModelConfig
from mrff_secure.data import make_synthetic
from mrff_secure.errors import ConfigError
from mrff_secure.federation.client_update import (
    MAX_MODEL_PARAMETERS,
    build_global,
    check_model_size,
    model_config_from_json,
    model_config_json,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data():
    return make_synthetic(num_users=12, maxlen=10, seed=0)


def _json(**changes: object) -> str:
    fields = asdict(ModelConfig(maxlen=10))
    fields.update(changes)
    return json.dumps(fields)


def test_a_legitimate_configuration_passes_with_its_parameter_count(data):
    config = ModelConfig(maxlen=10, attribute_dim=4)
    assert model_config_from_json(model_config_json(config), data) == config
    model, _ = build_global(config, data, 0)
    assert check_model_size(config, data) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "field,value",
    [
        ("attribute_dim", 10**6),
        ("attribute_dim", 0),
        ("num_blocks", 10**4),
        ("num_heads", -1),
        ("maxlen", 10**9),
        ("num_groups", 10**7),
        ("attribute_dim", True),
        ("num_blocks", 2.0),
        ("prediction_dims", [10**8]),
        ("gate_hidden_dims", [8] * 100),
        ("mrff", 1),
        ("dropout", "0.5"),
    ],
)
def test_every_size_field_is_bounded_and_typed_and_named(data, field, value):
    for given in (None, data):
        with pytest.raises(ConfigError, match=field):
            model_config_from_json(_json(**{field: value}), given)


def test_unknown_fields_non_objects_and_huge_text_are_refused():
    with pytest.raises(ConfigError, match="unknown field 'num_experts'"):
        model_config_from_json(_json(num_experts=4))
    with pytest.raises(ConfigError, match="JSON object"):
        model_config_from_json("[1, 2]")
    with pytest.raises(ConfigError, match="not valid JSON"):
        model_config_from_json("{")
    with pytest.raises(ConfigError, match="characters of JSON"):
        model_config_from_json(" " * (1 << 20) + _json())
    with pytest.raises(ConfigError, match="balance_alpha"):
        model_config_from_json(_json(balance_alpha=float("nan")))


def test_a_huge_model_within_every_field_bound_is_refused_quickly_by_its_parameter_count(data):
    # each field within its bound; together 64 blocks of width 1024 x 3 item fields: billions of parameters
    text = _json(attribute_dim=1024, num_blocks=64, num_groups=64)
    started = time.monotonic()
    with pytest.raises(ConfigError, match="parameters"):
        model_config_from_json(text)  # the configuration alone: its lower bound is over the cap
    with pytest.raises(ConfigError, match=f"over the cap of {MAX_MODEL_PARAMETERS:,}"):
        model_config_from_json(_json(attribute_dim=256, num_blocks=16, num_groups=64), data)  # counted on the data
    with pytest.raises(ConfigError, match="over the cap"):
        build_global(model_config_from_json(_json(attribute_dim=256, num_blocks=16, num_groups=64)), data, 0)
    assert time.monotonic() - started < 5.0


def test_the_configuration_must_match_the_clients_data(data):
    with pytest.raises(ConfigError, match="maxlen 11 is not this data's history length 10"):
        model_config_from_json(_json(maxlen=11), data)
    with pytest.raises(ConfigError, match="num_heads 5 does not divide the hidden size"):
        model_config_from_json(_json(num_heads=5, attribute_dim=4), data)


def test_refusing_a_huge_model_allocates_almost_nothing():
    """Peak resident memory of a fresh process, before and after refusing a 3-GiB-plus model: the 24 KiB
    announcement of W19 made a client allocate more than 3 GiB; here it must stay within 64 MiB."""
    script = textwrap.dedent(
        """
        import json, resource
        from dataclasses import asdict
        from mrff_secure.config import ModelConfig
        from mrff_secure.data import make_synthetic
        from mrff_secure.errors import ConfigError
        from mrff_secure.federation.client_update import build_global, model_config_from_json
        data = make_synthetic(num_users=12, maxlen=10, seed=0)
        fields = asdict(ModelConfig(maxlen=10)); fields.update(attribute_dim=512, num_blocks=32, num_groups=64)
        text = json.dumps(fields)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        refused = 0
        for call in (lambda: model_config_from_json(text, data), lambda: build_global(ModelConfig(**{
                **fields, "prediction_dims": tuple(fields["prediction_dims"]),
                "gate_hidden_dims": tuple(fields["gate_hidden_dims"])}), data, 0)):
            try:
                call()
            except ConfigError:
                refused += 1
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(refused, (after - before) // 1024)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120, check=True
    ).stdout.split()
    refused, grown_mib = int(out[0]), int(out[1])
    assert refused == 2
    assert grown_mib < 64, f"peak memory grew by {grown_mib} MiB while refusing the model"

"""The public schema: what the coordinator may know of a dataset (no user rows), saved and loaded."""

from __future__ import annotations

import json

import pytest
import torch

from mrff_secure.config import ModelConfig
from mrff_secure.data import make_synthetic
from mrff_secure.data.schema import PublicSchema
from mrff_secure.errors import DataFormatError
from mrff_secure.federation.client_update import build_global


def test_schema_holds_no_user_rows_and_builds_the_same_global_model(tmp_path) -> None:
    data = make_synthetic(num_users=20, maxlen=8, seed=3)
    schema = PublicSchema.of(data)
    assert schema.user_attributes.num_rows == 0
    assert schema.user_attributes.vocab_sizes == data.user_attributes.vocab_sizes
    path = tmp_path / "schema.json"
    schema.save(path)
    doc = json.loads(path.read_text())
    assert set(doc["user_fields"]) == {"field_names", "vocab_sizes", "spans"}  # no per-user rows at all
    assert len(doc["items"]["tokens"]) == data.item_attributes.num_rows
    loaded = PublicSchema.load(path)
    config = ModelConfig(attribute_dim=4, maxlen=8)
    _, from_data = build_global(config, data, 5)
    _, from_schema = build_global(config, loaded, 5)
    assert list(from_data) == list(from_schema)
    assert all(torch.equal(from_data[k], from_schema[k]) for k in from_data)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(format="other"), "not an mrff-public-schema"),
        (lambda d: d.update(version=9), "version 9"),
        (lambda d: d["items"].pop("tokens"), "tokens"),
        (lambda d: d["items"].update(vocab_sizes=[1, 1, 1]), "outside"),
        (lambda d: d.update(maxlen=0), "maxlen"),
    ],
)
def test_corrupt_schema_files_are_refused_with_a_named_problem(tmp_path, mutate, message) -> None:
    doc = PublicSchema.of(make_synthetic(num_users=5, maxlen=6, seed=0)).to_json()
    mutate(doc)
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(DataFormatError, match=message):
        PublicSchema.load(path)


def test_unreadable_schema_names_the_file(tmp_path) -> None:
    path = tmp_path / "schema.json"
    path.write_text("{not json")
    with pytest.raises(DataFormatError, match="schema.json"):
        PublicSchema.load(path)


def test_mrff_schema_command_writes_a_schema_the_server_can_use(tmp_path) -> None:
    from mrff_secure.app.cli import main

    out = tmp_path / "schema.json"
    assert (
        main(["schema", "--out", str(out), "--dataset", "synthetic", "--synthetic-users", "30", "--maxlen", "7"]) == 0
    )
    schema = PublicSchema.load(out)
    assert (schema.population, schema.maxlen, schema.user_attributes.num_rows) == (30, 7, 0)

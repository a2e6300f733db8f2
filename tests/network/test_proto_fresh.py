"""The checked-in generated code equals what proto/generate.py produces now (CI fails when stale)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    spec = importlib.util.spec_from_file_location("proto_generate", ROOT / "proto" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.generate(tmp_path)
    checked_in = ROOT / "mrff_secure" / "wire" / "v1"
    assert {p.name for p in written} == {p.name for p in checked_in.glob("*_pb2*")}
    for path in written:
        assert path.read_bytes() == (checked_in / path.name).read_bytes(), (
            f"{path.name} is stale: run `python proto/generate.py` and commit the result"
        )


def test_generated_modules_import() -> None:
    from mrff_secure.wire.v1 import coordinator_pb2, coordinator_pb2_grpc

    assert coordinator_pb2.DESCRIPTOR.package == "mrff_secure.v1"
    assert hasattr(coordinator_pb2_grpc, "CoordinatorServicer")

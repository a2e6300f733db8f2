"""Shared fixtures for the secure-aggregation tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

VECTORS = Path(__file__).parent / "vectors"


@pytest.fixture(scope="session")
def vectors():
    def load(name: str) -> dict:
        return json.loads((VECTORS / f"{name}.json").read_text())

    return load

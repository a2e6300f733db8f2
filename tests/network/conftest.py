from __future__ import annotations

from pathlib import Path

import pytest

from . import harness


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> Path:
    return harness.make_pki(tmp_path_factory.mktemp("pki") / "certs")


@pytest.fixture()
def procs():
    """Processes started by a test; stopped by PID afterwards whatever happens."""
    started = []
    yield started
    for proc in reversed(started):
        proc.stop()

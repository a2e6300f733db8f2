from __future__ import annotations

from pathlib import Path

import pytest

from mrff_secure.pki import make_dev_pki


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> Path:
    return make_dev_pki(tmp_path_factory.mktemp("pki")).folder


@pytest.fixture()
def procs():
    """Processes started by a test; stopped by PID afterwards whatever happens."""
    started = []
    yield started
    for proc in reversed(started):
        proc.stop()

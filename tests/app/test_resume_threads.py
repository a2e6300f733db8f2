"""A run's result depends on the torch thread count (kernels split their work by it and round differently):
the checkpoint records it, and a resume computes with it, so a run continued on another machine or with other
threads is the run it would have been (issue: 1 and 2 threads gave test AUC 0.749993 and 0.750047)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from mrff_secure.app.experiment import run_training
from mrff_secure.checkpoint import load_arrays
from mrff_secure.config import FederationConfig, ModelConfig
from mrff_secure.data import make_synthetic


def _state_digest(run: Path) -> str:
    arrays, _ = load_arrays(run / "checkpoint.npz")
    digest = hashlib.sha256()
    for name in sorted(k for k in arrays if k.startswith("sim/")):
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_resume_computes_with_the_threads_the_run_was_trained_with(tmp_path, threads, caplog):
    data = make_synthetic(num_users=400, seed=0)
    model, federation = ModelConfig(maxlen=data.maxlen), FederationConfig(rounds=3, seed=1)
    kw = dict(progress=False, checkpoint_every=1, fingerprint="f")
    torch.set_num_threads(1)
    run_training(data, model, federation, tmp_path / "whole", **kw)
    torch.set_num_threads(2)
    run_training(data, model, federation, tmp_path / "two", **kw)
    assert _state_digest(tmp_path / "two") != _state_digest(tmp_path / "whole")  # the dependence is real here

    torch.set_num_threads(1)
    calls = []

    def crash_in_round_1() -> bool:  # asked after each round, before its checkpoint: round 0's is written
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return False

    with pytest.raises(KeyboardInterrupt):
        run_training(data, model, federation, tmp_path / "resumed", should_stop=crash_in_round_1, **kw)
    assert load_arrays(tmp_path / "resumed" / "checkpoint.npz")[1]["compute_threads"] == 1
    torch.set_num_threads(2)  # "another machine"
    run_training(data, model, federation, tmp_path / "resumed", resume=True, **kw)
    assert _state_digest(tmp_path / "resumed") == _state_digest(tmp_path / "whole")
    assert "trained with 1 torch threads: the resume computes with 1 too (not 2)" in caplog.text

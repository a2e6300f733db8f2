"""Refactoring guard: a fixed-seed `mrff train` gives the same summary, metrics and checkpoint, to the bit, as
the code these digests were pinned with (plain; local DP and secure distributed DP with reproducible noise).

A digest changes only when behaviour changes. If a change is meant to alter results, say so in its commit and
re-pin the digest printed by the failing assertion."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from mrff_secure.app.cli import main

COMMON = ["train", "--dataset", "synthetic", "--synthetic-users", "40", "--maxlen", "10", "--rounds", "2",
          "--seed", "3", "--checkpoint-every", "1", "--no-progress"]
TIMING_KEYS = {"seconds", "train_seconds", "inference_ms_per_user", "eval_seconds", "round_seconds"}

PINNED = {
    "plain": ([], "4e7ab5e07ccce0eb81bf545d96f9f68e666d395db34fe9f1f5fbb6a77a016af7"),
    "local_dp": (["--dp", "local", "--noise-multiplier", "1.0", "--insecure-reproducible-noise"], "81a5a646238365c38e344eaa411a65b69f5142a725b354e681217d47d47756cb"),
    "secure_dp": (["--dp", "distributed", "--noise-multiplier", "1.0", "--secure-aggregation", "on",
                   "--insecure-reproducible-noise"], "efb09bb5f12bbedf7ad48eddd22b4225a81a636f48d3bd514cf090b30bb9611b"),
    "secure_inmemory": (["--dp", "distributed", "--noise-multiplier", "1.0", "--secure-aggregation", "inmemory",
                         "--synthetic-users", "12", "--insecure-reproducible-noise"], "a27315eb95bc4d89841d2f119bfed763b1a2dc1f0a716c7aefe6f75c73af52cd"),
}


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in sorted(value.items()) if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def run_digest(run_dir: Path) -> str:
    """sha256 over the summary, both metrics files and the evaluation (timings removed) and every checkpoint
    array (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    for name in ("summary.json", "operator-only/evaluation.json"):
        h.update(json.dumps(_without_timings(json.loads((run_dir / name).read_text())), sort_keys=True).encode())
    for name in ("metrics.jsonl", "operator-only/metrics.jsonl"):
        for line in (run_dir / name).read_text().splitlines():
            h.update(json.dumps(_without_timings(json.loads(line)), sort_keys=True).encode())
    with np.load(run_dir / "checkpoint.npz", allow_pickle=False) as arrays:
        for key in sorted(arrays.files):
            array = arrays[key]
            h.update(f"{key}|{array.dtype}|{array.shape}".encode())
            h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("mode", sorted(PINNED))
def test_fixed_seed_train_is_bit_identical(tmp_path, capsys, mode):
    flags, pinned = PINNED[mode]
    run_dir = tmp_path / mode
    assert main([*COMMON, *flags, "--run-dir", str(run_dir)]) == 0
    capsys.readouterr()
    assert run_digest(run_dir) == pinned, f"{mode}: digest {run_digest(run_dir)}"

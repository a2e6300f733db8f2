"""Refactoring guard: a fixed-seed `mrff train` gives the same summary, metrics and checkpoint, to the bit, as
the code these digests were pinned with (plain; local DP and secure distributed DP with reproducible noise).

A digest changes only when behaviour changes. If a change is meant to alter results, say so in its commit and
re-pin the digest printed by the failing assertion. Re-pinned once: the accountant's checkpoint state became its
history of releases (`round.accountant.RoundAccountant.state_dict`, version 2); every summary, metric, evaluation
and checkpoint array, and the rest of the checkpoint's header, were checked equal to the pre-refactoring code's.
Plain once more: the summary's noise_source names the module that now holds the generator (round.encoding)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from mrff_secure.app.cli import main

COMMON = [
    "train",
    "--dataset",
    "synthetic",
    "--synthetic-users",
    "40",
    "--maxlen",
    "10",
    "--rounds",
    "2",
    "--seed",
    "3",
    "--checkpoint-every",
    "1",
    "--no-progress",
]
TIMING_KEYS = {"seconds", "train_seconds", "inference_ms_per_user", "eval_seconds", "round_seconds"}

PINNED = {
    "plain": ([], "0632b72996f1bd6cb4257557bca30b2272a8dc5e3db1f3720e0999ff802dcb6c"),
    "local_dp": (
        ["--dp", "local", "--noise-multiplier", "1.0", "--insecure-reproducible-noise"],
        "f5f79723baf78b5c4e6c87691e93c14234ccef2b2539bc06c47bc6465d3f32b1",
    ),
    "secure_dp": (
        [
            "--dp",
            "distributed",
            "--noise-multiplier",
            "1.0",
            "--secure-aggregation",
            "on",
            "--insecure-reproducible-noise",
        ],
        "9a28dca46f6409f645f4ee3a1d83c179df3764ff9cad472477842363e9c60d1e",
    ),
    "secure_inmemory": (
        [
            "--dp",
            "distributed",
            "--noise-multiplier",
            "1.0",
            "--secure-aggregation",
            "inmemory",
            "--synthetic-users",
            "12",
            "--insecure-reproducible-noise",
        ],
        "c15daf82a00ef7678d5b6bce5bfc61a0d5761c9eb2f6fd1a94b47fcbf5d829aa",
    ),
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

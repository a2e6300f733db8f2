"""The Ray backend gives the single process's results: clients sharded over actors on a local Ray instance
started here train, sum (plain, local DP, secure ring sums) and evaluate to the same bits."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from mrff_secure.config import FederationConfig, ModelConfig
from mrff_secure.data import make_synthetic
from mrff_secure.dp import DPConfig
from mrff_secure.errors import ConfigError
from mrff_secure.federation.client_shard import block_rows, chunk_blocks
from mrff_secure.federation.ray_backend import import_ray, shard_rows
from mrff_secure.federation.simulation import FederatedSimulation
from mrff_secure.round.spec import PrivacySettings

MODEL = ModelConfig(maxlen=12, attribute_dim=4, num_blocks=1, prediction_dims=(8,))


@pytest.fixture(scope="module")
def data():
    return make_synthetic(num_users=150, num_items=120, maxlen=12, min_interactions=5, max_interactions=12, seed=3)


# ------------------------------------------------------------- without Ray


@pytest.mark.parametrize("users, block, actors", [(150, 32, 2), (150, 32, 7), (10, 32, 3), (150, 0, 4), (64, 16, 4)])
def test_shards_are_contiguous_whole_blocks_covering_every_user(users, block, actors):
    shards = shard_rows(users, block, actors)
    assert np.array_equal(np.concatenate(shards), np.arange(users))
    assert 1 <= len(shards) <= actors
    for rows in shards:
        assert np.all(np.diff(rows) == 1)
        if block:
            assert rows[0] % block == 0  # starts a block, so no chunk straddles two actors
    blocks = [len(np.unique(r // block)) if block else 1 for r in shards]
    assert max(blocks) - min(blocks) <= 1  # as even as whole blocks allow


def test_a_sampled_round_keeps_chunks_near_chunk_size():
    federation = FederationConfig(rounds=1, chunk_size=64, client_fraction=0.01)
    assert block_rows(federation) == 6400
    rng = np.random.default_rng(0)
    participants = np.sort(rng.choice(1_000_000, size=10_000, replace=False))
    sizes = [len(rows) for _, rows in chunk_blocks(participants, block_rows(federation))]
    assert sum(sizes) == 10_000 and 40 < np.median(sizes) < 90  # not ~1 client per chunk of 64 rows


def test_without_ray_the_backend_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[ray\]'"):
        import_ray()


def test_a_dead_cluster_address_is_named_in_seconds():
    import socket
    import time

    from mrff_secure.federation.ray_backend import _check_reachable

    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(ConfigError, match=f"--ray-address 127.0.0.1:{port}: nothing accepts connections"):
        _check_reachable(f"127.0.0.1:{port}")
    assert time.monotonic() - start < 10  # Ray itself retried such an address for minutes
    with pytest.raises(ConfigError, match="port in 1-65535"):
        _check_reachable("127.0.0.1:99999")


def test_actors_must_be_positive():
    with pytest.raises(ConfigError, match="--actors"):
        shard_rows(10, 4, 0)


# ------------------------------------------------------------- with Ray

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
from mrff_secure.federation.ray_backend import RaySimulation  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # 3 logical CPUs (on 2 cores in CI) so that 3 actors can be placed
    try:
        ray.init(num_cpus=3, include_dashboard=False, logging_level="WARNING", configure_logging=False)
    except Exception as error:  # e.g. a sandbox without the shared memory or sockets Ray needs
        pytest.skip(f"a local Ray instance cannot start here: {type(error).__name__}: {error}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each actor: equal kernels round equally
    yield
    torch.set_num_threads(threads)
    ray.shutdown()


class Views:
    def __init__(self):
        self.views = []

    def on_round(self, view):
        self.views.append(view)


def _pair(data, federation, privacy=None, rounds=2, actors=2):
    single_views, ray_views = Views(), Views()
    single = FederatedSimulation(data, MODEL, federation, observer=single_views, privacy=privacy)
    sharded = RaySimulation(data, MODEL, federation, observer=ray_views, privacy=privacy, actors=actors)
    for _ in range(rounds):
        a, b = single.train_round(), sharded.train_round()
        assert a.group_counts == b.group_counts and a.server_group_counts == b.server_group_counts
        assert a.clipped_fraction == b.clipped_fraction
    return single, sharded, single_views.views, ray_views.views


def _assert_same(single, sharded):
    for name, value in single.global_params.items():
        assert torch.equal(value, sharded.global_params[name]), name
    private = sharded.private
    for name, value in single.private.items():
        assert torch.equal(value, private[name]), name
    for split in ("val", "test"):
        assert np.array_equal(single.predict(split), sharded.predict(split))
    assert np.array_equal(single.routes(), sharded.routes())


REPRODUCIBLE = dict(insecure_reproducible_noise=True)
CASES = {
    "plain": (FederationConfig(rounds=2, seed=1, chunk_size=32), None),
    "plain, sampled": (FederationConfig(rounds=2, seed=2, chunk_size=16, client_fraction=0.4), None),
    "local DP": (
        FederationConfig(rounds=2, seed=3, chunk_size=32),
        PrivacySettings(dp=DPConfig(mode="local", clip=1.0, noise_multiplier=0.5), **REPRODUCIBLE),
    ),
    "secure, distributed DP": (
        FederationConfig(rounds=2, seed=4, chunk_size=32),
        PrivacySettings(
            modulus_bits=48,
            dp=DPConfig(mode="distributed", clip=1.0, noise_multiplier=1.0),
            secure_aggregation="fast",
            **REPRODUCIBLE,
        ),
    ),
    "secure, aggregate noise": (
        FederationConfig(rounds=2, seed=5, chunk_size=32, client_fraction=0.5),
        PrivacySettings(
            modulus_bits=48,
            dp=DPConfig(mode="distributed", clip=1.0, noise_multiplier=1.0),
            secure_aggregation="fast",
            noise_sampling="aggregate",
            **REPRODUCIBLE,
        ),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_ray_backend_equals_the_single_process_bit_for_bit(local_ray, data, case):
    federation, privacy = CASES[case]
    single, sharded, single_views, ray_views = _pair(data, federation, privacy, actors=3)
    try:
        _assert_same(single, sharded)
        for a, b in zip(single_views, ray_views, strict=True):
            assert a.threat_model == b.threat_model
            assert torch.equal(a.summed_update, b.summed_update) and torch.equal(a.group_counts, b.group_counts)
            assert (a.individual_updates is None) == (b.individual_updates is None)
            if a.individual_updates is not None:  # what an attack on plain or local-DP uploads sees
                assert torch.equal(a.individual_updates, b.individual_updates)
    finally:
        sharded.close()


def test_a_checkpoint_moves_between_the_backends(local_ray, data):
    federation = FederationConfig(rounds=4, seed=6, chunk_size=32)
    single = FederatedSimulation(data, MODEL, federation)
    for _ in range(2):
        single.train_round()
    saved = single.state_arrays()
    sharded = RaySimulation(data, MODEL, federation, actors=2)
    try:
        sharded.load_state_arrays(saved, 2)
        assert all(np.array_equal(v, sharded.state_arrays()[k]) for k, v in saved.items())
        for _ in range(2):
            single.train_round()
            sharded.train_round()
        _assert_same(single, sharded)
    finally:
        sharded.close()


def test_the_ray_backend_refuses_what_it_cannot_run_the_same(local_ray, data):
    federation = FederationConfig(rounds=1)
    with pytest.raises(ConfigError, match="update transforms"):
        RaySimulation(data, MODEL, federation, update_transform=lambda v, r, rows: v)
    with pytest.raises(ConfigError, match="needs 4 CPUs; the Ray cluster has 3"):
        RaySimulation(data, MODEL, FederationConfig(rounds=1, chunk_size=16), actors=4)
    with pytest.raises(ConfigError, match="secure_aggregation='fast'"):
        RaySimulation(data, MODEL, federation, privacy=PrivacySettings(modulus_bits=48, secure_aggregation="inmemory"))


def _train(tmp_path, name, *extra):
    run = tmp_path / name
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mrff_secure.app.cli",
            "train",
            "--synthetic-users",
            "60",
            "--rounds",
            "2",
            "--blocks",
            "1",
            "--chunk-size",
            "16",
            "--run-dir",
            str(run),
            "--no-progress",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"},
    )  # torch: 1 thread, as the actor
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    rows = [json.loads(line) for line in (run / "operator-only" / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "eval_seconds"} for row in rows], run


def test_mrff_train_backend_ray_writes_the_single_process_run(local_ray, tmp_path):
    # local_ray: skipped where Ray cannot start; the command starts its own local instance beside it
    single, _ = _train(tmp_path, "single")
    sharded, run = _train(tmp_path, "ray", "--backend", "ray", "--actors", "2", "--threads-per-worker", "1")
    assert single == sharded and len(single) == 2
    assert json.loads((run / "summary.json").read_text())["config"]["backend"] == "ray"
    assert 'backend = "ray"' in (run / "config.toml").read_text()


def _audit(out, *extra):
    from mrff_secure.app import cli

    return cli.main(
        [
            "audit",
            "--synthetic-users",
            "40",
            "--rounds-per-cell",
            "2",
            "--canaries",
            "40",
            "--levels",
            "0.3",
            "--targets",
            "4",
            "--sampled-fraction",
            "0",
            "--synthetic-rare-values",
            "0",
            "--no-network-cell",
            "--no-progress",
            "--run-dir",
            str(out),
            "--cells",
            "plain",
            "local-dp z=0.3",
            "--backend",
            "ray",
            *extra,
        ]
    )


def test_mrff_audit_runs_its_cells_as_ray_tasks(local_ray, tmp_path, capsys):
    out = tmp_path / "audit"
    code = _audit(out)
    assert "2 cells as Ray tasks" in capsys.readouterr().out
    grid = json.loads((out / "grid.json").read_text())
    # the one verdict decides the exit code (z = 0.3 claims more than 40 canaries can refute: not tested)
    assert code == grid["verdict"]["exit_code"] and grid["verdict"]["verdict"] != "fails"
    assert [c["cell"] for c in grid["cells"]] == ["plain z=0 seed=0", "local-dp z=0.3 seed=0"]
    assert all((out / "cells" / f"{n}.json").is_file() for n in ("plain_z=0_seed=0", "local-dp_z=0.3_seed=0"))
    # the same claim checks: a misreported noise level fails on Ray too
    assert _audit(tmp_path / "lie", "--misreport-noise", "4") == 3
    assert json.loads((tmp_path / "lie" / "grid.json").read_text())["verdict"]["verdict"] == "fails"
    assert _audit(tmp_path / "w", "--processes", "2") == 2
    assert "--processes is the single backend's process pool" in capsys.readouterr().err


def test_ctrl_c_in_a_ray_run_keeps_the_run_folder_and_it_resumes(local_ray, tmp_path):
    """A terminal's Ctrl-C reaches the whole foreground process group (the command, and any Ray process
    it started): the run stops with 130 and a checkpoint, and --resume (here on the single backend)
    finishes it."""
    import signal
    import time

    run = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "mrff_secure.app.cli",
        "train",
        "--synthetic-users",
        "60",
        "--rounds",
        "6",
        "--blocks",
        "1",
        "--chunk-size",
        "16",
        "--checkpoint-every",
        "1",
        "--run-dir",
        str(run),
        "--no-progress",
        "--backend",
        "ray",
        "--actors",
        "2",
    ]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"},
    )
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().count("\n") >= 1:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    if proc.returncode == 0:
        pytest.skip("the run finished before the interrupt arrived")
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "--resume" in err
    assert (run / "checkpoint.npz").exists() and not (run / "summary.json").exists()
    from mrff_secure.app import cli

    assert cli.main(["train", "--resume", "--run-dir", str(run), "--no-progress", "--backend", "single"]) == 0
    assert [json.loads(line)["round"] for line in metrics.read_text().splitlines()] == list(range(6))

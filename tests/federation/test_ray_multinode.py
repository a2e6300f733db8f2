"""The Ray backend on a cluster of several nodes: Ray's own `cluster_utils.Cluster` (a head and a worker
node on this machine, one CPU each, as `ray start` would make them on two machines). `mrff train --backend
ray --ray-address` spreads its actors over both nodes, records which node each ran on, and gives the single
process's run bit for bit; a node lost mid-round stops the run with a clear error, and the run folder
resumes on a replacement node to the uninterrupted run's result; `mrff audit --backend ray` runs its
cells on the same cluster."""

from __future__ import annotations

import json
import shutil
import tempfile
import time

import numpy as np
import pytest
import torch

from mrff_secure.checkpoint import load_arrays
from mrff_secure.errors import ConfigError
from mrff_secure.federation import ray_backend
from mrff_secure.federation.ray_backend import cluster_address, connect

# ------------------------------------------------------------- without Ray


class FakeRay:
    """What `connect` asks of Ray: whether it is initialised, and the arguments of `init`."""

    def __init__(self):
        self.calls = []

    def is_initialized(self):
        return False

    def init(self, **kwargs):
        self.calls.append(kwargs)


def test_the_cluster_comes_from_the_option_then_ray_address_else_a_local_instance(monkeypatch):
    import socket

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster_address(None) is None and cluster_address("") is None
    fake = FakeRay()
    assert connect(fake, None, 3)
    # "local": never the cluster whose address `ray start` left in /tmp/ray (Ray would join it unasked)
    assert fake.calls[-1]["address"] == "local" and fake.calls[-1]["num_cpus"] == 3
    with socket.socket() as listening:  # a reachable HOST:PORT (connect checks it before Ray retries for minutes)
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        here = f"127.0.0.1:{listening.getsockname()[1]}"
        monkeypatch.setenv("RAY_ADDRESS", here)
        assert cluster_address(None) == here and cluster_address("10.0.0.1:6379") == "10.0.0.1:6379"
        connect(fake, None, 3)
        assert fake.calls[-1]["address"] == here and "num_cpus" not in fake.calls[-1]  # joined, nothing started
    # a dead RAY_ADDRESS is named as what it is, in seconds (Ray retries one for minutes)
    monkeypatch.setenv("RAY_ADDRESS", here)  # nothing listens there any more
    with pytest.raises(ConfigError, match=f"RAY_ADDRESS {here}: nothing accepts connections"):
        connect(fake, None, 3)
    monkeypatch.setenv("RAY_ADDRESS", "")  # empty: as if unset
    assert cluster_address(None) is None


# ------------------------------------------------------------- with Ray

ROUNDS = 4
LOST_IN_ROUND = 2  # the worker node leaves after this round's training, before its sum


@pytest.fixture
def two_nodes(monkeypatch):
    """A head node and a worker node of 1 CPU each, this process connected as the driver; yields (cluster,
    worker node, seconds to start). The cluster keeps its files (and the address file that a bare
    `ray.init()` on this machine would join) in a private, short temp folder (Ray's socket paths must fit
    107 bytes), so another Ray test running beside it neither joins it nor collides with it."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="mrffray", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", temp)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    start = time.perf_counter()
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        worker = cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, logging_level="WARNING", configure_logging=False)
    except Exception as error:  # e.g. a sandbox without the shared memory or sockets Ray needs
        if cluster is not None:
            cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        pytest.skip(f"a Ray cluster cannot start here: {type(error).__name__}: {error}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each actor: equal kernels round equally
    try:
        yield cluster, worker, time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def _train(run, *extra):
    from mrff_secure.app import cli

    argv = ["train", "--run-dir", str(run), "--no-progress"]
    if "--resume" not in extra:
        argv += ["--synthetic-users", "60", "--rounds", str(ROUNDS), "--blocks", "1", "--chunk-size", "16"]
        argv += ["--checkpoint-every", "1"]
    return cli.main([*argv, *extra])


def _result_rows(run):
    """A run's metric rows, shareable and operator-only, timings left out."""
    public = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    operator = [json.loads(line) for line in (run / "operator-only" / "metrics.jsonl").read_text().splitlines()]
    return (
        [{k: v for k, v in row.items() if k != "train_seconds"} for row in public],
        [{k: v for k, v in row.items() if k != "eval_seconds"} for row in operator],
    )


def _result(run):
    """Everything a run computed: its metric rows (timings left out), final checkpoint and predictions."""
    public, operator = _result_rows(run)
    arrays, meta = load_arrays(run / "checkpoint.npz")
    with np.load(run / "operator-only" / "predictions.npz", allow_pickle=False) as saved:
        predictions = {k: saved[k] for k in saved.files}
    return (
        public,
        operator,
        arrays,
        meta,
        predictions,
    )


def _assert_same_run(a, b):
    (public_a, operator_a, arrays_a, meta_a, predictions_a) = a
    (public_b, operator_b, arrays_b, meta_b, predictions_b) = b
    assert public_a == public_b and len(public_a) == ROUNDS
    assert operator_a == operator_b
    assert meta_a == meta_b and meta_a["rounds_done"] == ROUNDS
    assert arrays_a.keys() == arrays_b.keys()
    for name, value in arrays_a.items():
        assert np.array_equal(value, arrays_b[name]), name  # bit for bit: the model and every private part
    assert predictions_a.keys() == predictions_b.keys()
    for name, value in predictions_a.items():
        assert np.array_equal(value, predictions_b[name]), name


def _alive_nodes():
    import ray

    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


def test_a_run_spread_over_two_nodes_loses_one_mid_round_and_resumes_to_the_single_process_run(
    two_nodes, tmp_path, monkeypatch, capsys
):
    """One Ray run: two actors over the two nodes (through --ray-address); the worker node leaves in the middle
    of a round; the folder resumes on a replacement node. Every round, before the loss and after the resume,
    ran on actors of both nodes, and the finished run is the single process's bit for bit (one run, not two:
    each start of Ray actors costs seconds)."""
    cluster, worker, started = two_nodes
    seconds = {"cluster start (2 nodes)": started}
    tick = time.perf_counter()
    assert _train(tmp_path / "single", "--backend", "single") == 0
    seconds["single process"] = time.perf_counter() - tick
    reference = _result(tmp_path / "single")
    capsys.readouterr()

    # an actor's CPUs must be on one node: 2 threads on nodes of 1 CPU are refused at once, not left waiting
    wide = ["--backend", "ray", "--actors", "1", "--threads-per-worker", "2", "--ray-address", cluster.address]
    assert _train(tmp_path / "wide", *wide) == 2
    assert "nodes (CPUs: 1, 1) have room for 0 such actors" in capsys.readouterr().err

    sums = []
    plain_sum = ray_backend.RaySimulation._plain_sum

    def node_lost(self, *args):  # the worker node leaves after its actor trained this round, before the sum
        sums.append(self.round_index)
        if self.round_index == LOST_IN_ROUND:
            cluster.remove_node(worker)
        return plain_sum(self, *args)

    monkeypatch.setattr(ray_backend.RaySimulation, "_plain_sum", node_lost)
    first_nodes = _alive_nodes()
    assert len(first_nodes) == 2
    run = tmp_path / "ray"
    tick = time.perf_counter()
    assert _train(run, "--backend", "ray", "--actors", "2", "--ray-address", cluster.address) == 1
    seconds[f"ray on 2 nodes, {LOST_IN_ROUND} rounds and the node lost"] = time.perf_counter() - tick
    monkeypatch.setattr(ray_backend.RaySimulation, "_plain_sum", plain_sum)
    err = capsys.readouterr().err
    # (b) the console named both nodes, one actor each
    placed = next(line for line in err.splitlines() if line.startswith("ray: "))
    assert placed.startswith("ray: 2 actors on 2 nodes") and all(node[:8] in placed for node in first_nodes)
    # (c) a clear error, and the folder keeps the checkpoint of the rounds before, as the single process ran them
    assert "a Ray actor of this run was lost" in err and "its node has died" in err and "--resume" in err
    assert "Traceback" not in err
    assert sums == list(range(LOST_IN_ROUND + 1))
    assert load_arrays(run / "checkpoint.npz")[1]["rounds_done"] == LOST_IN_ROUND
    assert not (run / "summary.json").exists()
    lost = _result_rows(run)
    assert lost[0][:LOST_IN_ROUND] == reference[0][:LOST_IN_ROUND]
    assert lost[1][:LOST_IN_ROUND] == reference[1][:LOST_IN_ROUND]

    # two actors cannot be placed on the one node left: refused at once (not left waiting for a CPU)
    resume = ["--resume", "--backend", "ray", "--actors", "2", "--ray-address", cluster.address]
    assert _train(run, *resume) == 2
    assert "needs 2 CPUs; the Ray cluster has 1" in capsys.readouterr().err
    tick = time.perf_counter()
    cluster.add_node(num_cpus=1)  # a replacement node
    seconds["replacement node start"] = time.perf_counter() - tick
    tick = time.perf_counter()
    assert _train(run, *resume) == 0
    seconds[f"resume on 2 nodes, {ROUNDS - LOST_IN_ROUND} rounds"] = time.perf_counter() - tick
    # (a) the single process's run, bit for bit
    _assert_same_run(reference, _result(run))
    # (b) summary.json records the nodes of the actors that finished it: the head and the replacement
    placement = json.loads((run / "summary.json").read_text())["config"]["ray"]
    second_nodes = _alive_nodes()
    assert len(second_nodes & first_nodes) == 1  # the head stayed; the worker node is gone
    assert placement["nodes"] == 2 and {a["node_id"] for a in placement["actors"]} == second_nodes
    assert [a["users"] for a in placement["actors"]] == [[0, 32], [32, 60]]  # whole blocks of 16 rows

    # the audit on the same cluster: its cells as Ray tasks over both nodes
    from mrff_secure.app import cli

    tick = time.perf_counter()
    audit = [*AUDIT, "--run-dir", str(tmp_path / "audit"), "--ray-address", cluster.address]
    code = cli.main(audit)
    seconds["audit, 2 cells"] = time.perf_counter() - tick
    assert "2 cells as Ray tasks on 2 CPUs of 2 nodes" in capsys.readouterr().out
    grid = json.loads((tmp_path / "audit" / "grid.json").read_text())
    assert code == grid["verdict"]["exit_code"] and len(grid["cells"]) == 2
    print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))


AUDIT = [
    "audit",
    "--backend",
    "ray",
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
    "--cells",
    "plain",
    "local-dp z=0.3",
]

"""The Ray backend on one node vs on a two-node cluster, on this machine: what a second node costs.

Both clusters are Ray's own `cluster_utils.Cluster` on this machine, with 2 CPUs in all: one node of 2
CPUs, or a head and a worker node of 1 CPU each (as `ray start` makes them on two machines; here they
share the same cores, so two nodes cannot be faster: the point is what the split costs). Each
configuration runs in its own subprocess (a fresh cluster), on synthetic populations (maxlen 20, every
client in every round), 2 actors of 1 thread, and measures:
- the cluster's start, the actors' start (their data through the object store), a warm-up round, then
  the median of `--repeats` timed rounds and one evaluation pass (val);
- the object store: the global model and 64 MiB put in the driver (on the head node) and read on each
  actor's node (on two nodes, one of them is the other node: a copy between the nodes' object stores);
- on two nodes, the loss of the worker node and the recovery: a replacement node, new actors, and the
  run's state loaded back from the arrays a checkpoint holds (what `mrff train --resume` does).
The single process (1 thread, as each actor) is run beside them as the reference.

    python benchmarks/ray_multinode.py --out benchmarks/results/ray_multinode.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAXLEN = 20


def one(layout: str, users: int, repeats: int) -> dict:
    """One configuration in this (fresh) process: layout 'single' (no Ray), 'one-node' or 'two-nodes'."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import numpy as np
    import torch

    from mrff_secure.config import FederationConfig, ModelConfig
    from mrff_secure.data import make_synthetic
    from mrff_secure.federation.ray_backend import RaySimulation
    from mrff_secure.federation.simulation import FederatedSimulation

    torch.set_num_threads(1)  # as each actor
    data = make_synthetic(
        num_users=users, num_items=2000, maxlen=MAXLEN, min_interactions=5, max_interactions=MAXLEN, seed=0
    )
    model = ModelConfig(maxlen=MAXLEN)
    federation = FederationConfig(rounds=repeats + 2, seed=0)
    out: dict = {"layout": layout, "clients": users, "participants_per_round": users}
    cluster = worker = None
    if layout != "single":
        import ray
        from ray.cluster_utils import Cluster

        start = time.perf_counter()
        if layout == "one-node":
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
        else:
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
            worker = cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, logging_level=logging.WARNING, configure_logging=False)
        out["cluster_start_seconds"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    sim: FederatedSimulation = (
        FederatedSimulation(data, model, federation)
        if layout == "single"
        else RaySimulation(data, model, federation, actors=2, threads_per_worker=1)
    )
    out["build_seconds"] = round(time.perf_counter() - start, 2)
    if isinstance(sim, RaySimulation):
        out["nodes"] = sim.placement_summary()["nodes"]
        out["placement"] = sim.placement_line()
    start = time.perf_counter()
    sim.train_round()
    out["warm_up_round_seconds"] = round(time.perf_counter() - start, 3)
    rounds = []
    for _ in range(repeats):
        start = time.perf_counter()
        sim.train_round()
        rounds.append(time.perf_counter() - start)
    out["round_seconds_median"] = round(statistics.median(rounds), 4)
    out["round_seconds_all"] = [round(t, 4) for t in rounds]
    start = time.perf_counter()
    sim.evaluate("val")
    out["eval_pass_seconds"] = round(time.perf_counter() - start, 4)
    out["update_vector_floats"] = sim.layout.size
    if isinstance(sim, RaySimulation):
        out["global_model_transfer"] = transfer(sim)
    if isinstance(sim, RaySimulation) and cluster is not None and worker is not None:  # two nodes
        state = sim.state_arrays()  # what a checkpoint holds
        done = sim.round_index
        start = time.perf_counter()
        cluster.remove_node(worker)
        try:
            sim.train_round()
            out["after_node_loss"] = "the round ran (not expected)"
        except Exception as error:  # ShardLost
            out["after_node_loss"] = f"{type(error).__name__}: {str(error)[:120]}"
        out["node_loss_detected_seconds"] = round(time.perf_counter() - start, 3)
        sim.close()
        start = time.perf_counter()
        cluster.add_node(num_cpus=1)
        out["replacement_node_start_seconds"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        sim = RaySimulation(data, model, federation, actors=2, threads_per_worker=1)
        sim.load_state_arrays(state, done)
        out["recovery_build_and_load_seconds"] = round(time.perf_counter() - start, 2)
        out["recovered_nodes"] = sim.placement_summary()["nodes"]
        start = time.perf_counter()
        sim.train_round()
        out["first_round_after_recovery_seconds"] = round(time.perf_counter() - start, 3)
        reference = FederatedSimulation(data, model, federation)  # the run that lost nothing, for the record
        reference.load_state_arrays(state, done)
        reference.train_round()
        out["recovered_round_equals_single_process"] = all(
            np.array_equal(reference.global_params[n].numpy(), sim.global_params[n].numpy())
            for n in reference.global_params
        )
    sim.close()
    if cluster is not None:
        import ray

        ray.shutdown()
        cluster.shutdown()
    return out


def transfer(sim) -> dict:
    """Seconds to put a payload in the driver and read it in a task on each actor's node (median of 5): the
    global model, and 64 MiB (a large shard's data)."""
    import numpy as np

    ray = sim._ray
    payloads = {
        "global model": {n: t.detach().numpy() for n, t in sim.global_params.items()},
        "64 MiB": {"array": np.ones(16 * 2**20, dtype=np.float32)},
    }

    @ray.remote(num_cpus=0)
    def touch(value):
        return sum(float(a.ravel()[-1]) for a in value.values())

    out = {}
    for name, arrays in payloads.items():
        times = {}
        for entry in sim.placement:
            strategy = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(entry["node_id"], soft=False)
            ray.get(touch.options(scheduling_strategy=strategy).remote(ray.put(arrays)))  # warm-up
            samples = []
            for _ in range(5):
                start = time.perf_counter()
                ray.get(touch.options(scheduling_strategy=strategy).remote(ray.put(arrays)))
                samples.append(time.perf_counter() - start)
            times[f"to actor {entry['actor']}'s node"] = round(statistics.median(samples), 4)
        out[name] = {"bytes": sum(a.nbytes for a in arrays.values()), "seconds_median": times}
    return out


def run_child(layout: str, users: int, repeats: int) -> dict:
    temp = tempfile.mkdtemp(prefix="mrffbench", dir="/tmp")  # the cluster's files (short socket paths)
    env = {**os.environ, "RAY_TMPDIR": temp, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, __file__, "--child", layout, str(users), "--repeats", str(repeats)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    if done.returncode != 0:
        return {"layout": layout, "clients": users, "error": done.stderr[-1500:]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=2, metavar=("LAYOUT", "USERS"))
    parser.add_argument("--users", type=int, nargs="+", default=[2000, 10_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ray_multinode.json")
    args = parser.parse_args()
    if args.child:
        layout, users = args.child
        print(json.dumps(one(layout, int(users), args.repeats)))
        return 0
    load_before = os.getloadavg()
    results = [run_child(layout, u, args.repeats) for u in args.users for layout in ("single", "one-node", "two-nodes")]
    report = {
        "benchmark": "ray_multinode",
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "note": "two nodes on one 2-core machine share its cores (and other processes shared them too: see "
            "the load averages); a second node cannot be faster here: the figures are its cost",
        },
        "repeats": args.repeats,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

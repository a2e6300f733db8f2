"""A training run: rounds of the simulation, evaluation, and the run folder's files.

What a run writes, by what covers it (the run's summary.json lists the same under "outputs"):

RUN_DIR/summary.json   shareable: configuration, parameter counts, inference time, and the `privacy`
                       object (mode, mechanism, z, C, delta, the headline epsilon with its bound and
                       adjacency, the Gaussian-limit figures for reference, "private": false when the
                       run carries no guarantee)
RUN_DIR/metrics.jsonl  shareable: one JSON line per round (round, participants, seconds, the epsilon
                       spent so far, and the group counts the server itself saw: the noisy counts
                       under DP, covered by the epsilon)
RUN_DIR/metrics.csv    shareable: the same rows as CSV for plotting, lists left out (mrff_secure/metrics_csv.py)
RUN_DIR/operator-only/ released OUTSIDE the guarantee, for the operator alone:
    metrics.jsonl      per round: the true group sizes, the fraction of clipped uploads, validation and
                       test AUC / LogLoss on private held-out data
    metrics.csv        per round: the shareable and the operator-only columns together, for plotting
    evaluation.json    best-validation round, its test AUC (DeLong 95% interval) and LogLoss, the
                       temperature calibration, the number of training interactions
    predictions.npz    the best round's per-user validation and test probabilities and labels (no pickle)
    training.png       validation AUC and true group sizes per block per round (the paper's Fig. 2)
RUN_DIR/checkpoint.npz the state after the last checkpointed round (model, every user's private part,
                       the privacy ledger, the best evaluation so far): held by the operator, it holds
                       private parameters; `mrff train --resume` continues from it with the same result
                       as an uninterrupted run (the noise aside, which is fresh OS entropy)
RUN_DIR/config.toml    the resolved configuration (written by `mrff train`)
"""

from __future__ import annotations

import io
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrff_secure.atomic import write_bytes_atomic, write_json_atomic
from mrff_secure.checkpoint import load_arrays, save_arrays
from mrff_secure.config import FederationConfig, ModelConfig
from mrff_secure.data.client_data import ClientData
from mrff_secure.errors import CheckpointError, ConfigError, MrffError
from mrff_secure.federation.privacy_pipeline import PrivacyPipeline
from mrff_secure.federation.privacy_summary import privacy_summary
from mrff_secure.federation.simulation import FederatedSimulation
from mrff_secure.metrics import apply_temperature, auc_confidence_interval, fit_temperature, log_loss
from mrff_secure.metrics_csv import write_metrics_csv
from mrff_secure.model.roles import Role
from mrff_secure.round.spec import PrivacySettings
from mrff_secure.run_summary import OPERATOR_ONLY, format_epsilon, spread

log = logging.getLogger(__name__)
PAPER_SASREC_PARAMETERS = 52_720  # Table 3, KuaiSAR-R
CHECKPOINT = "checkpoint.npz"
CHECKPOINT_FORMAT = 1


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped between rounds on request; the checkpoint holds `rounds_done` rounds."""

    def __init__(self, rounds_done: int) -> None:
        super().__init__(rounds_done)
        self.rounds_done = rounds_done


def parameter_counts(sim: FederatedSimulation) -> dict[str, int]:
    """Parameters per role, in all, and those one client's forward pass uses (one group FFN per block)."""
    by_role = {role.value: 0 for role in Role}
    for name, p in sim.model.named_parameters():
        by_role[sim.roles[name].value] += p.numel()
    total = sum(by_role.values())
    groups = sim.layout.num_groups
    unused_groups = sim.layout.num_blocks * max(groups - 1, 0) * sim.layout.group_size
    return {**by_role, "total": total, "per_client_active": total - unused_groups}


def inference_ms_per_user(sim: FederatedSimulation, repeats: int = 3) -> float:
    """Median wall time of scoring every user's test item, divided by the number of users."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sim.predict("test")
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times)) / sim.data.num_users


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


LEGEND_ROWS = 12  # group legend entries per column: many groups make more columns, never a taller legend


def plot_training(rows: list[dict[str, Any]], path: Path) -> None:
    """operator-only/training.png: validation AUC, and the true group sizes of each block stacked, per round.

    The group legend sits right of its axes, in columns of at most LEGEND_ROWS entries, and the figure is
    laid out by constrained layout: inside the axes (tight_layout) the legend of 24 or more groups was
    taller than the axes and matplotlib warned "Tight layout not applied"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in rows if r.get("val_auc") is not None]
    val_auc = [r["val_auc"] for r in rows if r.get("val_auc") is not None]
    blocks = len(rows[0]["group_sizes"]) if rows and rows[0]["group_sizes"] else 0
    groups = len(rows[0]["group_sizes"][0]) if blocks else 0
    legend_columns = max(1, math.ceil(groups / LEGEND_ROWS))
    # a colour per group: tab10's repeat after 10 groups, so more groups take tab20's or a sequential map's
    colormap = matplotlib.colormaps["tab10" if groups <= 10 else "tab20" if groups <= 20 else "viridis"]
    colours = [colormap(g if groups <= 20 else g / max(groups - 1, 1)) for g in range(groups)]
    fig, axes = plt.subplots(
        1 + blocks,
        1,
        figsize=(7 + 1.3 * legend_columns, 2.6 * (1 + blocks)),
        squeeze=False,
        layout="constrained",
    )
    axes[0, 0].plot(rounds, val_auc, color="tab:blue")
    axes[0, 0].set_ylabel("validation AUC")
    axes[0, 0].set_xlabel("round")
    for b in range(blocks):
        sizes = np.array([r["group_sizes"][b] for r in rows])  # (rounds, groups)
        ax = axes[1 + b, 0]
        if groups:
            ax.stackplot(
                [r["round"] for r in rows], sizes.T, labels=[f"group {g}" for g in range(groups)], colors=colours
            )
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", ncols=legend_columns)
        ax.set_ylabel(f"block {b} users")
        ax.set_xlabel("round")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())


def output_classification(privacy: dict[str, Any]) -> dict[str, Any]:
    """What the run folder holds, by what covers it (summary.json's "outputs")."""
    covered = (
        "covered by the epsilon in privacy"
        if privacy.get("private")
        else "NOT covered: this run carries no guarantee (privacy.private is false)"
    )
    outside = {
        f"{OPERATOR_ONLY}/metrics.jsonl": "true group sizes per round, fraction of clipped uploads, validation and "
        "test AUC / LogLoss on private held-out data",
        f"{OPERATOR_ONLY}/metrics.csv": "metrics.jsonl's and operator-only/metrics.jsonl's rows joined by round, "
        "as CSV",
        f"{OPERATOR_ONLY}/evaluation.json": "best round, test AUC and LogLoss with interval, temperature, number of "
        "training interactions: computed on private data without noise",
        f"{OPERATOR_ONLY}/predictions.npz": "per-user click probabilities on private held-out items",
        f"{OPERATOR_ONLY}/training.png": "validation AUC and true group sizes per round",
    }
    if privacy.get("clip") is not None and "private data" in str(privacy.get("clip_choice", "")):
        outside["the clip bound C (summary.json privacy.clip)"] = "chosen from private data (declared)"
    return {
        "covered_by_epsilon": {
            "metrics.jsonl: epsilon, group_counts_seen_by_server": covered,
            "the trained global model (not written by `mrff train`)": covered,
        },
        "public": {
            "summary.json: config, parameters, privacy, users, inference_ms_per_user": "configuration, "
            "model size and timing; the number of users is visible to the server",
            "metrics.jsonl: round, participants, train_seconds": "who takes part is visible to the server",
            "metrics.csv": "metrics.jsonl's rows as CSV (lists left out)",
        },
        "outside_the_guarantee": outside,
    }


def _save_checkpoint(
    out: Path,
    sim: FederatedSimulation,
    accountant: PrivacyPipeline,
    best: dict[str, Any] | None,
    best_probs: tuple[np.ndarray, np.ndarray] | None,
    fingerprint: str,
) -> None:
    arrays = {f"sim/{k}": v for k, v in sim.state_arrays().items()}
    if best_probs is not None:
        arrays["best/test_probability"], arrays["best/val_probability"] = best_probs
    meta = {
        "format": CHECKPOINT_FORMAT,
        "rounds_done": sim.round_index,
        "fingerprint": fingerprint,
        "compute_threads": _compute_threads(sim),
        "accountant": accountant.accountant.state_dict(),
        "best": None if best is None else {k: _finite(v) if isinstance(v, float) else v for k, v in best.items()},
    }
    save_arrays(out / CHECKPOINT, arrays, meta)


def _compute_threads(sim: FederatedSimulation) -> int:
    """The torch threads each training computation runs with: this process's, or each Ray actor's. Kernels
    split their work by it and round differently, so a run's result depends on it (not on the backend)."""
    per_actor = getattr(sim, "threads_per_worker", None)
    return int(per_actor) if per_actor is not None else torch.get_num_threads()


def _use_recorded_threads(sim: FederatedSimulation, recorded: int, out: Path) -> None:
    """A resume computes with the thread count the run was trained with, so it continues the same run (a
    resume on another machine or with other threads would otherwise change the result): this process takes
    it; Ray actors, whose count is --threads-per-worker, must be given it."""
    current = _compute_threads(sim)
    if current == recorded:
        return
    if getattr(sim, "threads_per_worker", None) is not None:
        raise ConfigError(
            f"{out} was trained with {recorded} torch threads per computation, and a result depends on the thread "
            f"count: resume it with --threads-per-worker {recorded} (not {current})"
        )
    torch.set_num_threads(recorded)
    log.warning(
        "%s was trained with %d torch threads: the resume computes with %d too (not %d), so it continues the same run",
        out,
        recorded,
        recorded,
        current,
    )


def _load_checkpoint(
    out: Path, sim: FederatedSimulation, accountant: PrivacyPipeline, fingerprint: str
) -> tuple[int, dict[str, Any] | None, tuple[np.ndarray, np.ndarray] | None]:
    """(rounds done, the best round's figures, its (test, val) probabilities) of the checkpoint in `out`."""
    arrays, meta = load_arrays(out / CHECKPOINT)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{out / CHECKPOINT}: unsupported format {meta.get('format')!r}")
    if meta.get("fingerprint") != fingerprint:
        raise CheckpointError(f"{out / CHECKPOINT} belongs to another configuration or dataset than {out}/config.toml")
    if meta.get("compute_threads") is not None:
        _use_recorded_threads(sim, int(meta["compute_threads"]), out)
    sim.load_state_arrays({k[4:]: v for k, v in arrays.items() if k.startswith("sim/")}, meta["rounds_done"])
    accountant.load_accountant_state(meta["accountant"])
    best = meta.get("best")
    if best is not None:
        best = {k: (float("nan") if v is None and k != "round" else v) for k, v in best.items()}
    probs = (
        (arrays["best/test_probability"], arrays["best/val_probability"]) if "best/test_probability" in arrays else None
    )
    return int(meta["rounds_done"]), best, probs


def _read_rows(path: Path, rounds_done: int) -> list[dict[str, Any]]:
    """The rows of a metrics file for the rounds a checkpoint holds (later rows were lost with the crash)."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                break  # a torn last line
            if isinstance(row, dict) and isinstance(row.get("round"), int) and row["round"] < rounds_done:
                rows.append(row)
    return rows


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    write_bytes_atomic(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


def _write_csv(out: Path, public_rows: list[dict[str, Any]], operator_rows: list[dict[str, Any]]) -> None:
    """metrics.csv from the shareable rows; operator-only/metrics.csv from both, joined by round."""
    write_metrics_csv(out / "metrics.csv", public_rows)
    operator_by_round = {r["round"]: r for r in operator_rows}
    joined = [{**p, **operator_by_round.get(p["round"], {})} for p in public_rows]
    write_metrics_csv(out / OPERATOR_ONLY / "metrics.csv", joined)


def run_training(
    data: ClientData,
    model_config: ModelConfig,
    federation: FederationConfig,
    out_dir: str | Path,
    progress: bool = True,
    extra_config: dict[str, Any] | None = None,
    privacy: PrivacySettings | None = None,
    *,
    checkpoint_every: int = 10,
    resume: bool = False,
    fingerprint: str = "",
    should_stop: Callable[[], bool] | None = None,
    backend: str = "single",
    actors: int = 2,
    threads_per_worker: int = 1,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Train for `federation.rounds` rounds, evaluating every `eval_every`; write the run folder.

    Returns summary.json's content plus, under "operator-only", the evaluation written to
    operator-only/evaluation.json (see the module docstring). `privacy` selects local DP, or secure
    aggregation with or without distributed DP; None (or DP off without secure aggregation) is the
    plain path, reported with an infinite epsilon and "private": false.

    A checkpoint is written every `checkpoint_every` rounds and after the last. `resume` continues
    from it (its `fingerprint`, a digest of the configuration, must match). `should_stop()` is asked
    after every round: when true, the round's checkpoint is written and TrainingInterrupted raised.

    `backend` "ray" shards the clients over `actors` Ray actors (federation.ray_backend; the same
    result as "single", the default) on the cluster at `ray_address` or a local Ray instance.
    """
    sim: FederatedSimulation
    if backend == "ray":
        from mrff_secure.federation.ray_backend import RaySimulation

        sim = RaySimulation(
            data,
            model_config,
            federation,
            privacy=privacy,
            actors=actors,
            threads_per_worker=threads_per_worker,
            address=ray_address,
        )
        # where the actors run (node ids) goes into summary.json's config; the console line adds their IPs
        extra_config = {**(extra_config or {}), "ray": sim.placement_summary()}
        print(sim.placement_line(), file=sys.stderr, flush=True)
    elif backend == "single":
        sim = FederatedSimulation(data, model_config, federation, privacy=privacy)
    else:
        raise ConfigError(f"--backend must be single or ray, got {backend!r}")
    try:
        return _run(
            sim,
            data,
            model_config,
            federation,
            Path(out_dir),
            progress,
            extra_config,
            privacy,
            checkpoint_every,
            resume,
            fingerprint,
            should_stop,
        )
    finally:
        sim.close()


def _run(
    sim: FederatedSimulation,
    data: ClientData,
    model_config: ModelConfig,
    federation: FederationConfig,
    out: Path,
    progress: bool,
    extra_config: dict[str, Any] | None,
    privacy: PrivacySettings | None,
    checkpoint_every: int,
    resume: bool,
    fingerprint: str,
    should_stop: Callable[[], bool] | None,
) -> dict[str, Any]:
    operator = out / OPERATOR_ONLY
    operator.mkdir(parents=True, exist_ok=True)
    settings = privacy if privacy is not None else PrivacySettings()
    # The plain path has no pipeline in the simulation; this one only keeps its (infinite) account.
    accountant = (
        sim.privacy
        if sim.privacy is not None
        else PrivacyPipeline(
            settings,
            layout=sim.layout,
            num_users=max(data.num_users, 2),
            maxlen=data.maxlen,
            rounds=federation.rounds,
            sample_rate=federation.client_fraction,
            seed=federation.seed,
            federation_min_group_size=federation.min_group_size,
        )
    )
    metrics_path, operator_metrics_path = out / "metrics.jsonl", operator / "metrics.jsonl"
    best: dict[str, Any] | None = None
    best_probs: tuple[np.ndarray, np.ndarray] | None = None  # the best round's (test, val) probabilities
    first = 0
    if resume:
        first, best, best_probs = _load_checkpoint(out, sim, accountant, fingerprint)
        rows = _read_rows(operator_metrics_path, first)  # operator-only rows (true group sizes, evaluations)
        public_rows = _read_rows(metrics_path, first)
        _write_rows(metrics_path, public_rows)
        _write_rows(operator_metrics_path, rows)
    else:
        metrics_path.write_text("")  # a fresh run starts fresh logs
        operator_metrics_path.write_text("")
        rows, public_rows = [], []
    _write_csv(out, public_rows, rows)
    stopped_early = None  # rounds run when early stopping ended the run
    if federation.patience and best is not None and first and first - 1 - best["round"] >= federation.patience:
        stopped_early = first  # a resumed run that had already stopped early: nothing more to train
    iterator: Iterable[int] = range(first, federation.rounds if stopped_early is None else first)
    bar = None
    if progress:
        from tqdm import tqdm

        iterator = bar = tqdm(
            iterator, desc=f"training {data.name}", unit="round", initial=first, total=federation.rounds
        )
    warnings: list[str] = []
    for r in iterator:
        result = sim.train_round()
        if not all(bool(torch.isfinite(t).all()) for t in sim.global_params.values()):
            raise MrffError(
                f"training diverged in round {r}: the global model has non-finite values (the last "
                f"checkpoint holds round {(r // checkpoint_every) * checkpoint_every}); lower --lr or "
                "--clip, or add --local-steps 1"
            )
        public: dict[str, Any] = {
            "round": r,
            "participants": result.participants,
            "train_seconds": round(result.seconds, 4),
            "group_counts_seen_by_server": result.server_group_counts,
        }
        public.update(accountant.record_round())
        row: dict[str, Any] = {"round": r, "group_sizes": result.group_counts}
        if result.clipped_fraction is not None:
            row["clipped_fraction"] = round(result.clipped_fraction, 4)
        if (r + 1) % federation.eval_every == 0 or r == federation.rounds - 1:
            start = time.perf_counter()
            val = sim.evaluate("val")
            test = sim.evaluate("test")
            row.update(
                val_auc=_finite(val.auc),
                val_logloss=_finite(val.log_loss),
                test_auc=_finite(test.auc),
                test_logloss=_finite(test.log_loss),
                eval_seconds=round(time.perf_counter() - start, 4),
            )
            if (
                best is not None
                and math.isfinite(val.log_loss)
                and math.isfinite(best["val_logloss"])
                and val.log_loss > 2 * best["val_logloss"]
                and not warnings
            ):
                warnings.append(
                    f"validation LogLoss grew from {best['val_logloss']:.4f} (round {best['round']}) to "
                    f"{val.log_loss:.4f} (round {r}): training may be diverging (operator-only evaluation)"
                )
                log.warning(warnings[-1])
            if best is None or (math.isfinite(val.auc) and val.auc > best["val_auc"]):
                best = {
                    "round": r,
                    "val_auc": val.auc,
                    "val_logloss": val.log_loss,
                    "test_auc": test.auc,
                    "test_logloss": test.log_loss,
                }
                best_probs = (test.probabilities, val.probabilities)
            if bar is not None:
                bar.set_postfix(val_auc=f"{val.auc:.4f}", test_auc=f"{test.auc:.4f}")
        log.info(
            "round %d: %d participants, %.2f s, epsilon so far %s",
            r,
            result.participants,
            result.seconds,
            format_epsilon(public.get("epsilon")),
        )
        rows.append(row)
        public_rows.append(public)
        with metrics_path.open("a") as handle:
            handle.write(json.dumps(public) + "\n")
        with operator_metrics_path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        _write_csv(out, public_rows, rows)
        stopping = should_stop is not None and should_stop()
        converged = False
        if federation.patience and best is not None and r - best["round"] >= federation.patience:
            converged = True
            stopped_early = r + 1
            log.info("early stopping after round %d: validation AUC best at round %d", r, best["round"])
        if converged or stopping or (r + 1) % checkpoint_every == 0 or r == federation.rounds - 1:
            _save_checkpoint(
                out,
                sim,
                accountant,
                best,
                best_probs,
                fingerprint,
            )
        if stopping and r < federation.rounds - 1 and not converged:
            raise TrainingInterrupted(r + 1)
        if converged:
            break
    privacy_json = privacy_summary(accountant, participants_per_round=len(sim.sample_clients(0)))
    summary: dict[str, Any] = {
        "kind": "training",
        "dataset": data.name,
        "users": data.num_users,
        "rounds": federation.rounds,
        "rounds_run": stopped_early or federation.rounds,
        "stopped_early": stopped_early is not None,
        "participants_per_round": spread([r["participants"] for r in public_rows]),
        "parameters": parameter_counts(sim),
        "paper_sasrec_parameters": PAPER_SASREC_PARAMETERS,
        "inference_ms_per_user": round(inference_ms_per_user(sim), 5),
        "config": {
            "model": asdict(model_config),
            "federation": asdict(federation),
            "privacy": accountant.describe(),
            **(extra_config or {}),
        },
        "privacy": privacy_json,
        "outputs": output_classification(privacy_json),
    }
    evaluation: dict[str, Any] = {
        "outside_the_guarantee": "computed on private data without noise; operator only",
        "train_interactions": data.num_train_interactions,
        "warnings": warnings,
    }
    if best is not None:
        if best_probs is None:
            raise CheckpointError(f"{out / CHECKPOINT} names a best round but holds none of its predictions")
        best_test_probs, best_val_probs = best_probs
        _, low, high = auc_confidence_interval(data.test_label, best_test_probs)
        evaluation.update(
            best_round=best["round"],
            val_auc=_finite(best["val_auc"]),
            val_logloss=_finite(best["val_logloss"]),
            test_auc=_finite(best["test_auc"]),
            test_logloss=_finite(best["test_logloss"]),
            test_auc_ci95=[_finite(low), _finite(high)],
        )
        # Post-hoc temperature scaling fitted on validation (reported beside the raw figure, never instead of it).
        temperature = fit_temperature(data.val_label, best_val_probs)
        evaluation["calibration"] = {
            "method": "temperature scaling fitted on the validation predictions of the best round",
            "temperature": temperature,
            "test_logloss_calibrated": _finite(
                log_loss(data.test_label, apply_temperature(best_test_probs, temperature))
            ),
        }
        buffer = io.BytesIO()
        np.savez(
            buffer,
            user_ids=data.user_ids,
            val_probability=best_val_probs,
            val_label=data.val_label,
            test_probability=best_test_probs,
            test_label=data.test_label,
            best_round=np.int64(best["round"]),
        )
        write_bytes_atomic(operator / "predictions.npz", buffer.getvalue())
    write_json_atomic(operator / "evaluation.json", evaluation)
    write_json_atomic(out / "summary.json", summary)
    if rows:
        plot_training(rows, operator / "training.png")
    return {**summary, OPERATOR_ONLY: evaluation}

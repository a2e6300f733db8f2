"""The audit grid: every attack in every cell it applies to; the rules and the verdict are attacks.rules.

A cell = (threat model, noise level, seed). Noise levels are noise multipliers z at a public clip C
(noise std z*C on every uploaded coordinate: the paper's Table 2 levels 0.1 ... 0.5 at C = 1), or a
target epsilon (the accountant calibrates z: the cells where the canaries can refute a claim). Each
cell trains a fresh simulation for R rounds and runs, on the view of its threat model only:
interaction reconstruction (`attacks.reconstruction`), interaction membership inference
(`attacks.membership`), user-attribute inference (`attacks.attributes`), group-membership inference
(`attacks.groups`) and, in every cell with a privacy pipeline and every client in every round, m
canaries with the exact mechanism check (`attacks.canary`: contributions inserted in the real release
path, not users). Cells with a client fraction below 1 (the server sees who took part in each sum) add
disaggregation across rounds (`attacks.disaggregation`). The accountant's claim (epsilon, delta,
adjacency, mechanism) sits beside every result.

secagg+dp cells size their noise shares for 30% dropouts (`AUDIT_MAX_DROPOUT`), as a network run does, so
the released noise is that of every participant's share while the claim counts the n_min survivors'.

TESTING THE AUDIT ONLY: `Cell.misreport_noise` (a false claim) and `Cell.planted_defect` (a defect of
`mrff_secure.federation.planted_defects` in the real code path) are how the audit's power is measured
(`benchmarks/audit_power.py`, tests/attacks/test_canary_mechanism.py).
"""

from __future__ import annotations

import math
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from attacks.active import run_active_attacks
from attacks.attributes import UserColumnRecorder, infer_attributes
from attacks.canary import CanaryAudit, claimed_noise_std
from attacks.disaggregation import disaggregate
from attacks.groups import GroupRecorder, infer_groups
from attacks.membership import item_membership
from attacks.network_cell import NetworkCellError, run_network_cell
from attacks.oracle import membership_ceiling
from attacks.reconstruction import reconstruct_rows
from attacks.recorder import RowRecorder
from attacks.rows import ItemRows
from attacks.rules import DP_THREAT_MODELS, FAMILY_CONFIDENCE, evaluate_rules, overall_verdict

__all__ = ["Cell", "default_cells", "evaluate_rules", "grid_report", "run_cell", "run_grid"]
from attacks.scores import accuracy_standard_error, auc_standard_error
from mrff_secure.checks import check_choice, check_number
from mrff_secure.config import FederationConfig, ModelConfig
from mrff_secure.data.client_data import ClientData
from mrff_secure.dp import DPConfig
from mrff_secure.dp.accounting import json_epsilon
from mrff_secure.errors import ConfigError, PrivacyError
from mrff_secure.federation.client_shard import UpdateTransform, block_rows
from mrff_secure.federation.planted_defects import PLANTED_DEFECTS, check_defect
from mrff_secure.federation.privacy_pipeline import PrivacyPipeline
from mrff_secure.federation.privacy_summary import noise_source
from mrff_secure.federation.simulation import FederatedSimulation, RoundObserver, ServerView
from mrff_secure.provenance import source_commit
from mrff_secure.round.accountant import SAMPLING_TEXT, RoundAccountant
from mrff_secure.round.release import RoundRelease
from mrff_secure.round.spec import SUM_VIEWS, PrivacySettings, SecureAggregation, ThreatModel

AUDIT_MAX_DROPOUT = 0.3  # secagg+dp cells size noise shares for 30% dropouts, as a network run does
AUDIT_MODULUS_BITS = 48  # the ring of the grid's secure cells (its committed results were measured with it)
GRID_THREAT_MODELS = (ThreatModel.PLAIN, ThreatModel.SECAGG, ThreatModel.SECAGG_DP, ThreatModel.LOCAL_DP)
SAMPLED_ROUNDS = 30  # cells with a client fraction below 1: enough rounds in and out for every user


@dataclass(frozen=True)
class Cell:
    threat_model: str
    noise_multiplier: float = 0.0  # used when target_epsilon is None
    target_epsilon: float | None = None
    seed: int = 0
    client_fraction: float = 1.0
    rounds: int | None = None  # None: the grid's rounds
    misreport_noise: float = 1.0
    """TESTING THE AUDIT ONLY: the claim (the accountant's epsilon, the mechanism check) is made for
    noise_multiplier x misreport_noise while the noise actually added is noise_multiplier: with a
    factor > 1 the claim is false, and the audit must say so."""
    planted_defect: str | None = None
    """TESTING THE AUDIT ONLY: a defect of `mrff_secure.federation.planted_defects` switched on in the real
    code path of the cell's run; the claim stays the honest one, and the audit must say it fails."""

    def __post_init__(self) -> None:
        check_number("misreport_noise", self.misreport_noise, low=0.0, low_open=True)
        check_defect(self.planted_defect)
        check_number("client_fraction", self.client_fraction, low=0.0, high=1.0, low_open=True)
        check_choice("a grid cell's threat model", self.threat_model, GRID_THREAT_MODELS)
        dp = self.threat_model in DP_THREAT_MODELS
        if dp and self.target_epsilon is None and not self.noise_multiplier > 0:
            raise ConfigError(f"a {self.threat_model} cell needs a noise multiplier > 0 or a target epsilon")
        if not dp and (self.noise_multiplier != 0.0 or self.target_epsilon is not None):
            raise ConfigError(f"a {self.threat_model} cell has no noise")

    def to_dict(self) -> dict[str, Any]:
        return {
            "threat_model": self.threat_model,
            "noise_multiplier": self.noise_multiplier,
            "target_epsilon": self.target_epsilon,
            "seed": self.seed,
            "client_fraction": self.client_fraction,
            "rounds": self.rounds,
            "misreport_noise": self.misreport_noise,
            "planted_defect": self.planted_defect,
        }

    @property
    def slug(self) -> str:
        """A file name for the cell's result."""
        return "".join(ch if ch.isalnum() or ch in "=.-" else "_" for ch in self.name)

    @property
    def name(self) -> str:
        level = f"eps={self.target_epsilon:g}" if self.target_epsilon is not None else f"z={self.noise_multiplier:g}"
        sampled = f" q={self.client_fraction:g}" if self.client_fraction < 1.0 else ""
        lie = f" MISREPORTED x{self.misreport_noise:g}" if self.misreport_noise != 1.0 else ""
        defect = f" DEFECT {self.planted_defect}" if self.planted_defect else ""
        return f"{self.threat_model} {level}{sampled}{lie}{defect} seed={self.seed}"

    def privacy(self, clip: float) -> tuple[PrivacySettings | None, bool]:
        """(settings, plain_individual_view) of the cell's simulation."""
        if self.threat_model == ThreatModel.PLAIN:
            return None, True
        if self.threat_model == ThreatModel.SECAGG:  # the real secure path without noise (canaries need it)
            off = DPConfig(mode="off", clip=clip)
            return PrivacySettings(
                dp=off, secure_aggregation=SecureAggregation.FAST, modulus_bits=AUDIT_MODULUS_BITS
            ), False
        dp = DPConfig(
            mode="local" if self.threat_model == ThreatModel.LOCAL_DP else "distributed",
            clip=clip,
            noise_multiplier=None if self.target_epsilon is not None else self.noise_multiplier,
            target_epsilon=self.target_epsilon,
            max_dropout_fraction=AUDIT_MAX_DROPOUT if self.threat_model == ThreatModel.SECAGG_DP else 0.0,
        )
        if self.threat_model == ThreatModel.SECAGG_DP:
            return PrivacySettings(
                dp=dp, secure_aggregation=SecureAggregation.FAST, modulus_bits=AUDIT_MODULUS_BITS
            ), True
        return PrivacySettings(dp=dp), True


def default_cells(
    *,
    levels: Sequence[float] = (0.1, 0.3, 0.5),
    targets: Sequence[float] = (1.0, 4.0),
    seeds: Sequence[int] = (0,),
    sampled: float | None = 0.1,
) -> list[Cell]:
    cells: list[Cell] = []
    for seed in seeds:
        cells += [Cell(ThreatModel.PLAIN, seed=seed), Cell(ThreatModel.SECAGG, seed=seed)]
        for model in DP_THREAT_MODELS:
            cells += [Cell(model, noise_multiplier=z, seed=seed) for z in levels]
            cells += [Cell(model, target_epsilon=e, seed=seed) for e in targets]
        if sampled is not None:  # disaggregation across rounds: secure aggregation alone, and with DP
            cells += [
                Cell(ThreatModel.SECAGG, seed=seed, client_fraction=sampled, rounds=SAMPLED_ROUNDS),
                Cell(
                    ThreatModel.SECAGG_DP,
                    noise_multiplier=max(levels),
                    seed=seed,
                    client_fraction=sampled,
                    rounds=SAMPLED_ROUNDS,
                ),
            ]
    return cells


class _Both:
    def __init__(self, *observers: RoundObserver) -> None:
        self.observers = observers

    def on_round(self, view: ServerView) -> None:
        for observer in self.observers:
            observer.on_round(view)


def _clean(value: Any) -> Any:
    """JSON-ready: numpy scalars to Python, non-finite floats to strings."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else ("inf" if value > 0 else ("-inf" if value < 0 else "nan"))
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


class _Chain:
    """Several update transforms, one after the other (each sees the previous one's output)."""

    def __init__(self, *transforms: UpdateTransform) -> None:
        self.transforms = transforms

    def __call__(self, vectors: torch.Tensor, round_index: int, rows: np.ndarray) -> torch.Tensor:
        for transform in self.transforms:
            vectors = transform(vectors, round_index, rows)
        return vectors


def _claimed_release(pipeline: PrivacyPipeline, misreport_noise: float) -> RoundRelease:
    """What the run tells its accountant a round releases (a misreported cell: at z x misreport_noise)."""
    release = pipeline.accounted_release()
    if misreport_noise != 1.0:
        release = release.with_noise_multiplier(release.noise_multiplier * misreport_noise)
    return release


def _claim(pipeline: PrivacyPipeline, *, misreport_noise: float = 1.0) -> tuple[dict[str, Any], float, float]:
    """The privacy claim a cell tests, read from the run's accountant: (claim, noise multiplier, delta).

    misreport_noise != 1 builds the deliberately false claim of an audit test: the same history of releases
    at a noise multiplier scaled by it, accounted as if that were the noise added.
    """
    accountant = pipeline.accountant
    if not all(isinstance(entry, RoundRelease) for entry, _ in accountant.history):
        raise PrivacyError("an audited simulation's history holds training rounds only")
    if misreport_noise != 1.0:
        claimed = RoundAccountant(delta=accountant.delta, sample_rate=accountant.sample_rate)
        for release, rounds in accountant.history:
            assert isinstance(release, RoundRelease)  # checked above
            for _ in range(rounds):
                claimed.step(release=release.with_noise_multiplier(release.noise_multiplier * misreport_noise))
        accountant = claimed
    account = accountant.account()
    release = accountant.history[-1][0]
    assert isinstance(release, RoundRelease)  # checked above
    claim = {
        "epsilon": json_epsilon(account.epsilon),
        "delta": account.delta,
        "adjacency": account.adjacency,
        "mechanism": account.mechanism,
        "noise_multiplier": release.noise_multiplier,
        "clip": release.clip,
        "rounds": account.rounds,
        "sample_rate": accountant.sample_rate,
        "epsilon_bound": account.bound,
        "noise_source": noise_source(pipeline),
        "sampling": SAMPLING_TEXT,
        "modulus_bits": release.modulus_bits if release.secure_aggregation else None,
        "min_group_size": pipeline.min_group_size,
    }
    replace_one = getattr(account, "epsilon_replace_one", None)
    if replace_one is not None:
        claim["epsilon_replace_one"] = json_epsilon(replace_one)
    return claim, release.noise_multiplier, account.delta


def _view_noise_std(pipeline: PrivacyPipeline | None, cell: Cell) -> float:
    """The per-coordinate std of the noise the cell's claim says each round's view carries (0 without DP):
    local DP z C; a secure sum every participant's share, z C sqrt(n / n_min). A misreported cell's attacks
    use its false claim, as an attacker who believes it would."""
    if pipeline is None or not pipeline.dp.enabled:
        return 0.0
    release = _claimed_release(pipeline, cell.misreport_noise)
    return claimed_noise_std(release, release.participants)


def _item_coordinates(rows: ItemRows) -> np.ndarray:
    """The update vector's coordinates inside the item tables (the row attacks' slice: no canary there)."""
    return np.concatenate([np.arange(s, s + v * rows.dim) for s, v in zip(rows.starts, rows.vocab_sizes)])


def run_cell(
    cell: Cell,
    data: ClientData,
    *,
    model: ModelConfig,
    rounds: int,
    canaries: int,
    clip: float,
    on_round: Callable[[int, int], None] | None = None,
) -> dict:
    """Train one cell (with its canaries when every client takes part) and run every attack on its view.
    `on_round(done, total)` is called after each round (a progress bar)."""
    start = time.perf_counter()
    torch.manual_seed(cell.seed)
    rounds = cell.rounds if cell.rounds is not None else rounds
    settings, individual = cell.privacy(clip)
    federation = FederationConfig(rounds=rounds, seed=cell.seed, client_fraction=cell.client_fraction)
    sim = FederatedSimulation(data, model, federation, plain_individual_view=individual, privacy=settings)
    if cell.planted_defect and sim.privacy is None:
        raise ConfigError(f"cell {cell.name}: a defect can only be planted in a cell with a privacy pipeline")
    if sim.privacy is not None:
        sim.privacy.planted_defect = check_defect(cell.planted_defect)
    layout = sim.layout
    rows = ItemRows.from_layout(layout, data.item_attributes)
    recorder = RowRecorder(rows, data.num_users)
    user_dim = sim.model.user_dim  # the private user vector's width (every backbone sets it)
    if not isinstance(user_dim, int):
        raise ConfigError(f"the {model.backbone} model has no integer user_dim")
    columns = UserColumnRecorder(layout, user_dim, data.num_users)
    groups = GroupRecorder(layout, data.num_users)
    observers: list[RoundObserver] = [recorder, columns, groups]
    transforms: list[UpdateTransform] = [groups.transform]
    audit = None
    claimed_release = None
    if sim.privacy is not None and cell.client_fraction >= 1.0 and canaries > 0:
        claimed_release = _claimed_release(sim.privacy, cell.misreport_noise)
        audit = CanaryAudit(
            sim.privacy,
            num_canaries=canaries,
            excluded=_item_coordinates(rows),
            block_rows=block_rows(federation),
        )
        audit.claimed_release = claimed_release
        observers.append(audit)
        transforms.append(audit.transform)
    sim.observer, sim.update_transform = _Both(*observers), _Chain(*transforms)  # attached before any round
    for done in range(1, rounds + 1):
        sim.train_round()
        if sim.privacy is not None:
            sim.privacy.record_round()
        if on_round is not None:
            on_round(done, rounds)
    if sim.privacy is not None:
        claim, z, delta = _claim(sim.privacy, misreport_noise=cell.misreport_noise)
    else:
        z, delta = 0.0, 1.0 / data.num_users**1.1
        claim = {
            "epsilon": "inf",
            "delta": delta,
            "adjacency": None,
            "mechanism": None,
            "noise_multiplier": 0.0,
            "clip": None,
            "rounds": rounds,
            "sample_rate": cell.client_fraction,
        }
    canary = None
    if audit is not None and claimed_release is not None:
        canary = audit.result(claimed_std=claimed_noise_std(claimed_release, claimed_release.participants))
    view_noise = _view_noise_std(sim.privacy, cell)  # the attacks' null: the claimed noise of the view
    recon = reconstruct_rows(recorder, data, noise_std=view_noise)
    membership = item_membership(recorder, data, seed=cell.seed, noise_std=view_noise)
    oracle = None
    if cell.threat_model == ThreatModel.PLAIN:  # R0's membership bar: what an oracle of the touched rows reaches
        ceiling = membership_ceiling(data, seed=cell.seed)
        oracle = {k: ceiling[k] for k in ("oracle_auc_rows", "oracle_auc_counts")}
    attributes = infer_attributes(columns, data, model, seed=cell.seed)
    group_result = infer_groups(groups, data.num_users)
    disaggregation = (
        disaggregate(recorder, data) if cell.threat_model in SUM_VIEWS and cell.client_fraction < 1.0 else None
    )
    utility = sim.evaluate("test")
    scores = {
        "reconstruction_f1": recon["f1"],
        "reconstruction_auc": recon["auc"],
        "membership_auc": membership["auc"],
        "attribute_advantage": attributes["mean_advantage"],
        "group_accuracy": group_result.get("accuracy"),
        "group_advantage": group_result.get("advantage"),
        "canary_auc": canary["canary_auc"] if canary else None,
    }
    users = data.num_users
    errors = {
        "reconstruction_auc": auc_standard_error(recon["auc"], recon["positives"], recon["negatives"]),
        "membership_auc": auc_standard_error(membership["auc"], membership["positives"], membership["negatives"]),
        "attribute_advantage": max(
            accuracy_standard_error(f["accuracy"], users) for f in attributes["fields"].values()
        ),
        "group_advantage": (
            accuracy_standard_error(group_result["accuracy"], users) if group_result.get("applicable") else None
        ),
        "canary_auc": (
            auc_standard_error(canary["canary_auc"], canary["canary_positives"], canary["canary_negatives"])
            if canary
            else None
        ),
    }
    if disaggregation and disaggregation.get("applicable"):
        rare = disaggregation.get("rare_rows", {})
        scores["disaggregation_rare_auc"] = rare.get("auc")
        scores["disaggregation_rare_advantage"] = rare.get("advantage_auc")
        if rare.get("applicable", True) and rare.get("auc") is not None:
            errors["disaggregation_rare_advantage"] = auc_standard_error(
                rare["auc"], rare["positives"], rare["negatives"]
            )
    return _clean(
        {
            "cell": cell.name,
            "threat_model": cell.threat_model,
            "seed": cell.seed,
            "client_fraction": cell.client_fraction,
            "noise_multiplier": z,
            "target_epsilon": cell.target_epsilon,
            "misreport_noise": cell.misreport_noise,
            "planted_defect": cell.planted_defect,
            "planted_defect_meaning": PLANTED_DEFECTS.get(cell.planted_defect or ""),
            "claim": claim,
            "view": {"rounds": recorder.rounds, "rounds_with_individual_updates": recorder.individual_views},
            "reconstruction": recon,
            "membership": membership,
            "oracle": oracle,
            "attributes": attributes,
            "groups": group_result,
            "canary": canary,
            "disaggregation": disaggregation,
            "utility": {
                "test_auc": utility.auc,
                "test_log_loss": utility.log_loss,
                "note": "evaluated on private held-out data without noise: operator only",
            },
            "scores": scores,
            "standard_errors": errors,
            "seconds": time.perf_counter() - start,
        }
    )


def _network_cell() -> dict[str, Any]:
    """The network cell in a folder of its own; a cell that cannot run is inconclusive, with the reason."""
    with tempfile.TemporaryDirectory(prefix="mrff-network-cell-") as folder:
        try:
            return run_network_cell(Path(folder), timeout_s=90)
        except NetworkCellError as exc:
            return {"verdict": "inconclusive", "leaked": [], "lies": {}, "error": str(exc)}


def run_grid(
    data: ClientData,
    cells: list[Cell],
    *,
    model: ModelConfig | None = None,
    rounds: int = 5,
    canaries: int = 100,
    clip: float = 1.0,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Every cell, then the rules. `progress(cell_result)` is called after each cell."""
    model = model or ModelConfig(maxlen=data.maxlen)
    results = []
    for cell in cells:
        results.append(run_cell(cell, data, model=model, rounds=rounds, canaries=canaries, clip=clip))
        if progress is not None:
            progress(results[-1])
    return grid_report(data, results, rounds=rounds, canaries=canaries, clip=clip)


def grid_report(
    data: ClientData,
    results: list[dict],
    *,
    rounds: int,
    canaries: int,
    clip: float,
    family_confidence: float = FAMILY_CONFIDENCE,
    network_cell: bool = False,
) -> dict[str, Any]:
    """The grid's report from finished cells: the malicious-server cells (and, with `network_cell`, a real
    server and clients on loopback against a lying server: `attacks.network_cell`), the rules, provenance."""
    active = run_active_attacks()
    rules = evaluate_rules(results, family_confidence=family_confidence)
    rules["malicious-server"] = {
        "verdict": active["verdict"],
        "leaked": active["leaked"],
        "refused": sorted(n for n, r in active["attacks"].items() if r["outcome"] == "refused"),
    }
    network = _network_cell() if network_cell else None
    if network is not None:
        rules["network"] = {
            "verdict": network["verdict"],
            "leaked": network.get("leaked", []),
            "outcomes": {name: lie["outcome"] for name, lie in network.get("lies", {}).items()},
        }
    verdict = overall_verdict(rules, results)
    return _clean(
        {
            "verdict": verdict,
            "dataset": data.name,
            "users": data.num_users,
            "rounds": rounds,
            "canaries": canaries,
            "clip": clip,
            "commit": source_commit(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cells": results,
            "malicious_server": active,
            "network_cell": network,
            "rules": rules,
        }
    )

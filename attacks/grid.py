"""The audit grid: every attack in every cell it applies to, and the rules R0-R5 that check the claims.

A cell = (threat model, noise level, seed). Noise levels are noise multipliers z at a public clip C
(noise std z*C on every uploaded coordinate: the paper's Table 2 levels 0.1 ... 0.5 at C = 1), or a
target epsilon (the accountant calibrates z: the cells where a lower bound can refute a claim). Each
cell trains a fresh simulation with m canary clients (`attacks.canary`) for R rounds and runs, on the
view of its threat model only: interaction reconstruction (`attacks.reconstruction`), interaction
membership inference (`attacks.membership`), user-attribute inference (`attacks.attributes`),
group-membership inference (`attacks.groups`) and the canary audit. Cells with a client fraction
below 1 (the server sees who took part in each sum) have no canaries (a canary must be in every
round) and add disaggregation across rounds (`attacks.disaggregation`). The accountant's epsilon
(the headline, with its adjacency) sits beside every result.

Rules (verdicts: holds / fails / inconclusive / not refutable at m):
- R0 power, at plain noise 0: reconstruction F1 >= 0.95, interaction-MIA AUC >= 0.9, attribute
  inference >= 0.2 above the majority baseline, group inference accuracy >= 0.95, canary AUC = 1.
  An attack without power proves nothing elsewhere: the verdict is inconclusive and names it.
- R1 bound, every DP cell: the canary epsilon lower bound (split half) <= the claimed epsilon;
  "not refutable at m" where the claim exceeds what m canaries can certify.
- R2 mechanism, every DP cell: the interval of mu_hat does not lie above the claimed mu = sqrt(R)/z
  (more separation than the mechanism allows = less noise than claimed).
  R1, R2 and R3 hold for all DP cells together at 95% (Bonferroni over the cells: each cell's bound or
  interval at 1 - 0.05 / cells), so a grid of 30 cells does not fail one claim by chance.
- R3 trade-off, every DP cell: at FPR 0.01, 0.05, 0.1 the canary test's lower confidence bound on
  TPR stays under the claimed (epsilon, delta) curve at the upper bound on FPR.
- R4 secure aggregation, every secagg / secagg+dp cell: no individual update in any view, and no
  per-user attack gains significantly more than 0.05 (AUC or accuracy; more than 0.05 + 2.33
  standard errors) over the population baseline (under secagg+dp disaggregation across rounds
  included). Canaries separated at secagg noise 0, and what attacks recover under secagg with
  sampling, are reported as findings: "secure aggregation alone is not DP".
- R5 monotone, per threat model: no attack's score above chance grows significantly (by more than
  0.05 + 2.33 combined standard errors) from one noise level to a larger one (scores below chance, an
  AUC under 0.5 or an accuracy under the majority baseline, count as chance). Under sum views the population-level
  reconstruction and membership scores are left to R4.
- malicious-server: every active attack of `attacks.active` refused by the real client code.
The one-run bound (Steinke, Nasr, Jagielski 2023, delta = 0 form) is reported beside R1 as a second
opinion, never as a verdict.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from scipy import stats

from attacks.active import run_active_attacks
from attacks.attributes import UserColumnRecorder, infer_attributes
from attacks.bounds import split_half_bound, tradeoff_check
from attacks.canary import CanaryAudit, with_canaries
from attacks.disaggregation import disaggregate
from attacks.groups import GroupRecorder, infer_groups
from attacks.membership import item_membership
from attacks.reconstruction import reconstruct_rows
from attacks.recorder import RowRecorder
from attacks.rows import ItemRows
from attacks.scores import accuracy_standard_error, auc_standard_error
from mrff_secure.checks import check_choice, check_number
from mrff_secure.config import FederationConfig, ModelConfig
from mrff_secure.data.client_data import ClientData
from mrff_secure.dp import DPConfig
from mrff_secure.dp.accounting import json_epsilon
from mrff_secure.errors import ConfigError, PrivacyError
from mrff_secure.federation.client_shard import UpdateTransform
from mrff_secure.federation.privacy_pipeline import PrivacyPipeline
from mrff_secure.federation.privacy_summary import noise_source
from mrff_secure.federation.simulation import FederatedSimulation, RoundObserver, ServerView
from mrff_secure.provenance import source_commit
from mrff_secure.round.accountant import SAMPLING_TEXT, RoundAccountant
from mrff_secure.round.release import RoundRelease
from mrff_secure.round.spec import SUM_VIEWS, PrivacySettings, SecureAggregation, ThreatModel

AUDIT_MODULUS_BITS = 48  # the ring of the grid's secure cells (its committed results were measured with it)
GRID_THREAT_MODELS = (ThreatModel.PLAIN, ThreatModel.SECAGG, ThreatModel.SECAGG_DP, ThreatModel.LOCAL_DP)
DP_THREAT_MODELS = (ThreatModel.SECAGG_DP, ThreatModel.LOCAL_DP)
POWER = {
    "reconstruction_f1": 0.95,
    "membership_auc": 0.9,
    "attribute_advantage": 0.2,
    "group_accuracy": 0.95,
    "canary_auc": 1.0,
}
R4_MAX_ADVANTAGE = 0.05
R5_TOLERANCE = 0.05
FAMILY_CONFIDENCE = 0.95  # default: R1-R3 hold together for every DP cell of the grid at this confidence (Bonferroni)
SIGNIFICANCE_Z = 2.33  # a gain breaks a rule only when it exceeds the tolerance by 2.33 standard errors (1%)
ATTACK_SCORES = ("reconstruction_auc", "membership_auc", "attribute_advantage", "group_advantage", "canary_auc")
CHANCE = {
    "reconstruction_auc": 0.5,
    "membership_auc": 0.5,
    "attribute_advantage": 0.0,
    "group_advantage": 0.0,
    "canary_auc": 0.5,
}
"""Where each score carries no signal: R5 reads max(score, chance), since a score moving about below
chance is no attack getting stronger."""
SUM_VIEW_POPULATION_SCORES = ("reconstruction_auc", "membership_auc")
"""Under a sum view these score every user alike (population level, judged against the population by R4),
so R5 does not read them there."""
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

    def __post_init__(self) -> None:
        check_number("misreport_noise", self.misreport_noise, low=0.0, low_open=True)
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
        return f"{self.threat_model} {level}{sampled}{lie} seed={self.seed}"

    def privacy(self, clip: float) -> tuple[PrivacySettings | None, bool]:
        """(settings, plain_individual_view) of the cell's simulation."""
        if self.threat_model == ThreatModel.PLAIN:
            return None, True
        if self.threat_model == ThreatModel.SECAGG:
            return None, False
        dp = DPConfig(
            mode="local" if self.threat_model == ThreatModel.LOCAL_DP else "distributed",
            clip=clip,
            noise_multiplier=None if self.target_epsilon is not None else self.noise_multiplier,
            target_epsilon=self.target_epsilon,
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
    return claim, release.noise_multiplier, account.delta


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
    with_audit = cell.client_fraction >= 1.0 and canaries > 0
    audited = with_canaries(data, canaries, seed=cell.seed) if with_audit else data
    settings, individual = cell.privacy(clip)
    federation = FederationConfig(rounds=rounds, seed=cell.seed, client_fraction=cell.client_fraction)
    sim = FederatedSimulation(audited, model, federation, plain_individual_view=individual, privacy=settings)
    layout = sim.layout
    recorder = RowRecorder(ItemRows.from_layout(layout, audited.item_attributes), audited.num_users)
    user_dim = sim.model.user_dim  # the private user vector's width (every backbone sets it)
    if not isinstance(user_dim, int):
        raise ConfigError(f"the {model.backbone} model has no integer user_dim")
    columns = UserColumnRecorder(layout, user_dim, audited.num_users)
    groups = GroupRecorder(layout, audited.num_users)
    observers: list[RoundObserver] = [recorder, columns, groups]
    transforms: list[UpdateTransform] = [groups.transform]
    audit = None
    if with_audit:
        audit = CanaryAudit(
            layout,
            first_row=data.num_users,
            num_canaries=canaries,
            clip=clip,
            clip_uploads=cell.threat_model in DP_THREAT_MODELS,
        )
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
        z, delta = 0.0, 1.0 / audited.num_users**1.1
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
    recon = reconstruct_rows(recorder, data)
    membership = item_membership(recorder, data, seed=cell.seed)
    attributes = infer_attributes(columns, data, model, seed=cell.seed)
    group_result = infer_groups(groups, data.num_users)
    canary = audit.result(noise_multiplier=z, delta=delta) if audit is not None else None
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
            "claim": claim,
            "view": {"rounds": recorder.rounds, "rounds_with_individual_updates": recorder.individual_views},
            "reconstruction": recon,
            "membership": membership,
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


def _num(value: Any) -> float:
    """A JSON-ready number ("inf", "nan" strings included) back to float."""
    return float(value)


def _verdict(cells: dict) -> str:
    verdicts = {c["verdict"] for c in cells.values()}
    if "fails" in verdicts:
        return "fails"
    if not verdicts:
        return "not applicable"
    return "holds" if verdicts == {"holds"} else ("not refutable at m" if "not refutable at m" in verdicts else "holds")


def evaluate_rules(results: list[dict], *, family_confidence: float = FAMILY_CONFIDENCE) -> dict[str, Any]:
    """The verdict of every rule, with its evidence. R1-R3 hold together over all DP cells at
    `family_confidence`: an honest mechanism fails one of them by chance with probability at most
    1 - family_confidence (the canary noise is fresh in every run), a false claim fails them the more
    surely the lower it is."""
    check_number("the audit's confidence", family_confidence, low=0.5, high=1.0, high_open=True)
    rules: dict[str, Any] = {}
    plain = [r for r in results if r["threat_model"] == ThreatModel.PLAIN]
    if not plain:
        rules["R0"] = {"verdict": "inconclusive", "evidence": "no plain cell: the attacks' power is unknown"}
    else:
        lacking = sorted(
            {
                name
                for r in plain
                for name, bar in POWER.items()
                if r["scores"].get(name) is None or not _num(r["scores"][name]) >= bar
            }
        )
        rules["R0"] = {
            "verdict": "holds" if not lacking else "inconclusive",
            "attacks_without_power": lacking,
            "thresholds": POWER,
            "evidence": {r["cell"]: {k: r["scores"].get(k) for k in POWER} for r in plain},
        }
    r1, r2, r3 = {}, {}, {}
    audited = [r for r in results if r["threat_model"] in DP_THREAT_MODELS and r.get("canary")]
    # Bonferroni over the cells: every claim of the grid holds together at family_confidence, so that a
    # grid of 30 cells does not fail one by chance (at 0.95 each cell's test at 1 - 0.05 / 30)
    alpha = (1.0 - family_confidence) / max(1, len(audited))
    z_crit = float(stats.norm.ppf(1.0 - alpha / 2))
    for r in audited:
        claimed, delta = _num(r["claim"]["epsilon"]), _num(r["claim"]["delta"])
        scores, included = np.asarray(r["canary"]["scores"]), np.asarray(r["canary"]["included"], dtype=bool)
        bound = split_half_bound(
            scores, included, delta=delta, alpha=alpha, seed=int(r["canary"]["sealed_seed"]) % 2**32
        )
        lower, ceiling = _num(bound["epsilon_lower_bound"]), _num(bound["max_certifiable"])
        verdict = "fails" if lower > claimed else ("not refutable at m" if claimed >= ceiling else "holds")
        r1[r["cell"]] = {
            "verdict": verdict,
            "epsilon_lower_bound": lower,
            "claimed_epsilon": claimed,
            "max_certifiable": ceiling,
            "canaries": r["canary"]["canaries"],
            "confidence_per_cell": 1 - alpha,
            "one_run_second_opinion": r["canary"]["one_run"]["epsilon_lower_bound"],
        }
        mech = dict(r["canary"]["mechanism"])
        mu_hat, (low95, high95) = _num(mech["mu_hat"]), (_num(x) for x in mech["mu_hat_95"])
        se = (high95 - low95) / (2 * 1.96) if math.isfinite(high95 - low95) else 0.0
        interval = [mu_hat - z_crit * se, mu_hat + z_crit * se] if math.isfinite(mu_hat) else [mu_hat, mu_hat]
        r2[r["cell"]] = {
            "verdict": "fails" if interval[0] > _num(mech["claimed_mu"]) else "holds",
            **mech,
            "mu_hat_family": interval,
            "confidence_per_cell": 1 - alpha,
        }
        r3[r["cell"]] = tradeoff_check(scores, included, epsilon=claimed, delta=delta, alpha=alpha, seed=r["seed"])
    family = {"family_confidence": family_confidence, "cells_tested": len(audited)}
    rules["R1"] = {"verdict": _verdict(r1), **family, "cells": r1}
    rules["R2"] = {"verdict": _verdict(r2), **family, "cells": r2}
    rules["R3"] = {"verdict": _verdict(r3), **family, "cells": _clean(r3)}
    r4 = {}
    for r in results:
        if r["threat_model"] not in SUM_VIEWS:
            continue
        se = r.get("standard_errors", {})
        gains = {
            "reconstruction": (_num(r["reconstruction"]["advantage_auc"]), se.get("reconstruction_auc")),
            "membership": (_num(r["membership"]["advantage_auc"]), se.get("membership_auc")),
            "attributes": (_num(r["attributes"]["max_advantage"]), se.get("attribute_advantage")),
        }
        if r["groups"].get("applicable"):
            gains["groups"] = (_num(r["groups"]["advantage"]), se.get("group_advantage"))
        if r["scores"].get("disaggregation_rare_advantage") is not None:
            gains["disaggregation_rare_rows"] = (
                _num(r["scores"]["disaggregation_rare_advantage"]),
                se.get("disaggregation_rare_advantage"),
            )
        significant = {
            name: gain
            for name, (gain, error) in gains.items()
            if gain > R4_MAX_ADVANTAGE + SIGNIFICANCE_Z * (_num(error) if error is not None else 0.0)
        }
        findings = []
        sampled_secagg = r["threat_model"] == ThreatModel.SECAGG and r.get("client_fraction", 1.0) < 1.0
        if sampled_secagg and significant:
            findings.append(
                f"with sampling the server sees who took part, and sums over few clients betray them "
                f"({', '.join(f'{k} {v:+.3f}' for k, v in significant.items())} over the population): "
                "secure aggregation alone is not DP"
            )
        if (
            r["threat_model"] == ThreatModel.SECAGG
            and r["scores"].get("canary_auc") is not None
            and _num(r["scores"]["canary_auc"]) > 0.9
        ):
            findings.append(
                f"canary AUC {_num(r['scores']['canary_auc']):.3f} at noise 0: secure aggregation alone is "
                "not DP (a user's presence shows in the sums)"
            )
        counted = {} if sampled_secagg else significant  # a noiseless sampled cell is a finding, not a claim
        ok = r["view"]["rounds_with_individual_updates"] == 0 and not counted
        entry = {
            "verdict": "holds" if ok else "fails",
            "individual_views": r["view"]["rounds_with_individual_updates"],
            "advantages_over_population": {k: {"gain": g, "standard_error": e} for k, (g, e) in gains.items()},
            "significant_gains": significant,
        }
        if findings:
            entry["finding"] = " ; ".join(findings)
        r4[r["cell"]] = entry
    rules["R4"] = {"verdict": _verdict(r4), "max_advantage": R4_MAX_ADVANTAGE, "cells": r4}
    r5 = {}
    for model in DP_THREAT_MODELS:
        for seed in sorted({r["seed"] for r in results}):
            cells = sorted(
                (
                    r
                    for r in results
                    if r["threat_model"] == model
                    and r["seed"] == seed
                    and r["target_epsilon"] is None
                    and r.get("client_fraction", 1.0) >= 1.0
                ),
                key=lambda r: _num(r["noise_multiplier"]),
            )
            for attack in ATTACK_SCORES:
                if model in SUM_VIEWS and attack in SUM_VIEW_POPULATION_SCORES:
                    continue
                usable = [c for c in cells if c["scores"].get(attack) is not None]
                values = [max(_num(c["scores"][attack]), CHANCE[attack]) for c in usable]
                errors = [_num(c.get("standard_errors", {}).get(attack) or 0.0) for c in usable]
                if len(values) < 2:
                    continue
                rises = [
                    (a, b)
                    for a, b, ea, eb in zip(values, values[1:], errors, errors[1:])
                    if b > a + R5_TOLERANCE + SIGNIFICANCE_Z * (ea * ea + eb * eb) ** 0.5
                ]
                r5[f"{model} seed={seed} {attack}"] = {
                    "verdict": "fails" if rises else "holds",
                    "noise_multipliers": [c["noise_multiplier"] for c in usable],
                    "values": values,
                    "standard_errors": errors,
                }
    rules["R5"] = {"verdict": _verdict(r5), "tolerance": R5_TOLERANCE, "series": r5}
    return rules


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
) -> dict[str, Any]:
    """The grid's report from finished cells: the malicious-server cells, the rules, provenance."""
    active = run_active_attacks()
    rules = evaluate_rules(results, family_confidence=family_confidence)
    rules["malicious-server"] = {
        "verdict": active["verdict"],
        "leaked": active["leaked"],
        "refused": sorted(n for n, r in active["attacks"].items() if r["outcome"] == "refused"),
    }
    return {
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
        "rules": rules,
    }

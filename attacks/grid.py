"""The audit grid: every attack in every cell it applies to, and the rules R0-R5 of ATTACKS.md.

A cell = (threat model, noise level, seed). Noise levels are noise multipliers z at a public clip C
(noise std z*C on every uploaded coordinate: the paper's Table 2 levels 0.1 ... 0.5 at C = 1), or a
target epsilon (the accountant calibrates z: the cells where a lower bound can refute a claim). Each
cell trains a fresh simulation with m canary clients (`attacks.canary`) for R rounds and runs, on the
view of its threat model only: interaction reconstruction (`attacks.reconstruction`), interaction
membership inference (`attacks.membership`) and the canary audit. The accountant's epsilon (the
headline, with its adjacency) sits beside every result.

Rules (verdicts: holds / fails / inconclusive / not refutable at m):
- R0 power, at plain noise 0: reconstruction F1 >= 0.95, interaction-MIA AUC >= 0.9, canary AUC = 1.
  An attack without power proves nothing elsewhere: the verdict is inconclusive and names it.
- R1 bound, every DP cell: the canary epsilon lower bound (95%, split half) <= the claimed epsilon;
  "not refutable at m" where the claim exceeds what m canaries can certify.
- R2 mechanism, every DP cell: the 95% interval of mu_hat does not lie above the claimed mu =
  sqrt(R)/z (more separation than the mechanism allows = less noise than claimed).
- R4 secure aggregation, every secagg / secagg+dp cell: no individual update in any view, and the
  per-user attacks gain at most 0.05 AUC over the population baseline. Canaries separated at secagg
  noise 0 are reported as "secure aggregation alone is not DP".
- R5 monotone, per threat model: no attack's AUC grows by more than 0.05 from one noise level to a
  larger one.
R3 (the f-DP trade-off curve) and the attribute, group-membership and disaggregation attacks of the
issue are not in this version: the result says so.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attacks.canary import CanaryAudit, with_canaries
from attacks.membership import item_membership
from attacks.reconstruction import reconstruct_rows
from attacks.recorder import RowRecorder
from attacks.rows import ItemRows
from mrff_secure.config import FederationConfig, ModelConfig
from mrff_secure.data.client_data import ClientData
from mrff_secure.dp import DPConfig
from mrff_secure.errors import ConfigError
from mrff_secure.federation.privacy_pipeline import PrivacySettings
from mrff_secure.federation.simulation import FederatedSimulation
from mrff_secure.federation.threat_model import LOCAL_DP, PLAIN, SECAGG, SECAGG_DP, SUM_VIEWS

GRID_THREAT_MODELS = (PLAIN, SECAGG, SECAGG_DP, LOCAL_DP)
DP_THREAT_MODELS = (SECAGG_DP, LOCAL_DP)
POWER = {"reconstruction_f1": 0.95, "membership_auc": 0.9, "canary_auc": 1.0}
R4_MAX_ADVANTAGE = 0.05
R5_TOLERANCE = 0.05
ATTACK_AUCS = ("reconstruction_auc", "membership_auc", "canary_auc")


@dataclass(frozen=True)
class Cell:
    threat_model: str
    noise_multiplier: float = 0.0  # used when target_epsilon is None
    target_epsilon: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.threat_model not in GRID_THREAT_MODELS:
            raise ConfigError(f"a grid cell's threat model must be one of {GRID_THREAT_MODELS}, got {self.threat_model!r}")
        dp = self.threat_model in DP_THREAT_MODELS
        if dp and self.target_epsilon is None and not self.noise_multiplier > 0:
            raise ConfigError(f"a {self.threat_model} cell needs a noise multiplier > 0 or a target epsilon")
        if not dp and (self.noise_multiplier != 0.0 or self.target_epsilon is not None):
            raise ConfigError(f"a {self.threat_model} cell has no noise")

    @property
    def name(self) -> str:
        level = f"eps={self.target_epsilon:g}" if self.target_epsilon is not None else f"z={self.noise_multiplier:g}"
        return f"{self.threat_model} {level} seed={self.seed}"

    def privacy(self, clip: float) -> tuple[PrivacySettings | None, bool]:
        """(settings, plain_individual_view) of the cell's simulation."""
        if self.threat_model == PLAIN:
            return None, True
        if self.threat_model == SECAGG:
            return None, False
        dp = DPConfig(mode="local" if self.threat_model == LOCAL_DP else "distributed", clip=clip,
                      noise_multiplier=None if self.target_epsilon is not None else self.noise_multiplier,
                      target_epsilon=self.target_epsilon)
        return PrivacySettings(dp=dp, secure_sum="fast" if self.threat_model == SECAGG_DP else "off"), True


def default_cells(*, levels=(0.1, 0.3, 0.5), targets=(1.0, 4.0), seeds=(0,)) -> list[Cell]:
    cells = []
    for seed in seeds:
        cells += [Cell(PLAIN, seed=seed), Cell(SECAGG, seed=seed)]
        for model in DP_THREAT_MODELS:
            cells += [Cell(model, noise_multiplier=z, seed=seed) for z in levels]
            cells += [Cell(model, target_epsilon=e, seed=seed) for e in targets]
    return cells


class _Both:
    def __init__(self, *observers) -> None:
        self.observers = observers

    def on_round(self, view) -> None:
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


def run_cell(cell: Cell, data: ClientData, *, model: ModelConfig, rounds: int, canaries: int, clip: float) -> dict:
    """Train one cell with its canaries and run every attack on its view."""
    start = time.perf_counter()
    torch.manual_seed(cell.seed)
    audited = with_canaries(data, canaries, seed=cell.seed)
    settings, individual = cell.privacy(clip)
    federation = FederationConfig(rounds=rounds, seed=cell.seed)
    probe_layout = FederatedSimulation(audited, model, FederationConfig(rounds=0, seed=cell.seed)).layout
    recorder = RowRecorder(ItemRows.from_layout(probe_layout, audited.item_attributes), audited.num_users)
    audit = CanaryAudit(probe_layout, first_row=data.num_users, num_canaries=canaries, clip=clip,
                        clip_uploads=cell.threat_model in DP_THREAT_MODELS)
    sim = FederatedSimulation(audited, model, federation, observer=_Both(recorder, audit),
                              update_transform=audit.transform, plain_individual_view=individual, privacy=settings)
    for _ in range(rounds):
        sim.train_round()
        if sim.privacy is not None:
            sim.privacy.record_round()
    if sim.privacy is not None:
        privacy = sim.privacy.summary()
        claimed = privacy["epsilon"]
        z, delta = sim.privacy.noise_multiplier, sim.privacy.delta
        claim = {"epsilon": claimed, "delta": delta, "adjacency": privacy["adjacency"], "mechanism": privacy["mechanism"],
                 "noise_multiplier": z, "clip": clip, "rounds": rounds, "epsilon_bound": privacy["epsilon_bound"],
                 "noise_source": privacy["noise_source"]}
    else:
        z, delta = 0.0, 1.0 / audited.num_users ** 1.1
        claim = {"epsilon": "inf", "delta": delta, "adjacency": None, "mechanism": None, "noise_multiplier": 0.0,
                 "clip": None, "rounds": rounds}
    recon = reconstruct_rows(recorder, data)
    membership = item_membership(recorder, data, seed=cell.seed)
    canary = audit.result(noise_multiplier=z, delta=delta)
    utility = sim.evaluate("test")
    return _clean({
        "cell": cell.name, "threat_model": cell.threat_model, "seed": cell.seed,
        "noise_multiplier": z, "target_epsilon": cell.target_epsilon, "claim": claim,
        "view": {"rounds": recorder.rounds, "rounds_with_individual_updates": recorder.individual_views},
        "reconstruction": recon, "membership": membership, "canary": canary,
        "utility": {"test_auc": utility.auc, "test_log_loss": utility.log_loss,
                    "note": "evaluated on private held-out data without noise: operator only"},
        "scores": {"reconstruction_f1": recon["f1"], "reconstruction_auc": recon["auc"],
                   "membership_auc": membership["auc"], "canary_auc": canary["canary_auc"]},
        "seconds": time.perf_counter() - start,
    })


def _num(value) -> float:
    """A JSON-ready number ("inf", "nan" strings included) back to float."""
    return float(value)


def evaluate_rules(results: list[dict]) -> dict[str, Any]:
    """The verdict of every rule, with its evidence."""
    rules: dict[str, Any] = {}
    plain = [r for r in results if r["threat_model"] == PLAIN]
    if not plain:
        rules["R0"] = {"verdict": "inconclusive", "evidence": "no plain cell: the attacks' power is unknown"}
    else:
        lacking = sorted({name for r in plain for name, bar in POWER.items() if not _num(r["scores"][name]) >= bar})
        rules["R0"] = {"verdict": "holds" if not lacking else "inconclusive",
                       "attacks_without_power": lacking, "thresholds": POWER,
                       "evidence": {r["cell"]: {k: r["scores"][k] for k in POWER} for r in plain},
                       "not_implemented": ["attribute inference", "group-membership inference",
                                           "disaggregation across rounds"]}
    r1, r2 = {}, {}
    for r in results:
        if r["threat_model"] not in DP_THREAT_MODELS:
            continue
        claimed, bound = _num(r["claim"]["epsilon"]), r["canary"]["bound"]
        lower, ceiling = _num(bound["epsilon_lower_bound"]), _num(bound["max_certifiable"])
        verdict = "fails" if lower > claimed else ("not refutable at m" if claimed >= ceiling else "holds")
        r1[r["cell"]] = {"verdict": verdict, "epsilon_lower_bound": lower, "claimed_epsilon": claimed,
                         "max_certifiable": ceiling, "canaries": r["canary"]["canaries"]}
        mech = r["canary"]["mechanism"]
        low = _num(mech["mu_hat_95"][0])
        r2[r["cell"]] = {"verdict": "fails" if low > _num(mech["claimed_mu"]) else "holds", **mech}
    for name, cells in (("R1", r1), ("R2", r2)):
        verdicts = {c["verdict"] for c in cells.values()}
        rules[name] = {"verdict": "fails" if "fails" in verdicts else ("holds" if verdicts == {"holds"} else
                                                                       ("not refutable at m" if verdicts else "inconclusive")),
                       "cells": cells}
    r4 = {}
    for r in results:
        if r["threat_model"] not in SUM_VIEWS:
            continue
        advantage = max(_num(r["reconstruction"]["advantage_auc"]), _num(r["membership"]["advantage_auc"]))
        ok = r["view"]["rounds_with_individual_updates"] == 0 and advantage <= R4_MAX_ADVANTAGE
        entry = {"verdict": "holds" if ok else "fails", "individual_views": r["view"]["rounds_with_individual_updates"],
                 "max_advantage_over_population_auc": advantage}
        if r["threat_model"] == SECAGG and _num(r["scores"]["canary_auc"]) > 0.9:
            entry["finding"] = (f"canary AUC {r['scores']['canary_auc']:.3f} at noise 0: secure aggregation alone is "
                                "not DP (a user's presence shows in the sums)")
        r4[r["cell"]] = entry
    rules["R4"] = {"verdict": "fails" if any(c["verdict"] == "fails" for c in r4.values()) else
                   ("holds" if r4 else "inconclusive"), "max_advantage": R4_MAX_ADVANTAGE, "cells": r4}
    r5 = {}
    for model in DP_THREAT_MODELS:
        for seed in sorted({r["seed"] for r in results}):
            cells = sorted((r for r in results if r["threat_model"] == model and r["seed"] == seed
                            and r["target_epsilon"] is None), key=lambda r: _num(r["noise_multiplier"]))
            for attack in ATTACK_AUCS:
                values = [_num(c["scores"][attack]) for c in cells]
                rises = [(a, b) for a, b in zip(values, values[1:]) if b > a + R5_TOLERANCE]
                r5[f"{model} seed={seed} {attack}"] = {"verdict": "fails" if rises else "holds",
                                                       "noise_multipliers": [c["noise_multiplier"] for c in cells],
                                                       "values": values}
    rules["R5"] = {"verdict": "fails" if any(c["verdict"] == "fails" for c in r5.values()) else
                   ("holds" if r5 else "inconclusive"), "tolerance": R5_TOLERANCE, "series": r5}
    rules["R3"] = {"verdict": "not evaluated", "evidence": "the f-DP trade-off check is not in this version"}
    return rules


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_grid(data: ClientData, cells: list[Cell], *, model: ModelConfig | None = None, rounds: int = 5,
             canaries: int = 100, clip: float = 1.0, progress=None) -> dict[str, Any]:
    """Every cell, then the rules. `progress(cell_result)` is called after each cell."""
    model = model or ModelConfig(maxlen=data.maxlen)
    results = []
    for cell in cells:
        results.append(run_cell(cell, data, model=model, rounds=rounds, canaries=canaries, clip=clip))
        if progress is not None:
            progress(results[-1])
    return {"dataset": data.name, "users": data.num_users, "rounds": rounds, "canaries": canaries, "clip": clip,
            "commit": _commit(), "python": platform.python_version(), "torch": torch.__version__,
            "cells": results, "rules": evaluate_rules(results)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=("synthetic", "kuaisar-r"), default="synthetic")
    parser.add_argument("--data-dir", type=Path, default=None, help="KuaiSAR-R folder (with --dataset kuaisar-r)")
    parser.add_argument("--users", type=int, default=400, help="synthetic users")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--canaries", type=int, default=100)
    parser.add_argument("--clip", type=float, default=1.0, help="the public clip bound C of the DP cells")
    parser.add_argument("--levels", type=float, nargs="+", default=[0.1, 0.3, 0.5], help="noise multipliers")
    parser.add_argument("--targets", type=float, nargs="+", default=[1.0, 4.0], help="calibrated target epsilons")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, required=True, help="the grid's JSON")


def grid_main(args: argparse.Namespace) -> int:
    from mrff_secure.data import load_kuaisar_r, make_synthetic

    if args.dataset == "kuaisar-r":
        if args.data_dir is None:
            raise ConfigError("--dataset kuaisar-r needs --data-dir")
        data = load_kuaisar_r(args.data_dir)
    else:
        data = make_synthetic(num_users=args.users)
    cells = default_cells(levels=tuple(args.levels), targets=tuple(args.targets), seeds=tuple(args.seeds))
    report = run_grid(data, cells, rounds=args.rounds, canaries=args.canaries, clip=args.clip,
                      progress=lambda r: print(f"{r['cell']}: {r['scores']} ({r['seconds']:.1f} s)", flush=True))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(args.out)  # atomic: a reader never sees half a grid
    for name, rule in sorted(report["rules"].items()):
        print(f"{name}: {rule['verdict']}")
    return 0


def register(sub) -> None:
    """`mrff attack-grid`: the grid from the command line."""
    parser = sub.add_parser("attack-grid", help="run every attack in every threat-model cell and check the rules R0-R5")
    add_arguments(parser)
    parser.set_defaults(handler=grid_main)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attacks.grid", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return grid_main(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

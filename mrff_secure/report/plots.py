"""The grid's plots: canary ROC curves on log-log axes, attack scores against noise per threat model,
the empirical epsilon lower bound against the claimed epsilon, and utility against noise (the paper's
Table 2 curve). PNG files; matplotlib (Agg). Input: the grid's report (attacks.grid.grid_report)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # matplotlib is imported where a plot is drawn
    from matplotlib.figure import Figure

SCORE_LABELS = {
    "reconstruction_auc": "reconstruction AUC",
    "membership_auc": "interaction MIA AUC",
    "attribute_advantage": "attribute inference: accuracy - majority",
    "group_advantage": "group inference: accuracy - majority",
    "canary_auc": "canary AUC",
}


def _roc(scores: np.ndarray, included: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, kind="stable")
    hits = included[order]
    tpr = np.cumsum(hits) / max(hits.sum(), 1)
    fpr = np.cumsum(~hits) / max((~hits).sum(), 1)
    return np.r_[0.0, fpr], np.r_[0.0, tpr]


def _number(value: Any) -> float:
    return float(value) if value is not None else float("nan")


def _save(fig: Figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_plots(report: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = report["cells"]
    seed = min(c["seed"] for c in cells)
    written = []

    fig, ax = plt.subplots(figsize=(6, 5))
    floor = None
    for cell in cells:
        if cell["seed"] != seed or not cell.get("canary"):
            continue
        fpr, tpr = _roc(np.asarray(cell["canary"]["scores"]), np.asarray(cell["canary"]["included"], dtype=bool))
        floor = 1.0 / max(1, len(cell["canary"]["scores"]))
        ax.plot(np.maximum(fpr, floor / 2), np.maximum(tpr, floor / 2), label=cell["cell"], lw=1)
    if floor is not None:
        grid = np.logspace(np.log10(floor / 2), 0, 50)
        ax.plot(grid, grid, "k:", lw=1, label="chance")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="false positive rate",
        ylabel="true positive rate",
        title=f"canary audit ROC (seed {seed})",
    )
    ax.legend(fontsize=6)
    path = out_dir / "canary_roc.png"
    written.append(_save(fig, path))

    models = ("secagg+dp", "local-dp")
    fig, axes = plt.subplots(1, len(models), figsize=(11, 4), sharey=True)
    for ax, model in zip(axes, models):
        series = sorted(
            (
                c
                for c in cells
                if c["threat_model"] == model and c["target_epsilon"] is None and c.get("client_fraction", 1.0) >= 1.0
            ),
            key=lambda c: _number(c["noise_multiplier"]),
        )
        for key, label in SCORE_LABELS.items():
            by_z: dict[float, list[float]] = {}
            for c in series:
                if c["scores"].get(key) is not None:
                    by_z.setdefault(_number(c["noise_multiplier"]), []).append(_number(c["scores"][key]))
            if by_z:
                zs = sorted(by_z)
                ax.plot(zs, [float(np.mean(by_z[z])) for z in zs], marker="o", label=label)
        ax.set(xlabel="noise multiplier z (std z*C, C = 1)", title=model)
    axes[0].set_ylabel("attack score (mean over seeds)")
    axes[-1].legend(fontsize=7)
    path = out_dir / "attack_vs_noise.png"
    written.append(_save(fig, path))

    fig, ax = plt.subplots(figsize=(6, 5))
    for model, marker in zip(models, ("o", "s")):
        points = [
            (_number(c["claim"]["epsilon"]), _number(c["canary"]["bound"]["epsilon_lower_bound"]))
            for c in cells
            if c["threat_model"] == model and c.get("canary")
        ]
        if points:
            claimed, bound = np.asarray(points).T
            ax.scatter(claimed, bound, marker=marker, label=model)
    ceiling = [_number(c["canary"]["bound"]["max_certifiable"]) for c in cells if c.get("canary")]
    if ceiling:
        ax.axhline(float(np.median(ceiling)), color="grey", ls="--", lw=1, label="most m canaries can certify")
    lim = ax.get_xlim()
    xs = np.logspace(-1, np.log10(max(lim[1], 10)), 50)
    ax.plot(xs, xs, "k:", lw=1, label="bound = claim")
    ax.set(
        xscale="log",
        xlabel="claimed epsilon (accountant)",
        ylabel="empirical epsilon lower bound (95%)",
        title="claims against the canary bound",
    )
    ax.legend(fontsize=7)
    path = out_dir / "bound_vs_claim.png"
    written.append(_save(fig, path))

    fig, ax = plt.subplots(figsize=(6, 4))
    for model in models:
        auc_by_z: dict[float, list[float]] = {}
        for c in cells:
            if c["threat_model"] == model and c["target_epsilon"] is None and c.get("client_fraction", 1.0) >= 1.0:
                auc_by_z.setdefault(_number(c["noise_multiplier"]), []).append(_number(c["utility"]["test_auc"]))
        if auc_by_z:
            zs = sorted(auc_by_z)
            ax.plot(zs, [float(np.mean(auc_by_z[z])) for z in zs], marker="o", label=model)
    plain = [_number(c["utility"]["test_auc"]) for c in cells if c["threat_model"] == "plain"]
    if plain:
        ax.axhline(float(np.mean(plain)), color="k", ls=":", lw=1, label="plain (no noise)")
    ax.set(
        xlabel="noise multiplier z (std z*C, C = 1)", ylabel="test AUC (operator only)", title="utility against noise"
    )
    ax.legend(fontsize=7)
    path = out_dir / "utility_vs_noise.png"
    written.append(_save(fig, path))
    return written

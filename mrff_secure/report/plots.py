"""The grid's plots: canary ROC curves on log-log axes with each cell's claimed (epsilon, delta) trade-off
curve, attack scores against noise per threat model, the empirical epsilon lower bound against the claimed
epsilon (log axes), and utility against noise (the paper's Table 2 curve). PNG files; matplotlib (Agg).
Every line has its own colour (a qualitative colormap, with line styles once its colours run out) and
every legend sits outside the data. Input: the grid's report (attacks.grid.grid_report, grid.json)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mrff_secure.report.tables import fmt

if TYPE_CHECKING:  # matplotlib is imported where a plot is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

SCORE_LABELS = {
    "reconstruction_auc": "reconstruction AUC",
    "membership_auc": "interaction MIA AUC",
    "attribute_advantage": "attribute inference: accuracy - majority",
    "group_advantage": "group inference: accuracy - majority",
    "canary_auc": "canary AUC",
}
MODELS = ("secagg+dp", "local-dp")
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def style(index: int) -> dict[str, Any]:
    """The colour and line style of the index-th line of a plot: the 10 colours of tab10, then the same
    colours again with the next line style, so no two lines of a plot look alike."""
    import matplotlib

    tab10 = matplotlib.colormaps["tab10"]
    colours = [tab10(i) for i in range(tab10.N)]
    return {
        "color": colours[index % len(colours)],
        "linestyle": LINESTYLES[(index // len(colours)) % len(LINESTYLES)],
    }


def roc(scores: np.ndarray, included: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) of every threshold, from (0, 0)."""
    order = np.argsort(-scores, kind="stable")
    hits = included[order]
    tpr = np.cumsum(hits) / max(hits.sum(), 1)
    fpr = np.cumsum(~hits) / max((~hits).sum(), 1)
    return np.r_[0.0, fpr], np.r_[0.0, tpr]


def claimed_tradeoff(fpr: np.ndarray, epsilon: float, delta: float) -> np.ndarray:
    """The most TPR an (epsilon, delta)-DP mechanism allows at each FPR: min(1, e^eps FPR + delta,
    1 - e^-eps (1 - delta - FPR)) (the second from the symmetric condition on the false negatives)."""
    if math.isinf(epsilon):
        return np.ones_like(fpr)
    first = np.exp(min(epsilon, 700.0)) * fpr + delta
    second = 1.0 - np.exp(-epsilon) * np.clip(1.0 - delta - fpr, 0.0, None)
    return np.minimum(1.0, np.minimum(first, second))


def _number(value: Any) -> float:
    try:
        return float(value) if value is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")


LEGEND_ROW_INCHES = 0.17


def _save(fig: Figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)  # the layout is set by hand (_layout): one draw, no tight-bbox pass
    plt.close(fig)
    return path


def _legend_below(ax: Axes, columns: int = 2) -> int:
    """The axes' legend under its x label, outside the data; returns its rows (for _layout)."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return 0
    ax.legend(
        handles,
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.13),
        ncol=columns,
        fontsize=7,
        frameon=False,
    )
    return -(-len(handles) // columns)


def _layout(fig: Figure, legend_rows: int, *, plot_inches: float, top_inches: float = 0.55) -> None:
    """Size the figure for plots of `plot_inches` height plus the legend rows under them."""
    bottom = 0.75 + LEGEND_ROW_INCHES * legend_rows
    height = plot_inches + bottom + top_inches
    fig.set_size_inches(fig.get_figwidth(), height)
    fig.subplots_adjust(bottom=bottom / height, top=1 - top_inches / height, left=0.08, right=0.97, wspace=0.22)


def _canary_roc(cells: list[dict], seed: int, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(MODELS), figsize=(12, 6))
    rows = 0
    for ax, model in zip(axes, MODELS):
        panel = [
            c
            for c in cells
            if c["seed"] == seed and c.get("canary") and c["threat_model"] in (model, "plain", "secagg")
        ]
        floor = 1.0
        for index, cell in enumerate(panel):
            scores = np.asarray(cell["canary"]["scores"], dtype=float)
            included = np.asarray(cell["canary"]["included"], dtype=bool)
            negatives = max(1, int((~included).sum()))
            floor = min(floor, 0.5 / negatives)
            fpr, tpr = roc(scores, included)
            look = style(index)
            auc = _number(cell["canary"].get("canary_auc"))
            label = f"{cell['cell']} (AUC {fmt(auc)})"  # curves that coincide (AUC 1) stay told apart
            ax.plot(np.maximum(fpr, floor), np.maximum(tpr, floor), lw=1.4, label=label, **look)
            epsilon, delta = _number(cell["claim"].get("epsilon")), _number(cell["claim"].get("delta"))
            if cell["claim"].get("adjacency") and math.isfinite(epsilon):
                grid = np.logspace(np.log10(floor), 0, 200)
                curve = claimed_tradeoff(grid, epsilon, 0.0 if math.isnan(delta) else delta)
                if curve[0] < 0.999:  # a curve at TPR 1 over the whole range shows nothing
                    ax.plot(
                        grid,
                        np.maximum(curve, floor),
                        lw=1.0,
                        color=look["color"],
                        linestyle=(0, (1, 1.5)),
                        label=f"{cell['cell'].rsplit(' seed=', 1)[0]}: claimed limit (epsilon {fmt(epsilon)})",
                    )
        if panel:
            grid = np.logspace(np.log10(floor), 0, 50)
            ax.plot(grid, grid, color="0.4", lw=1, linestyle=(0, (6, 3)), label="chance (TPR = FPR)")
            ax.set_xlim(floor / 1.4, 1.4)  # room around the edges: a curve at TPR 1 or FPR 0 stays visible
            ax.set_ylim(floor / 1.4, 1.4)
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="false positive rate (log)",
            ylabel="true positive rate (log)",
            title=f"{model} (with the plain and secagg references), seed {seed}",
        )
        ax.grid(True, which="major", lw=0.3, alpha=0.5)
        rows = max(rows, _legend_below(ax))
    _layout(fig, rows, plot_inches=4.6, top_inches=0.75)
    fig.suptitle(
        "Canary audit ROC; dotted: the most TPR each cell's claimed (epsilon, delta) allows "
        "(TPR <= e^eps FPR + delta and its symmetric)",
        fontsize=9,
    )
    return _save(fig, path)


def _attack_vs_noise(cells: list[dict], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(MODELS), figsize=(12, 4.6), sharey=True)
    rows = 0
    for ax, model in zip(axes, MODELS):
        series = sorted(
            (
                c
                for c in cells
                if c["threat_model"] == model
                and c.get("target_epsilon") is None
                and c.get("client_fraction", 1.0) >= 1.0
            ),
            key=lambda c: _number(c["noise_multiplier"]),
        )
        for index, (key, label) in enumerate(SCORE_LABELS.items()):
            by_z: dict[float, list[float]] = {}
            for c in series:
                value = _number(c["scores"].get(key))
                if not math.isnan(value):
                    by_z.setdefault(_number(c["noise_multiplier"]), []).append(value)
            if by_z:
                zs = sorted(by_z)
                ax.plot(
                    zs,
                    [float(np.mean(by_z[z])) for z in zs],
                    marker=MARKERS[index % len(MARKERS)],
                    label=label,
                    **style(index),
                )
        ax.set(xlabel="noise multiplier z (std z*C, C = 1)", title=model)
        ax.grid(True, lw=0.3, alpha=0.5)
        rows = max(rows, _legend_below(ax))
    axes[0].set_ylabel("attack score (mean over seeds)")
    _layout(fig, rows, plot_inches=3.6)
    return _save(fig, path)


def _bound_vs_claim(grid: dict[str, Any], path: Path) -> Path:
    """Each DP cell's claimed epsilon against its canary lower bound: R1's (family-corrected: the bound that
    decides) where grid.json has R1, else the cell's own 95% bound."""
    import matplotlib.pyplot as plt

    cells = grid["cells"]
    r1 = grid.get("rules", {}).get("R1", {}).get("cells", {})
    fig, ax = plt.subplots(figsize=(7, 5.6))
    points, ceiling = [], []
    for c in cells:
        if c["threat_model"] not in MODELS or not c.get("canary"):
            continue
        body = r1.get(c["cell"]) or c["canary"].get("bound") or {}
        if not body:
            continue
        points.append((c["threat_model"], _number(c["claim"]["epsilon"]), _number(body.get("epsilon_lower_bound"))))
        ceiling.append(_number(body.get("max_certifiable_epsilon", body.get("max_certifiable"))))
    finite = [p for p in points if math.isfinite(p[1])]
    positive = [b for _, _, b in finite if b > 0]
    floor = min([0.01, *(b / 2 for b in positive)])
    for index, model in enumerate(MODELS):
        ours = [p for p in finite if p[0] == model]
        if not ours:
            continue
        look = style(index)
        above = [(e, b) for _, e, b in ours if b > 0]
        zero = [(e, b) for _, e, b in ours if not b > 0]
        if above:
            ax.scatter(*np.asarray(above).T, marker=MARKERS[index], color=look["color"], label=model, zorder=3)
        if zero:
            ax.scatter(
                [e for e, _ in zero],
                [floor] * len(zero),
                marker="v",
                facecolors="none",
                edgecolors=look["color"],
                label=f"{model}: lower bound 0 (drawn at the axis floor)",
                zorder=3,
            )
    ceiling = [x for x in ceiling if math.isfinite(x)]
    claims = [e for _, e, _ in finite] or [1.0]
    xs: np.ndarray = np.logspace(np.log10(min(claims) / 2), np.log10(max(max(claims) * 2, 10)), 50)
    if ceiling:
        ax.axhline(
            float(np.median(ceiling)),
            color=style(2)["color"],
            ls="--",
            lw=1.2,
            label=f"max certifiable with m = {grid.get('canaries', '?')} canaries (median {float(np.median(ceiling)):.3g}): "
            "no lower bound can go above it",
        )
    ax.plot(xs, xs, color="0.3", ls=":", lw=1.2, label="bound = claim (above: the claim fails R1)")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="claimed epsilon (accountant, log)",
        ylabel="empirical epsilon lower bound (log)",
        title="claims against the canary lower bound (R1)",
    )
    ax.set_ylim(floor / 1.5, max(xs[-1], 10))
    ax.grid(True, which="major", lw=0.3, alpha=0.5)
    _layout(fig, _legend_below(ax, columns=1), plot_inches=4.2)
    fig.subplots_adjust(left=0.12)
    return _save(fig, path)


def _utility_vs_noise(cells: list[dict], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.6))
    for index, model in enumerate(MODELS):
        auc_by_z: dict[float, list[float]] = {}
        for c in cells:
            if c["threat_model"] == model and c.get("target_epsilon") is None and c.get("client_fraction", 1.0) >= 1.0:
                value = _number(c["utility"]["test_auc"])
                if not math.isnan(value):
                    auc_by_z.setdefault(_number(c["noise_multiplier"]), []).append(value)
        if auc_by_z:
            zs = sorted(auc_by_z)
            ax.plot(zs, [float(np.mean(auc_by_z[z])) for z in zs], marker=MARKERS[index], label=model, **style(index))
    plain = [_number(c["utility"]["test_auc"]) for c in cells if c["threat_model"] == "plain"]
    plain = [x for x in plain if not math.isnan(x)]
    if plain:
        ax.axhline(float(np.mean(plain)), color=style(2)["color"], ls=":", lw=1.2, label="plain (no noise)")
    ax.set(
        xlabel="noise multiplier z (std z*C, C = 1)", ylabel="test AUC (operator only)", title="utility against noise"
    )
    ax.grid(True, lw=0.3, alpha=0.5)
    _layout(fig, _legend_below(ax, columns=3), plot_inches=3.4)
    fig.subplots_adjust(left=0.12)
    return _save(fig, path)


def write_plots(report: dict, out_dir: Path) -> list[Path]:
    """canary_roc.png, attack_vs_noise.png, bound_vs_claim.png and utility_vs_noise.png of a grid report."""
    import matplotlib

    matplotlib.use("Agg")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = report["cells"]
    seed = min(c["seed"] for c in cells)
    return [
        _canary_roc(cells, seed, out_dir / "canary_roc.png"),
        _attack_vs_noise(cells, out_dir / "attack_vs_noise.png"),
        _bound_vs_claim(report, out_dir / "bound_vs_claim.png"),
        _utility_vs_noise(cells, out_dir / "utility_vs_noise.png"),
    ]

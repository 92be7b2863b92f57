"""Figures of a comparison (PNG through matplotlib's Agg renderer), drawn from tables, not models.

The robustness figures (all models per perturbation; all perturbations per model) are here too.
Each model keeps one colour in every figure (its position in the protocol's model list), so a
reader can follow it from the bar chart to the learning curves. Figures are built on
`matplotlib.figure.Figure` directly (no pyplot global state) and written atomically.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainseg.fileio import write_bytes_atomic

__all__ = [
    "DPI",
    "model_colors",
    "new_figure",
    "plot_detection",
    "plot_dice_per_patient",
    "plot_learning_curves",
    "plot_metrics_bars",
    "plot_model_curves",
    "plot_robustness",
    "save_figure",
]

DPI = 130
#: Perturbation names of the unperturbed rows of a robustness table (drawn at severity 0).
CLEAN_NAMES = frozenset({"none", "clean", "identity", "original"})
# Tableau 10, reordered so that the five architectures get clearly distinct hues.
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
_STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "figure.facecolor": "white",
}


def model_colors(models: Sequence[str]) -> dict[str, str]:
    """model → colour, by position in `models` (the protocol's order, not the ranking)."""
    return {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(models)}


def new_figure(width: float, height: float) -> Any:
    """A Figure with the report's style, not registered with pyplot (no global state, no GUI)."""
    import matplotlib
    from matplotlib.figure import Figure  # rendered by the Agg canvas on savefig, whatever pyplot's backend

    with matplotlib.rc_context(_STYLE):
        return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig: Any, path: str | Path, dpi: int = DPI) -> Path:
    """Render `fig` to PNG and write it atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return write_bytes_atomic(path, buf.getvalue())


def _style() -> Any:
    import matplotlib

    return matplotlib.rc_context(_STYLE)


def _nan(v: Any) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return x


def plot_metrics_bars(
    board: Sequence[Mapping[str, Any]], colors: Mapping[str, str], path: str | Path, *, confidence: float = 0.95
) -> Path:
    """Grouped bars of per-patient Dice, IoU, recall and precision (CI whiskers at `confidence`), loss alongside."""
    metrics = (("dice", "Dice"), ("iou", "IoU"), ("recall", "Recall"), ("precision", "Precision"))
    n = len(board)
    with _style():
        fig = new_figure(max(7.5, 2.2 + 1.3 * n), 4.2)
        gs = fig.add_gridspec(1, 2, width_ratios=[4, 1.15])
        ax = fig.add_subplot(gs[0])
        ax_loss = fig.add_subplot(gs[1])
        width = 0.8 / max(n, 1)
        x = np.arange(len(metrics))
        for i, row in enumerate(board):
            means = np.array([_nan(row.get(f"{k}_patient")) for k, _ in metrics])
            lo = np.array([_nan(row.get(f"{k}_patient_ci_low")) for k, _ in metrics])
            hi = np.array([_nan(row.get(f"{k}_patient_ci_high")) for k, _ in metrics])
            err = np.vstack([np.nan_to_num(means - lo), np.nan_to_num(hi - means)])
            pos = x - 0.4 + width * (i + 0.5)
            ax.bar(pos, np.nan_to_num(means), width * 0.92, color=colors[row["model"]], label=row["label"],
                   yerr=err, capsize=2.5, error_kw={"elinewidth": 1, "ecolor": "#333333"})
            if n <= 6:
                for xp, v in zip(pos, means):
                    if not math.isnan(v):
                        ax.text(xp, 0.015, f"{v:.2f}", ha="center", va="bottom", rotation=90, fontsize=7.5, color="white",
                                fontweight="bold")
        ax.set_xticks(x, [name for _, name in metrics])
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("mean over test patients (volume)")
        ax.set_title(f"Overlap metrics per patient ({confidence:.0%} bootstrap CI)")
        ax.grid(axis="x", visible=False)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=min(n, 5))
        losses = [_nan(r.get("loss")) for r in board]
        ax_loss.bar(range(n), np.nan_to_num(losses), 0.7, color=[colors[r["model"]] for r in board])
        for i, v in enumerate(losses):
            if not math.isnan(v):
                ax_loss.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=7.5)
        ax_loss.set_xticks(range(n), [r["label"] for r in board], rotation=45, ha="right", fontsize=8)
        name = board[0].get("loss_name") if board else ""
        ax_loss.set_title("Test loss")
        ax_loss.set_ylabel(f"{name} (lower is better)" if name else "loss (lower is better)")
        ax_loss.grid(axis="x", visible=False)
        if not any(not math.isnan(v) for v in losses):
            ax_loss.text(0.5, 0.5, "no loss recorded", ha="center", va="center", transform=ax_loss.transAxes)
        return save_figure(fig, path)


def plot_dice_per_patient(
    values: Mapping[str, Sequence[float]],
    labels: Mapping[str, str],
    colors: Mapping[str, str],
    path: str | Path,
    *,
    seed: int = 0,
) -> Path:
    """Box plot of per-patient Dice per model, every patient as a jittered point, the mean as a diamond."""
    models = list(values)
    rng = np.random.default_rng(seed)
    with _style():
        fig = new_figure(max(6.0, 1.5 + 1.25 * len(models)), 4.4)
        ax = fig.add_subplot()
        data = [np.asarray([v for v in values[m] if not math.isnan(v)], dtype=float) for m in models]
        bp = ax.boxplot(
            data, positions=range(len(models)), widths=0.55, showfliers=False, patch_artist=True,
            medianprops={"color": "#222222", "linewidth": 1.5},
        )
        for patch, m in zip(bp["boxes"], models):
            patch.set_facecolor(colors[m])
            patch.set_alpha(0.25)
            patch.set_edgecolor(colors[m])
        for i, (m, v) in enumerate(zip(models, data)):
            jitter = rng.uniform(-0.16, 0.16, size=v.size)
            ax.scatter(i + jitter, v, s=16, color=colors[m], alpha=0.85, edgecolors="white", linewidths=0.4, zorder=3)
            if v.size:
                ax.scatter([i], [v.mean()], marker="D", s=38, color="black", zorder=4,
                           label="mean" if i == 0 else None)
        ax.set_xticks(range(len(models)), [f"{labels[m]}\n(n={d.size})" for m, d in zip(models, data)])
        ax.set_ylim(-0.03, 1.03)
        ax.set_ylabel("Dice per patient (volume)")
        ax.set_title("Per-patient Dice on the test patients")
        ax.grid(axis="x", visible=False)
        ax.legend(loc="lower left")
        return save_figure(fig, path)


def plot_learning_curves(
    histories: Mapping[str, Sequence[Sequence[Mapping[str, float]]]],
    labels: Mapping[str, str],
    colors: Mapping[str, str],
    path: str | Path,
) -> Path:
    """Train (solid) and validation (dashed) loss, and validation Dice, per epoch for every model.

    `histories` maps model → one history (list of rows of history.csv) per fold; folds are drawn
    as thin lines of the model's colour, the best epoch of each as a dot.
    """
    with _style():
        fig = new_figure(11.0, 4.2)
        ax_loss, ax_dice = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        for m, runs in histories.items():
            c = colors[m]
            many = len(runs) > 1
            for k, hist in enumerate(runs):
                if not hist:
                    continue
                ep = np.array([_nan(r.get("epoch")) for r in hist])
                lw, alpha = (1.2, 0.6) if many else (1.8, 1.0)
                first = k == 0
                tl = np.array([_nan(r.get("train_loss")) for r in hist])
                vl = np.array([_nan(r.get("val_loss")) for r in hist])
                vd = np.array([_nan(r.get("val_dice")) for r in hist])
                ax_loss.plot(ep, tl, color=c, lw=lw, alpha=alpha, label=labels[m] if first else None)
                ax_loss.plot(ep, vl, color=c, lw=lw, alpha=alpha, ls="--")
                ax_dice.plot(ep, vd, color=c, lw=lw, alpha=alpha, marker="o", ms=2.5,
                             label=labels[m] + (f" ({len(runs)} folds)" if many else "") if first else None)
                best = [i for i, r in enumerate(hist) if _nan(r.get("best")) == 1.0]
                if not best and not np.all(np.isnan(vd)):
                    best = [int(np.nanargmax(vd))]
                if best:
                    i = best[-1]
                    ax_dice.scatter([ep[i]], [vd[i]], s=60, facecolors="none", edgecolors=c, linewidths=1.6, zorder=4)
        ax_loss.set_title("Loss per epoch (solid: train, dashed: validation)")
        ax_loss.set_xlabel("epoch")
        ax_loss.set_ylabel("loss")
        ax_loss.legend(loc="upper right")
        ax_dice.set_title("Validation Dice per epoch (circle: best epoch)")
        ax_dice.set_xlabel("epoch")
        ax_dice.set_ylabel("Dice per patient (validation)")
        ax_dice.set_ylim(-0.02, 1.02)
        ax_dice.legend(loc="lower right")
        for a in (ax_loss, ax_dice):
            a.xaxis.get_major_locator().set_params(integer=True)
        return save_figure(fig, path)


def plot_detection(
    rocs: Mapping[str, tuple[np.ndarray, np.ndarray, float]],
    labels: Mapping[str, str],
    colors: Mapping[str, str],
    path: str | Path,
    *,
    operating_points: Mapping[str, tuple[float, float]] | None = None,
    min_area: Any = None,
) -> Path:
    """Slice-level ROC curves (score: the slice's highest tumour probability), AUROC in the legend."""
    with _style():
        fig = new_figure(5.6, 5.2)
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], color="#999999", lw=1, ls=":", label="chance")
        for m, (fpr, tpr, auc) in rocs.items():
            ax.plot(fpr, tpr, color=colors[m], lw=1.8, label=f"{labels[m]} (AUROC {auc:.3f})")
            op = (operating_points or {}).get(m)
            if op and not any(math.isnan(v) for v in op):
                ax.scatter([1 - op[1]], [op[0]], color=colors[m], s=40, edgecolors="black", linewidths=0.6, zorder=4)
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("false positive rate (1 − specificity)")
        ax.set_ylabel("true positive rate (sensitivity)")
        title = "Tumour detection per slice"
        ax.set_title(title)
        note = "score: max tumour probability in the slice"
        if operating_points:
            note += f"\ndot: the rule 'predicted area ≥ {min_area} px'" if min_area is not None else "\ndot: the detection rule"
        ax.text(0.98, 0.02, note, transform=ax.transAxes, ha="right", va="bottom", fontsize=7.5, color="#444444")
        ax.legend(loc="center right", bbox_to_anchor=(1.0, 0.4))
        return save_figure(fig, path)


def plot_robustness(
    rows: Sequence[Mapping[str, Any]],
    labels: Mapping[str, str],
    colors: Mapping[str, str],
    path: str | Path,
    *,
    metric: str = "dice_patient",
) -> Path:
    """Dice against perturbation severity, one panel per perturbation, one line per model.

    Rows of a perturbation named none/clean/identity are the unperturbed baseline: drawn at
    severity 0 in every panel.
    """
    perts = list(dict.fromkeys(str(r["perturbation"]) for r in rows if str(r["perturbation"]).lower() not in CLEAN_NAMES))
    baseline = {str(r["model"]): _nan(r.get(metric)) for r in rows if str(r["perturbation"]).lower() in CLEAN_NAMES}
    models = list(dict.fromkeys(str(r["model"]) for r in rows))
    n = max(len(perts), 1)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    with _style():
        fig = new_figure(3.9 * ncols + 0.4, 3.2 * nrows + 0.5)
        axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(n)]
        for ax, p in zip(axes, perts):
            for m in models:
                pts = sorted(
                    (_nan(r.get("severity")), _nan(r.get(metric)))
                    for r in rows if str(r["model"]) == m and str(r["perturbation"]) == p
                )
                if m in baseline and not any(s == 0 for s, _ in pts):
                    pts = [(0.0, baseline[m])] + pts
                if not pts:
                    continue
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", ms=3.5, lw=1.6, color=colors.get(m, "#333333"), label=labels.get(m, m))
            ax.set_title(p.replace("_", " "))
            ax.set_xlabel("severity")
            ax.set_ylabel("Dice per patient" if metric == "dice_patient" else metric)
            ax.set_ylim(-0.02, 1.02)
            ax.xaxis.get_major_locator().set_params(integer=True)
        handles, labs = axes[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labs, loc="outside lower center", ncol=min(len(labs), 5))
        fig.suptitle("Robustness: test Dice under perturbations of increasing severity", fontweight="bold")
        return save_figure(fig, path)


def plot_model_curves(rows: Sequence[dict[str, Any]], model: str, path: str | Path) -> Path:
    """Dice per patient against severity for one model, one line per perturbation (PNG)."""
    mine = [r for r in rows if r["model"] == model]
    base = next((r["dice_patient"] for r in mine if str(r["perturbation"]).lower() in CLEAN_NAMES), float("nan"))
    fig = new_figure(7.0, 4.4)
    ax = fig.add_subplot(1, 1, 1)
    for p in dict.fromkeys(r["perturbation"] for r in mine if str(r["perturbation"]).lower() not in CLEAN_NAMES):
        pts = sorted((r["severity"], r["dice_patient"]) for r in mine if r["perturbation"] == p)
        if pts[0][0] != 0:
            pts = [(0, base)] + pts
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o", ms=3.5, lw=1.5, label=p.replace("_", " "))
    ax.axhline(base, color="#888888", lw=0.8, ls="--")
    ax.set_xlabel("severity (0 = unperturbed)")
    ax.set_ylabel("Dice per patient (mean)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{model}: test Dice under perturbations")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    return save_figure(fig, path)

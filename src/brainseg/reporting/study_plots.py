"""Figures of a cross-validated study: paired per-patient plot, learning curves per fold.

Drawn from numbers already read from the study's files (per_patient.csv, history.csv), never from
a model. Same style, colours and atomic PNG writing as `brainseg.reporting.plots`. Each public
`*_plot` function has a `*_figure` twin that returns the matplotlib Figure, so tests (and callers
that want to add to it) can read the drawn data back.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainseg.errors import BrainsegError
from brainseg.reporting.plots import _style, model_colors, new_figure, save_figure

__all__ = [
    "learning_curves_folds",
    "learning_curves_folds_figure",
    "paired_patient_figure",
    "paired_patient_plot",
]

_METRIC_LABELS = {
    "val_dice": "validation Dice (per patient)",
    "val_dice_slice": "validation Dice (per slice)",
    "val_loss": "validation loss",
    "train_loss": "training loss",
    "lr": "learning rate",
}


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _models(given: Mapping[str, Any], order: Sequence[str] | None, what: str) -> list[str]:
    if not given:
        raise BrainsegError(f"{what}: no model to plot")
    models = list(given) if order is None else list(order)
    missing = [m for m in models if m not in given]
    if missing:
        raise BrainsegError(f"{what}: order names model(s) {missing} that have no data (have: {sorted(given)})")
    return models


def paired_patient_figure(
    per_patient: Mapping[str, Mapping[str, float]],
    *,
    order: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
    center: str = "median",
    ylabel: str = "Dice per patient (volume)",
    title: str = "Per-patient Dice, paired across models",
) -> Any:
    """One thin grey line per patient across the models, and a bold line of their median (or mean).

    Args:
        per_patient: model → {patient → value}. A patient missing from a model leaves a gap in
            its line (NaN), so the pairing is never faked.
        order: models along x (default: the mapping's order); may be a subset.
        labels: model → display name (default: the model name).
        center: "median" or "mean" over the patients each model has (NaN ignored).
        ylabel, title: axis label and title.

    Returns:
        The Figure. Patient lines carry gid "patient:<id>"; the centre line gid "median"/"mean".
    """
    if center not in ("median", "mean"):
        raise BrainsegError(f"paired patient plot: center must be 'median' or 'mean', got {center!r}")
    models = _models(per_patient, order, "paired patient plot")
    labels = labels or {}
    patients = sorted({p for m in models for p in per_patient[m]})
    if not patients:
        raise BrainsegError("paired patient plot: no patient value to plot")
    values = np.array([[_float(per_patient[m].get(p)) for m in models] for p in patients])  # patients × models
    x = np.arange(len(models))
    with _style():
        fig = new_figure(max(5.5, 1.6 + 1.3 * len(models)), 4.6)
        ax = fig.add_subplot()
        for p, row in zip(patients, values):
            ax.plot(x, row, color="#8c8c8c", lw=0.8, alpha=0.55, marker="o", ms=2.2, zorder=2, gid=f"patient:{p}")
        counts = np.sum(~np.isnan(values), axis=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            reduce = np.nanmedian if center == "median" else np.nanmean
            mid = np.array([reduce(col) if n else math.nan for col, n in zip(values.T, counts)])
        ax.plot(x, mid, color="black", lw=2.6, marker="D", ms=6, zorder=4, gid=center,
                label=f"{center} over patients")
        for xi, v in zip(x, mid):
            if not math.isnan(v):
                ax.annotate(f"{v:.3f}", (xi, v), xytext=(7, 4), textcoords="offset points", fontsize=8.5,
                            fontweight="bold", zorder=5)
        ax.set_xticks(x, [f"{labels.get(m, m)}\n(n={n})" for m, n in zip(models, counts)])
        finite = values[~np.isnan(values)]
        if finite.size and finite.min() >= 0 and finite.max() <= 1:  # a score in [0, 1]: show the full range
            ax.set_ylim(-0.03, 1.03)
        ax.set_xlim(-0.4, len(models) - 0.6)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(axis="x", visible=False)
        ax.legend(loc="lower left", title=f"{len(patients)} patients (grey: one each)", title_fontsize=8.5,
                  frameon=True, framealpha=0.85, edgecolor="none")
    return fig


def paired_patient_plot(per_patient: Mapping[str, Mapping[str, float]], path: str | Path, **kwargs: Any) -> Path:
    """Draw `paired_patient_figure(per_patient, **kwargs)` and write it as a PNG at `path`."""
    return save_figure(paired_patient_figure(per_patient, **kwargs), path)


def _fold_curve(rows: Sequence[Mapping[str, Any]], metric: str) -> tuple[np.ndarray, np.ndarray]:
    ep = np.array([_float(r.get("epoch")) for r in rows])
    y = np.array([_float(r.get(metric)) for r in rows])
    keep = ~np.isnan(ep)
    return ep[keep], y[keep]


def learning_curves_folds_figure(
    histories: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]],
    *,
    metric: str = "val_dice",
    order: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
    colors: Mapping[str, str] | None = None,
) -> Any:
    """One panel per model: a thin line per fold and a bold line of the mean over folds, per epoch.

    Args:
        histories: model → one history per fold, each a list of history.csv rows (as
            `brainseg.training.history.read_history` returns them: epoch, lr, train_loss,
            val_loss, val_dice, val_dice_slice, …).
        metric: the history column on y.
        order, labels, colors: models in panel order, display names, colours (default: the
            report's palette by position in `order`).

    Returns:
        The Figure. Fold lines carry gid "fold:<k>" (k from 1); the mean over folds, gid "mean",
        is drawn solid over the epochs every fold has a value for; where some folds stopped (early
        stopping, or a NaN cell) the mean of the others continues dashed, gid "mean_partial"
        (joined to the solid line at the neighbouring epochs). Lines have NaN where they are not
        drawn. Panels share the y axis.
    """
    models = _models(histories, order, "learning curves")
    labels = labels or {}
    colors = colors or model_colors(models)
    if not any(metric in r for m in models for run in histories[m] for r in run):
        raise BrainsegError(f"learning curves: no history row has the column {metric!r}")
    n = len(models)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    with _style():
        fig = new_figure(3.8 * ncols + 0.4, 3.1 * nrows + 0.5)
        axes = [fig.add_subplot(nrows, ncols, 1)]
        axes += [fig.add_subplot(nrows, ncols, i + 1, sharey=axes[0]) for i in range(1, n)]
        for ax, m in zip(axes, models):
            c = colors.get(m, "#333333")
            curves = [_fold_curve(run, metric) for run in histories[m]]
            for k, (ep, y) in enumerate(curves, start=1):
                ax.plot(ep, y, color=c, lw=0.9, alpha=0.45, gid=f"fold:{k}", label="fold" if k == 1 else None)
            epochs = np.unique(np.concatenate([ep for ep, _ in curves])) if curves else np.zeros(0)
            if epochs.size:
                grid = np.full((len(curves), epochs.size), np.nan)
                for k, (ep, y) in enumerate(curves):
                    grid[k, np.searchsorted(epochs, ep)] = y
                n_at = np.sum(~np.isnan(grid), axis=0)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # an epoch no fold has a value for
                    mean = np.where(n_at > 0, np.nanmean(grid, axis=0), np.nan)
                # Solid where every fold counts; dashed where some have stopped or lack a value (a
                # mean of fewer folds, down to one, is not the same curve and must not look like it).
                full = n_at == len(curves)
                part = ~full & (n_at > 0)
                near = part | np.r_[part[1:], False] | np.r_[False, part[:-1]]  # joins the dashes to the solid
                ax.plot(epochs, np.where(full, mean, np.nan), color=c, lw=2.4, gid="mean", label="mean over folds")
                if part.any():
                    ax.plot(epochs, np.where(near, mean, np.nan), color=c, lw=1.6, ls="--", gid="mean_partial",
                            label="mean of the folds with a value")
            ax.set_title(f"{labels.get(m, m)} ({len(curves)} folds)")
            ax.set_xlabel("epoch")
            ax.set_ylabel(_METRIC_LABELS.get(metric, metric))
            if metric.startswith("val_dice"):
                ax.set_ylim(-0.02, 1.02)
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.legend(loc="lower right" if "dice" in metric else "upper right")
        fig.suptitle(f"Learning curves per fold: {_METRIC_LABELS.get(metric, metric)}", fontweight="bold")
    return fig


def learning_curves_folds(
    histories: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]],
    path: str | Path,
    metric: str = "val_dice",
    **kwargs: Any,
) -> Path:
    """Draw `learning_curves_folds_figure(histories, metric=metric, **kwargs)` as a PNG at `path`."""
    return save_figure(learning_curves_folds_figure(histories, metric=metric, **kwargs), path)

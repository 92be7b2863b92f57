"""Study figures: the drawn lines carry exactly the input values (read back from the Figure)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from brainseg.errors import BrainsegError
from brainseg.reporting.study_plots import (
    learning_curves_folds,
    learning_curves_folds_figure,
    paired_patient_figure,
    paired_patient_plot,
)
from brainseg.training.history import COLUMNS, read_history, write_history

PER_PATIENT = {
    "unet": {"p1": 0.80, "p2": 0.55, "p3": 0.91, "p4": 0.10},
    "segnet": {"p1": 0.70, "p2": 0.60, "p3": 0.88, "p4": 0.30},
    "pspnet": {"p1": 0.50, "p2": 0.40, "p3": 0.85},  # p4 missing: a gap, not a faked value
}


def _lines(ax, prefix: str) -> dict[str, object]:
    return {ln.get_gid(): ln for ln in ax.get_lines() if (ln.get_gid() or "").startswith(prefix)}


def test_paired_plot_one_line_per_patient_with_the_input_values(tmp_path: Path) -> None:
    order = ["pspnet", "unet", "segnet"]
    fig = paired_patient_figure(PER_PATIENT, order=order, labels={"unet": "UNet"})
    (ax,) = fig.axes
    patients = _lines(ax, "patient:")
    assert sorted(patients) == ["patient:p1", "patient:p2", "patient:p3", "patient:p4"]
    assert len(ax.get_lines()) == 4 + 1  # nothing else drawn as a line
    for gid, line in patients.items():
        p = gid.split(":", 1)[1]
        want = [PER_PATIENT[m].get(p, math.nan) for m in order]
        np.testing.assert_array_equal(line.get_xdata(), [0, 1, 2])
        np.testing.assert_array_equal(line.get_ydata(), want)
    median = _lines(ax, "median")["median"]
    np.testing.assert_allclose(median.get_ydata(), [0.50, (0.55 + 0.80) / 2, (0.60 + 0.70) / 2])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["pspnet\n(n=3)", "UNet\n(n=4)", "segnet\n(n=4)"]

    out = paired_patient_plot(PER_PATIENT, tmp_path / "paired.png", order=order, center="mean")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 500
    mean = _lines(paired_patient_figure(PER_PATIENT, center="mean").axes[0], "mean")["mean"]
    np.testing.assert_allclose(mean.get_ydata(), [np.mean([0.8, 0.55, 0.91, 0.1]), np.mean([0.7, 0.6, 0.88, 0.3]),
                                                  np.mean([0.5, 0.4, 0.85])])


def test_paired_plot_bad_input() -> None:
    with pytest.raises(BrainsegError, match="attention_unet"):
        paired_patient_figure(PER_PATIENT, order=["unet", "attention_unet"])
    with pytest.raises(BrainsegError, match="center"):
        paired_patient_figure(PER_PATIENT, center="mode")
    with pytest.raises(BrainsegError, match="no model"):
        paired_patient_figure({})


def _history(n_epochs: int, offset: float) -> list[dict[str, float]]:
    return [
        {"epoch": e, "lr": 1e-3, "train_loss": 1.0 / e, "val_loss": 1.2 / e + offset, "val_dice": 0.1 * e + offset,
         "val_dice_slice": 0.05 * e, "epoch_seconds": 10.0, "train_slices_per_s": 50.0, "best": 0}
        for e in range(1, n_epochs + 1)
    ]


def test_learning_curves_one_panel_per_model_fold_lines_and_mean(tmp_path: Path) -> None:
    # Through history.csv and back, so the plot reads the columns the trainer really writes.
    folds = {"unet": [(5, 0.0), (5, 0.1), (3, 0.2)], "segnet": [(4, 0.05), (4, 0.0)]}
    histories: dict[str, list[list[dict[str, float]]]] = {}
    for m, spec in folds.items():
        histories[m] = []
        for k, (n, off) in enumerate(spec):
            path = write_history(tmp_path / f"{m}_{k}.csv", _history(n, off))
            histories[m].append(read_history(path))
    assert set(histories["unet"][0][0]) == set(COLUMNS)

    fig = learning_curves_folds_figure(histories, order=["segnet", "unet"], labels={"unet": "UNet"})
    axes = [ax for ax in fig.axes if ax.get_lines()]
    assert [ax.get_title() for ax in axes] == ["segnet (2 folds)", "UNet (3 folds)"]
    unet = axes[1]
    fold_lines = _lines(unet, "fold:")
    assert sorted(fold_lines) == ["fold:1", "fold:2", "fold:3"]
    for k, (n, off) in enumerate(folds["unet"], start=1):
        np.testing.assert_array_equal(fold_lines[f"fold:{k}"].get_xdata(), np.arange(1, n + 1))
        np.testing.assert_allclose(fold_lines[f"fold:{k}"].get_ydata(), 0.1 * np.arange(1, n + 1) + off)
    # Epochs 1–3: the mean of three folds, solid; 3–5: of the two that ran on, dashed (joined at 3).
    mean, partial = _lines(unet, "mean")["mean"], _lines(unet, "mean_partial")["mean_partial"]
    nan = math.nan
    np.testing.assert_allclose(mean.get_xdata(), [1, 2, 3, 4, 5])
    np.testing.assert_allclose(mean.get_ydata(), [0.2, 0.3, 0.4, nan, nan])
    np.testing.assert_allclose(partial.get_ydata(), [nan, nan, 0.4, 0.45, 0.55])
    assert partial.get_linestyle() == "--"
    assert "mean_partial" not in _lines(axes[0], "mean")  # segnet's folds have equal length

    loss = learning_curves_folds_figure(histories, metric="val_loss")
    seg_mean = _lines(loss.axes[1], "mean")["mean"]
    np.testing.assert_allclose(seg_mean.get_ydata(), 1.2 / np.arange(1, 5) + 0.025)

    out = learning_curves_folds(histories, tmp_path / "curves.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 500


def test_learning_curves_bad_metric_and_nan_cells() -> None:
    with pytest.raises(BrainsegError, match="val_iou"):
        learning_curves_folds_figure({"unet": [_history(3, 0.0)]}, metric="val_iou")
    hist = _history(3, 0.0)
    hist[1]["val_dice"] = float("nan")  # an empty cell of history.csv
    fig = learning_curves_folds_figure({"unet": [hist, _history(3, 0.0)]})
    lines = _lines(fig.axes[0], "mean")
    # Epoch 2 has one fold's value only: a gap in the solid mean, bridged by the dashed one.
    np.testing.assert_allclose(lines["mean"].get_ydata(), [0.1, math.nan, 0.3])
    np.testing.assert_allclose(lines["mean_partial"].get_ydata(), [0.1, 0.2, 0.3])

"""`brainseg bundle --cv`: the recipe's cross-validated figures, recomputed from the folds' files."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from fake_comparison import make_comparison

from brainseg.commands.bundle import cv_figures
from brainseg.errors import BrainsegError


def test_cv_figures_pool_every_fold_patient_once(tmp_path: Path) -> None:
    d = make_comparison(tmp_path / "cmp", models=("unet", "segnet"), folds=2, n_patients=8, examples=False)
    dice = {}
    for k in range(2):
        with open(d / "runs" / "unet" / f"fold{k}" / "eval_test" / "per_patient.csv", newline="") as f:
            dice.update({r["patient"]: float(r["dice"]) for r in csv.DictReader(f)})
    v = np.array(list(dice.values()))
    assert v.size == 8  # each patient tested by exactly one fold
    out = cv_figures(str(d), "unet", None)
    assert out["folds"] == 2 and out["n_patients"] == 8
    assert out["dice_per_patient_mean"] == pytest.approx(v.mean(), abs=5e-5)
    assert out["dice_per_patient_median"] == pytest.approx(np.median(v), abs=5e-5)
    lo, hi = out["dice_per_patient_ci95"]
    assert v.min() - 1e-4 <= lo <= out["dice_per_patient_mean"] <= hi <= v.max() + 1e-4
    assert out["patients_below_0.5"] == int((v < 0.5).sum()) and out["patients_below_0.7"] == int((v < 0.7).sum())
    with pytest.raises(BrainsegError, match="has no results for pspnet"):
        cv_figures(str(d), "pspnet", None)


def test_cv_figures_of_per_fold_evaluations(tmp_path: Path) -> None:
    """A folder of `evaluate --out DIR/fold<k>` outputs (the last-epoch scores of fold runs) is pooled too."""
    d = tmp_path / "eval_last"
    folds = [{"P1": 0.9, "P2": 0.3}, {"P3": 0.6, "P4": 0.8}, {"P5": 1.0}]
    for k, vals in enumerate(folds):
        (d / f"fold{k}").mkdir(parents=True)
        rows = ["patient,institution,dice,recall"] + [f"{p},XX,{v},0.5" for p, v in vals.items()]
        (d / f"fold{k}" / "per_patient.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = cv_figures(str(d), "unet", None)
    # by hand: (0.9 + 0.3 + 0.6 + 0.8 + 1.0) / 5 = 0.72, median 0.8, one < 0.5, two < 0.7
    assert out["folds"] == 3 and out["n_patients"] == 5
    assert out["dice_per_patient_mean"] == pytest.approx(0.72) and out["dice_per_patient_median"] == pytest.approx(0.8)
    assert out["patients_below_0.5"] == 1 and out["patients_below_0.7"] == 2
    (d / "fold2" / "per_patient.csv").write_text("patient,institution,dice\nP1,XX,0.5\n", encoding="utf-8")
    with pytest.raises(BrainsegError, match=r"fold2.per_patient.csv: patient P1 is in two folds"):
        cv_figures(str(d), "unet", None)

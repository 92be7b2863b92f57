"""`brainseg evaluate` end to end on a tiny trained run, checked against scikit-learn."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import f1_score, jaccard_score, roc_auc_score

from brainseg.cli import main
from brainseg.data.lgg import index_dataset
from brainseg.evaluation.evaluate import (
    DETECTION_COLUMNS,
    PATIENT_COLUMNS,
    SLICE_COLUMNS,
    load_patient,
)
from brainseg.fileio import read_csv, read_json
from brainseg.inference.predictor import Predictor
from brainseg.metrics.surface import SURFACE_METRIC_KEYS, SURFACE_METRICS_POLICY


def test_evaluate_writes_documented_files_that_agree_with_sklearn(tiny_run: Path, capsys) -> None:
    assert main(["evaluate", str(tiny_run), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "per patient" in printed and "HD95 median" in printed and "lesion sensitivity" in printed
    out = tiny_run / "eval_test"
    slices, patients = read_csv(out / "per_slice.csv"), read_csv(out / "per_patient.csv")
    detection = read_csv(out / "detection.csv")
    assert list(slices[0]) == list(SLICE_COLUMNS)
    assert list(patients[0]) == list(PATIENT_COLUMNS) + list(SURFACE_METRIC_KEYS)
    assert list(detection[0]) == list(DETECTION_COLUMNS)
    summary = read_json(out / "summary.json")
    for key in ("threshold", "postprocessing", "empty_policy", "detection_min_area", "loss", "metrics"):
        assert key in summary, key
    assert summary["threshold"] == 0.5 and summary["empty_policy"] == "one"
    cfg = read_json(tiny_run / "config.json")
    test_patients = read_json(tiny_run / "splits.json")["splits"][0]["test"]
    assert sorted(r["patient"] for r in patients) == sorted(test_patients)

    # Independent recomputation: predict again, threshold, score with scikit-learn.
    index = index_dataset(cfg["data"]["root"])
    predictor = Predictor([tiny_run / "checkpoint_best.pt"], device="cpu")
    by = index.by_patient()
    truth_all, score_all = [], []
    for row in patients:
        images, masks = load_patient(by[row["patient"]])
        probs = predictor.predict(images)
        pred, truth = (probs >= 0.5).ravel(), (masks > 0).ravel()
        if truth.any() or pred.any():
            assert float(row["dice"]) == pytest.approx(f1_score(truth, pred), rel=1e-5)
            assert float(row["iou"]) == pytest.approx(jaccard_score(truth, pred), rel=1e-5)
        assert int(row["tp"]) == int((pred & truth).sum())
        # surface columns: volumes and 26-connected lesion counts recounted by SciPy on the same volume
        pv, tv = probs >= 0.5, masks > 0
        assert float(row["vol_pred"]) == pv.sum() and float(row["vol_truth"]) == tv.sum()
        assert float(row["vol_abs_err"]) == abs(int(pv.sum()) - int(tv.sum()))
        assert float(row["lesions_truth"]) == ndimage.label(tv, np.ones((3, 3, 3)))[1]
        assert float(row["lesions_pred"]) == ndimage.label(pv, np.ones((3, 3, 3)))[1]
        assert all(math.isfinite(float(row[k])) for k in SURFACE_METRIC_KEYS)
        truth_all += [m.any() for m in masks]
        score_all += list(probs.reshape(len(probs), -1).max(axis=1))
    mean = np.mean([float(r["dice"]) for r in patients])
    for key in ("hd95", "assd", "nsd", "vol_rel_err"):
        v = [float(r[key]) for r in patients]
        assert summary["surface"][key]["mean"] == pytest.approx(np.mean(v), rel=1e-5, abs=1e-9)
        assert summary["surface"][key]["median"] == pytest.approx(np.median(v), rel=1e-5, abs=1e-9)
    n_truth = sum(float(r["lesions_truth"]) for r in patients)
    if n_truth:
        assert summary["surface"]["lesion_sensitivity_pooled"] == pytest.approx(
            sum(float(r["lesions_detected"]) for r in patients) / n_truth, rel=1e-6)
    assert summary["surface"]["fp_lesions_per_patient"] == pytest.approx(np.mean([float(r["fp_lesions"]) for r in patients]), rel=1e-6)
    assert summary["surface_metrics_policy"] == SURFACE_METRICS_POLICY
    assert summary["metrics"]["dice"]["per_patient"]["mean"] == pytest.approx(mean, rel=1e-5)
    slice_det = next(r for r in detection if r["level"] == "slice")
    if 0 < sum(truth_all) < len(truth_all):
        assert float(slice_det["auroc"]) == pytest.approx(roc_auc_score(truth_all, score_all), rel=1e-5)


def test_evaluate_all_patients_flags_training_patients(tiny_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ext"
    assert main(["evaluate", str(tiny_run), "--split", "all", "--out", str(out), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "were used to train or validate" in err
    summary = read_json(out / "summary.json")
    n_all = len(index_dataset(read_json(tiny_run / "config.json")["data"]["root"]).patients)
    assert summary["n_patients"] == n_all and summary["split"] == "all"


def test_postprocessing_options_are_recorded_and_applied(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "pp"
    args = ["evaluate", str(tiny_run), "--largest-component", "--min-lesion-size", "5", "--threshold", "0.3",
            "--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    s = read_json(out / "summary.json")
    assert s["threshold"] == 0.3
    assert s["postprocessing"] == {"largest_component_per_volume": True, "component_fraction": 1.0, "min_lesion_size": 5}
    # the largest 3-D component can only remove predicted pixels
    base = {r["patient"]: r for r in read_csv(tiny_run / "eval_test" / "per_patient.csv")}
    for r in read_csv(out / "per_patient.csv"):
        assert not math.isnan(float(r["dice"]))
        assert r["patient"] in base


def test_missing_run_is_one_clear_line(tmp_path: Path, capsys) -> None:
    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def second_run(tiny_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another architecture trained on the tiny_run's split (same data and seed): an ensemble partner."""
    from brainseg.training.run import train_run
    from helpers_runs import tiny_cfg

    run = tmp_path_factory.mktemp("second_run") / "run"
    cfg = tiny_cfg(tiny_phantoms, model="segnet")
    cfg.data.size, cfg.data.normalization = 64, "zscore"  # its own preprocessing, applied to its own input
    cfg.eval.threshold, cfg.eval.tta = 0.3, True  # its own eval settings, which the ensemble does not use
    train_run(cfg, run, progress=False)
    return run


def test_several_runs_of_one_split_are_scored_as_their_mean_probability(tiny_run: Path, second_run: Path,
                                                                       tmp_path: Path, capsys) -> None:
    out = tmp_path / "ens"
    assert main(["evaluate", str(tiny_run), str(second_run), "--out", str(out), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "own eval settings" in captured.err and "threshold 0.3" in captured.err and "tta True" in captured.err
    assert "loss of the first member" in captured.out
    summary = read_json(out / "summary.json")
    assert summary["model"] == "ensemble: unet + segnet" and len(summary["ensemble"]) == 2
    assert summary["threshold"] == 0.5 and summary["tta"] is False  # the first run's eval settings
    assert [m["preprocessing"]["size"] for m in summary["ensemble"]] == [32, 64]
    assert summary["settings_hash"] is None  # no single run's result: compare must never reuse it
    index = index_dataset(read_json(tiny_run / "config.json")["data"]["root"])
    by = index.by_patient()
    # each member alone, no TTA (the first run's setting), each with its own size and normalisation
    singles = [Predictor([r / "checkpoint_best.pt"], device="cpu", tta=False) for r in (tiny_run, second_run)]
    rows = read_csv(out / "per_patient.csv")
    assert sorted(r["patient"] for r in rows) == sorted(read_json(tiny_run / "splits.json")["splits"][0]["test"])
    for row in rows:
        images, masks = load_patient(by[row["patient"]])
        mean = (singles[0].predict(images) + singles[1].predict(images)) / 2  # by hand, member by member
        pred, truth = (mean >= 0.5).ravel(), (masks > 0).ravel()
        assert int(row["tp"]) == int((pred & truth).sum()) and int(row["fp"]) == int((pred & ~truth).sum())
        if truth.any() or pred.any():
            assert float(row["dice"]) == pytest.approx(f1_score(truth, pred), rel=1e-5)


def test_an_ensemble_needs_out_and_one_split(tiny_run: Path, second_run: Path, tiny_phantoms: Path,
                                            tmp_path: Path, capsys) -> None:
    from brainseg.training.run import train_run
    from helpers_runs import tiny_cfg

    assert main(["evaluate", str(tiny_run), str(second_run)]) == 2
    assert "--out" in capsys.readouterr().err
    # results written where they would pass for a member's own
    assert main(["evaluate", str(tiny_run), str(second_run), "--out", str(second_run / "eval_test")]) == 2
    assert "inside the member run" in capsys.readouterr().err
    assert main(["evaluate", str(tiny_run), str(tiny_run), "--out", str(tmp_path / "twice")]) == 2
    assert "given twice" in capsys.readouterr().err
    cfg = tiny_cfg(tiny_phantoms, epochs=1)
    cfg.data.seed = 7  # another split of the same patients
    other = tmp_path / "other_split"
    train_run(cfg, other, progress=False)
    assert main(["evaluate", str(tiny_run), str(other), "--out", str(tmp_path / "x"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "different splits" in err and str(other) in err and "Traceback" not in err

"""Detection metrics: AUROC against scikit-learn (with ties), decisions by hand, min_area."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, roc_auc_score

from brainseg.errors import BrainsegError
from brainseg.metrics.detection import auroc, detection_metrics, slice_and_patient_detection


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 200))
    labels = rng.random(n) < rng.uniform(0.1, 0.9)
    labels[:2] = [True, False]  # both classes present
    scores = np.round(rng.random(n) + 0.3 * labels, 1)  # one decimal: many ties
    assert len(np.unique(scores)) < n
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auroc_extremes_and_one_class() -> None:
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auroc([0.5, 0.5, 0.5], [0, 1, 1]) == 0.5  # all tied
    assert math.isnan(auroc([0.1, 0.2], [1, 1]))
    with pytest.raises(BrainsegError):
        auroc([0.1, float("nan")], [0, 1])


def test_detection_metrics_by_hand_and_against_sklearn() -> None:
    scores = np.array([0, 5, 10, 3, 4, 0, 7])
    labels = np.array([0, 1, 1, 0, 1, 1, 0])
    out = detection_metrics(scores, labels, threshold=4)  # predicted: 5, 10, 4, 7 → indices 1, 2, 4, 6
    assert (out["tp"], out["fp"], out["fn"], out["tn"]) == (3, 1, 1, 2)
    tn, fp, fn, tp = confusion_matrix(labels, scores >= 4).ravel()
    assert (out["tp"], out["fp"], out["fn"], out["tn"]) == (tp, fp, fn, tn)
    assert out["n_pos"] == 4 and out["n_neg"] == 3
    assert out["sensitivity"] == pytest.approx(3 / 4)
    assert out["specificity"] == pytest.approx(2 / 3)
    assert out["accuracy"] == pytest.approx(5 / 7)
    assert out["precision"] == pytest.approx(3 / 4)
    assert out["auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert out["threshold"] == 4.0
    alt = detection_metrics(scores, labels, threshold=4, auroc_scores=-scores)
    assert alt["auroc"] == pytest.approx(1 - out["auroc"])
    assert alt["sensitivity"] == out["sensitivity"]


def test_detection_undefined_ratios_are_nan() -> None:
    out = detection_metrics([0, 0, 2], [0, 0, 0], threshold=1)
    assert math.isnan(out["sensitivity"]) and math.isnan(out["auroc"])
    assert out["specificity"] == pytest.approx(2 / 3)
    with pytest.raises(BrainsegError):
        detection_metrics([0, 1], [0, 2], threshold=1)
    with pytest.raises(BrainsegError):
        detection_metrics([0, 1, 2], [0, 1], threshold=1)


# Patient A has a tumour (slice 2, found with 3 pixels). Patient B has none but one
# false-positive pixel on slice 1. Patient C has a tumour that is missed entirely.
ROWS = [
    {"patient": "A", "slice": 1, "true_area": 0, "pred_area": 0, "prob_max": 0.1},
    {"patient": "A", "slice": 2, "true_area": 10, "pred_area": 3, "prob_max": 0.9},
    {"patient": "B", "slice": 1, "true_area": 0, "pred_area": 1, "prob_max": 0.6},
    {"patient": "B", "slice": 2, "true_area": 0, "pred_area": 0, "prob_max": 0.2},
    {"patient": "C", "slice": 1, "true_area": 5, "pred_area": 0, "prob_max": 0.4},
]


def _counts(d: dict) -> tuple[int, int, int, int]:
    return d["tp"], d["fp"], d["fn"], d["tn"]


def test_slice_and_patient_detection_by_hand() -> None:
    out = slice_and_patient_detection(ROWS, min_area=1)
    assert out["min_area"] == 1 and out["auroc_score"] == "prob_max"
    # Slices predicted positive: A2 (3 px), B1 (1 px). Truth positive: A2, C1.
    assert _counts(out["slice"]) == (1, 1, 1, 2)
    assert out["slice"]["auroc"] == pytest.approx(
        roc_auc_score([0, 1, 0, 0, 1], [0.1, 0.9, 0.6, 0.2, 0.4])
    )
    # Patients: A truly and predicted positive; B predicted positive only; C missed.
    assert _counts(out["patient"]) == (1, 1, 1, 0)
    assert out["patient"]["auroc"] == pytest.approx(roc_auc_score([1, 0, 1], [0.9, 0.6, 0.4]))

    out2 = slice_and_patient_detection(ROWS, min_area=2)  # B's single pixel no longer counts
    assert _counts(out2["slice"]) == (1, 0, 1, 3)
    assert _counts(out2["patient"]) == (1, 0, 1, 1)
    assert out2["slice"]["auroc"] == out["slice"]["auroc"]  # AUROC does not depend on min_area

    out5 = slice_and_patient_detection(ROWS, min_area=5)  # nothing reaches 5 px
    assert _counts(out5["slice"]) == (0, 0, 2, 3)


def test_min_area_below_one_means_any_pixel() -> None:
    zero = slice_and_patient_detection(ROWS, min_area=0)
    assert zero["min_area"] == 1
    assert zero["slice"] == slice_and_patient_detection(ROWS, min_area=1)["slice"]
    with pytest.raises(BrainsegError):
        slice_and_patient_detection(ROWS, min_area=-1)


def test_rows_read_back_from_csv_strings() -> None:
    as_csv = [{k: ("" if v is None else str(v)) for k, v in r.items()} for r in ROWS]
    assert slice_and_patient_detection(as_csv, min_area=1) == slice_and_patient_detection(ROWS, min_area=1)


def test_missing_prob_max_falls_back_to_area() -> None:
    rows = [dict(r) for r in ROWS]
    rows[0]["prob_max"] = float("nan")
    out = slice_and_patient_detection(rows, min_area=1)
    assert out["auroc_score"] == "pred_area"
    assert out["slice"]["auroc"] == pytest.approx(roc_auc_score([0, 1, 0, 0, 1], [0, 3, 1, 0, 0]))
    with pytest.raises(BrainsegError, match="row 0"):
        slice_and_patient_detection([{"patient": "A"}], min_area=1)

"""Tumour detection: is there a tumour in this slice / this patient at all?

A slice is called positive when its predicted tumour area reaches `min_area` pixels (at least 1:
any predicted pixel); its truth is positive when the ground-truth mask has any tumour pixel.
A patient is positive when any of its slices is. Sensitivity, specificity and accuracy use that
decision; AUROC ranks a continuous score instead (the highest tumour probability in the slice,
or over the patient's slices), so it does not depend on the threshold or on `min_area`; `roc_curve`
gives the curve whose area that is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from scipy.stats import rankdata

from brainseg.errors import BrainsegError

__all__ = ["auroc", "detection_metrics", "roc_curve", "slice_and_patient_detection"]


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve by the Mann–Whitney rank formula (ties count one half).

    AUROC = (R⁺ - n⁺(n⁺+1)/2) / (n⁺·n⁻), where R⁺ is the sum of the mid-ranks of the positive
    samples' scores. NaN when only one class is present.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    if s.shape != y.shape:
        raise BrainsegError(f"auroc: {s.size} scores for {y.size} labels")
    if np.any(np.isnan(s)):
        raise BrainsegError("auroc: scores contain NaN")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)  # average ranks for ties → each tied positive/negative pair counts 1/2
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, float]:
    """ROC points (fpr, tpr) over every distinct score threshold, and the area under them.

    Tied scores form one step, so the trapezoid area under the points is exactly `auroc` (the
    Mann–Whitney probability that a positive outscores a negative, ties counting one half), which
    is what is returned. NaN scores are left out; the area is NaN when a class is absent.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    keep = ~np.isnan(s)
    s, y = s[keep], y[keep]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return np.array([0.0, 1.0]), np.array([0.0, 1.0]), float("nan")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tps = np.cumsum(y)[last_of_tie]
    fps = np.cumsum(~y)[last_of_tie]
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    return fpr, tpr, auroc(s, y)


def detection_metrics(
    scores: Any, labels: Any, *, threshold: float, auroc_scores: Any = None
) -> dict[str, float | int]:
    """Binary detection metrics where a sample is called positive when score >= threshold.

    Args:
        scores: one score per sample (e.g. predicted tumour area in pixels).
        labels: truth per sample (bool, or 0/1).
        threshold: decision threshold on `scores`.
        auroc_scores: continuous score for the AUROC; None → `scores`.

    Returns:
        tp, fp, fn, tn, n_pos, n_neg, sensitivity (tp/n_pos), specificity (tn/n_neg), accuracy,
        precision (tp/(tp+fp)), auroc and threshold. A ratio whose denominator is 0 is NaN (e.g.
        sensitivity with no positive sample; AUROC when only one class is present).
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y_raw = np.asarray(labels).reshape(-1)
    if s.shape != y_raw.shape:
        raise BrainsegError(f"detection_metrics: {s.size} scores for {y_raw.size} labels")
    if np.any(np.isnan(s)):
        raise BrainsegError("detection_metrics: scores contain NaN")
    if y_raw.dtype != np.bool_ and not np.all((y_raw == 0) | (y_raw == 1)):
        raise BrainsegError("detection_metrics: labels must be boolean or 0/1")
    y = y_raw.astype(bool)
    pred = s >= threshold
    tp = int(np.count_nonzero(pred & y))
    fp = int(np.count_nonzero(pred & ~y))
    fn = int(np.count_nonzero(~pred & y))
    tn = int(np.count_nonzero(~pred & ~y))
    n_pos, n_neg = tp + fn, tn + fp
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "n_pos": n_pos,
        "n_neg": n_neg,
        "sensitivity": _ratio(tp, n_pos),
        "specificity": _ratio(tn, n_neg),
        "accuracy": _ratio(tp + tn, n_pos + n_neg),
        "precision": _ratio(tp, tp + fp),
        "auroc": auroc(s if auroc_scores is None else auroc_scores, y),
        "threshold": float(threshold),
    }


def _float(v: Any) -> float:
    # Rows may come straight from per_slice.csv (strings; an empty cell is a missing value).
    if v is None or (isinstance(v, str) and not v.strip()):
        return float("nan")
    return float(v)


def slice_and_patient_detection(per_slice_rows: Iterable[Mapping[str, Any]], *, min_area: float = 1) -> dict[str, Any]:
    """Slice- and patient-level detection from per-slice rows.

    Args:
        per_slice_rows: rows with patient, true_area, pred_area and prob_max (as produced by
            `MetricAccumulator.per_slice_rows`, or read back from per_slice.csv as strings).
        min_area: a slice is predicted positive when pred_area >= min_area pixels. Values below
            1 mean 1 (any predicted pixel): an empty prediction is never a detection.

    Returns:
        {"slice": detection_metrics(...), "patient": detection_metrics(...), "min_area": the
        minimum area used, "auroc_score": "prob_max" or "pred_area"}. Slice truth is
        true_area > 0; a patient is truly positive when any slice is, and predicted positive
        when any slice is (max pred_area >= min_area). AUROC ranks prob_max (per patient: the
        max over its slices); when any prob_max is missing it ranks the predicted area instead.
    """
    if not min_area >= 0:
        raise BrainsegError(f"detection: min_area must be >= 0 pixels, got {min_area}")
    min_area = max(min_area, 1)
    patients: list[str] = []
    true_area: list[float] = []
    pred_area: list[float] = []
    prob: list[float] = []
    for i, row in enumerate(per_slice_rows):
        try:
            patients.append(str(row["patient"]))
            true_area.append(_float(row["true_area"]))
            pred_area.append(_float(row["pred_area"]))
            prob.append(_float(row.get("prob_max")))
        except (KeyError, ValueError) as exc:
            raise BrainsegError(f"detection: per-slice row {i} is unusable ({exc!r}): {dict(row)}") from exc
    ta, pa, pm = np.array(true_area), np.array(pred_area), np.array(prob)
    if np.any(np.isnan(ta)) or np.any(np.isnan(pa)):
        raise BrainsegError("detection: true_area and pred_area must be present in every per-slice row")
    use_prob = pm.size > 0 and not np.any(np.isnan(pm))
    score = pm if use_prob else pa

    slice_level = detection_metrics(pa, ta > 0, threshold=min_area, auroc_scores=score)

    names = sorted(set(patients))
    index = {p: i for i, p in enumerate(names)}
    group = np.array([index[p] for p in patients], dtype=np.int64)
    p_true = np.zeros(len(names), dtype=bool)
    np.logical_or.at(p_true, group, ta > 0)
    p_area = np.full(len(names), -np.inf)
    np.maximum.at(p_area, group, pa)
    p_score = np.full(len(names), -np.inf)
    np.maximum.at(p_score, group, score)
    patient_level = detection_metrics(p_area, p_true, threshold=min_area, auroc_scores=p_score)

    return {
        "slice": slice_level,
        "patient": patient_level,
        "min_area": min_area,
        "auroc_score": "prob_max" if use_prob else "pred_area",
    }

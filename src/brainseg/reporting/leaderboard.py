"""The leaderboard of a comparison: one row per model, recomputed from its per-patient and per-slice files.

Per-patient means carry a bootstrap interval over patients; k-fold runs are pooled patient by
patient (`pooled_patients`), so every tested patient counts once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainseg.errors import BrainsegError
from brainseg.reporting.comparison import Comparison, RunFiles, first_of, read_table
from brainseg.reporting.formatting import display_name, to_number

__all__ = ["BOARD_METRICS", "SURFACE_BOARD", "surface_columns", "leaderboard", "leaderboard_columns", "per_patient_values", "pooled_patients"]

#: Metrics of the leaderboard with a bootstrap interval over patients, in display order.
BOARD_METRICS: tuple[str, ...] = ("dice", "iou", "recall", "precision")
_ALL_METRICS: tuple[str, ...] = ("dice", "iou", "precision", "recall", "specificity")


def pooled_patients(runs: Sequence[RunFiles]) -> tuple[list[dict[str, Any]], int]:
    """Per-patient rows of all folds, one per patient; returns (rows, number of duplicates averaged).

    In k-fold each patient is tested once; should one appear in several folds its metrics are
    averaged (and counted, so the report can say so) rather than counted twice in the CI.
    """
    by: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        for row in r.per_patient:
            by.setdefault(str(row["patient"]), []).append(row)
    rows, dup = [], 0
    for group in by.values():
        if len(group) == 1:
            rows.append(group[0])
            continue
        dup += 1
        merged = dict(group[0])
        for k, v in group[0].items():
            if isinstance(v, float):
                merged[k] = float(np.nanmean([g[k] for g in group])) if any(not math.isnan(g[k]) for g in group) else v
        rows.append(merged)
    return rows, dup


def per_patient_values(cmp: Comparison, metric: str = "dice") -> dict[str, dict[str, float]]:
    """model → {patient: per-patient metric}, pooled over folds (the pairing for the tests)."""
    return {m: {str(r["patient"]): float(r[metric]) for r in pooled_patients(cmp.runs[m])[0]} for m in cmp.models}


def is_fold_evaluations(folder: str | Path) -> bool:
    """Whether `folder` holds `fold<k>/per_patient.csv` evaluate outputs rather than a comparison."""
    path = Path(folder)
    return not (path / "protocol.json").is_file() and any(path.glob("fold*/per_patient.csv"))


def evaluated_fold_values(folder: str | Path, metric: str = "dice") -> tuple[dict[str, float], int]:
    """Per-patient `metric` pooled over `folder/fold<k>/per_patient.csv`, and the number of folds.

    Such a folder holds `brainseg evaluate RUN --out folder/fold<k>` outputs of one model's fold runs
    (e.g. their last checkpoints); every patient must be in exactly one fold.
    """
    files = sorted(Path(folder).glob("fold*/per_patient.csv"))
    vals: dict[str, float] = {}
    for f in files:
        for rec in read_table(f, ("patient", metric)):
            patient = str(rec["patient"])
            if patient in vals:
                raise BrainsegError(f"{f}: patient {patient} is in two folds")
            vals[patient] = float(rec[metric])
    return vals, len(files)


def _nanmean(values: Iterable[float]) -> float:
    v = np.asarray(list(values), dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


def _detection(runs: Sequence[RunFiles], level: str) -> dict[str, float]:
    """Detection metrics of one run as written; over folds, recomputed from the pooled test slices.

    Pooling uses `slice_and_patient_detection` (the evaluation's own definition) on every fold's
    per_slice.csv; when a fold lacks that file, counts are summed and AUROC averaged over folds.
    """
    rows = [r.detection[level] for r in runs if r.detection and level in r.detection]
    if len(runs) == 1:
        return {k: to_number(rows[0].get(k)) for k in ("sensitivity", "specificity", "accuracy", "auroc")} if rows else {}
    if all(r.per_slice for r in runs):
        from brainseg.metrics.detection import slice_and_patient_detection

        min_area = to_number(first_of(runs[0].summary, "detection_min_area"))
        det = slice_and_patient_detection(
            [s for r in runs for s in (r.per_slice or [])], min_area=1 if math.isnan(min_area) else min_area
        )[level]
        return {k: float(det[k]) for k in ("sensitivity", "specificity", "accuracy", "auroc")}
    if not rows:
        return {}
    tp, fp, fn, tn = (sum(to_number(r.get(k)) for r in rows) for k in ("tp", "fp", "fn", "tn"))

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else float("nan")

    return {
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "accuracy": ratio(tp + tn, tp + fp + fn + tn),
        "auroc": _nanmean(to_number(r.get("auroc")) for r in rows),
    }


#: Boundary and lesion columns of the board, from per_patient.csv's surface metrics (NaN when a
#: comparison predates them): medians and means over patients, lesion sensitivity pooled.
SURFACE_BOARD: tuple[str, ...] = ("hd95_median", "hd95_mean", "assd_mean", "assd_median", "nsd_mean",
                                  "lesion_sensitivity", "fp_lesions_per_patient", "vol_rel_err_median")


def surface_columns(pp: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The SURFACE_BOARD values of pooled per-patient rows; all NaN unless every row has the
    surface columns (a fold evaluated before they existed would make a mean over a subset)."""
    if not pp or any(math.isnan(to_number(r.get("hd95"))) for r in pp):
        return dict.fromkeys(SURFACE_BOARD, float("nan"))

    def col(key: str) -> np.ndarray:
        v = np.array([to_number(r.get(key)) for r in pp], dtype=np.float64)
        return v[~np.isnan(v)]

    out = {}
    for name in SURFACE_BOARD:
        key, _, how = name.rpartition("_")
        if how in ("mean", "median"):
            v = col(key)
            out[name] = float(getattr(np, how)(v)) if v.size else float("nan")
    truth, found, fp = col("lesions_truth"), col("lesions_detected"), col("fp_lesions")
    out["lesion_sensitivity"] = float(found.sum() / truth.sum()) if truth.size == found.size and truth.sum() > 0 else float("nan")
    out["fp_lesions_per_patient"] = float(fp.mean()) if fp.size else float("nan")
    return {k: out[k] for k in SURFACE_BOARD}


def leaderboard_columns(n_folds: int = 0) -> list[str]:
    cols = ["rank", "model", "label", "n_patients"]
    for m in BOARD_METRICS:
        cols += [f"{m}_patient", f"{m}_patient_ci_low", f"{m}_patient_ci_high"]
    cols += ["specificity_patient", "dice_patient_sd", "dice_patient_median", "loss", "loss_name"]
    cols += [f"{m}_slice" for m in BOARD_METRICS] + [f"{m}_micro" for m in BOARD_METRICS]
    cols += [f"{lvl}_{k}" for lvl in ("slice", "patient") for k in ("sensitivity", "specificity", "auroc")]
    cols += list(SURFACE_BOARD)
    cols += ["params", "flops", "train_seconds", "epoch_seconds_median", "epochs", "best_epoch", "inference_ms_per_slice"]
    if n_folds:
        cols += ["n_folds", "partial", "dice_fold_mean", "dice_fold_sd"]
    return cols


def leaderboard(cmp: Comparison, *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> list[dict[str, Any]]:
    """One row per model, ranked by mean per-patient Dice (highest first; ties keep protocol order).

    In k-fold, a model whose folds are not all evaluated (`partial`) comes after the complete ones.

    Per-patient means carry a percentile-bootstrap interval over patients (`bootstrap_ci`);
    per-slice means are over the rows of per_slice.csv (NaN left out, i.e. the "skip" policy's
    undefined slices); micro metrics come from the confusion counts summed over every patient.
    With folds, patients are pooled over folds, training time is summed and inference time,
    epochs and AUROC are averaged over folds; `dice_fold_mean`/`_sd` describe the fold means.
    """
    from brainseg.metrics.confusion import metrics_from_counts
    from brainseg.metrics.stats import bootstrap_ci

    rows = []
    for m in cmp.models:
        runs = cmp.runs[m]
        pp, _ = pooled_patients(runs)
        row: dict[str, Any] = {"model": m, "label": display_name(m), "n_patients": len(pp)}
        for metric in _ALL_METRICS:
            vals = [float(r.get(metric, float("nan"))) for r in pp]
            mean, low, high = bootstrap_ci(vals, n_boot=n_boot, confidence=confidence, seed=seed)
            row[f"{metric}_patient"] = mean
            if metric in BOARD_METRICS:
                row[f"{metric}_patient_ci_low"], row[f"{metric}_patient_ci_high"] = low, high
        dice = np.array([float(r["dice"]) for r in pp])
        dice = dice[~np.isnan(dice)]
        row["dice_patient_sd"] = float(dice.std(ddof=1)) if dice.size > 1 else float("nan")
        row["dice_patient_median"] = float(np.median(dice)) if dice.size else float("nan")
        slices = [s for r in runs for s in (r.per_slice or [])]
        for metric in BOARD_METRICS:
            row[f"{metric}_slice"] = _nanmean(s.get(metric, float("nan")) for s in slices) if slices else float("nan")
        counts = np.array([[float(r[k]) for k in ("tp", "fp", "fn", "tn")] for r in pp]).sum(axis=0)
        micro = metrics_from_counts(counts, empty_policy=cmp.empty_policy)
        for metric in BOARD_METRICS:
            row[f"{metric}_micro"] = float(micro[metric])
        row.update(surface_columns(pp))
        # Loss on the test split: a mean over slices, so folds are weighted by their slice counts.
        losses = [(to_number(r.summary.get("loss")), to_number(r.summary.get("n_slices"))) for r in runs]
        if len(losses) == 1 or any(math.isnan(w) for _, w in losses):
            row["loss"] = _nanmean(v for v, _ in losses)
        else:
            w = sum(n for v, n in losses if not math.isnan(v))
            row["loss"] = sum(v * n for v, n in losses if not math.isnan(v)) / w if w else float("nan")
        row["loss_name"] = runs[0].summary.get("loss_name", "")
        for lvl in ("slice", "patient"):
            det = _detection(runs, lvl)
            for k in ("sensitivity", "specificity", "auroc"):
                row[f"{lvl}_{k}"] = det.get(k, float("nan"))
        row["params"] = first_of(runs[0].summary, "params") or first_of(runs[0].train_summary, "params")
        row["flops"] = first_of(runs[0].summary, "flops")
        secs = [to_number(first_of(r.train_summary, "train_seconds")) for r in runs]
        row["train_seconds"] = float(np.nansum(secs)) if not all(math.isnan(s) for s in secs) else float("nan")
        # the median epoch: a speed figure that a busy machine's slow epochs (another job on the
        # same cores, a paused run) do not inflate the way they inflate the sum
        ep = [to_number(h.get("epoch_seconds")) for r in runs for h in (r.history or [])]
        ep = [v for v in ep if not math.isnan(v)]
        row["epoch_seconds_median"] = float(np.median(ep)) if ep else float("nan")
        epochs = [to_number(first_of(r.train_summary, "epochs_run")) for r in runs]
        row["epochs"] = _nanmean(epochs)
        row["best_epoch"] = to_number(first_of(runs[0].train_summary, "best_epoch")) if len(runs) == 1 else float("nan")
        row["inference_ms_per_slice"] = _nanmean(to_number(r.summary.get("inference_ms_per_slice")) for r in runs)
        if cmp.n_folds:
            fold_means = [_nanmean(float(p["dice"]) for p in r.per_patient) for r in runs]
            row["n_folds"] = len(runs)
            row["dice_fold_mean"] = _nanmean(fold_means)
            fm = np.array([v for v in fold_means if not math.isnan(v)])
            row["dice_fold_sd"] = float(fm.std(ddof=1)) if fm.size > 1 else float("nan")
        rows.append(row)
    # A model with some folds not yet evaluated is scored on other (fewer) patients than the rest:
    # it is listed after every complete model, whatever its Dice, and `partial` marks it.
    for row in rows:
        row["partial"] = bool(cmp.n_folds) and row.get("n_folds", 0) < cmp.n_folds
    order = sorted(
        range(len(rows)),
        key=lambda i: (rows[i]["partial"], math.isnan(rows[i]["dice_patient"]),
                       -np.nan_to_num(rows[i]["dice_patient"], nan=0.0), i),
    )
    ranked = [rows[i] for i in order]
    for rank, row in enumerate(ranked, 1):
        row["rank"] = rank
    return ranked


def is_partial(row: Mapping[str, Any]) -> bool:
    """The row's `partial` flag, in memory (bool) or read back from leaderboard.csv (1.0, or NaN
    where the comparison has no folds)."""
    return to_number(row.get("partial")) == 1.0


def complete_rows(board: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The board's models with every fold evaluated (all of them when none is `partial`)."""
    return [r for r in board if not is_partial(r)]


def board_label(row: Mapping[str, Any], n_folds: int) -> str:
    """The model's name, with "(k of n folds)" when its folds are not all evaluated."""
    return f"{row['label']} ({row.get('n_folds', 0)} of {n_folds} folds)" if is_partial(row) else str(row["label"])

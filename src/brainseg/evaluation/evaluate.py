"""Evaluate a trained run on one split: per-slice, per-patient and detection results.

Metrics are computed at each slice's native resolution (probabilities are resized back before
`brainseg.inference.postprocess.binarize`), so runs trained at 128×128 and 256×256 are scored
against the same masks. Files written: per_slice.csv, per_patient.csv, detection.csv, summary.json.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainseg.config import EvalConfig
from brainseg.errors import BrainsegError
from brainseg.fileio import write_csv_atomic, write_json_atomic

# A perturbation takes native uint8 slices (N,H,W,3) and masks (N,H,W) of one patient and
# returns perturbed copies (robustness evaluation).
Perturbation = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

SLICE_COLUMNS = (
    "patient", "institution", "slice", "tp", "fp", "fn", "tn", "dice", "iou", "precision", "recall",
    "specificity", "true_area", "pred_area", "prob_max",
)
PATIENT_COLUMNS = (
    "patient", "institution", "n_slices", "tp", "fp", "fn", "tn", "dice", "iou", "precision", "recall",
    "specificity", "true_volume_px", "pred_volume_px",
)
#: Surface metrics summarised over patients (mean and median) in summary.json's "surface".
SURFACE_SUMMARY_KEYS = ("hd95", "assd", "nsd", "vol_abs_err", "vol_rel_err", "lesion_sensitivity", "fp_lesions")
DETECTION_COLUMNS = ("level", "min_area", "n", "n_pos", "n_neg", "tp", "fp", "fn", "tn", "sensitivity",
                     "specificity", "accuracy", "auroc")


def load_patient(records: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Native uint8 slices (N,H,W,3) and {0,1} masks (N,H,W) of one patient, in slice order."""
    from brainseg.data.lgg import read_slice

    pairs = [read_slice(r) for r in records]
    shapes = {img.shape for img, _ in pairs}
    if len(shapes) > 1:
        raise BrainsegError(f"patient {records[0].patient} mixes slice shapes {sorted(shapes)}")
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def evaluate_patients(
    predictor: Any,
    index: Any,
    patients: list[str],
    eval_cfg: EvalConfig,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    perturb: Perturbation | None = None,
    cache: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    progress: bool = True,
    desc: str = "evaluating",
    surface: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Predict every slice of `patients` and accumulate confusion counts at native size.

    Returns the MetricAccumulator and {"loss": mean training loss over slices} (NaN without
    loss_fn); with `surface`, also "surface": patient → `patient_surface_metrics` of its
    binarised volume against the truth (native pixels, slice mode), computed here because only
    here is a patient's whole predicted volume at hand. `cache` (patient → (images, masks))
    lets several evaluations share one decode of the TIFs.
    """
    from brainseg.data.preprocess import resize_mask
    from brainseg.inference.postprocess import binarize
    from brainseg.metrics.accumulator import MetricAccumulator
    from brainseg.metrics.confusion import confusion_counts
    from brainseg.metrics.surface import patient_surface_metrics

    acc = MetricAccumulator()
    per_patient_surface: dict[str, dict[str, float]] = {}
    by = index.by_patient()
    loss_sum, loss_n = 0.0, 0
    it = patients
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(patients, desc=desc, leave=False, mininterval=1.0, file=sys.stderr)
    for patient in it:
        records = by[patient]
        if cache is not None and patient in cache:
            images, masks = cache[patient]
        else:
            images, masks = load_patient(records)
            if cache is not None:
                cache[patient] = (images, masks)
        if perturb is not None:
            images, masks = perturb(images, masks)
        if loss_fn is not None:
            probs, logits = predictor.predict(images, source=patient, return_logits=True)
            size = logits.shape[-1]
            target = torch.from_numpy(np.stack([resize_mask(m, size) for m in masks])[:, None].astype(np.float32))
            loss_sum += float(loss_fn(logits, target)) * len(images)
            loss_n += len(images)
        else:
            probs = predictor.predict(images, source=patient)
        pred = binarize(probs, eval_cfg)
        truth = masks > 0
        counts = confusion_counts(pred, truth)
        if surface:
            per_patient_surface[patient] = patient_surface_metrics(pred > 0, truth)
        acc.add(
            [patient] * len(records),
            [r.slice for r in records],
            counts,
            prob_max=probs.reshape(len(probs), -1).max(axis=1),
            pred_area=pred.reshape(len(pred), -1).sum(axis=1),
            true_area=truth.reshape(len(truth), -1).sum(axis=1),
        )
    extra: dict[str, Any] = {"loss": loss_sum / loss_n if loss_n else float("nan")}
    if surface:
        extra["surface"] = per_patient_surface
    return acc, extra


def surface_summary(rows: list[dict[str, float]]) -> dict[str, Any]:
    """Per-patient mean and median of the boundary and volume metrics, pooled lesion sensitivity
    (detected truth lesions / all truth lesions) and false-positive lesions per patient."""
    out: dict[str, Any] = {}
    for key in SURFACE_SUMMARY_KEYS:
        v = np.array([r[key] for r in rows], dtype=np.float64)
        out[key] = {"mean": float(v.mean()) if v.size else float("nan"),
                    "median": float(np.median(v)) if v.size else float("nan"), "n": int(v.size)}
    n_truth = sum(r["lesions_truth"] for r in rows)
    out["lesion_sensitivity_pooled"] = sum(r["lesions_detected"] for r in rows) / n_truth if n_truth else float("nan")
    out["lesions_truth"] = int(n_truth)
    out["fp_lesions_per_patient"] = float(np.mean([r["fp_lesions"] for r in rows])) if rows else float("nan")
    return out


def write_results(
    out_dir: Path, acc: Any, index: Any, eval_cfg: EvalConfig, extra: dict[str, Any],
    surface: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """per_slice.csv, per_patient.csv, detection.csv and summary.json from an accumulator (and,
    when given, each patient's surface metrics: extra per_patient.csv columns and a summary)."""
    from brainseg.metrics.confusion import EMPTY_POLICIES
    from brainseg.metrics.detection import slice_and_patient_detection
    from brainseg.metrics.surface import SURFACE_METRIC_KEYS, SURFACE_METRICS_POLICY

    policy = eval_cfg.empty_policy
    inst = index.institutions
    slice_rows = acc.per_slice_rows(policy)
    patient_rows = acc.per_patient_rows(policy)
    for r in slice_rows + patient_rows:
        r["institution"] = inst.get(r["patient"], "")
    columns = PATIENT_COLUMNS
    if surface is not None:
        columns = PATIENT_COLUMNS + SURFACE_METRIC_KEYS
        for r in patient_rows:
            r.update(surface[r["patient"]])
        extra = {**extra, "surface": surface_summary([surface[r["patient"]] for r in patient_rows]),
                 "surface_metrics_policy": SURFACE_METRICS_POLICY}
    detection = slice_and_patient_detection(slice_rows, min_area=eval_cfg.min_area)
    det_rows = [{"level": lvl, "min_area": detection["min_area"], **detection[lvl]} for lvl in ("slice", "patient")]
    write_csv_atomic(out_dir / "per_slice.csv", slice_rows, SLICE_COLUMNS)
    write_csv_atomic(out_dir / "per_patient.csv", patient_rows, columns)
    write_csv_atomic(out_dir / "detection.csv", det_rows, DETECTION_COLUMNS)
    summary = {
        **extra,
        "n_patients": len(patient_rows),
        "n_slices": len(slice_rows),
        "n_tumour_slices": int(sum(1 for r in slice_rows if r["true_area"] > 0)),
        "threshold": eval_cfg.threshold,
        "postprocessing": {
            "largest_component_per_volume": eval_cfg.largest_component,
            "component_fraction": eval_cfg.component_fraction,
            "min_lesion_size": eval_cfg.min_lesion_size,
        },
        "detection_min_area": eval_cfg.min_area,
        "empty_policy": policy,
        "empty_policy_doc": EMPTY_POLICIES[policy],
        "resolution": "native: probabilities are resized to each slice's own size before thresholding",
        "metrics": acc.summary(policy),
        "detection": detection,
    }
    write_json_atomic(out_dir / "summary.json", summary)
    return summary


def _ensemble_runs(run_dirs: list[Path], checkpoint: str | None, data_root: str | None, split: str,
                   overrides: dict[str, Any], out_dir: str | Path | None) -> list[Any]:
    """Load the run, or every member of an ensemble; members must be different runs tested on the same
    patients of the same data, with results going outside their folders."""
    from brainseg.evaluation.session import EvalRun

    if len(run_dirs) > 1:
        if out_dir is None:
            raise BrainsegError("an ensemble of several runs needs --out (its results are not any one run's)")
        target = Path(out_dir).resolve()
        seen: set[Path] = set()
        for d in run_dirs:
            here = d.resolve()
            if here in seen:
                raise BrainsegError(f"{d} is given twice: an ensemble's runs must be different runs")
            seen.add(here)
            if target == here or here in target.parents:  # --out RUN/eval_test: passed off as RUN's own result
                raise BrainsegError(f"--out {out_dir} is inside the member run {d}: an ensemble's results go "
                                    "outside its runs' folders")
    runs = [EvalRun.load(d, checkpoint, data_root, split=split, eval_overrides=overrides) for d in run_dirs]
    first = runs[0]
    mine = asdict(first.cfg.eval)
    for r in runs[1:]:
        other = asdict(r.cfg.eval)
        differ = [k for k in mine if other.get(k) != mine[k] and k != "checkpoint"]  # each member keeps its own
        if differ:
            print(f"note: {r.run_dir} has its own eval settings ({', '.join(f'{k} {other.get(k)!r}' for k in differ)}); "
                  f"the ensemble is scored with the first run's ({', '.join(f'{k} {mine[k]!r}' for k in differ)})",
                  file=sys.stderr, flush=True)
        if r.root != first.root:
            raise BrainsegError(f"the ensemble's runs read different data: {first.run_dir} {first.root}, "
                                f"{r.run_dir} {r.root} (give --data to score them on one dataset)")
        if split != "all" and r.ckpt["split"]["id"] != first.ckpt["split"]["id"]:
            raise BrainsegError(
                f"the ensemble's runs were trained on different splits ({first.run_dir}: {first.ckpt['split']['id']}, "
                f"{r.run_dir}: {r.ckpt['split']['id']}): its {split} patients would not be unseen by every member; "
                "ensemble the runs of one fold, or score an external set with --split all")
    return runs


def evaluate_run(
    run_dir: str | Path | list[str | Path],
    *,
    split: str = "test",
    data_root: str | None = None,
    checkpoint: str | None = None,
    eval_overrides: dict[str, Any] | None = None,
    device: str = "auto",
    batch_size: int = 16,
    tta: bool | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate `<run_dir>/checkpoint_<checkpoint>.pt` on the run's own split; write the result files.

    `checkpoint` None takes the one the run's `eval.checkpoint` names (best unless its config says last).

    Results go to `<run_dir>/eval_<split>/` unless `out_dir` is given. The run's own `eval`
    settings apply (threshold, TTA, post-processing, …) except where `eval_overrides` or `tta`
    (None: the run's) say otherwise.

    Several run folders make an ensemble: the mean probability of their checkpoints (each with
    its own preprocessing), scored with the first run's eval settings and loss on the split they
    share — the runs must have been trained on the same split (e.g. the models of one fold), so
    every tested patient is unseen by every member. `out_dir` is then required.
    """
    from brainseg.environment import environment
    from brainseg.inference.predictor import Predictor
    from brainseg.losses import build_loss
    from brainseg.protocol import result_settings, settings_hash

    dirs = [Path(d) for d in run_dir] if isinstance(run_dir, (list, tuple)) else [Path(run_dir)]
    if not dirs:
        raise BrainsegError("no run folder given")
    runs = _ensemble_runs(dirs, checkpoint, data_root, split, {**(eval_overrides or {}), "tta": tta}, out_dir)
    run = runs[0]
    cfg, ckpt = run.cfg, run.ckpt
    # the members' mean probability (one member: that run alone), with the first run's TTA setting
    predictor = Predictor([r.ckpt for r in runs], device=device, tta=cfg.eval.tta, batch_size=batch_size)
    names = [r.cfg.model.name for r in runs]
    acc, extra = evaluate_patients(
        predictor, run.index, run.patients, cfg.eval, loss_fn=build_loss(cfg.train.loss), progress=progress,
        desc=f"evaluating {' + '.join(names)} on {split}", surface=True,
    )
    out = Path(out_dir) if out_dir else run.run_dir / f"eval_{split}"
    info = {
        "model": names[0] if len(runs) == 1 else "ensemble: " + " + ".join(names),
        "model_config": ckpt["model"],
        "run_dir": str(run.run_dir),
        "checkpoint": ckpt["path"],
        "checkpoint_epoch": ckpt.get("epoch"),
        "split": split,
        "split_id": ckpt["split"]["id"],
        # what compare's reuse checks; an ensemble is no single run's result
        "settings_hash": settings_hash(result_settings(cfg), ckpt["split"]["id"]) if len(runs) == 1 else None,
        "data_root": str(run.root),
        "params": (sum(int(r.ckpt["params"]) for r in runs) if all(r.ckpt.get("params") for r in runs) else None)
        if len(runs) > 1 else ckpt.get("params"),
        "loss_name": cfg.train.loss,
        "loss": extra["loss"],
        "tta": cfg.eval.tta,
        "device": str(predictor.device),
        "environment": environment(predictor.device),
        "inference_ms_per_slice": round(predictor.ms_per_slice, 3),
        "eval_config": asdict(cfg.eval),
        "flops": _flops(predictor, [r.ckpt for r in runs]),
    }
    if len(runs) > 1:
        info["ensemble"] = [{"run_dir": str(r.run_dir), **m} for r, m in zip(runs, predictor.describe())]
        info["loss_note"] = f"loss of the first member ({names[0]}) alone, without TTA"
    return write_results(out, acc, run.index, cfg.eval, info, surface=extra["surface"])


def _flops(predictor: Any, ckpts: list[dict[str, Any]]) -> int | None:
    """Forward FLOPs per slice of the loaded model(s) at their training size, summed over an
    ensemble's members (None if not countable)."""
    from brainseg.data.preprocess import model_channels
    from brainseg.models import count_flops

    try:
        return sum(count_flops(m, int(c["preprocessing"]["size"]), model_channels(c["preprocessing"]))
                   for m, c in zip(predictor.models, ckpts))
    except Exception:  # FLOP counting is informative only; it must not fail an evaluation
        return None

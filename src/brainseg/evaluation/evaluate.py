"""Evaluate a trained run on one split: per-slice, per-patient and detection results.

Metrics are computed at each slice's native resolution (probabilities are resized back before
thresholding), so runs trained at 128×128 and 256×256 are scored against the same masks.
Files written: per_slice.csv, per_patient.csv, detection.csv, summary.json.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainseg.config import EvalConfig, RunConfig
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
DETECTION_COLUMNS = ("level", "min_area", "n", "n_pos", "n_neg", "tp", "fp", "fn", "tn", "sensitivity",
                     "specificity", "accuracy", "auroc")
SPLITS = ("train", "val", "test")


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
) -> tuple[Any, dict[str, float]]:
    """Predict every slice of `patients` and accumulate confusion counts at native size.

    Returns the MetricAccumulator and {"loss": mean training loss over slices} (NaN without loss_fn).
    `cache` (patient → (images, masks)) lets several evaluations share one decode of the TIFs.
    """
    from brainseg.data.preprocess import resize_mask
    from brainseg.evaluation.postprocess import largest_component, remove_small_components
    from brainseg.metrics.accumulator import MetricAccumulator
    from brainseg.metrics.confusion import confusion_counts

    acc = MetricAccumulator()
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
        pred = probs >= eval_cfg.threshold
        if eval_cfg.largest_component:
            pred = largest_component(pred)
        if eval_cfg.min_lesion_size > 1:
            pred = np.stack([remove_small_components(p, eval_cfg.min_lesion_size) for p in pred])
        truth = masks > 0
        counts = confusion_counts(pred, truth)
        acc.add(
            [patient] * len(records),
            [r.slice for r in records],
            counts,
            prob_max=probs.reshape(len(probs), -1).max(axis=1),
            pred_area=pred.reshape(len(pred), -1).sum(axis=1),
            true_area=truth.reshape(len(truth), -1).sum(axis=1),
        )
    return acc, {"loss": loss_sum / loss_n if loss_n else float("nan")}


def split_patients(ckpt: dict[str, Any], split: str) -> list[str]:
    if split not in SPLITS:
        raise BrainsegError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    patients = list(ckpt["split"][split])
    if not patients:
        raise BrainsegError(f"the run's split has no {split} patients")
    return patients


def write_results(
    out_dir: Path, acc: Any, index: Any, eval_cfg: EvalConfig, extra: dict[str, Any]
) -> dict[str, Any]:
    """per_slice.csv, per_patient.csv, detection.csv and summary.json from an accumulator."""
    from brainseg.metrics.confusion import EMPTY_POLICIES
    from brainseg.metrics.detection import slice_and_patient_detection

    policy = eval_cfg.empty_policy
    inst = index.institutions
    slice_rows = acc.per_slice_rows(policy)
    patient_rows = acc.per_patient_rows(policy)
    for r in slice_rows + patient_rows:
        r["institution"] = inst.get(r["patient"], "")
    detection = slice_and_patient_detection(slice_rows, min_area=eval_cfg.min_area)
    det_rows = [{"level": lvl, "min_area": detection["min_area"], **detection[lvl]} for lvl in ("slice", "patient")]
    write_csv_atomic(out_dir / "per_slice.csv", slice_rows, SLICE_COLUMNS)
    write_csv_atomic(out_dir / "per_patient.csv", patient_rows, PATIENT_COLUMNS)
    write_csv_atomic(out_dir / "detection.csv", det_rows, DETECTION_COLUMNS)
    summary = {
        **extra,
        "n_patients": len(patient_rows),
        "n_slices": len(slice_rows),
        "n_tumour_slices": int(sum(1 for r in slice_rows if r["true_area"] > 0)),
        "threshold": eval_cfg.threshold,
        "postprocessing": {
            "largest_component_per_volume": eval_cfg.largest_component,
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


def evaluate_run(
    run_dir: str | Path,
    *,
    split: str = "test",
    data_root: str | None = None,
    checkpoint: str = "best",
    eval_overrides: dict[str, Any] | None = None,
    device: str = "auto",
    batch_size: int = 16,
    tta: bool | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate `<run_dir>/checkpoint_<checkpoint>.pt` on the run's own split; write the result files.

    Results go to `<run_dir>/eval_<split>/` unless `out_dir` is given. The run's own `eval`
    settings apply (threshold, TTA, post-processing, …) except where `eval_overrides` or `tta`
    (None: the run's) say otherwise.
    """
    from brainseg.data.lgg import index_dataset
    from brainseg.data.phantom import resolve_data_root
    from brainseg.environment import environment
    from brainseg.evaluation.predict import Predictor
    from brainseg.losses import build_loss
    from brainseg.training.checkpoint import load_checkpoint

    run_dir = Path(run_dir)
    ckpt = load_checkpoint(run_dir / f"checkpoint_{checkpoint}.pt")
    cfg = RunConfig.from_dict(ckpt["config"], ckpt["path"])
    for k, v in {**(eval_overrides or {}), "tta": tta}.items():
        if v is not None:
            cfg.set(f"eval.{k}", v)
    say = lambda m: print(m, file=sys.stderr)  # noqa: E731
    root = resolve_data_root(data_root if data_root is not None else cfg.data.root, announce=say)
    index = index_dataset(root, skip_bad=cfg.data.skip_bad)
    if split == "all":
        # An external test set: every patient of --data. Patients the model saw are flagged, not hidden.
        patients = list(index.patients)
        seen = sorted(set(patients) & (set(ckpt["split"]["train"]) | set(ckpt["split"]["val"])))
        if seen:
            say(f"warning: {len(seen)} of these {len(patients)} patients were used to train or validate this "
                f"model ({', '.join(seen[:3])}{' …' if len(seen) > 3 else ''}): their figures are not a test")
    else:
        patients = split_patients(ckpt, split)
    missing = [p for p in patients if p not in index.by_patient()]
    if missing:
        raise BrainsegError(
            f"the {split} patients of {run_dir} are not all in {root}: missing {', '.join(missing[:5])}"
            f"{' …' if len(missing) > 5 else ''}"
        )
    predictor = Predictor([ckpt], device=device, tta=cfg.eval.tta, batch_size=batch_size)
    acc, extra = evaluate_patients(
        predictor, index, patients, cfg.eval, loss_fn=build_loss(cfg.train.loss), progress=progress,
        desc=f"evaluating {cfg.model.name} on {split}",
    )
    out = Path(out_dir) if out_dir else run_dir / f"eval_{split}"
    info = {
        "model": cfg.model.name,
        "model_config": ckpt["model"],
        "run_dir": str(run_dir),
        "checkpoint": ckpt["path"],
        "checkpoint_epoch": ckpt.get("epoch"),
        "split": split,
        "split_id": ckpt["split"]["id"],
        "data_root": str(root),
        "params": ckpt.get("params"),
        "loss_name": cfg.train.loss,
        "loss": extra["loss"],
        "tta": cfg.eval.tta,
        "device": str(predictor.device),
        "environment": environment(predictor.device),
        "inference_ms_per_slice": round(predictor.ms_per_slice, 3),
        "eval_config": asdict(cfg.eval),
    }
    return write_results(out, acc, index, cfg.eval, info)

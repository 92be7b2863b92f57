"""Build a small, random but internally consistent comparison folder (the layout `brainseg compare` writes).

Counts come first (per slice: tp, fp, fn, tn on a 32×32 slice), every metric is derived from them,
per-patient rows sum the slice counts, so the folder is what a real run would leave behind.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

PIXELS = 32 * 32
INSTITUTIONS = ("CS", "DU", "HT")
# Model → mean recall of tumour pixels and false-positive rate: well-separated qualities.
QUALITY = {"unet": (0.85, 4.0), "segnet": (0.55, 12.0), "pspnet": (0.72, 7.0)}


def _ratio(num: float, den: float, no_error: bool) -> float:
    return num / den if den > 0 else (1.0 if no_error else 0.0)


def metrics(tp: float, fp: float, fn: float, tn: float) -> dict[str, float]:
    ok = fp == 0 and fn == 0
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, ok),
        "iou": _ratio(tp, tp + fp + fn, ok),
        "precision": _ratio(tp, tp + fp, ok),
        "recall": _ratio(tp, tp + fn, ok),
        "specificity": _ratio(tn, tn + fp, ok),
    }


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    path.write_text(buf.getvalue())


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def _patients(n: int) -> list[str]:
    return [f"TCGA_{INSTITUTIONS[i % 3]}_{1000 + i}_19990101" for i in range(n)]


def _slices(rng: np.random.Generator, patients: list[str]) -> dict[str, list[int]]:
    """Patient → true tumour area of each slice (about 40% of slices with tumour)."""
    out = {}
    for p in patients:
        n = int(rng.integers(6, 11))
        areas = [int(rng.integers(20, 200)) if rng.random() < 0.4 else 0 for _ in range(n)]
        if not any(areas):
            areas[n // 2] = 80
        out[p] = areas
    return out


def _auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    from scipy.stats import rankdata

    pos, neg = labels.sum(), (~labels).sum()
    if pos == 0 or neg == 0:
        return float("nan")
    r = rankdata(scores)
    return float((r[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def _surface(tot: np.ndarray, recall: float, patient: str) -> dict[str, float]:
    """Surface-metric columns of one patient, consistent with its counts (own generator: the
    main random stream, and so every other number of the folder, is the same with or without them)."""
    rng = np.random.default_rng(int(patient.split("_")[2]) + int(100 * recall))
    tp, fp, fn, _ = (float(x) for x in tot)
    vt, vp = tp + fn, tp + fp
    hd95 = float(rng.gamma(2.0, 2.0 / recall))
    fp_lesions = float(rng.poisson(1.0 - recall + 0.2))
    return {"hd95": hd95, "assd": 0.3 * hd95, "nsd": float(np.clip(rng.normal(recall, 0.1), 0, 1)), "vol_truth": vt,
            "vol_pred": vp, "vol_abs_err": abs(vp - vt), "vol_rel_err": abs(vp - vt) / max(vt, 1.0),
            "lesions_truth": 1.0, "lesions_pred": float(tp > 0) + fp_lesions, "lesions_detected": float(tp > 0),
            "lesion_sensitivity": float(tp > 0), "fp_lesions": fp_lesions, "boundary_unmatched_frac": 0.0,
            "surface_fallback": float(tp == 0), "empty_truth": 0.0, "empty_pred": float(vp == 0)}


def _eval_run(run_dir: Path, model: str, patients: list[str], areas: dict[str, list[int]],
              rng: np.random.Generator, *, flops: bool = True, surface: bool = True) -> None:
    recall, fp_rate = QUALITY.get(model, (0.7, 6.0))
    slice_rows, patient_rows = [], []
    for p in patients:
        inst = p.split("_")[1]
        tot = np.zeros(4)
        for s, area in enumerate(areas[p]):
            r = float(np.clip(rng.normal(recall, 0.12), 0.0, 1.0))
            tp = int(rng.binomial(area, r)) if area else 0
            fn = area - tp
            fp = int(rng.poisson(fp_rate)) if (area or rng.random() < 0.3) else 0
            tn = PIXELS - tp - fn - fp
            m = metrics(tp, fp, fn, tn)
            prob = float(np.clip(rng.normal(0.8 if area else 0.35, 0.2), 0.0, 1.0))
            slice_rows.append({"patient": p, "institution": inst, "slice": s + 1, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
                               **m, "true_area": area, "pred_area": tp + fp, "prob_max": round(prob, 4)})
            tot += (tp, fp, fn, tn)
        patient_rows.append({"patient": p, "institution": inst, "n_slices": len(areas[p]),
                             **dict(zip(("tp", "fp", "fn", "tn"), tot.astype(int))), **metrics(*tot),
                             "true_volume_px": int(tot[0] + tot[2]), "pred_volume_px": int(tot[0] + tot[1]),
                             **(_surface(tot, recall, p) if surface else {})})
    ev = run_dir / "eval_test"
    _write_csv(ev / "per_slice.csv", slice_rows, list(slice_rows[0]))
    _write_csv(ev / "per_patient.csv", patient_rows, list(patient_rows[0]))
    det = []
    for level, rows, truth, pred, score in (
        ("slice", slice_rows, [r["true_area"] > 0 for r in slice_rows], [r["pred_area"] >= 10 for r in slice_rows],
         [r["prob_max"] for r in slice_rows]),
        ("patient", patient_rows, [r["true_volume_px"] > 0 for r in patient_rows],
         [r["pred_volume_px"] >= 10 for r in patient_rows], [r["pred_volume_px"] for r in patient_rows]),
    ):
        t, q = np.array(truth), np.array(pred)
        tp, fp, fn, tn = int((t & q).sum()), int((~t & q).sum()), int((t & ~q).sum()), int((~t & ~q).sum())
        det.append({"level": level, "min_area": 10, "n": len(rows), "n_pos": int(t.sum()), "n_neg": int((~t).sum()),
                    "tp": tp, "fp": fp, "fn": fn, "tn": tn,
                    "sensitivity": tp / (tp + fn) if tp + fn else "", "specificity": tn / (tn + fp) if tn + fp else "",
                    "accuracy": (tp + tn) / len(rows), "auroc": _auroc(np.array(score, float), t)})
    _write_csv(ev / "detection.csv", det, list(det[0]))
    summary = {
        "model": model, "params": {"unet": 1_940_000, "segnet": 2_950_000, "pspnet": 2_100_000}.get(model, 1000),
        "inference_ms_per_slice": float(rng.uniform(1, 5)), "loss": float(1 - recall + rng.uniform(0, 0.05)),
        "loss_name": "bce+dice", "threshold": 0.5, "empty_policy": "one",
        "empty_policy_doc": "empty truth and empty prediction score 1", "postprocessing": {"min_lesion_size": 0},
        "detection_min_area": 10, "n_patients": len(patient_rows), "n_slices": len(slice_rows),
    }
    if flops:
        summary["flops"] = {"unet": 1.2e9, "segnet": 2.4e9, "pspnet": 0.9e9}.get(model, 1e9)
    _write_json(ev / "summary.json", summary)
    epochs = 6
    hist = []
    for e in range(1, epochs + 1):
        hist.append({"epoch": e, "lr": 1e-3, "train_loss": 1.0 / e + 0.1, "val_loss": 1.1 / e + 0.15,
                     "val_dice": recall * (1 - 0.5 ** e), "val_dice_slice": recall * (1 - 0.5 ** e),
                     "epoch_seconds": 2.0 + e % 3 + (40.0 if e == 4 else 0.0), "train_slices_per_s": 100.0, "best": e == epochs})
    _write_csv(run_dir / "history.csv", hist, list(hist[0]))
    _write_json(run_dir / "train_summary.json", {
        "model": model, "finished": True, "epochs_run": epochs, "best_epoch": epochs, "best_val_dice": recall,
        "train_seconds": float(rng.uniform(50, 100)), "params": summary["params"], "device": "cpu"})
    _write_json(run_dir / "config.json", {"model": {"name": model}})


def make_comparison(
    root: Path,
    *,
    models: tuple[str, ...] = ("segnet", "unet", "pspnet"),
    n_patients: int = 8,
    folds: int = 0,
    seed: int = 0,
    examples: bool = True,
    flops: bool = True,
    surface: bool = True,
) -> Path:
    """Write a fake comparison folder to `root` and return it (`surface`: per_patient.csv carries
    the surface-metric columns, as evaluations since issue 17 write them)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    patients = _patients(n_patients)
    areas = _slices(rng, patients)
    if folds:
        parts = [patients[k::folds] for k in range(folds)]
        splits = []
        for k in range(folds):
            rest = [p for p in patients if p not in parts[k]]
            splits.append({"method": "kfold", "id": f"kfold{k}", "train": rest[1:], "val": rest[:1], "test": parts[k]})
    else:
        n_test = n_patients  # every patient tested: small data, more pairs for the tests
        splits = [{"method": "holdout", "id": "abc123", "train": [f"TRAIN_{i}" for i in range(10)],
                   "val": ["VAL_0", "VAL_1"], "test": patients[:n_test]}]
    config = {"data": {"size": 32, "in_channels": 3, "augment": True, "root": None, "fold": 0},
              "model": {"name": "unet", "width": 8, "kwargs": {}},
              "train": {"epochs": 6, "batch_size": 16, "lr": 0.001, "loss": "bce+dice"},
              "eval": {"threshold": 0.5, "min_area": 10, "empty_policy": "one"}}
    n_slices = sum(len(a) for a in areas.values())
    protocol = {
        "models": list(models), "config": config,
        "data": {"root": "/data/phantoms", "patients": n_patients + 12, "slices": n_slices + 100,
                 "tumour_slices": 60, "institutions": {"CS": 7, "DU": 7, "HT": 6}},
        "split": None if folds else splits[0], "folds": folds or None, "splits": splits,
        "command": "brainseg compare --size 32 --epochs 6 --out " + str(root),
        "created": "2025-01-01T00:00:00+00:00", "brainseg_version": "0.1.0", "device": "cpu",
    }
    _write_json(root / "protocol.json", protocol)
    _write_json(root / "splits.json", splits)
    for m in models:
        if folds:
            for k in range(folds):
                _eval_run(root / "runs" / m / f"fold{k}", m, splits[k]["test"], areas, rng, flops=flops,
                          surface=surface)
        else:
            _eval_run(root / "runs" / m, m, splits[0]["test"], areas, rng, flops=flops, surface=surface)
    if examples:
        _examples(root, models, rng)
    return root


def _examples(root: Path, models: tuple[str, ...], rng: np.random.Generator) -> None:
    k, h = 3, 32
    yy, xx = np.mgrid[:h, :h]
    images = np.zeros((k, h, h, 3), np.uint8)
    masks = np.zeros((k, h, h), np.uint8)
    for i in range(k):
        brain = ((yy - 16) ** 2 + (xx - 16) ** 2) < 14**2
        images[i] = (brain[..., None] * rng.integers(60, 140, size=(h, h, 3))).astype(np.uint8)
        cy, cx = 12 + 3 * i, 14 + 2 * i
        masks[i] = ((yy - cy) ** 2 + (xx - cx) ** 2) < (5 - i) ** 2
        images[i, masks[i] > 0, 1] = 230
    ex = root / "examples"
    ex.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(ex / "slices.npz", images=images, masks=masks,
                        patients=np.array(["TCGA_CS_1000_19990101", "TCGA_DU_1001_19990101", "TCGA_HT_1002_19990101"]),
                        slices=np.array([3, 5, 7]), kinds=np.array(["best", "typical", "worst"]))
    for j, m in enumerate(models):
        shift = j + 1
        probs = np.roll(masks.astype(np.float32), shift, axis=2) * 0.9 + rng.uniform(0, 0.2, size=masks.shape)
        np.savez_compressed(ex / f"{m}.npz", probs=np.clip(probs, 0, 1).astype(np.float16))


def add_robustness(root: Path, models: tuple[str, ...] = ("segnet", "unet", "pspnet")) -> None:
    rows, strata = [], []
    for m in models:
        base = QUALITY.get(m, (0.7, 0))[0]
        rows.append({"model": m, "perturbation": "none", "severity": 0, "parameter": "", "dice_patient": base,
                     "dice_slice": base})
        for p in ("gaussian_noise", "contrast", "blur"):
            for s in (1, 2, 3):
                rows.append({"model": m, "perturbation": p, "severity": s, "parameter": f"sigma={s * 5}",
                             "dice_patient": base * (1 - 0.12 * s), "dice_slice": base * (1 - 0.1 * s)})
        for st, val in (("CS", 0.8), ("DU", 0.7), ("HT", 0.6)):
            strata.append({"model": m, "stratum_type": "institution", "stratum": st, "n_patients": 3,
                           "dice_patient": base * val})
    _write_csv(root / "robustness" / "robustness.csv", rows, list(rows[0]))
    _write_csv(root / "robustness" / "strata.csv", strata, list(strata[0]))

"""The example slices of a comparison: a pool fixed by the ground truth, and each model's masks for it.

The pool is each test patient's slice with the largest tumour area (per_slice.csv's true_area,
the same in every model's file), so it does not depend on which models are trained or on where.
`slices.npz` holds the pool's FLAIR images and truth masks; `<model>.npz` holds the masks that
model's evaluation made for the pool (its TTA, the whole volume's post-processing), written when
the model's fold checkpoints are on this machine and kept when they are not. A study finished
over several machines therefore keeps every model's examples; the report picks the best, typical
and worst slices of the pool by mean Dice over the models it has (`reporting.overlays`).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from brainseg.data.sequences import FLAIR
from brainseg.fileio import read_csv, write_bytes_atomic

__all__ = ["POOL_RULE", "example_pool", "pool_of", "write_examples"]

POOL_RULE = "each test patient's slice with the largest tumour area"


def example_pool(dirs: dict[str, list[Path]]) -> list[tuple[str, int]]:
    """(patient, slice) of each evaluated test patient's largest-tumour slice (lowest slice number
    on ties), from whichever model's per_slice.csv has that patient, sorted by patient."""
    best: dict[str, tuple[float, int]] = {}
    for runs in dirs.values():
        for run_dir in runs:
            path = run_dir / "eval_test" / "per_slice.csv"
            if not path.is_file():
                continue
            for row in read_csv(path):
                area = float(row.get("true_area") or 0)
                if area <= 0:
                    continue
                key = (-area, int(row["slice"]))
                if row["patient"] not in best or key < best[row["patient"]]:
                    best[row["patient"]] = key
    return sorted((p, s) for p, (_, s) in best.items())


def pool_of(path: Path) -> list[tuple[str, int]] | None:
    """The (patient, slice) list an examples file was written for; None when absent or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return [(str(p), int(s)) for p, s in zip(z["patients"], z["slices"], strict=True)]
    except (OSError, KeyError, ValueError):
        return None


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_bytes_atomic(path, buf.getvalue())


def write_examples(
    out: Path, index: Any, dirs: dict[str, list[Path]], *, n_per_kind: int = 2,
    announce: Callable[[str], None] = lambda _m: None,
) -> dict[str, str]:
    """Write `out/examples/`: the pool's slices (when the pool changed) and, for every model whose
    runs all have their checkpoint here (the one `eval.checkpoint` names), its masks for the pool (when
    absent or made for another pool). Returns model → 'written', 'kept' or 'missing'."""
    from brainseg.evaluation.evaluate import load_patient
    from brainseg.training.checkpoint import run_checkpoint

    pool = example_pool(dirs)
    if not pool:
        return {}
    ex = out / "examples"
    ex.mkdir(parents=True, exist_ok=True)
    by = index.by_patient()
    volumes: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # patient → decoded slices, shared by models
    if pool_of(ex / "slices.npz") != pool:
        images, masks = [], []
        for patient, number in pool:
            img, msk = load_patient([r for r in by[patient] if r.slice == number])
            images.append(img[0][..., FLAIR] if img.ndim == 4 else img[0])
            masks.append(msk[0])
        if len({im.shape for im in images}) > 1:
            announce("the example slices mix native sizes (no common grid): the example figure is left out")
            return {}
        _save_npz(ex / "slices.npz", images=np.stack(images).astype(np.uint8), masks=np.stack(masks).astype(np.uint8),
                  patients=np.array([p for p, _ in pool]), slices=np.array([s for _, s in pool]),
                  pool=np.array(POOL_RULE), n_per_kind=np.array(int(n_per_kind)))
    status: dict[str, str] = {}
    for m, runs in dirs.items():
        path = ex / f"{m}.npz"
        current = pool_of(path) == pool
        if not all(run_checkpoint(r).is_file() for r in runs):
            status[m] = "kept" if current else "missing"
            continue
        if current:
            status[m] = "kept"
            continue
        owner = {}
        for run_dir in runs:
            if (run_dir / "eval_test" / "per_slice.csv").is_file():
                for row in read_csv(run_dir / "eval_test" / "per_slice.csv"):
                    owner.setdefault(row["patient"], run_dir)
        if any(p not in owner for p, _ in pool):
            status[m] = "missing"  # not every pool patient was evaluated by this model
            continue
        preds: list[np.ndarray | None] = [None] * len(pool)
        groups: dict[Path, list[int]] = {}
        for j, (patient, _) in enumerate(pool):
            groups.setdefault(owner[patient], []).append(j)
        for run_dir, idx in groups.items():  # one model load per run (fold)
            for j, mask in _predict_as_evaluated(run_dir, index, [pool[i] for i in idx], volumes):
                preds[idx[j]] = mask
        _save_npz(path, preds=np.stack(preds).astype(np.uint8),  # type: ignore[arg-type]
                  patients=np.array([p for p, _ in pool]), slices=np.array([s for _, s in pool]))
        status[m] = "written"
    return status


def _predict_as_evaluated(
    run_dir: Path, index: Any, keys: list[tuple[str, int]], volumes: dict[str, tuple[np.ndarray, np.ndarray]]
) -> list[tuple[int, np.ndarray]]:
    """(position in `keys`, mask) of each (patient, slice), made exactly as `evaluate_run` made it:
    the run's TTA, and its binarisation of the whole patient volume (so a largest-component rule
    sees every slice), so a figure's Dice is per_slice.csv's."""
    from brainseg.evaluation.evaluate import load_patient
    from brainseg.evaluation.session import EvalRun
    from brainseg.inference.postprocess import binarize

    run = EvalRun.load(run_dir, None, index.root, announce=lambda _m: None)  # the checkpoint evaluate_run took
    predictor = run.predictor()
    by = index.by_patient()
    out = []
    for patient in dict.fromkeys(p for p, _ in keys):
        if patient not in volumes:
            volumes[patient] = load_patient(by[patient])
        pred = binarize(predictor.predict(volumes[patient][0], source=patient), run.cfg.eval)
        numbers = [r.slice for r in by[patient]]
        out += [(j, pred[numbers.index(s)]) for j, (p, s) in enumerate(keys) if p == patient]
    return out

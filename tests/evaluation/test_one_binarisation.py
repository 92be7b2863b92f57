"""evaluate, predict and the comparison's example figure binarise one run's probabilities identically.

The run is made to use flip TTA and the largest 3-D component per patient (which, for this tiny
model, removes hundreds of pixels from the test tumour slices), so that both the predictor's TTA
and every step of `brainseg.inference.postprocess.binarize` are exercised; the figure must then
show exactly the mask, and the Dice, that per_slice.csv scored.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from brainseg.data.lgg import index_dataset
from brainseg.data.tif import read_mask
from brainseg.evaluation.evaluate import evaluate_run
from brainseg.fileio import read_csv
from brainseg.inference.pipeline import predict_path
from brainseg.reporting.overlays import load_examples, slice_dice
from brainseg.training.checkpoint import load_checkpoint, save_checkpoint


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice by hand, 2|P∩T| / (|P| + |T|), for slices with tumour (|T| > 0)."""
    p, t = pred.astype(bool), truth.astype(bool)
    return 2.0 * float((p & t).sum()) / float(p.sum() + t.sum())


@pytest.fixture(scope="module")
def run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny run whose eval settings ask for TTA and the largest component."""
    d = tmp_path_factory.mktemp("one_binarisation") / "runs" / "unet"
    shutil.copytree(tiny_run, d, ignore=shutil.ignore_patterns("eval_*"))
    for name in ("checkpoint_best.pt", "checkpoint_last.pt"):
        ckpt = load_checkpoint(d / name)
        ckpt.pop("path")
        ckpt["config"]["eval"].update(tta=True, largest_component=True)
        save_checkpoint(d / name, ckpt)
    return d


def test_evaluate_predict_and_example_figure_agree(run: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    summary = evaluate_run(run, device="cpu", progress=False)
    assert summary["tta"] and summary["postprocessing"]["largest_component_per_volume"]
    rows = {(r["patient"], int(r["slice"])): r for r in read_csv(run / "eval_test" / "per_slice.csv")}
    assert any(float(r["pred_area"]) > 0 for r in rows.values()), "the run predicts nothing: a vacuous test"

    # predict: every test patient folder, with the run's own settings
    root = Path(summary["data_root"])
    index = index_dataset(root)
    by = index.by_patient()
    predicted: dict[tuple[str, int], np.ndarray] = {}
    for patient in sorted({p for p, _ in rows}):
        out = tmp_path / "pred" / patient
        info = predict_path(root / patient, out, [run], device="cpu", progress=False, overlays="none")
        assert info["tta"] and info["postprocessing"]["largest_component"]
        for rec in by[patient]:
            predicted[(patient, rec.slice)] = read_mask(out / patient / f"{patient}_{rec.slice}_mask.tif")
    for key, r in rows.items():
        pred, truth = predicted[key], read_mask(by[key[0]][[x.slice for x in by[key[0]]].index(key[1])].mask)
        p, t = pred.astype(bool), truth.astype(bool)
        # the same mask: its confusion counts against the truth are exactly the evaluated ones
        assert [int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())] == [
            int(r["tp"]), int(r["fp"]), int(r["fn"])], key
        if truth.any():  # per_slice.csv prints 6 significant digits
            assert _dice(pred, truth) == pytest.approx(float(r["dice"]), rel=1e-5, abs=1e-9), key

    # the comparison's example figure: same masks, and the Dice in its titles is per_slice.csv's
    from brainseg.evaluation.examples import pool_of, write_examples

    assert write_examples(run.parent.parent, index, {"unet": [run]}, n_per_kind=50) == {"unet": "written"}
    ex, notes = load_examples(run.parent.parent / "examples", ["unet"])
    assert ex is not None and "unet" in ex.preds, notes
    # the pool: each test patient's largest-tumour slice, read off the truth
    largest = {}
    for (patient, number), r in rows.items():
        area = float(r["true_area"] or 0)
        if area > 0 and (patient not in largest or (-area, number) < largest[patient]):
            largest[patient] = (-area, number)
    pool = sorted((p, n) for p, (_, n) in largest.items())
    assert pool_of(run.parent.parent / "examples" / "slices.npz") == pool
    assert set(zip(ex.patients, ex.slices)) <= set(pool) and ex.kinds[0] == "best" and ex.kinds[-1] == "worst"
    for k, (patient, number) in enumerate(zip(ex.patients, ex.slices)):
        np.testing.assert_array_equal(ex.preds["unet"][k], predicted[(patient, number)].astype(bool))
        title_dice = slice_dice(ex.preds["unet"][k], ex.masks[k], "one")
        assert title_dice == _dice(predicted[(patient, number)], ex.masks[k])
        assert title_dice == pytest.approx(float(rows[(patient, number)]["dice"]), rel=1e-5, abs=1e-9)

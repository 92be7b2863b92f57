"""Model bundles: writing one from a run, what its metadata promises, predict without -c, and the shipped one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import brainseg.bundles as B
from brainseg.cli import main
from brainseg.data.lgg import read_mask
from brainseg.training.checkpoint import load_checkpoint

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "lgg" / "kaggle_3m"


def _numpy_dice(pred_dir: Path, truth_dir: Path) -> float:
    inter = total = 0
    for t in sorted(truth_dir.glob("*_mask.tif")):
        truth, pred = read_mask(t) > 0, read_mask(pred_dir / t.name) > 0
        inter += int((truth & pred).sum())
        total += int(truth.sum() + pred.sum())
    return 1.0 if total == 0 else 2 * inter / total


@pytest.fixture(scope="module")
def tiny_bundle(tiny_run: Path, tiny_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    patients = sorted(p for p in tiny_phantoms.iterdir() if p.is_dir())[:2]
    rc = main(["bundle", str(tiny_run), "--out", str(out), "--name", "tiny", "--version", "0.1",
               *[a for p in patients for a in ("--check", str(p))]])
    assert rc == 0
    return out


def test_bundle_holds_inference_weights_and_metadata(tiny_bundle: Path, tiny_run: Path) -> None:
    meta = json.loads((tiny_bundle / "metadata.json").read_text())
    ckpt = load_checkpoint(tiny_bundle / "model.pt")
    source = load_checkpoint(tiny_run / "checkpoint_best.pt")
    assert "optimizer" not in ckpt and "rng" not in ckpt  # inference only
    assert ckpt["config"]["data"]["root"] is None  # no path of the training machine
    dtype = {v.dtype for v in ckpt["state_dict"].values() if torch.is_floating_point(v)}
    assert dtype == ({torch.float16} if meta["weights"]["dtype"] == "float16" else {torch.float32})
    for k, v in source["state_dict"].items():  # the same weights, at most rounded to float16
        w = ckpt["state_dict"][k]
        if torch.is_floating_point(v):
            torch.testing.assert_close(w.float(), v.half().float() if w.dtype == torch.float16 else v)
        else:
            assert torch.equal(w, v)
    chk = meta["weights"]["fp16_check"]
    assert chk["passed"] == (chk["max_abs_probability"] <= B.FP16_TOLERANCE["max_abs_probability"]
                             and chk["mask_dice"] >= B.FP16_TOLERANCE["mask_dice"])
    assert meta["architecture"]["name"] == "unet" and meta["input"]["model_size"] == 32
    norm = source["preprocessing"]["normalization"]
    assert meta["input"]["normalization"] == norm and meta["input"]["normalization_rule"] == B.NORMALIZATION_RULES[norm]
    assert "not a medical device" in meta["intended_use"] and "CC BY-NC-SA" in meta["dataset"]["licence"]
    assert sorted(meta["training"]["patients"]) == sorted(source["split"]["train"] + source["split"]["val"])


def test_check_figure_is_what_predict_writes(tiny_bundle: Path, tiny_phantoms: Path, tmp_path: Path) -> None:
    meta = json.loads((tiny_bundle / "metadata.json").read_text())
    for patient, recorded in meta["check"]["per_patient_dice"].items():
        out = tmp_path / patient
        assert main(["predict", "-c", str(tiny_bundle / "model.pt"), str(tiny_phantoms / patient),
                     "--out", str(out), "--quiet", "--overlays", "none"]) == 0
        assert _numpy_dice(out / patient, tiny_phantoms / patient) == pytest.approx(recorded, abs=1e-6)


def test_predict_without_checkpoint_uses_the_default_bundle(
    tiny_bundle: Path, tiny_phantoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    root = tmp_path / "bundles"
    (root / B.DEFAULT_BUNDLE).mkdir(parents=True)
    for f in ("model.pt", "metadata.json"):
        (root / B.DEFAULT_BUNDLE / f).write_bytes((tiny_bundle / f).read_bytes())
    monkeypatch.setattr(B, "BUNDLE_ROOT", root)
    monkeypatch.setattr(B.default_bundle, "__defaults__", (root,))
    monkeypatch.setattr(B.list_bundles, "__defaults__", (root,))
    patient = sorted(p for p in tiny_phantoms.iterdir() if p.is_dir())[0]
    assert main(["predict", str(patient), "--out", str(tmp_path / "p1"), "--quiet"]) == 0
    assert "using the bundled model" in capsys.readouterr().err
    assert main(["predict", "-c", str(tiny_bundle / "model.pt"), str(patient), "--out", str(tmp_path / "p2"),
                 "--quiet"]) == 0
    for m in sorted((tmp_path / "p2" / patient.name).glob("*_mask.tif")):
        np.testing.assert_array_equal(read_mask(m), read_mask(tmp_path / "p1" / patient.name / m.name))
    assert main(["models", "--bundles"]) == 0
    assert "tiny 0.1 (unet" in capsys.readouterr().out


def test_check_patients_must_be_patient_folders(tiny_run: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    for bad in (tmp_path / "missing", tmp_path / "empty"):
        rc = main(["bundle", str(tiny_run), "--out", str(tmp_path / "b"), "--name", "x", "--check", str(bad)])
        assert rc == 2 and f"check patient {bad}: not a kaggle_3m patient folder" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()  # refused before anything is written


def test_bundle_predicts_with_the_eval_settings_it_is_given(tiny_run: Path, tiny_phantoms: Path, tmp_path: Path,
                                                           capsys) -> None:
    """--eval: post-processing chosen by cross-validation after training goes into the bundle and its check."""
    patient = sorted(p for p in tiny_phantoms.iterdir() if p.is_dir())[0]
    out = tmp_path / "b"
    assert main(["bundle", str(tiny_run), "--out", str(out), "--name", "x", "--check", str(patient),
                 "--eval", "threshold=0.3", "--eval", "largest_component=true", "--eval", "component_fraction=0.4"]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    want = {"threshold": 0.3, "largest_component": True, "component_fraction": 0.4}
    assert {k: meta["eval"][k] for k in want} == want
    assert {k: load_checkpoint(out / "model.pt")["config"]["eval"][k] for k in want} == want
    # the check figure is predict's under those settings: the same masks as predict -c RUN with the flags
    assert main(["predict", "-c", str(tiny_run), str(patient), "--out", str(tmp_path / "p"), "--quiet",
                 "--overlays", "none", "--threshold", "0.3", "--largest-component", "--component-fraction", "0.4"]) == 0
    assert meta["check"]["per_patient_dice"][patient.name] == pytest.approx(
        _numpy_dice(tmp_path / "p" / patient.name, patient), abs=1e-6)
    for bad, words in (("nope=1", "nope"), ("component_fraction=2", "a fraction in (0, 1]"), ("threshold", "KEY=VALUE")):
        assert main(["bundle", str(tiny_run), "--out", str(tmp_path / "c"), "--name", "x", "--check", str(patient),
                     "--eval", bad]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, err


def test_no_bundle_gives_a_clear_message(tiny_phantoms: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(B.default_bundle, "__defaults__", (tmp_path,))
    patient = sorted(p for p in tiny_phantoms.iterdir() if p.is_dir())[0]
    assert main(["predict", str(patient), "--out", str(tmp_path / "p")]) == 2
    assert "ships no bundled model: pass -c" in capsys.readouterr().err


@pytest.mark.skipif(B.default_bundle() is None, reason="this checkout ships no bundled model yet")
@pytest.mark.skipif(not REAL.is_dir(), reason=f"real development data not found at {REAL}")
def test_shipped_bundle_still_gives_its_recorded_figures(tmp_path: Path) -> None:
    """The shipped weights, run through predict, reproduce the per-patient Dice in their metadata."""
    weights = B.default_bundle()
    meta = json.loads((weights.parent / "metadata.json").read_text())
    for patient, recorded in meta["check"]["per_patient_dice"].items():
        out = tmp_path / patient
        assert main(["predict", str(REAL / patient), "--out", str(out), "--quiet", "--overlays", "none"]) == 0
        # another CPU (AVX2 vs AVX-512 kernels) may flip a few pixels at the threshold: ~1e-4 Dice
        # each; a retrained or damaged model moves the figure by far more
        assert _numpy_dice(out / patient, REAL / patient) == pytest.approx(recorded, abs=2e-3)

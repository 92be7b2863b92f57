"""The ONNX Runtime engine: parity with PyTorch within the export check's tolerance, and its cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from brainseg import engine as eng
from brainseg.errors import BrainsegError
from brainseg.inference import predict_path
from brainseg.inference.predictor import Predictor
from brainseg.training.checkpoint import load_checkpoint, save_checkpoint

ATOL = RTOL = 1e-4  # export_onnx's default check tolerance


def _images(trained) -> np.ndarray:
    from test_predict import images_of, richest_test_patient

    return images_of(trained.data / richest_test_patient(trained))


def test_onnx_logits_and_probabilities_match_torch(trained, tmp_path: Path) -> None:
    ck = tmp_path / "ck.pt"
    shutil.copy(trained.ckpt, ck)
    images = _images(trained)
    torch_p = Predictor([ck], device="cpu", tta=True)
    want_probs, want_logits = torch_p.predict(images, return_logits=True)
    onnx_p = Predictor([ck], device="cpu", tta=True, batch_size=3)  # batches of another size than traced
    used = eng.apply_engine(onnx_p, "onnx")
    assert used["engine"] == "onnx" and isinstance(onnx_p.models[0], eng.OnnxModel)
    got_probs, got_logits = onnx_p.predict(images, return_logits=True)
    scale = float(want_logits.abs().max())
    assert float((got_logits - want_logits).abs().max()) <= ATOL + RTOL * scale
    # the sigmoid's slope is at most 1/4, TTA averages: probabilities within a quarter of that
    assert np.abs(got_probs - want_probs).max() <= (ATOL + RTOL * scale) / 4 + 1e-7


def test_onnx_file_cached_beside_the_checkpoint_until_it_changes(trained, tmp_path: Path) -> None:
    ck = tmp_path / "ck.pt"
    shutil.copy(trained.ckpt, ck)
    first = eng.apply_engine(Predictor([ck], device="cpu"), "onnx")
    assert first["onnx_files"] == [str(tmp_path / "ck.onnx")] and first["onnx_reused"] == [False]
    meta = json.loads((tmp_path / "ck.onnx.json").read_text())
    assert meta["export"]["max_abs_diff"] <= ATOL * 2
    assert eng.apply_engine(Predictor([ck], device="cpu"), "auto")["onnx_reused"] == [True]
    c = load_checkpoint(ck)
    c["state_dict"] = {k: v * 1.01 if v.is_floating_point() else v for k, v in c["state_dict"].items()}
    save_checkpoint(ck, {k: v for k, v in c.items() if k != "path"})
    assert eng.apply_engine(Predictor([ck], device="cpu"), "onnx")["onnx_reused"] == [False]


def test_engine_choice_and_fallback(trained, tmp_path: Path, monkeypatch) -> None:
    p = Predictor([trained.ckpt], device="cpu")
    assert eng.apply_engine(p, "torch") == {"engine": "torch"} and isinstance(p.models[0], torch.nn.Module)
    with pytest.raises(BrainsegError, match="engine must be one of"):
        eng.apply_engine(p, "tensorrt")
    monkeypatch.setattr(eng, "onnx_available", lambda: False)
    with pytest.raises(BrainsegError, match="--engine onnx: onnxruntime is not installed"):
        eng.apply_engine(p, "onnx")
    auto = eng.apply_engine(p, "auto")
    assert auto["engine"] == "torch" and "not installed" in auto["onnx_skipped"]


def test_predict_path_with_onnx_gives_torch_masks(trained, tmp_path: Path) -> None:
    import tifffile
    from test_predict import richest_test_patient

    ck = tmp_path / "ck.pt"
    shutil.copy(trained.ckpt, ck)
    folder = trained.data / richest_test_patient(trained)
    info = predict_path(folder, tmp_path / "onnx", [ck], device="cpu", prepare=lambda p: eng.apply_engine(p, "onnx"), progress=False, overlays="none")
    predict_path(folder, tmp_path / "torch", [ck], device="cpu", progress=False, overlays="none")
    assert info["engine"] == "onnx"
    probs = Predictor([ck], device="cpu").predict(_images(trained))
    far = np.abs(probs - 0.5) > 1e-4  # pixels the tolerance cannot flip
    order = sorted((tmp_path / "torch" / folder.name).glob("*.tif"), key=lambda p: int(p.stem.split("_")[-2]))
    names = [p.name for p in order]
    a = np.stack([tifffile.imread(tmp_path / "onnx" / folder.name / n) for n in names])
    b = np.stack([tifffile.imread(tmp_path / "torch" / folder.name / n) for n in names])
    assert len(names) == len(probs) and np.array_equal(a[far], b[far])


def test_bundled_checkpoint_cached_in_the_user_cache_not_the_package(trained, tmp_path: Path, monkeypatch) -> None:
    assert eng._in_package(Path(eng.__file__).parent / "bundles" / "x" / "model.pt")
    assert not eng._in_package(tmp_path / "ck.pt")
    ck = tmp_path / "run" / "ck.pt"
    ck.parent.mkdir()
    shutil.copy(trained.ckpt, ck)
    monkeypatch.setenv("BRAINSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(eng, "_in_package", lambda p: True)  # as a bundle inside site-packages
    first = eng.apply_engine(Predictor([ck], device="cpu"), "onnx")
    want = tmp_path / "cache" / "onnx" / f"{eng._sha256(ck)}.onnx"
    assert first["onnx_files"] == [str(want)] and first["onnx_reused"] == [False]
    assert not list(ck.parent.glob("*.onnx*"))  # nothing written beside the checkpoint
    assert json.loads(want.with_suffix(".onnx.json").read_text())["checkpoint"] == str(ck)
    assert eng.apply_engine(Predictor([ck], device="cpu"), "onnx")["onnx_reused"] == [True]
    monkeypatch.delenv("BRAINSEG_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert eng.user_cache() == tmp_path / "xdg" / "brainseg"


def test_user_cache_is_the_one_cache_folder_and_an_unusable_one_falls_back(trained, tmp_path: Path, monkeypatch) -> None:
    from brainseg.data.index_cache import cache_dir

    monkeypatch.setenv("BRAINSEG_CACHE", "~/bs-cache")
    assert eng.user_cache() == cache_dir() == Path.home() / "bs-cache"  # not a folder named '~'
    monkeypatch.delenv("BRAINSEG_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert eng.user_cache() == cache_dir() == tmp_path / "xdg" / "brainseg"
    # a file where the cache folder should be: a private temporary export, not a traceback
    (tmp_path / "not_a_folder").write_text("x")
    monkeypatch.setenv("BRAINSEG_CACHE", str(tmp_path / "not_a_folder"))
    monkeypatch.setattr(eng, "_in_package", lambda p: True)
    used = eng.apply_engine(Predictor([trained.ckpt], device="cpu"), "onnx")
    assert used["engine"] == "onnx" and Path(used["onnx_files"][0]).parent.name.startswith("brainseg-onnx-")

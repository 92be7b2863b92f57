"""ONNX export: ONNX Runtime matches PyTorch, the check refuses a wrong graph, clear errors."""

from __future__ import annotations

import builtins
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from brainseg.cli import main as cli_main
from brainseg.errors import BrainsegError
from brainseg.inference.predictor import Predictor
from brainseg.training.checkpoint import load_checkpoint


@pytest.mark.parametrize("exporter", ["auto", pytest.param("dynamo", marks=pytest.mark.slow)])
def test_onnx_matches_pytorch_on_a_real_slice(trained, tmp_path: Path, exporter: str) -> None:
    import onnx
    import onnxruntime as ort

    from brainseg.data.preprocess import preprocess_image
    from brainseg.export import export_onnx

    out = tmp_path / "unet.onnx"
    report = export_onnx(trained.run, out, exporter=exporter)  # dynamo: ~15 s of tracing, hence slow
    assert out.is_file() and report["max_abs_diff"] < 1e-4 and report["batches_checked"] == [2, 3]
    assert report["exporter"] == ("torchscript" if exporter == "auto" else "dynamo")

    model = onnx.load(out)
    meta = {p.key: p.value for p in model.metadata_props}
    ckpt = load_checkpoint(trained.ckpt)
    prep = json.loads(meta["brainseg.preprocessing"])
    assert prep == ckpt["preprocessing"] and float(meta["brainseg.threshold"]) == 0.5

    # independent check: phantom slices at the model's size through ONNX Runtime vs the Predictor
    patient = sorted(p for p in trained.data.iterdir() if p.is_dir())[0]
    files = sorted(f for f in patient.glob("*.tif") if not f.stem.endswith("_mask"))[:4]
    images = np.stack([tifffile.imread(f)[::2, ::2] for f in files])  # 32×32: no resizing on either side
    x = np.stack([preprocess_image(i, size=prep["size"], in_channels=prep["in_channels"],
                                   normalization=prep["normalization"]) for i in images])
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"image": x})[0]
    probs_onnx = 1.0 / (1.0 + np.exp(-logits[:, 0]))
    probs_torch = Predictor([trained.ckpt], device="cpu", amp="off").predict(images)
    assert np.abs(probs_onnx - probs_torch).max() < 1e-5


def test_a_graph_that_differs_is_not_written(trained, tmp_path: Path, monkeypatch) -> None:
    import brainseg.export as ex
    from brainseg.training.checkpoint import model_from_checkpoint

    # an exporter that (wrongly) emits another network's graph: the check must catch it
    twin = load_checkpoint(trained.twin)
    x = ex.example_inputs(twin["preprocessing"], 2)
    twin_bytes = ex._export_with(model_from_checkpoint(twin), torch.from_numpy(x), "torchscript", None)
    monkeypatch.setattr(ex, "_export_with", lambda *a, **k: twin_bytes)
    out = tmp_path / "wrong.onnx"
    with pytest.raises(BrainsegError, match="torchscript: .*differ from PyTorch's.*dynamo: .*differ.*nothing was written"):
        ex.export_onnx(trained.ckpt, out)  # auto: both exporters tried, both refused
    assert not out.exists() and not list(tmp_path.iterdir())


def test_cli_export_and_errors(trained, tmp_path: Path, capsys, monkeypatch) -> None:
    out = tmp_path / "m.onnx"
    assert cli_main(["export", "--checkpoint", str(trained.ckpt), str(out)]) == 0
    assert "ONNX Runtime matches PyTorch" in capsys.readouterr().out and out.is_file()

    assert cli_main(["export", "-c", str(trained.ckpt), str(tmp_path / "m.txt")]) == 2
    assert "must end in .onnx" in capsys.readouterr().err
    assert cli_main(["export", "-c", str(tmp_path / "nope.pt"), str(tmp_path / "n.onnx")]) == 2
    assert "nope.pt does not exist" in capsys.readouterr().err

    # onnxruntime not installed: a clear message naming the extra to install
    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    real_import = builtins.__import__

    def no_ort(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'", name="onnxruntime")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    assert cli_main(["export", "-c", str(trained.ckpt), str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "onnxruntime is missing" in err and "brainseg[export]" in err and err.count("\n") == 1
    assert not (tmp_path / "x.onnx").exists()

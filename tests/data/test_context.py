"""2.5-D context (`data.context`): neighbouring slices as extra input channels, the same in training
(SliceDataset), prediction (Predictor), export and the viewer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from brainseg.data.dataset import SliceDataset, load_arrays, neighbour_table
from brainseg.data.lgg import index_dataset
from brainseg.data.preprocess import (
    check_preprocessing,
    context_indices,
    model_channels,
    preprocessing_dict,
    stack_context,
)
from brainseg.data.transforms import Augment
from brainseg.errors import BrainsegError


def test_context_indices_repeat_the_nearest_slice_at_the_ends() -> None:
    assert context_indices(4, 1).tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]
    assert context_indices(3, 2).tolist() == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 2], [0, 1, 2, 2, 2]]
    assert context_indices(1, 1).tolist() == [[0, 0, 0]]


def test_stack_context_puts_neighbours_in_slice_order_along_the_channels() -> None:
    x = np.arange(4 * 2, dtype=np.float32).reshape(4, 2, 1, 1)  # slice k holds channels (2k, 2k+1)
    y = stack_context(x, 1)
    assert y.shape == (4, 6, 1, 1)
    assert y[:, :, 0, 0].tolist() == [[0, 1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5], [2, 3, 4, 5, 6, 7], [4, 5, 6, 7, 6, 7]]
    assert stack_context(x, 0) is x


def test_preprocessing_records_context_only_when_on_and_checks_it() -> None:
    assert "context" not in preprocessing_dict(32, 3, "unit")
    d = preprocessing_dict(32, 3, "unit", context=2)
    assert d["context"] == 2 and model_channels(d) == 15
    assert model_channels(preprocessing_dict(32, 1, "zscore")) == 1
    for bad in (-1, 4, 1.5, True):
        with pytest.raises(BrainsegError, match="context must be an integer from 0 to 3"):
            check_preprocessing({"size": 32, "in_channels": 3, "normalization": "unit", "context": bad})


def test_neighbour_table_stays_within_each_patient_in_slice_order() -> None:
    # items out of order, two patients interleaved; B has a single slice
    patients = ["A", "B", "A", "A"]
    slices = [3, 7, 1, 2]
    t = neighbour_table(patients, slices, 1)
    # A's slices 1, 2, 3 are items 2, 3, 0
    assert t.tolist() == [[3, 0, 0], [1, 1, 1], [2, 2, 3], [2, 3, 0]]
    assert neighbour_table(patients, slices, 0).tolist() == [[0], [1], [2], [3]]


@pytest.fixture(scope="module")
def volume(tiny_phantoms: Path):
    index = index_dataset(tiny_phantoms)
    patient = sorted(index.patients)[0]
    records = [r for r in index.records if r.patient == patient]
    return records, load_arrays(records, 32)


def test_dataset_item_stacks_the_plain_items_of_its_neighbours(volume) -> None:
    records, arrays = volume
    plain = SliceDataset(records, size=32, arrays=arrays)
    ctx = SliceDataset(records, size=32, arrays=arrays, context=1)
    order = np.argsort([r.slice for r in records])
    n = len(records)
    for pos in (0, 3, n - 1):
        i = int(order[pos])
        prev, nxt = int(order[max(pos - 1, 0)]), int(order[min(pos + 1, n - 1)])
        x = ctx[i]["image"]
        assert x.shape == (9, 32, 32)
        assert torch.equal(x[0:3], plain[prev]["image"])
        assert torch.equal(x[3:6], plain[i]["image"])
        assert torch.equal(x[6:9], plain[nxt]["image"])
        assert torch.equal(ctx[i]["mask"], plain[i]["mask"])


def test_dataset_neighbours_get_the_same_augmentation_as_their_item(volume) -> None:
    records, arrays = volume
    flip = Augment(hflip=1.0, p_affine=0.0, p_intensity=0.0)  # a flip every time, nothing else
    plain = SliceDataset(records, size=32, arrays=arrays)
    ctx = SliceDataset(records, size=32, arrays=arrays, context=1, augment=flip)
    order = np.argsort([r.slice for r in records])
    i, prev, nxt = int(order[2]), int(order[1]), int(order[3])
    x = ctx[i]["image"]
    assert torch.equal(x[0:3], torch.flip(plain[prev]["image"], (-1,)))
    assert torch.equal(x[6:9], torch.flip(plain[nxt]["image"], (-1,)))
    # a random draw (rotation, zoom, gamma, bias, sequence dropout) is shared too: the neighbour
    # block equals the neighbour augmented with the item's own generator
    aug = Augment(bias_field=0.3, seq_dropout=0.5)
    ctx = SliceDataset(records, size=32, arrays=arrays, context=1, augment=aug, seed=5)
    ctx.set_epoch(2)
    from brainseg.data.preprocess import normalize

    img, _ = aug(arrays[0][prev], arrays[1][prev], np.random.default_rng([5, 2, i]))
    assert np.array_equal(ctx[i]["image"][0:3].numpy(), normalize(img, "unit"))


def _context_checkpoint(context: int) -> dict:
    """An untrained width-4 UNet for a 2.5-D input, as a loaded checkpoint."""
    from brainseg.models import create_model

    torch.manual_seed(0)
    model = create_model("unet", in_channels=3 * (2 * context + 1), width=4)
    return {"model": dict(model.config), "state_dict": model.state_dict(),
            "preprocessing": preprocessing_dict(32, 3, "unit", context=context), "config": {}}


def test_predictor_reads_each_slice_with_its_neighbours() -> None:
    from brainseg.inference.predictor import Predictor

    rng = np.random.default_rng(0)
    vol = rng.integers(0, 256, size=(6, 40, 40, 3), dtype=np.uint8)
    pred = Predictor([_context_checkpoint(1)], device="cpu")
    assert pred.context == 1
    whole = pred.predict(vol)
    # slice 3's neighbours are 2 and 4 in the volume and in the window 2..4 alike
    assert np.allclose(whole[3], pred.predict(vol[2:5])[1], atol=1e-6)
    # alone, slice 3 is its own neighbour: another input, another output
    assert not np.allclose(whole[3], pred.predict(vol[3:4])[0], atol=1e-4)


@pytest.fixture(scope="module")
def context_run(tiny_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from brainseg.training.run import train_run
    from helpers_runs import tiny_cfg

    cfg = tiny_cfg(tiny_phantoms, epochs=1)
    cfg.data.context = 1
    run = tmp_path_factory.mktemp("ctx_run") / "run"
    train_run(cfg, run, progress=False)
    return run


def test_a_context_run_trains_evaluates_and_segments_in_the_viewer(context_run: Path) -> None:
    from brainseg.evaluation.evaluate import evaluate_run
    from brainseg.inference.predictor import Predictor
    from brainseg.serve.segment import Segmenter
    from brainseg.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(context_run / "checkpoint_best.pt")
    assert ckpt["preprocessing"]["context"] == 1 and ckpt["model"]["in_channels"] == 9
    s = evaluate_run(context_run, device="cpu", progress=False)
    assert s["n_patients"] >= 1 and 0.0 <= s["metrics"]["dice"]["per_patient"]["mean"] <= 1.0
    assert s["flops"]  # counted on the 9-channel input
    # the viewer's views are the Predictor's on the whole volume, flipped (not 16-slice chunks)
    index = index_dataset(ckpt["config"]["data"]["root"])
    from brainseg.evaluation.evaluate import load_patient

    patient = sorted(index.patients)[0]
    images, _ = load_patient(index.by_patient()[patient])
    images = np.concatenate([images] * 2)  # > 16 slices: a chunked call would cut neighbours
    seg = Segmenter([ckpt], tta=True)
    views = seg.view_probabilities(images, "test")
    plain = Predictor([ckpt], device="cpu")
    assert np.allclose(views[0], plain.predict(images), atol=1e-6)
    assert np.allclose(views[1], np.flip(plain.predict(np.ascontiguousarray(np.flip(images, 2))), 2), atol=1e-6)


def test_a_context_model_exports_to_onnx_with_its_stacked_input(context_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from brainseg.export import export_onnx

    report = export_onnx(context_run, tmp_path / "ctx.onnx")
    assert report["input"]["shape"] == ["batch", 9, 32, 32] and report["max_abs_diff"] < 1e-4


def test_predict_says_when_a_context_model_gets_a_single_slice(context_run: Path, tiny_phantoms: Path,
                                                                tmp_path: Path) -> None:
    import json
    import shutil

    from brainseg.cli import main as cli_main

    folder = sorted(p for p in tiny_phantoms.iterdir() if p.is_dir())[0]
    one = tmp_path / "one.tif"
    shutil.copy(sorted(f for f in folder.glob("*.tif") if not f.name.endswith("_mask.tif"))[0], one)
    for src, out, noted in ((one, tmp_path / "o1", True), (folder, tmp_path / "o2", False)):
        rc = cli_main(["predict", "-c", str(context_run), str(src), "--out", str(out), "--device", "cpu", "--quiet",
                       "--overlays", "none"])
        assert rc == 0
        notes = json.loads((out / "predict.json").read_text())["notes"]
        assert any("2.5-D" in n and "single slice" in n for n in notes) == noted


def test_pretrained_encoder_weights_and_context_are_refused_before_any_data_is_read(tmp_path: Path) -> None:
    from brainseg.config import RunConfig
    from brainseg.training.run import check_model_settings

    cfg = RunConfig()
    cfg.data.context = 1
    cfg.model.kwargs = {"encoder_weights": str(tmp_path / "resnet.pt")}
    with pytest.raises(BrainsegError, match="data.context=1 gives the network 9"):
        check_model_settings(cfg)

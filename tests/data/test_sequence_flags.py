"""Sequence flags (`data.sequence_flags`): two constant input planes that say whether the pre- and
post-contrast channels are FLAIR copies — the same in training (SliceDataset, with sequence
dropout), prediction (Predictor), export and the bundle's input contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from brainseg.data.dataset import SliceDataset
from brainseg.data.preprocess import (
    add_sequence_flags,
    check_preprocessing,
    flag_copied_sequences,
    model_channels,
    normalize,
    preprocessing_dict,
)
from brainseg.data.transforms import Augment
from brainseg.errors import BrainsegError


def _slice(seed: int, copies: tuple[int, ...] = (), size: int = 16) -> np.ndarray:
    """A random uint8 H×W×3 slice whose channels `copies` hold its FLAIR (channel 1)."""
    img = np.random.default_rng(seed).integers(1, 256, size=(size, size, 3), dtype=np.uint8)
    for k in copies:
        img[:, :, k] = img[:, :, 1]
    return img


@pytest.mark.parametrize(("copies", "expected"), [((), [0, 0]), ((0,), [1, 0]), ((2,), [0, 1]), ((0, 2), [1, 1])])
def test_flags_mark_exactly_the_channels_that_copy_flair(copies: tuple[int, ...], expected: list[int]) -> None:
    assert flag_copied_sequences(_slice(0, copies)).tolist() == expected


def test_flags_need_an_exact_copy_and_a_flair_with_signal() -> None:
    img = _slice(1, (0,))
    img[3, 4, 0] ^= 1  # one pixel off: not a copy
    assert flag_copied_sequences(img).tolist() == [0, 0]
    assert flag_copied_sequences(np.zeros((8, 8, 3), np.uint8)).tolist() == [0, 0]  # all equal, but no FLAIR


def test_flag_planes_follow_the_image_channels_as_constants() -> None:
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    out = add_sequence_flags(x, np.array([[1, 0], [0, 1]], np.float32))
    assert out.shape == (2, 5, 8, 8) and out.dtype == np.float32
    assert np.array_equal(out[:, :3], x)
    assert (out[0, 3] == 1).all() and (out[0, 4] == 0).all() and (out[1, 3] == 0).all() and (out[1, 4] == 1).all()
    with pytest.raises(BrainsegError, match="shape"):
        add_sequence_flags(x, np.zeros((3, 2)))


def test_preprocessing_records_the_flags_only_when_on_and_checks_them() -> None:
    assert "sequence_flags" not in preprocessing_dict(128, 3, "zscore")
    prep = preprocessing_dict(128, 3, "zscore", sequence_flags=True)
    assert prep["sequence_flags"] is True
    assert model_channels(prep) == 5
    assert model_channels(preprocessing_dict(128, 3, "zscore", context=1, sequence_flags=True)) == 3 * 3 + 2
    with pytest.raises(BrainsegError, match="3-channel"):
        preprocessing_dict(128, 1, "unit", sequence_flags=True)
    with pytest.raises(BrainsegError, match="true or false"):
        check_preprocessing({"size": 64, "in_channels": 3, "normalization": "unit", "sequence_flags": "yes"})


def _arrays(n: int = 4, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    images = np.stack([_slice(10 + i, (0,) if i == 1 else (), size) for i in range(n)])  # slice 1: a real copy
    masks = np.zeros((n, size, size), np.uint8)
    masks[:, 5:9, 5:9] = 1
    return images, masks


def _records(n: int) -> list:
    from brainseg.data.lgg import SliceRecord

    return [SliceRecord(patient="TCGA_CS_0000_00000000", case_id="TCGA_CS_0000", institution="CS", slice=i + 1, image=Path(f"i{i}.tif"),
                        mask=Path(f"i{i}_mask.tif")) for i in range(n)]


def test_dataset_items_carry_the_flags_of_their_stored_slice() -> None:
    images, masks = _arrays()
    ds = SliceDataset(_records(4), size=16, arrays=(images, masks), normalization="zscore", sequence_flags=True)
    for i in range(4):
        x = ds[i]["image"].numpy()
        assert x.shape == (5, 16, 16)
        assert np.array_equal(x[:3], normalize(images[i], "zscore"))
        assert x[3].min() == x[3].max() == (1.0 if i == 1 else 0.0) and not x[4].any()


def test_dataset_flags_what_sequence_dropout_copied_and_a_stored_copy_that_augmentation_blurred() -> None:
    images, masks = _arrays()
    # dropout on every slice; a per-channel gamma makes a stored copy inexact before dropout runs
    aug = Augment(seq_dropout=1.0, gamma=(0.5, 2.0), p_intensity=1.0)
    ds = SliceDataset(_records(4), size=16, arrays=(images, masks), augment=aug, seed=3, sequence_flags=True)
    seen = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        for i in range(4):
            augmented, _ = ds.sample_arrays(i)
            x = ds[i]["image"].numpy()
            flags = (x[3, 0, 0], x[4, 0, 0])
            copied = (np.array_equal(augmented[:, :, 0], augmented[:, :, 1]),
                      np.array_equal(augmented[:, :, 2], augmented[:, :, 1]))
            assert flags[0] == float(copied[0] or i == 1) and flags[1] == float(copied[1])
            seen.add(flags)
    assert seen == {(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)}  # dropout's three modes (at least one copy each time)


def test_dataset_refuses_flags_on_one_channel() -> None:
    images, masks = _arrays()
    with pytest.raises(BrainsegError, match="3-channel"):
        SliceDataset(_records(4), size=16, in_channels=1, arrays=(images, masks), sequence_flags=True)


def _flag_checkpoint() -> dict:
    from brainseg.models import create_model

    torch.manual_seed(0)
    model = create_model("unet", in_channels=5, width=4)
    return {"model": dict(model.config), "state_dict": model.state_dict(),
            "preprocessing": preprocessing_dict(32, 3, "unit", sequence_flags=True), "config": {}}


def test_predictor_gives_the_model_the_flags_of_each_native_slice() -> None:
    from brainseg.inference.predictor import Predictor

    vol = np.stack([_slice(20, (), 40), _slice(21, (0, 2), 40)])
    pred = Predictor([_flag_checkpoint()], device="cpu")
    x = pred._prepare(vol, pred.preprocessing[0], "test").numpy()
    assert x.shape == (2, 5, 32, 32)
    assert not x[0, 3:].any() and (x[1, 3:] == 1).all()
    # the flags reach the network: the same image with and without them predicts differently
    flagged = vol[1].copy()
    unflagged = flagged.copy()
    unflagged[0, 0, 0] ^= 1  # one pixel: pre-contrast is no longer an exact copy
    a, b = pred.predict(np.stack([flagged, unflagged]))
    assert np.abs(a - b).max() > 1e-3


@pytest.fixture(scope="module")
def flags_run(tiny_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from brainseg.training.run import train_run
    from helpers_runs import tiny_cfg

    cfg = tiny_cfg(tiny_phantoms, epochs=1)
    cfg.data.sequence_flags = True
    cfg.data.seq_dropout = 0.5
    run = tmp_path_factory.mktemp("flags_run") / "run"
    train_run(cfg, run, progress=False)
    return run


def test_a_flags_run_trains_evaluates_and_exports(flags_run: Path, tmp_path: Path) -> None:
    from brainseg.evaluation.evaluate import evaluate_run
    from brainseg.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(flags_run / "checkpoint_best.pt")
    assert ckpt["preprocessing"]["sequence_flags"] is True and ckpt["model"]["in_channels"] == 5
    s = evaluate_run(flags_run, device="cpu", progress=False)
    assert s["n_patients"] >= 1 and 0.0 <= s["metrics"]["dice"]["per_patient"]["mean"] <= 1.0
    pytest.importorskip("onnxruntime")
    from brainseg.export import export_onnx

    report = export_onnx(flags_run, tmp_path / "flags.onnx")
    assert report["input"]["shape"] == ["batch", 5, 32, 32] and report["max_abs_diff"] < 1e-4


def test_flags_on_a_one_channel_config_are_refused_before_any_data_is_read() -> None:
    from brainseg.config import RunConfig
    from brainseg.training.run import check_model_settings

    cfg = RunConfig()
    cfg.data.in_channels = 1
    cfg.data.sequence_flags = True
    with pytest.raises(BrainsegError, match="data.sequence_flags.*in_channels=3"):
        check_model_settings(cfg)


def test_pretrained_encoder_weights_and_flags_are_refused_before_any_data_is_read(tmp_path: Path) -> None:
    from brainseg.config import RunConfig
    from brainseg.training.run import check_model_settings

    cfg = RunConfig()
    cfg.data.sequence_flags = True
    cfg.model.kwargs = {"encoder_weights": str(tmp_path / "resnet.pt")}
    with pytest.raises(BrainsegError, match="data.sequence_flags=true gives the network 5"):
        check_model_settings(cfg)
    cfg.data.context = 1
    with pytest.raises(BrainsegError, match="data.context=1 and data.sequence_flags=true give the network 11"):
        check_model_settings(cfg)

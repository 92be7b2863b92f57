"""`brainseg predict` on tiny phantoms with a tiny trained UNet: every input form, checked independently."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from brainseg.cli import main as cli_main
from brainseg.errors import BrainsegError, CheckpointError, DataError
from brainseg.fileio import read_csv, read_json
from brainseg.inference import discover_inputs, predict_path
from brainseg.inference.predictor import Predictor
from brainseg.inference.readers import read_case, to_uint8
from brainseg.inference.writers import OVERLAY_ALPHA, OVERLAY_RGB, overlay_image
from brainseg.training.checkpoint import load_checkpoint


def slice_files(folder: Path) -> list[Path]:
    """Image files of a kaggle patient folder in numeric slice order (independent of the package)."""
    files = [p for p in folder.glob("*.tif") if not p.stem.endswith("_mask")]
    return sorted(files, key=lambda p: int(p.stem.rsplit("_", 1)[1]))


def images_of(folder: Path) -> np.ndarray:
    return np.stack([tifffile.imread(p) for p in slice_files(folder)])


def truth_of(folder: Path) -> np.ndarray:
    return np.stack([tifffile.imread(p.with_name(f"{p.stem}_mask.tif")) > 0 for p in slice_files(folder)])


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def richest_test_patient(trained) -> str:
    """The run's test patient with the most tumour pixels (so Dice is not trivially 0 or 1)."""
    test = load_checkpoint(trained.ckpt)["split"]["test"]
    return max(test, key=lambda p: int(truth_of(trained.data / p).sum()))


def test_patient_folder_masks_and_dice_match_evaluate(trained, tmp_path: Path) -> None:
    from brainseg.evaluation.evaluate import evaluate_run

    patient = richest_test_patient(trained)
    folder = trained.data / patient
    images, truth = images_of(folder), truth_of(folder)
    # a threshold that marks about a fifth of this patient's pixels: masks neither empty nor full
    probs = Predictor([trained.ckpt], device="cpu").predict(images)
    thr = float(np.quantile(probs, 0.8))
    settings = {"threshold": thr, "largest_component": True, "min_lesion_size": 3}
    before = snapshot(trained.data)

    info = predict_path(folder, tmp_path / "pred", [trained.run], device="cpu", progress=False, **settings)

    assert snapshot(trained.data) == before  # the input is never touched
    assert info["status"] == "complete" and info["input_kind"] == "patient"
    out = tmp_path / "pred" / patient
    files = slice_files(folder)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{p.stem}_mask.tif" for p in files)
    pred = []
    for p in files:
        m = tifffile.imread(out / f"{p.stem}_mask.tif")
        assert m.shape == (64, 64) and m.dtype == np.uint8  # the input's size, not the model's 32×32
        assert set(np.unique(m).tolist()) <= {0, 255}
        pred.append(m == 255)
    pred = np.stack(pred)
    assert 0 < pred.sum() < pred.size
    tp, fp, fn = (pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()
    dice = 2 * tp / (2 * tp + fp + fn)

    evaluate_run(trained.run, split="test", eval_overrides=settings, device="cpu", progress=False,
                 out_dir=tmp_path / "eval")
    row = next(r for r in read_csv(tmp_path / "eval" / "per_patient.csv") if r["patient"] == patient)
    assert dice == pytest.approx(float(row["dice"]), rel=1e-5)
    assert int(row["pred_volume_px"]) == int(pred.sum())

    rows = read_csv(tmp_path / "pred" / "volumes.csv")
    slices = [r for r in rows if r["level"] == "slice"]
    assert [int(r["area_px"]) for r in slices] == pred.reshape(len(pred), -1).sum(axis=1).tolist()
    assert [int(r["slice"]) for r in slices] == [int(p.stem.rsplit("_", 1)[1]) for p in files]
    (vol,) = [r for r in rows if r["level"] == "volume"]
    assert int(vol["volume_px"]) == int(pred.sum()) and int(vol["n_slices"]) == len(files)
    assert vol["volume_ml"] == "" and slices[0]["area_mm2"] == ""  # TIFs carry no voxel size
    min_area = info["postprocessing"]["min_area"]
    assert int(vol["detected"]) == int((pred.reshape(len(pred), -1).sum(axis=1) >= min_area).any())


def test_dataset_root_writes_every_patient_and_consistent_volumes(trained, tmp_path: Path) -> None:
    data = tmp_path / "kaggle_3m"
    patients = sorted(p.name for p in trained.data.iterdir() if p.is_dir())[:3]
    for p in patients:
        shutil.copytree(trained.data / p, data / p)
    info = predict_path(tmp_path, tmp_path / "out", [trained.ckpt], device="cpu", threshold=0.55,
                        overlays="all", progress=False)  # the kaggle_3m parent: its sub-folder is found
    assert info["input_kind"] == "dataset" and info["cases_done"] == 3
    rows = read_csv(tmp_path / "out" / "volumes.csv")
    for p in patients:
        files = slice_files(data / p)
        masks = np.stack([tifffile.imread(tmp_path / "out" / p / f"{f.stem}_mask.tif") for f in files])
        overlays = sorted((tmp_path / "out" / "overlays" / p).glob("*_overlay.png"))
        assert len(overlays) == len(files)
        (vol,) = [r for r in rows if r["level"] == "volume" and r["case"] == p]
        areas = [int(r["area_px"]) for r in rows if r["level"] == "slice" and r["case"] == p]
        assert areas == (masks == 255).reshape(len(files), -1).sum(axis=1).tolist()
        assert int(vol["volume_px"]) == sum(areas)
        assert int(vol["n_detected_slices"]) == sum(a >= 10 for a in areas)


def test_overlay_tints_the_mask_and_outlines_it() -> None:
    img = np.zeros((6, 6, 3), np.uint8)
    img[..., 1] = 100  # FLAIR
    img[..., 0] = 7  # another channel: must not show
    mask = np.zeros((6, 6), bool)
    mask[1:5, 1:5] = True
    rgb = overlay_image(img, mask)
    assert rgb[0, 0].tolist() == [100, 100, 100]
    assert rgb[1, 1].tolist() == list(OVERLAY_RGB)  # edge
    inside = [round((1 - OVERLAY_ALPHA) * 100 + OVERLAY_ALPHA * c) for c in OVERLAY_RGB]
    assert rgb[2, 2].tolist() == inside


def test_single_slices_tif_png_and_the_channel_rule(trained, tmp_path: Path) -> None:
    src = slice_files(trained.data / richest_test_patient(trained))[3]
    img = tifffile.imread(src)
    ins = tmp_path / "in"
    ins.mkdir()
    shutil.copy(src, ins / "scan.tif")
    Image.fromarray(img).save(ins / "scan.png")
    Image.fromarray(img[..., 1]).save(ins / "flair.png")  # one channel: FLAIR
    expect = Predictor([trained.ckpt], device="cpu").predict(img[None])[0] >= 0.5

    predict_path(ins / "scan.tif", tmp_path / "o1", [trained.ckpt], device="cpu", progress=False)
    predict_path(ins / "scan.png", tmp_path / "o2", [trained.ckpt], device="cpu", progress=False)
    tif_mask = tifffile.imread(tmp_path / "o1" / "scan_mask.tif")
    png_mask = np.asarray(Image.open(tmp_path / "o2" / "scan_mask.png"))
    assert np.array_equal(tif_mask == 255, expect) and np.array_equal(png_mask, tif_mask)

    with pytest.raises(BrainsegError, match=r"flair\.png has 1 channel.*--channels replicate"):
        predict_path(ins / "flair.png", tmp_path / "o3", [trained.ckpt], device="cpu", progress=False)
    # three identical channels stay three channels (kaggle_3m copies FLAIR into a missing sequence)
    same = np.repeat(img[..., 1:2], 3, axis=2)
    Image.fromarray(same).save(ins / "grey_rgb.png")
    predict_path(ins / "grey_rgb.png", tmp_path / "o4", [trained.ckpt], device="cpu", progress=False)
    expect_same = Predictor([trained.ckpt], device="cpu").predict(same[None])[0] >= 0.5
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o4" / "grey_rgb_mask.png")) == 255, expect_same)
    predict_path(ins / "flair.png", tmp_path / "o3", [trained.ckpt], device="cpu", channels="replicate",
                 progress=False)  # o3 holds only the failed attempt's predict.json: reused
    replicated = np.repeat(img[..., 1:2], 3, axis=2)
    expect_rep = Predictor([trained.ckpt], device="cpu").predict(replicated[None])[0] >= 0.5
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o3" / "flair_mask.png")) == 255, expect_rep)


def test_nifti_round_trip_keeps_shape_affine_and_gives_mm(trained, tmp_path: Path) -> None:
    patient = richest_test_patient(trained)
    images = images_of(trained.data / patient)  # (Z, H, W, 3)
    vol = np.ascontiguousarray(images.transpose(1, 2, 0, 3))  # X×Y×Z×3, slice k = vol[:, :, k]
    # axes towards posterior, left, superior: already the model's orientation, so slice k is TIF k
    # (other orientations: tests/inference/test_orientation.py)
    affine = np.array([[0.0, -0.9, 0.0, 90.0], [-0.9, 0.0, 0.0, -100.0], [0.0, 0.0, 3.0, -40.0], [0, 0, 0, 1]])
    img = nib.Nifti1Image(vol, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=2)
    nib.save(img, tmp_path / "scan.nii.gz")

    predict_path(tmp_path / "scan.nii.gz", tmp_path / "out", [trained.ckpt], device="cpu", threshold=0.55,
                 progress=False)
    predict_path(trained.data / patient, tmp_path / "tif", [trained.ckpt], device="cpu", threshold=0.55,
                 progress=False)

    out = nib.load(tmp_path / "out" / "scan_mask.nii.gz")
    assert out.shape == vol.shape[:3]
    assert np.allclose(out.affine, affine)
    assert int(out.header["qform_code"]) == 1 and int(out.header["sform_code"]) == 2
    assert out.header.get_zooms() == pytest.approx((0.9, 0.9, 3.0))
    data = np.asanyarray(out.dataobj)
    assert data.dtype == np.uint8 and set(np.unique(data).tolist()) <= {0, 1}
    # slice k of the volume gives the same mask as the k-th TIF of the patient
    tifs = np.stack([tifffile.imread(p) for p in sorted((tmp_path / "tif" / patient).iterdir(),
                                                         key=lambda p: int(p.stem.split("_")[-2]))])
    assert np.array_equal(data.transpose(2, 0, 1), tifs == 255)

    rows = read_csv(tmp_path / "out" / "volumes.csv")
    (v,) = [r for r in rows if r["level"] == "volume"]
    assert float(v["volume_ml"]) == pytest.approx(data.sum() * 0.9 * 0.9 * 3.0 / 1000, rel=1e-5)
    s = [r for r in rows if r["level"] == "slice"]
    assert [int(r["slice"]) for r in s] == list(range(vol.shape[2]))
    assert [float(r["area_mm2"]) for r in s] == pytest.approx([float(a) * 0.81 for a in data.sum(axis=(0, 1))])


def test_nifti_one_channel_float_volume(trained, tmp_path: Path) -> None:
    flair = images_of(trained.data / richest_test_patient(trained))[..., 1].transpose(1, 2, 0).astype(np.float32)
    nib.save(nib.Nifti1Image(flair * 7.5 + 3.0, np.eye(4)), tmp_path / "flair.nii")
    with pytest.raises(BrainsegError, match=r"flair\.nii has 1 channel"):
        predict_path(tmp_path / "flair.nii", tmp_path / "o", [trained.ckpt], device="cpu", progress=False)
    predict_path(tmp_path / "flair.nii", tmp_path / "o", [trained.ckpt], device="cpu", channels="replicate",
                 progress=False)
    out = nib.load(tmp_path / "o" / "flair_mask.nii")
    assert out.shape == flair.shape and np.allclose(out.affine, np.eye(4))


def test_to_uint8_scales_by_minimum_and_percentile() -> None:
    v = np.arange(1001, dtype=np.float32) + 5.0  # minimum 5, values above it 6…1005
    hi = np.percentile(np.arange(6, 1006, dtype=np.float64), 99.5)
    out = to_uint8(v)
    assert out[0] == 0 and out[-1] == 255
    assert out[500] == int(np.rint(500 * 255 / (hi - 5)))
    assert to_uint8(np.full(4, 3.0)).tolist() == [0, 0, 0, 0]
    u = np.array([0, 9, 200], np.uint8)
    assert to_uint8(u) is u


def test_ensemble_is_the_mean_and_differs_from_each_member(trained, tmp_path: Path) -> None:
    patient = richest_test_patient(trained)
    images = images_of(trained.data / patient)
    pa = Predictor([trained.ckpt], device="cpu").predict(images)
    pb = Predictor([trained.twin], device="cpu").predict(images)
    pab = Predictor([trained.ckpt, trained.twin], device="cpu").predict(images)
    assert np.allclose(pab, (pa + pb) / 2, atol=1e-6)
    assert np.abs(pab - pa).max() > 1e-3 and np.abs(pab - pb).max() > 1e-3
    thr = float(np.quantile(pab, 0.8))
    info = predict_path(trained.data / patient, tmp_path / "ens", [trained.ckpt, trained.twin], device="cpu",
                        threshold=thr, progress=False)
    assert [c["checkpoint"] for c in info["checkpoints"]] == [str(trained.ckpt), str(trained.twin)]
    masks = np.stack([tifffile.imread(tmp_path / "ens" / patient / f"{p.stem}_mask.tif")
                      for p in slice_files(trained.data / patient)])
    assert np.array_equal(masks == 255, pab >= thr)
    assert not np.array_equal(masks == 255, pa >= thr)


def test_tta_is_the_mean_over_flips(trained) -> None:
    images = images_of(trained.data / richest_test_patient(trained))[:4, ::2, ::2]  # model size: no resizing
    plain = Predictor([trained.ckpt], device="cpu")
    expect = (plain.predict(images) + plain.predict(images[:, :, ::-1])[:, :, ::-1]
              + plain.predict(images[:, ::-1])[:, ::-1]) / 3
    got = Predictor([trained.ckpt], device="cpu", tta=True).predict(images)
    assert np.allclose(got, expect, atol=1e-6)


def test_a_runs_eval_tta_setting_is_the_default_for_predict_and_evaluate(trained, tmp_path: Path) -> None:
    """A run whose config says eval.tta=true predicts and evaluates with flip TTA unless told not to."""
    from brainseg.evaluation.evaluate import evaluate_run
    from brainseg.training.checkpoint import save_checkpoint

    run = tmp_path / "run_tta"
    run.mkdir()
    ckpt = {k: v for k, v in load_checkpoint(trained.ckpt).items() if k != "path"}
    ckpt["config"] = {**ckpt["config"], "eval": {**ckpt["config"]["eval"], "tta": True}}
    save_checkpoint(run / "checkpoint_best.pt", ckpt)
    patient = richest_test_patient(trained)
    images = images_of(trained.data / patient)
    plain = Predictor([trained.ckpt], device="cpu").predict(images)
    flips = Predictor([trained.ckpt], device="cpu", tta=True).predict(images)
    thr = float(np.quantile(flips, 0.8))
    assert not np.array_equal(plain >= thr, flips >= thr)  # the two settings are told apart

    for tta, expect in ((None, flips), (False, plain), (True, flips)):
        out = tmp_path / f"pred_{tta}"
        info = predict_path(trained.data / patient, out, [run], tta=tta, threshold=thr, device="cpu", progress=False)
        masks = np.stack([tifffile.imread(out / patient / f"{p.stem}_mask.tif") == 255
                          for p in slice_files(trained.data / patient)])
        assert np.array_equal(masks, expect >= thr)
        assert (info["tta"] is not None) == (expect is flips)

    got = evaluate_run(run, eval_overrides={"threshold": thr}, device="cpu", progress=False, out_dir=tmp_path / "e1")
    ref = evaluate_run(trained.run, eval_overrides={"threshold": thr}, tta=True, device="cpu", progress=False,
                       out_dir=tmp_path / "e2")
    off = evaluate_run(run, eval_overrides={"threshold": thr}, tta=False, device="cpu", progress=False,
                       out_dir=tmp_path / "e3")
    assert got["tta"] is True and got["eval_config"]["tta"] is True and off["tta"] is False and ref["tta"] is True
    assert read_csv(tmp_path / "e1" / "per_slice.csv") == read_csv(tmp_path / "e2" / "per_slice.csv")
    assert read_csv(tmp_path / "e3" / "per_slice.csv") != read_csv(tmp_path / "e1" / "per_slice.csv")


def _corrupt(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:300])


def test_bad_file_fails_its_case_only_and_is_listed(trained, tmp_path: Path) -> None:
    data = tmp_path / "kaggle_3m"
    first, second, third = sorted(p.name for p in trained.data.iterdir() if p.is_dir())[:3]
    for p in (first, second, third):
        shutil.copytree(trained.data / p, data / p)
    bad = slice_files(data / second)[2]
    _corrupt(bad)
    said: list[str] = []
    info = predict_path(data, tmp_path / "out", [trained.ckpt], device="cpu", progress=False, announce=said.append)
    for p in (first, third):  # the cases before and after the bad one are all written
        assert len(list((tmp_path / "out" / p).glob("*_mask.tif"))) == len(slice_files(data / p))
    assert not (tmp_path / "out" / second).exists()
    assert {r["case"] for r in read_csv(tmp_path / "out" / "volumes.csv")} == {first, third}
    saved = read_json(tmp_path / "out" / "predict.json")
    assert saved == info and info["status"] == "incomplete" and info["cases_done"] == 2
    (failure,) = info["failed"]
    assert failure["case"] == second and failure["file"] == str(bad) and "truncated" in failure["error"]
    assert len(said) == 1 and bad.name in said[0]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: (d / "x.tif").write_bytes(b"II*\x00garbage"), r"x\.tif cannot be read"),
        (lambda d: tifffile.imwrite(d / "x.tif", np.zeros((8, 8, 5), np.uint8), photometric="minisblack", planarconfig="contig"), r"x\.tif has shape \(8, 8, 5\)"),
        (lambda d: tifffile.imwrite(d / "x.tif", np.zeros((8, 8), np.uint16)), r"x\.tif has pixels of type uint16"),
        (lambda d: tifffile.imwrite(d / "x.tif", np.zeros((2, 8, 8, 3), np.uint8)), r"x\.tif holds 2 images"),
        (lambda d: (d / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n broken"), r"x\.png cannot be read"),
        (lambda d: nib.save(nib.Nifti1Image(np.zeros((8, 8, 3, 2), np.float32), np.eye(4)), d / "x.nii"),
         r"x\.nii has shape \(8, 8, 3, 2\)"),
        (lambda d: (d / "x.nii.gz").write_bytes(gzip.compress(b"\x5c\x01" + b"\x00" * 60)[:40]),
         r"x\.nii\.gz cannot be read"),
        (lambda d: (d / "x.jpg").write_bytes(b"jpeg"), r"x\.jpg is neither"),
        (lambda d: tifffile.imwrite(d / "x_mask.tif", np.zeros((8, 8), np.uint8)), r"x_mask\.tif is a mask"),
    ],
    ids=["garbage-tif", "five-channels", "uint16", "two-pages", "broken-png", "two-channel-nifti",
         "truncated-nii-gz", "jpeg", "mask-as-input"],
)
def test_bad_inputs_name_the_file(trained, tmp_path: Path, make, message) -> None:
    make(tmp_path)
    (path,) = [p for p in tmp_path.iterdir() if p.is_file()]
    with pytest.raises(BrainsegError, match=message):
        predict_path(path, tmp_path / "out", [trained.ckpt], device="cpu", progress=False)


def test_other_checkpoint_version_and_missing_input(trained, tmp_path: Path) -> None:
    ck = torch.load(trained.ckpt, weights_only=False)
    ck["format_version"] = 99
    torch.save(ck, tmp_path / "old.pt")
    folder = trained.data / richest_test_patient(trained)
    with pytest.raises(CheckpointError, match=r"old\.pt has format version 99"):
        predict_path(folder, tmp_path / "out", [tmp_path / "old.pt"], device="cpu", progress=False)
    with pytest.raises(DataError, match=r"nothere does not exist"):
        predict_path(tmp_path / "nothere", tmp_path / "out", [trained.ckpt], device="cpu", progress=False)


def test_output_among_the_inputs_is_refused(trained, tmp_path: Path) -> None:
    data = tmp_path / "kaggle_3m"
    patient = sorted(p.name for p in trained.data.iterdir() if p.is_dir())[0]
    shutil.copytree(trained.data / patient, data / patient)
    before = snapshot(data)
    with pytest.raises(BrainsegError, match="among the input's own files"):
        predict_path(data / patient, data, [trained.ckpt], device="cpu", progress=False)  # would hit P/P_n_mask.tif
    with pytest.raises(BrainsegError, match="among the input's own files"):
        predict_path(slice_files(data / patient)[0], data / patient, [trained.ckpt], device="cpu", progress=False)
    assert snapshot(data) == before


def test_discovery_orders_slices_numerically_and_ignores_ground_truth(tmp_path: Path) -> None:
    folder = tmp_path / "P"
    folder.mkdir()
    for n in (1, 2, 10, 9):
        tifffile.imwrite(folder / f"P_{n}.tif", np.zeros((4, 4, 3), np.uint8))
        tifffile.imwrite(folder / f"P_{n}_mask.tif", np.zeros((4, 4), np.uint8))
    found = discover_inputs(folder)
    assert found.kind == "patient" and found.cases[0].numbers == (1, 2, 9, 10)
    (folder / "stray.tif").write_bytes(b"")
    with pytest.raises(DataError, match=r"stray\.tif .*not named"):
        discover_inputs(folder)


def test_lzw_slices_read_as_the_dataset_reads_them(tmp_path: Path) -> None:
    # kaggle_3m copies may be LZW-compressed; tifffile needs imagecodecs for LZW, Pillow's libtiff has it
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "P_1.tif", compression="tiff_lzw")
    Image.fromarray(img[..., 1]).save(tmp_path / "grey.tif", compression="tiff_lzw")
    assert np.array_equal(read_case(discover_inputs(tmp_path / "P_1.tif").cases[0]).images, img[None])
    assert np.array_equal(read_case(discover_inputs(tmp_path / "grey.tif").cases[0]).images, img[None, :, :, 1:2])


def test_cli_predict_and_its_help(trained, tmp_path: Path, capsys) -> None:
    folder = trained.data / richest_test_patient(trained)
    rc = cli_main(["predict", "-c", str(trained.run), str(folder), "--out", str(tmp_path / "o"), "--device", "cpu",
                   "--quiet", "--overlays", "none"])
    assert rc == 0
    assert len(list((tmp_path / "o" / folder.name).glob("*_mask.tif"))) == len(slice_files(folder))
    assert not (tmp_path / "o" / "overlays").exists()
    capsys.readouterr()
    rc = cli_main(["predict", "-c", str(tmp_path / "missing.pt"), str(folder), "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "missing.pt does not exist" in err
    with pytest.raises(SystemExit):
        cli_main(["predict", "--help"])
    assert "--channels replicate" in capsys.readouterr().out


@pytest.mark.slow  # evaluate indexes (decodes) all 1909 real slices: ~10 s
def test_real_patient_folder_matches_evaluate(trained, real_data: Path, tmp_path: Path) -> None:
    """A real kaggle_3m patient: 256×256 {0, 255} masks, one per slice, and evaluate's Dice."""
    from brainseg.evaluation.evaluate import evaluate_run
    from brainseg.training.checkpoint import save_checkpoint

    folder = sorted(p for p in real_data.iterdir() if p.is_dir())[0]
    files = slice_files(folder)
    images, truth = images_of(folder), truth_of(folder)
    assert images.shape[1:] == (256, 256, 3)
    # the phantom-trained checkpoint, told that this real patient is its test split
    ck = {k: v for k, v in load_checkpoint(trained.ckpt).items() if k != "path"}
    ck["split"] = {**ck["split"], "test": [folder.name]}
    save_checkpoint(tmp_path / "run" / "checkpoint_best.pt", ck)
    probs = Predictor([tmp_path / "run"], device="cpu").predict(images)
    thr = float(np.quantile(probs, 0.9))

    predict_path(folder, tmp_path / "pred", [tmp_path / "run"], device="cpu", threshold=thr, progress=False)
    masks = np.stack([tifffile.imread(tmp_path / "pred" / folder.name / f"{p.stem}_mask.tif") for p in files])
    assert masks.shape == (len(files), 256, 256) and set(np.unique(masks).tolist()) <= {0, 255}
    pred = masks == 255
    tp, fp, fn = (pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()

    evaluate_run(tmp_path / "run", split="test", data_root=str(real_data), eval_overrides={"threshold": thr},
                 device="cpu", progress=False, out_dir=tmp_path / "eval")
    (row,) = read_csv(tmp_path / "eval" / "per_patient.csv")
    assert row["patient"] == folder.name
    assert 2 * tp / (2 * tp + fp + fn) == pytest.approx(float(row["dice"]), rel=1e-5)
    assert int(row["pred_volume_px"]) == int(pred.sum())

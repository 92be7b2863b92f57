"""DICOM input: position sort, rescale, series → channels, geometry, and `predict` on a DICOM study."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from pydicom.uid import generate_uid

from brainseg.errors import DataError
from brainseg.fileio import read_csv
from brainseg.inference import discover_inputs, predict_path
from brainseg.inference.dicom import read_dicom_case, read_series
from helpers_dicom import write_series, write_study


def test_series_sorted_by_position_rescaled_and_placed(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    stored = rng.integers(-500, 2000, size=(6, 5, 7)).astype(np.int16)  # rows, cols, slices
    # an oblique orientation: rows along x, columns along y tilted 10° towards -z
    a = np.deg2rad(10)
    iop = (1.0, 0.0, 0.0, 0.0, np.cos(a), -np.sin(a))
    files = write_series(tmp_path / "s", stored, "T2 FLAIR", study_uid=generate_uid(), slope=2.5, intercept=-1024,
                         bits=16, signed=True, iop=iop, spacing=(0.9, 0.8), dz=3.0)
    s = read_series(files, "T2 FLAIR")
    assert np.allclose(s.volume, stored * 2.5 - 1024)  # position order, whatever the file order
    assert s.spacing == pytest.approx((0.9, 0.8, 3.0))
    # the affine maps voxel (r, c, s) to DICOM's own position of that pixel, in RAS
    row_dir, col_dir = np.array(iop[:3]), np.array(iop[3:])
    normal = np.cross(row_dir, col_dir)
    for r, c, k in [(0, 0, 0), (5, 4, 6), (2, 3, 1)]:
        lps = np.array([-100.0, -120.0, -30.0]) + k * 3.0 * normal + c * 0.8 * row_dir + r * 0.9 * col_dir
        ras = s.affine @ np.array([r, c, k, 1.0])
        assert np.allclose(ras[:3], lps * [-1, -1, 1], atol=1e-4)
    assert not s.as_uint8


def test_three_series_become_lgg_channels_in_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    slices = rng.integers(0, 256, size=(4, 6, 5, 3), dtype=np.uint8)  # (N, H, W, [pre, flair, post])
    study = write_study(tmp_path / "study", slices, descriptions=("T1 post contrast", "AX FLAIR", "t1 pre"))
    # write_study gives the descriptions to the channels in order: here pre gets "T1 post contrast"
    data = read_dicom_case(study)
    assert data.images.shape == (4, 6, 5, 3)
    # matched by description: pre = "t1 pre" (channel 2 of slices), flair = channel 1, post = channel 0
    assert np.array_equal(data.images, slices[..., [2, 1, 0]])
    assert data.spacing == pytest.approx((0.9, 0.8, 3.0))
    assert "flair='AX FLAIR'" in data.notes[0]
    (found,) = discover_inputs(study).cases
    assert found.kind == "dicom"


def test_flair_alone_single_series_and_override(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    a, b = (rng.integers(0, 256, size=(5, 5, 3), dtype=np.uint8) for _ in range(2))
    uid = generate_uid()
    write_series(tmp_path / "one" / "x", a, "whatever 3D", study_uid=uid)
    assert np.array_equal(read_dicom_case(tmp_path / "one").images[..., 0], a.transpose(2, 0, 1))
    write_series(tmp_path / "two" / "a", a, "SeqA", study_uid=uid, seed=1)
    write_series(tmp_path / "two" / "b", b, "SeqB", study_uid=uid, seed=2)
    with pytest.raises(DataError, match=r"cannot tell which series is FLAIR among 'SeqA', 'SeqB'.*--dicom-series"):
        read_dicom_case(tmp_path / "two")
    data = read_dicom_case(tmp_path / "two", {"flair": "SeqB"})
    assert data.images.shape[-1] == 1 and np.array_equal(data.images[..., 0], b.transpose(2, 0, 1))
    with pytest.raises(DataError, match=r"no series described 'SeqC'"):
        read_dicom_case(tmp_path / "two", {"flair": "SeqC"})


def test_bad_series_name_the_file(tmp_path: Path) -> None:
    uid = generate_uid()
    files = write_series(tmp_path / "mixed", np.zeros((4, 4, 3), np.uint8), "FLAIR", study_uid=uid)
    write_series(tmp_path / "odd", np.zeros((5, 4, 1), np.uint8), "FLAIR", study_uid=uid)
    import pydicom

    odd = next((tmp_path / "odd").iterdir())
    ds = pydicom.dcmread(odd)
    ds.SeriesInstanceUID = pydicom.dcmread(files[0]).SeriesInstanceUID
    ds.ImagePositionPatient = [0.0, 0.0, 500.0]
    ds.save_as(tmp_path / "mixed" / "odd")
    with pytest.raises(DataError, match=r"is 5×4 but .* must share one size"):
        read_dicom_case(tmp_path / "mixed")
    (tmp_path / "mixed" / "odd").unlink()
    dup = pydicom.dcmread(files[0])
    dup.SOPInstanceUID = generate_uid()
    dup.save_as(tmp_path / "mixed" / "dup")
    with pytest.raises(DataError, match=r"same position"):
        read_dicom_case(tmp_path / "mixed")
    (tmp_path / "mixed" / "dup").unlink()
    raw = files[1].read_bytes()
    files[1].write_bytes(raw[: len(raw) - 10])  # pixel data cut short
    with pytest.raises(DataError, match=rf"{files[1].name} cannot be read as a DICOM image"):
        read_dicom_case(tmp_path / "mixed")


def test_predict_on_a_dicom_study_matches_the_tif_slices(trained, tmp_path: Path) -> None:
    from test_predict import images_of, richest_test_patient

    patient = richest_test_patient(trained)
    images = images_of(trained.data / patient)  # (N, H, W, 3) uint8
    study = write_study(tmp_path / "study", images)
    kw = dict(device="cpu", threshold=0.55, progress=False)
    info = predict_path(study, tmp_path / "out", [trained.ckpt], **kw)
    predict_path(trained.data / patient, tmp_path / "tif", [trained.ckpt], **kw)
    assert info["input_kind"] == "dicom"
    out = nib.load(tmp_path / "out" / "study_mask.nii.gz")
    tifs = sorted((tmp_path / "tif" / patient).glob("*_mask.tif"), key=lambda p: int(p.stem.split("_")[-2]))
    expect = np.stack([tifffile.imread(p) == 255 for p in tifs]).transpose(1, 2, 0)  # rows, cols, slices
    assert expect.any()
    assert np.array_equal(np.asanyarray(out.dataobj).astype(bool), expect)
    # voxel (r, c, s) sits where DICOM put it: origin + s·3 mm along z, LPS → RAS
    assert np.allclose(out.affine @ [2, 3, 4, 1], [100.0 - 3 * 0.8, 120.0 - 2 * 0.9, -30.0 + 4 * 3.0, 1])
    # the DICOM SEG: one frame per FLAIR source image, each the mask of the slice it references
    import pydicom

    seg = pydicom.dcmread(tmp_path / "out" / "study_seg.dcm")
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == pydicom.dcmread(next((study / "series1").iterdir())).StudyInstanceUID
    z_of = {}
    for f in (study / "series1").iterdir():  # series1 is FLAIR (write_study's order)
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        z_of[ds.SOPInstanceUID] = int(round((float(ds.ImagePositionPatient[2]) + 30.0) / 3.0))
    frames = seg.pixel_array.reshape(-1, *expect.shape[:2])
    assert len(frames) == expect.shape[2]
    for i, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert np.array_equal(frames[i].astype(bool), expect[:, :, z_of[uid]])
    (vol,) = [r for r in read_csv(tmp_path / "out" / "volumes.csv") if r["level"] == "volume"]
    assert float(vol["volume_ml"]) == pytest.approx(expect.sum() * 0.9 * 0.8 * 3.0 / 1000, rel=1e-5)


def test_no_seg_without_patient_attributes_but_the_nifti_mask_stands(trained, tmp_path: Path) -> None:
    import pydicom
    from test_predict import images_of, richest_test_patient

    flair = images_of(trained.data / richest_test_patient(trained))[..., 1]  # (N, H, W)
    files = write_series(tmp_path / "s" / "x", flair.transpose(1, 2, 0), "FLAIR", study_uid=generate_uid())
    for f in files:  # an anonymiser that went too far
        ds = pydicom.dcmread(f)
        del ds.PatientID
        ds.save_as(f)
    info = predict_path(tmp_path / "s", tmp_path / "out", [trained.ckpt], device="cpu", channels="replicate",
                        progress=False)
    assert (tmp_path / "out" / "s_mask.nii.gz").is_file() and not (tmp_path / "out" / "s_seg.dcm").exists()
    assert any("no DICOM SEG written" in n and "PatientID" in n for n in info["notes"])

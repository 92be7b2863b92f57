"""NIfTI orientation: volumes are read in the model's axial view and masks written back voxel for voxel.

The file arrays are built here by hand from a volume in the model's order (rows towards posterior,
columns towards the patient's left, slices towards superior), with the affine that says so; an
oblique rotation of a few degrees is added so the closest-axis rule is exercised.
"""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile

from brainseg.inference import predict_path
from brainseg.inference.orientation import reorientation, to_file_order, to_model_order
from brainseg.inference.readers import read_nifti

# RAS+ world directions of the axis codes
DIRS = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}


def rot_z(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


# (name, model-order (rows, cols, slices, ...) → file array, file axis codes, file voxel sizes)
LAYOUTS = [
    ("RPS", lambda m: m.transpose(1, 0, 2, *range(3, m.ndim))[::-1], "RPS", (0.8, 0.9, 3.0)),
    ("PLI", lambda m: m[:, :, ::-1], "PLI", (0.9, 0.8, 3.0)),
    ("SAR", lambda m: m.transpose(2, 0, 1, *range(3, m.ndim))[:, ::-1, ::-1], "SAR", (3.0, 0.9, 0.8)),
]


def affine_for(codes: str, zooms: tuple[float, float, float], oblique: float = 12.0) -> np.ndarray:
    a = np.eye(4)
    cols = np.array([DIRS[c] for c in codes], dtype=float).T * np.asarray(zooms)
    a[:3, :3] = rot_z(oblique) @ cols
    a[:3, 3] = (-95.0, 112.0, -41.0)
    return a


@pytest.mark.parametrize("name,to_file,codes,zooms", LAYOUTS, ids=[x[0] for x in LAYOUTS])
def test_reader_gives_model_order_and_inverse_restores_file_order(name, to_file, codes, zooms, tmp_path) -> None:
    rng = np.random.default_rng(0)
    model = rng.integers(0, 256, size=(6, 5, 4, 3), dtype=np.uint8)  # rows, cols, slices, channels
    file_arr = np.ascontiguousarray(to_file(model))
    affine = affine_for(codes, zooms)
    reo = reorientation(affine)
    assert "".join(reo.file_axcodes) == codes
    assert np.array_equal(to_model_order(file_arr, reo), model)
    assert np.array_equal(to_file_order(model, reo), file_arr)
    img = nib.Nifti1Image(file_arr, affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, tmp_path / "v.nii")
    data = read_nifti(tmp_path / "v.nii")
    assert np.array_equal(data.images, model.transpose(2, 0, 1, 3))  # (slices, rows, cols, C)
    # voxel sizes follow their axes: rows and columns in-plane (0.9 × 0.8 here), slices 3 mm
    assert data.spacing == pytest.approx((0.9, 0.8, 3.0))
    assert any("reoriented" in n for n in data.notes)


def test_predict_round_trip_oblique_flipped_voxel_by_voxel(trained, tmp_path: Path) -> None:
    from test_predict import images_of, richest_test_patient

    patient = richest_test_patient(trained)
    model_vol = images_of(trained.data / patient).transpose(1, 2, 0, 3)  # (rows, cols, slices, 3)
    name, to_file, codes, zooms = LAYOUTS[0]
    file_vol = np.ascontiguousarray(to_file(model_vol))
    affine = affine_for(codes, zooms, oblique=17.0)
    img = nib.Nifti1Image(file_vol, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=4)
    img.header.set_xyzt_units("mm")
    nib.save(img, tmp_path / "scan.nii.gz")

    kw = dict(device="cpu", threshold=0.55, progress=False)
    predict_path(tmp_path / "scan.nii.gz", tmp_path / "out", [trained.ckpt], **kw)
    predict_path(trained.data / patient, tmp_path / "tif", [trained.ckpt], **kw)

    out = nib.load(tmp_path / "out" / "scan_mask.nii.gz")
    assert out.shape == file_vol.shape[:3]
    assert np.allclose(out.affine, affine)
    q, qcode = out.get_qform(coded=True)
    s, scode = out.get_sform(coded=True)
    assert int(qcode) == 1 and int(scode) == 4 and np.allclose(q, affine, atol=1e-5) and np.allclose(s, affine)
    tifs = sorted((tmp_path / "tif" / patient).glob("*_mask.tif"), key=lambda p: int(p.stem.split("_")[-2]))
    tif_masks = np.stack([tifffile.imread(p) == 255 for p in tifs])  # (slices, rows, cols)
    assert tif_masks.any()
    expected = to_file(tif_masks.transpose(1, 2, 0))  # the hand-made file layout of the TIF masks
    assert np.array_equal(np.asanyarray(out.dataobj).astype(bool), expected)

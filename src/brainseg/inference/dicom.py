"""Read a DICOM study (one folder or file) into the model's slices: series matched to channels, sorted, rescaled.

- Files are DICOM when they carry the ``DICM`` marker (any name, in any sub-folder).
- Files are grouped by SeriesInstanceUID; a series' slices are sorted by their position along the
  slice normal (ImagePositionPatient · (row × column direction)), not by InstanceNumber or file name.
- Stored values become physical ones through RescaleSlope / RescaleIntercept; then each channel is
  scaled to uint8 as NIfTI volumes are (`brainseg.inference.readers.to_uint8`), except 8-bit series
  with no rescaling, which are used as they are (scans exported from 8-bit slices, like kaggle_3m).
- Channels: the series are matched to the LGG roles by SeriesDescription (`ROLE_PATTERNS`): FLAIR,
  pre-contrast and post-contrast T1. All three → a 3-channel case (pre, FLAIR, post; their grids must
  match); FLAIR alone, or a study of one series → a 1-channel (FLAIR) case. A ``series`` map
  ``{"flair": "AX FLAIR", "pre": …, "post": …}`` (``--dicom-series ROLE=DESCRIPTION``) overrides the match.
- Geometry: the voxel size comes from PixelSpacing and the spacing of the sorted positions; the
  affine (DICOM's LPS turned into NIfTI's RAS) places the mask, written as NIfTI, on the scan, and
  the volume is reoriented for the model like any NIfTI (`brainseg.inference.orientation`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainseg.errors import DataError

ROLES = ("pre", "flair", "post")
#: SeriesDescription patterns per role, tried in this order (post before pre: "T1 POST" also says T1).
ROLE_PATTERNS: dict[str, re.Pattern[str]] = {
    "flair": re.compile(r"flair", re.I),
    "post": re.compile(r"post|gad|\bgd\b|\+ ?c\b|contrast|\bce\b|t1c", re.I),
    "pre": re.compile(r"t1|pre", re.I),
}


def is_dicom_file(path: Path) -> bool:
    """True when `path` is a file with the DICOM marker at byte 128."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def find_dicom_files(path: Path) -> list[Path]:
    """The DICOM files of a file or folder (recursively; hidden names skipped)."""
    if path.is_file():
        return [path] if is_dicom_file(path) else []
    return [p for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith(".") and is_dicom_file(p)]


@dataclass
class Series:
    """One sorted series: physical values (rows, cols, slices) float32, its geometry and description."""

    description: str
    volume: np.ndarray
    affine: np.ndarray  # RAS, of the (rows, cols, slices) array
    spacing: tuple[float, float, float]
    positions: np.ndarray  # (slices, 3) LPS positions of the sorted slices
    as_uint8: bool  # 8-bit and not rescaled: use the values as they are
    files: list[Path]  # the source files in slice order


def _float_list(ds: Any, key: str, n: int, path: Path) -> np.ndarray:
    v = ds.get(key)
    if v is None or len(v) != n:
        raise DataError(f"{path}: DICOM attribute {key} is missing or malformed; cannot place the slice")
    return np.asarray([float(x) for x in v], dtype=np.float64)


def _read(path: Path) -> Any:
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many kinds for a broken or truncated file
        raise DataError(f"{path} cannot be read as a DICOM image (truncated, compressed without a decoder, "
                        f"or no pixel data?): {type(exc).__name__}: {exc}") from None
    if arr.ndim != 2:
        raise DataError(f"{path} holds pixel data of shape {arr.shape}; expected one 2-D grey slice per file")
    return ds, arr


def read_series(files: list[Path], description: str) -> Series:
    """Sort one series' files along the slice normal and stack their rescaled pixels.

    Raises:
        DataError: naming a file, for unreadable files, missing geometry, differing sizes or
            orientations, or two slices at one position.
    """
    items = []
    for path in files:
        ds, arr = _read(path)
        iop = _float_list(ds, "ImageOrientationPatient", 6, path)
        ipp = _float_list(ds, "ImagePositionPatient", 3, path)
        slope, inter = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        items.append((path, ds, arr, iop, ipp, slope, inter))
    p0, ds0, arr0, iop0 = items[0][:4]
    for path, _ds, arr, iop, *_ in items[1:]:
        if arr.shape != arr0.shape:
            raise DataError(f"{path} is {arr.shape[0]}×{arr.shape[1]} but {p0.name} of the same series is "
                            f"{arr0.shape[0]}×{arr0.shape[1]}; a series' slices must share one size")
        if not np.allclose(iop, iop0, atol=1e-4):
            raise DataError(f"{path} is oriented unlike {p0.name} of the same series; cannot stack them")
    row_dir, col_dir = iop0[:3], iop0[3:]
    normal = np.cross(row_dir, col_dir)
    items.sort(key=lambda it: float(np.dot(it[4], normal)))
    along = np.array([float(np.dot(it[4], normal)) for it in items])
    if len(along) > 1 and np.min(np.diff(along)) < 1e-3:
        k = int(np.argmin(np.diff(along)))
        raise DataError(f"{items[k][0]} and {items[k + 1][0].name} lie at the same position; two slices "
                        "of one series (or two series with one description?)")
    volume = np.stack([it[2].astype(np.float32) * it[5] + it[6] for it in items], axis=-1)
    ps = _float_list(ds0, "PixelSpacing", 2, p0)
    dz = float(np.median(np.diff(along))) if len(along) > 1 else float(ds0.get("SliceThickness", 1.0) or 1.0)
    positions = np.stack([it[4] for it in items])
    lps = np.eye(4)
    # array (r, c, s) → LPS: r steps along the column direction, c along the row direction
    lps[:3, 0] = col_dir * ps[0]
    lps[:3, 1] = row_dir * ps[1]
    lps[:3, 2] = (positions[-1] - positions[0]) / (len(items) - 1) if len(items) > 1 else normal * dz
    lps[:3, 3] = positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS → RAS
    eight = all(int(it[1].get("BitsAllocated", 16)) == 8 and it[5] == 1 and it[6] == 0 for it in items)
    return Series(description, volume, affine, (float(ps[0]), float(ps[1]), abs(dz)), positions, eight,
                  [it[0] for it in items])


def match_roles(descriptions: list[str], series_map: Mapping[str, str] | None, source: Path) -> dict[str, str]:
    """Role → SeriesDescription for the study's series (see the module docstring).

    Raises:
        DataError: naming the study, when a mapped description is absent, or no FLAIR can be told.
    """
    listed = ", ".join(repr(d) for d in descriptions)
    if series_map:
        bad = [r for r in series_map if r not in ROLES]
        if bad:
            raise DataError(f"DICOM series role {bad[0]!r} is not one of {', '.join(ROLES)}")
        missing = [d for d in series_map.values() if d not in descriptions]
        if missing:
            raise DataError(f"{source}: no series described {missing[0]!r}; the study holds {listed}")
        roles = dict(series_map)
    elif len(descriptions) == 1:
        return {"flair": descriptions[0]}  # one series: the model's input contract takes it as FLAIR
    else:
        roles = {}
        for role in ("flair", "post", "pre"):
            for d in descriptions:
                if d not in roles.values() and role not in roles and ROLE_PATTERNS[role].search(d):
                    roles[role] = d
    if "flair" not in roles:
        raise DataError(f"{source}: cannot tell which series is FLAIR among {listed}; name them with "
                        "--dicom-series flair=DESCRIPTION (and pre=…, post=… for a 3-channel model)")
    return roles


def read_dicom(path: Path, series_map: Mapping[str, str] | None = None) -> tuple[np.ndarray, Series, str]:
    """A DICOM study → (volume (rows, cols, slices, C) uint8, the FLAIR series, remark).

    C is 3 (pre-contrast, FLAIR, post-contrast) when all three roles are found, else 1 (FLAIR).
    """
    from brainseg.inference.readers import to_uint8

    files = find_dicom_files(path)
    if not files:
        raise DataError(f"{path} holds no DICOM files (none carries the DICM marker)")
    import pydicom

    groups: dict[str, list[Path]] = {}
    names: dict[str, str] = {}
    studies = set()
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception as exc:
            raise DataError(f"{f} cannot be read as DICOM (truncated or corrupt?): {exc}") from None
        uid = str(ds.get("SeriesInstanceUID", "") or f.parent)
        groups.setdefault(uid, []).append(f)
        names.setdefault(uid, str(ds.get("SeriesDescription", "") or ds.get("ProtocolName", "") or uid))
        studies.add(str(ds.get("StudyInstanceUID", "")))
    if len(studies) > 1:
        raise DataError(f"{path} holds {len(studies)} studies; give one patient's study at a time")
    by_desc: dict[str, str] = {}
    for uid, desc in names.items():
        if desc in by_desc:
            raise DataError(f"{path}: two series are both described {desc!r}; keep one of them")
        by_desc[desc] = uid
    roles = match_roles(list(by_desc), series_map, path)
    wanted = [r for r in ROLES if r in roles] if all(r in roles for r in ROLES) else ["flair"]
    series = [read_series(groups[by_desc[roles[r]]], roles[r]) for r in wanted]
    ref = series[0] if len(series) == 1 else series[1]  # FLAIR's grid
    for s in series:
        if s.volume.shape != ref.volume.shape or not np.allclose(s.positions, ref.positions, atol=0.05):
            raise DataError(f"{path}: series {s.description!r} does not share FLAIR's grid "
                            f"({s.volume.shape} vs {ref.volume.shape}); resampling between series is not done")
    channels = [np.clip(s.volume, 0, 255).astype(np.uint8) if s.as_uint8 else to_uint8(s.volume) for s in series]
    remark = "DICOM series used: " + ", ".join(f"{r}={roles[r]!r}" for r in wanted)
    return np.stack(channels, axis=-1), ref, remark


def read_dicom_case(path: Path, series_map: Mapping[str, str] | None = None) -> Any:
    """A DICOM study → `CaseData` in the model's orientation, with a NIfTI reference for the mask."""
    import nibabel as nib

    from brainseg.inference.orientation import reorientation, to_model_order
    from brainseg.inference.readers import CaseData

    volume, flair, remark = read_dicom(path, series_map)
    affine = flair.affine
    reo = reorientation(affine)
    images = np.ascontiguousarray(to_model_order(volume, reo).transpose(2, 0, 1, 3))
    # the mask's reference; `extra` carries the FLAIR files in slice order, for a DICOM SEG
    ref = nib.Nifti1Image(np.zeros(volume.shape[:3], np.uint8), affine, extra={"dicom_files": flair.files})
    ref.header.set_xyzt_units("mm")
    ref.set_qform(affine, code=1)  # scanner coordinates, as DICOM's own
    ref.set_sform(affine, code=1)
    return CaseData(images, reo.model_zooms(flair.spacing), ref, (f"{path.name}: {remark}",), reo)

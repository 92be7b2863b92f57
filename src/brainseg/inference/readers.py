"""Read what `discover_inputs` found into uint8 slices (N, H, W, C), C = 1 or 3.

Slice files (TIF, PNG) must hold 8-bit pixels: grey (H×W or H×W×1) or three channels in the LGG
order (pre-contrast, FLAIR, post-contrast). An alpha channel is dropped when it is fully opaque and
refused otherwise. A three-channel file stays three channels whatever its contents: in kaggle_3m a
patient who lacks the pre- or post-contrast sequence has the FLAIR copied into it, so identical
channels are ordinary data. Only a file that is grey (one channel) meets the channel rule.

NIfTI volumes (nibabel) are first put in the model's orientation from their affine
(`brainseg.inference.orientation`: rows anterior → posterior, columns patient right → left,
slices inferior → superior, by permuting and flipping axes, never resampling), then segmented
slice by slice; the mask is written back in the file's own orientation, voxel for voxel. Shapes
accepted: X×Y×Z (one channel), X×Y×Z×C and X×Y×Z×1×C (C = 1 or 3, in the LGG order). Intensities that are not uint8 are scaled to 0–255
per channel over the whole volume (`to_uint8`). The voxel size comes from the header, in mm.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainseg.data.tif import decode_tif, file_errors
from brainseg.errors import DataError
from brainseg.inference.inputs import Case

#: Upper percentile of the non-background voxels mapped to 255 when scaling a volume to uint8.
UPPER_PERCENTILE = 99.5
INTENSITY_RULE = (
    "NIfTI intensities that are not uint8 are scaled per channel over the whole volume: its minimum "
    f"→ 0 and the {UPPER_PERCENTILE}th percentile of the voxels above that minimum → 255 (clipped)"
)
_SPATIAL_UNIT_MM = {"mm": 1.0, "meter": 1000.0, "micron": 0.001, "unknown": 1.0}


@dataclass
class CaseData:
    """A case's slices and what is known about their geometry.

    Attributes:
        images: uint8 (N, H, W, C), C = 1 or 3, in slice order.
        spacing: (row, column, slice) voxel size in mm, or None when the format carries none.
        nifti: the nibabel image of a NIfTI case (its affine and header are copied to the mask).
        notes: remarks for the result files (e.g. a header without spatial units).
        orientation: how a volume's array was reoriented for the model (`Reorientation`), or None.
    """

    images: np.ndarray
    spacing: tuple[float, float, float] | None = None
    nifti: Any = None
    notes: tuple[str, ...] = ()
    orientation: Any = None


def _drop_alpha(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] in (2, 4):
        if not np.all(arr[:, :, -1] == 255):
            raise DataError(f"{path} has a transparent alpha channel; save the slice without transparency")
        arr = arr[:, :, :-1]
    return arr


def _check_slice(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise DataError(f"{path} has pixels of type {arr.dtype}; expected 8-bit (uint8) slices")
    arr = _drop_alpha(arr, path)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise DataError(
            f"{path} has shape {arr.shape}; expected one slice H×W (grey) or H×W×3 "
            "(pre-contrast, FLAIR, post-contrast)"
        )
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise DataError(f"{path} has shape {arr.shape}; too small to be a slice")
    return np.ascontiguousarray(arr)


def _read_tif(path: Path) -> np.ndarray:
    # the dataset's own decoder, so predict reads every TIF that index and train read (LZW too)
    return decode_tif(path, "exactly one slice")


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    with file_errors(path, "PNG", (UnidentifiedImageError, OSError, SyntaxError, ValueError)), Image.open(path) as im:
        if im.format != "PNG":
            raise DataError(f"{path} is a {im.format} file, not a PNG")
        if im.mode in ("1", "P"):  # bilevel and palette images: expand to their real colours
            im = im.convert("L" if im.mode == "1" else "RGBA")
        if im.mode not in ("L", "LA", "RGB", "RGBA"):
            raise DataError(f"{path} is a PNG of mode {im.mode}; expected 8-bit grey or RGB")
        return np.asarray(im)


def read_slice_file(path: str | Path) -> np.ndarray:
    """One slice image (TIF or PNG) → uint8 (H, W, C), C = 1 or 3.

    Raises:
        DataError: naming the file, when it is unreadable or not one 8-bit grey/3-channel slice.
    """
    path = Path(path)
    arr = _read_png(path) if path.suffix.lower() == ".png" else _read_tif(path)
    return _check_slice(arr, path)


def to_uint8(volume: np.ndarray) -> np.ndarray:
    """Scale one channel of a volume to uint8 by `INTENSITY_RULE` (uint8 input is kept as is)."""
    if volume.dtype == np.uint8:
        return volume
    v = np.asarray(volume, dtype=np.float64)
    lo = float(v.min())
    above = v[v > lo]
    if above.size == 0:
        return np.zeros(v.shape, dtype=np.uint8)
    hi = float(np.percentile(above, UPPER_PERCENTILE))
    if hi <= lo:  # all voxels above the minimum share one value
        hi = float(above.max())
    return np.clip(np.rint((v - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def read_nifti(path: str | Path) -> CaseData:
    """A NIfTI volume → slices (N, H, W, C) uint8 in the model's orientation, voxel size in mm, the image.

    Raises:
        DataError: naming the file, when it is unreadable, truncated, of an unusable shape, or
            holds values that are not finite.
    """
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except PermissionError as exc:
        raise DataError(f"{path} is unreadable: {exc.strerror}") from None
    except Exception as exc:  # nibabel, gzip, zlib and EOF errors: a broken or truncated file
        raise DataError(f"{path} cannot be read as a NIfTI volume (truncated or corrupt?): {exc}") from None
    shape = data.shape
    if data.ndim == 5 and shape[3] == 1:
        data = data[:, :, :, 0, :]
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4 or data.shape[3] not in (1, 3):
        raise DataError(
            f"{path} has shape {shape}; expected a volume X×Y×Z (one channel) or X×Y×Z×3 "
            "(pre-contrast, FLAIR, post-contrast)"
        )
    if min(data.shape[:2]) < 2 or data.shape[2] < 1:
        raise DataError(f"{path} has shape {shape}; too small to hold axial slices")
    if data.dtype.kind not in "uif":
        raise DataError(f"{path} holds values of type {data.dtype}; expected numbers")
    if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
        raise DataError(f"{path} holds NaN or infinite values")
    from brainseg.inference.orientation import reorientation, to_model_order

    reo = reorientation(img.affine)
    channels = [to_uint8(data[..., c]) for c in range(data.shape[3])]
    volume = to_model_order(np.stack(channels, axis=-1), reo)  # (rows, columns, slices, C)
    images = np.ascontiguousarray(volume.transpose(2, 0, 1, 3))  # (slices, rows, columns, C)
    notes: list[str] = []
    if not reo.is_identity:
        notes.append(f"{path.name}: array axes {''.join(reo.file_axcodes)} reoriented to PLS for the model; "
                     "the mask is written in the file's own orientation")
    unit = img.header.get_xyzt_units()[0] if hasattr(img.header, "get_xyzt_units") else "unknown"
    if unit == "unknown":
        notes.append(f"{path.name}: the header gives no spatial unit; voxel sizes are taken as mm")
    scale = _SPATIAL_UNIT_MM.get(unit, 1.0)
    zooms = tuple(float(z) * scale for z in img.header.get_zooms()[:3])
    spacing = reo.model_zooms(zooms) if len(zooms) == 3 and all(z > 0 for z in zooms) else None
    if spacing is None:
        notes.append(f"{path.name}: the header's voxel size {img.header.get_zooms()} is unusable; no mm² or mL")
    return CaseData(images, spacing, img, tuple(notes), reo)


def read_case(case: Case, dicom_series: dict[str, str] | None = None) -> CaseData:
    """Read every slice of a case, checking they share one size and channel count.

    `dicom_series` maps roles (pre, flair, post) to SeriesDescriptions for a DICOM case
    (`brainseg.inference.dicom`); None matches them by their descriptions.

    Raises:
        DataError: naming the file at fault (unreadable, wrong shape, or a size unlike the first slice's).
    """
    if case.kind == "dicom":
        from brainseg.inference.dicom import read_dicom_case

        return read_dicom_case(case.source, dicom_series)
    if case.kind == "nifti":
        return read_nifti(case.source)
    slices: list[np.ndarray] = []
    for path in case.images:
        arr = read_slice_file(path)
        if slices and arr.shape != slices[0].shape:
            raise DataError(
                f"{path} has shape {arr.shape}, but {case.images[0].name} of the same patient has "
                f"{slices[0].shape}; a patient's slices must share one size and channel count"
            )
        slices.append(arr)
    return CaseData(np.stack(slices))

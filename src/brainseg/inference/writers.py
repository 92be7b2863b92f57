"""Write predictions in the input's own form: mask slices, NIfTI masks and overlay PNGs.

Every file is written atomically (`brainseg.fileio.atomic_write`): a crash leaves the old file or
the new one, never half of one. Slice masks hold {0, 255} (the kaggle_3m convention); NIfTI masks
hold {0, 1} (the usual label-map convention) with the input's affine and header.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import IO, Any

import numpy as np
from scipy import ndimage

from brainseg.errors import BrainsegError
from brainseg.fileio import atomic_write, write_bytes_atomic

#: Overlay colour of the predicted tumour: magenta, as in the report's figures.
OVERLAY_RGB = (255, 43, 214)
OVERLAY_ALPHA = 0.35
FLAIR = 1  # channel order of LGG slices: pre-contrast, FLAIR, post-contrast


def write_mask_slice(path: str | Path, mask: np.ndarray) -> Path:
    """Write an H×W mask as uint8 {0, 255}: a deflated TIFF for .tif/.tiff, a PNG for .png."""
    path = Path(path)
    m = np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8)
    if m.ndim != 2:
        raise BrainsegError(f"mask for {path} has shape {m.shape}; expected H×W")
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        def write(f: IO[bytes]) -> None:
            # tifffile wants a named file or a BytesIO, not the temporary file's bare descriptor
            buf = io.BytesIO()
            tifffile.imwrite(buf, m, photometric="minisblack", compression="zlib", metadata=None)
            f.write(buf.getvalue())

    elif suffix == ".png":
        from PIL import Image

        def write(f: IO[bytes]) -> None:
            Image.fromarray(m).save(f, format="PNG")

    else:
        raise BrainsegError(f"cannot write a mask as {path}: use .tif, .tiff or .png")
    return atomic_write(path, write)


def write_nifti_mask(path: str | Path, mask: np.ndarray, reference: Any, orientation: Any = None) -> Path:
    """Write a (slices, rows, columns) mask as a NIfTI label map {0, 1} with `reference`'s affine and header.

    `orientation` (a `brainseg.inference.orientation.Reorientation`) puts the mask back in the
    file's own array order; None: the mask's axes are the file's. The header is the input's, with
    the data type set to uint8, no intensity scaling, no intent (a 4-D multi-channel input gives a
    3-D mask) and the display range 0–1.
    """
    path = Path(path)
    data = np.asarray(mask, dtype=bool).transpose(1, 2, 0).astype(np.uint8)  # (rows, columns, slices)
    if orientation is not None:
        from brainseg.inference.orientation import to_file_order

        data = to_file_order(data, orientation)
    data = np.ascontiguousarray(data)
    header = reference.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_data_shape(data.shape)
    if hasattr(header, "set_intent"):
        header.set_intent("none")
    header["scl_slope"], header["scl_inter"] = 1.0, 0.0
    header["cal_min"], header["cal_max"] = 0.0, 1.0
    out = type(reference)(data, reference.affine, header)
    # keep the input's qform/sform codes, so a viewer places the mask where it placed the scan
    for form in ("qform", "sform"):
        affine, code = getattr(reference, f"get_{form}")(coded=True)
        if affine is not None:
            getattr(out, f"set_{form}")(affine, code=int(code))
    raw = out.to_bytes()
    if path.name.lower().endswith(".gz"):
        raw = gzip.compress(raw, compresslevel=6, mtime=0)  # mtime 0: same mask, same bytes
    return write_bytes_atomic(path, raw)


def overlay_image(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB uint8 picture of a slice (its FLAIR channel in grey) with the mask tinted and outlined."""
    img = np.asarray(image)
    grey = img[..., FLAIR] if img.ndim == 3 and img.shape[2] == 3 else img.reshape(img.shape[:2])
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    m = np.asarray(mask, dtype=bool)
    colour = np.array(OVERLAY_RGB, dtype=np.float32)
    rgb[m] = (1.0 - OVERLAY_ALPHA) * rgb[m] + OVERLAY_ALPHA * colour
    edge = m & ~ndimage.binary_erosion(m, border_value=0)
    rgb[edge] = colour
    return np.rint(rgb).astype(np.uint8)


def write_overlay(path: str | Path, image: np.ndarray, mask: np.ndarray) -> Path:
    """Write `overlay_image(image, mask)` as a PNG."""
    from PIL import Image

    pic = Image.fromarray(overlay_image(image, mask))
    return atomic_write(path, lambda f: pic.save(f, format="PNG"))


# --------------------------------------------------------------------------------------------
# A previous prediction in the output folder

#: What `predict` writes at the top of its --out folder besides the masks listed in volumes.csv.
OWNED_FILES = ("predict.json", "volumes.csv")
OWNED_FOLDERS = ("overlays",)


def check_output_folder(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty `out` unless `overwrite` (so two predictions never mix in one folder).

    A folder holding only an earlier attempt that wrote no case (predict.json and volumes.csv of a
    run that failed on its first case) is not refused: there is nothing in it to lose.
    """
    if not out.is_dir():
        return
    entries = sorted(p.name for p in out.iterdir())
    if set(entries) <= set(OWNED_FILES) and _cases_done(out / "predict.json") == 0:
        return
    if entries and not overwrite:
        shown = ", ".join(entries[:3]) + (", …" if len(entries) > 3 else "")
        raise BrainsegError(
            f"--out {out} is not empty ({len(entries)} entries: {shown}); pass --overwrite to replace the "
            "prediction there, or choose a new folder"
        )


def _cases_done(path: Path) -> int | None:
    import json

    try:
        return int(json.loads(path.read_text(encoding="utf-8")).get("cases_done"))
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def clear_previous_outputs(out: Path) -> list[Path]:
    """Delete what an earlier `predict` wrote in `out` (its masks, overlays, volumes.csv, predict.json).

    The masks are the ones its volumes.csv lists; any other file in `out` is left alone, and so
    is anything a path in volumes.csv would reach outside `out`. Emptied sub-folders are removed.

    Returns:
        The files removed.
    """
    import csv
    import shutil

    root = out.resolve()
    removed: list[Path] = []
    volumes = out / "volumes.csv"
    owned: list[Path] = []
    if volumes.is_file():
        with open(volumes, newline="", encoding="utf-8") as f:
            owned = [out / row["mask"] for row in csv.DictReader(f) if row.get("level") == "slice" and row.get("mask")]
    owned += [out / name for name in OWNED_FILES]
    folders: set[Path] = set()
    for path in owned:
        if path.is_file() and path.resolve().is_relative_to(root):
            path.unlink()
            removed.append(path)
            folders.add(path.parent)
    for name in OWNED_FOLDERS:
        if (out / name).is_dir():
            removed += [p for p in (out / name).rglob("*") if p.is_file()]
            shutil.rmtree(out / name)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        if folder.resolve() != root and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return removed

"""Tiny hand-made datasets in the kaggle_3m layout, for tests that need exact, known content.

Importable from any test as `helpers_data` (tests/ is on sys.path through tests/conftest.py).
Use the phantom generator (`brainseg.data.phantom.write_phantoms`) when realistic slices matter;
use these when a test needs to know exactly which slice has which mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import tifffile

CSV_HEADER = ("Patient", "RNASeqCluster", "gender", "age_at_initial_pathologic", "death01")


def patient_name(institution: str = "CS", number: int = 1, date: str = "20000101") -> str:
    return f"TCGA_{institution}_{number:04d}_{date}"


def synthetic_image(size: int | tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A uint8 (H, W, 3) slice: noisy bright disc on a zero background."""
    h, w = (size, size) if isinstance(size, int) else size
    yy, xx = np.mgrid[:h, :w]
    disc = ((yy - h / 2) ** 2 / (0.4 * h) ** 2 + (xx - w / 2) ** 2 / (0.4 * w) ** 2) < 1
    img = rng.integers(40, 200, size=(h, w, 3)) * disc[..., None]
    return img.astype(np.uint8)


def square_mask(size: int | tuple[int, int], rng: np.random.Generator, side: int | None = None) -> np.ndarray:
    """A uint8 {0, 1} (H, W) mask holding one square of `side` pixels at a random place."""
    h, w = (size, size) if isinstance(size, int) else size
    side = side or max(2, min(h, w) // 4)
    r, c = rng.integers(0, h - side), rng.integers(0, w - side)
    m = np.zeros((h, w), np.uint8)
    m[r : r + side, c : c + side] = 1
    return m


def write_tif(path: Path, array: np.ndarray, *, compression: str | None = None) -> Path:
    """Write one page; an (H, W, C) array is stored as C interleaved samples (RGB, RGBA, gray+alpha…)."""
    if array.ndim == 3:
        photometric = "rgb" if array.shape[2] in (3, 4) else "minisblack"
        planarconfig = "contig"  # else tifffile would store an (H, W, 2) array as H pages of W×2
    else:
        photometric, planarconfig = "minisblack", None
    tifffile.imwrite(
        path, array, photometric=photometric, planarconfig=planarconfig, compression=compression, metadata=None
    )
    return path


def write_slice(
    folder: Path,
    patient: str,
    n: int,
    image: np.ndarray | None,
    mask: np.ndarray | None,
    *,
    mask_scale: int = 255,
    compression: str | None = None,
) -> tuple[Path | None, Path | None]:
    """Write <patient>_<n>.tif and <patient>_<n>_mask.tif (a None array is not written)."""
    folder.mkdir(parents=True, exist_ok=True)
    img_path = write_tif(folder / f"{patient}_{n}.tif", image, compression=compression) if image is not None else None
    mask_path = None
    if mask is not None:
        stored = mask * np.uint8(mask_scale) if mask.dtype == np.uint8 and mask.max() <= 1 else mask
        mask_path = write_tif(folder / f"{patient}_{n}_mask.tif", stored, compression=compression)
    return img_path, mask_path


def make_dataset(
    root: str | Path,
    patients: Mapping[str, Sequence[bool]] | None = None,
    *,
    size: int = 32,
    seed: int = 0,
    csv: bool = True,
    delimiter: str = ",",
    newline: str = "\n",
    compression: str | None = None,
) -> Path:
    """Write a tiny dataset to root/kaggle_3m and return that folder.

    Args:
        patients: patient name → one bool per slice (True: the mask has a square tumour).
            Default: two CS patients and one DU patient with 3–4 slices each.
        csv: also write data.csv (with `delimiter` and `newline` line ends).
    """
    if patients is None:
        patients = {
            patient_name("CS", 1): [False, True, True],
            patient_name("CS", 2): [False, False, True, False],
            patient_name("DU", 3): [True, False, False],
        }
    rng = np.random.default_rng(seed)
    top = Path(root) / "kaggle_3m"
    for patient, tumours in patients.items():
        for n, has in enumerate(tumours, start=1):
            mask = square_mask(size, rng) if has else np.zeros((size, size), np.uint8)
            write_slice(top / patient, patient, n, synthetic_image(size, rng), mask, compression=compression)
    if csv:
        rows = [delimiter.join(CSV_HEADER)]
        for i, patient in enumerate(patients):
            case = patient.rsplit("_", 1)[0]
            rows.append(delimiter.join([case, str(i % 3 + 1), str(i % 2 + 1), str(40 + i), str(i % 2)]))
        (top / "data.csv").write_bytes((newline.join(rows) + newline).encode())
    return top

"""Decode one slice file of the kaggle_3m layout: an H×W×3 uint8 image TIF or its binary mask TIF.

Every failure (missing, truncated, corrupt, wrong dtype, shape or values) becomes one DataError
line naming the file; tifffile's own warnings about broken tags are silenced while reading.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from brainseg.errors import DataError


class _QuietWhileReading(logging.Filter):
    """Drops tifffile's log records in threads that are inside `decode_tif`.

    tifffile logs a warning line for each broken tag of a truncated file before it raises; we
    report the file as one DataError line instead, so those extra lines would only confuse.
    """

    local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.local, "reading", False)


_QUIET = _QuietWhileReading()
logging.getLogger("tifffile").addFilter(_QUIET)  # the filter object is shared, so adding it twice is a no-op


def _read_with_pillow(path: Path, compression: str) -> np.ndarray:
    """Decode with Pillow (its libtiff has LZW, PackBits, JPEG) when tifffile lacks the codec."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im)
    except Exception as exc:
        raise DataError(
            f"{path} uses {compression} compression, which neither tifffile (without imagecodecs) nor "
            f"Pillow can decode here: {exc}"
        ) from None


@contextlib.contextmanager
def file_errors(path: Path, kind: str, broken: tuple[type[BaseException], ...] = (Exception,)) -> Iterator[None]:
    """Turn what goes wrong while reading `path` into one DataError naming it: missing, unreadable,
    or (any of `broken`) not decodable as a `kind` image. DataErrors pass through unchanged."""
    try:
        yield
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except PermissionError as exc:
        raise DataError(f"{path} is unreadable: {exc.strerror}") from None
    except broken as exc:
        raise DataError(f"{path} cannot be read as a {kind} image (truncated or corrupt?): {exc}") from None


def decode_tif(path: Path, expected: str = "exactly one H×W×3 slice") -> np.ndarray:
    """Decode the one image of a TIF as (H, W) or (H, W, C); any failure is a DataError naming the file.

    Codecs tifffile lacks without imagecodecs (LZW, JPEG, …) are decoded by Pillow. `expected`
    is what the error says a file with several (or no) images should have held.
    """
    import tifffile  # imported here so `brainseg --help` stays fast

    _QUIET.local.reading = True
    try:
        # tifffile, zlib and struct errors all mean "broken or truncated file"
        with file_errors(path, "TIFF"):
            with tifffile.TiffFile(path) as tif:
                n_pages = len(tif.pages)
                if n_pages == 0:
                    raise DataError(f"{path} cannot be read as a TIFF image: it holds no image (truncated or corrupt?)")
                if n_pages != 1:
                    shape = "×".join(str(v) for v in tif.pages[0].shape)
                    raise DataError(
                        f"{path} holds {n_pages} images (the first is {shape}); expected {expected}"
                    )
                page = tif.pages[0]
                if page.compression in tifffile.TIFF.DECOMPRESSORS:
                    arr = page.asarray()
                    if arr.ndim == 3 and page.axes.startswith("S"):  # planar-separate RGB comes as (3, H, W)
                        arr = np.moveaxis(arr, 0, -1)
                else:  # a codec tifffile only has with imagecodecs (LZW, JPEG, …); Pillow gives (H, W, C)
                    arr = _read_with_pillow(path, page.compression.name)
    finally:
        _QUIET.local.reading = False
    return arr


def read_image(path: str | Path) -> np.ndarray:
    """Read one slice image: uint8 array of shape (H, W, 3) (pre-contrast, FLAIR, post-contrast).

    Raises:
        DataError: unreadable or truncated file, wrong dtype, or not three channels.
    """
    path = Path(path)
    img = decode_tif(path)
    if img.dtype != np.uint8:
        raise DataError(f"image {path} has dtype {img.dtype}; expected uint8")
    if img.ndim != 3 or img.shape[2] != 3:
        channels = 1 if img.ndim == 2 else img.shape[-1]
        raise DataError(
            f"image {path} has shape {img.shape} ({channels} channel{'s' * (channels != 1)}); "
            "expected H×W×3 (pre-contrast, FLAIR, post-contrast)"
        )
    if img.shape[0] < 2 or img.shape[1] < 2:
        raise DataError(f"image {path} has shape {img.shape}; too small to be a slice")
    return img


def binarize_mask(mask: np.ndarray, path: str | Path) -> np.ndarray:
    """Check a decoded mask and map it to uint8 {0, 1}.

    Accepted: uint8 or bool, shape (H, W) or (H, W, 1), values within {0, 255} or within {0, 1}.
    """
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    if mask.ndim != 2:
        raise DataError(f"mask {path} has shape {mask.shape}; expected H×W with one channel")
    if mask.dtype == np.bool_:
        return mask.astype(np.uint8)
    if mask.dtype != np.uint8:
        raise DataError(f"mask {path} has dtype {mask.dtype}; expected uint8 with values {{0, 255}}")
    # bincount is ~10× faster than np.unique on a 256×256 slice, and indexing reads every mask.
    values = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    if not (set(values.tolist()) <= {0, 255} or set(values.tolist()) <= {0, 1}):
        shown = ", ".join(str(v) for v in values[:8]) + (", …" if len(values) > 8 else "")
        raise DataError(f"mask {path} is not binary: it holds values {{{shown}}}; expected {{0, 255}} or {{0, 1}}")
    return (mask > 0).astype(np.uint8)


def read_mask(path: str | Path) -> np.ndarray:
    """Read one mask: uint8 array of shape (H, W) with values {0, 1}.

    Raises:
        DataError: unreadable or truncated file, wrong dtype or shape, or values other than
            {0, 255} / {0, 1}.
    """
    path = Path(path)
    return binarize_mask(decode_tif(path), path)

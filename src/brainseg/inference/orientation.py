"""Put a volume's voxels in the one orientation the model knows, and a mask back in the file's own.

The LGG slices (and DICOM's axial pixel arrays) run rows anterior → posterior and columns patient
right → left: the radiological view. `MODEL_AXCODES` names that order for the array axes
(row, column, slice) in nibabel's terms, slices running inferior → superior. A NIfTI volume is
brought to it from its affine (`nibabel.orientations.io_orientation`: each array axis goes to the
world axis it lies closest to, so an oblique volume is permuted and flipped, never resampled), and
the mask goes back through the inverse permutation and flips: same shape, same voxels, so the
input's affine, qform and sform describe it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Array axes (rows, columns, slices) of the model's slices: towards Posterior, Left, Superior.
MODEL_AXCODES = ("P", "L", "S")


@dataclass(frozen=True)
class Reorientation:
    """How a file's array axes map onto the model's (nibabel orientation transforms, 3×2)."""

    to_model: np.ndarray
    to_file: np.ndarray
    file_axcodes: tuple[str, ...]

    @property
    def is_identity(self) -> bool:
        return bool(np.array_equal(self.to_model, [[0, 1], [1, 1], [2, 1]]))

    def model_zooms(self, zooms: tuple[float, float, float]) -> tuple[float, float, float]:
        """The file's voxel sizes (per array axis) in the model's axis order."""
        out = [0.0, 0.0, 0.0]
        for axis, (new_axis, _flip) in enumerate(self.to_model):
            out[int(new_axis)] = float(zooms[axis])
        return out[0], out[1], out[2]


def reorientation(affine: np.ndarray) -> Reorientation:
    """The transforms between an array with `affine` and the model's order (`MODEL_AXCODES`)."""
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt2axcodes, ornt_transform

    src = io_orientation(np.asarray(affine, dtype=np.float64))
    if np.isnan(src).any():  # a degenerate affine (zero column): keep the array order
        src = np.array([[0, 1], [1, 1], [2, 1]], dtype=np.float64)
    dst = axcodes2ornt(MODEL_AXCODES)
    return Reorientation(ornt_transform(src, dst), ornt_transform(dst, src), tuple(ornt2axcodes(src)))


def to_model_order(data: np.ndarray, reo: Reorientation) -> np.ndarray:
    """A file's array (X, Y, Z, ...) → the model's (rows, columns, slices, ...); trailing axes kept."""
    from nibabel.orientations import apply_orientation

    return np.ascontiguousarray(apply_orientation(data, reo.to_model))


def to_file_order(data: np.ndarray, reo: Reorientation) -> np.ndarray:
    """The inverse of `to_model_order`: an array in the model's order → the file's own."""
    from nibabel.orientations import apply_orientation

    return np.ascontiguousarray(apply_orientation(data, reo.to_file))

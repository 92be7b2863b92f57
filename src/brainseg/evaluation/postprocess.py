"""Post-processing of binary masks (pure functions on NumPy arrays).

Connectivity is full (26-neighbourhood in 3-D, 8 in 2-D): a lesion touching itself diagonally
across slices is one lesion.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    return ndimage.label(mask, structure=structure)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep only the largest connected component of a 2-D slice or 3-D (slices, H, W) volume."""
    mask = np.asarray(mask, dtype=bool)
    labels, n = _label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def remove_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Drop connected components smaller than `min_size` pixels (voxels for a volume)."""
    mask = np.asarray(mask, dtype=bool)
    if min_size <= 1:
        return mask
    labels, n = _label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]

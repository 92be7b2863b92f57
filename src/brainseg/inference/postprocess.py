"""Probabilities → masks: the one binarisation that evaluation, prediction and figures share.

`binarize(probs, eval_cfg)` thresholds (≥), keeps the largest 3-D connected component of the case
when asked (and the components of at least `component_fraction` of its size), then drops 2-D components below the minimum lesion size. Connectivity is full
(26-neighbourhood in 3-D, 8 in 2-D): a lesion touching itself diagonally across slices is one
lesion. Everything here is a pure function on NumPy arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from brainseg.config import EvalConfig
from brainseg.errors import BrainsegError

#: The EvalConfig fields that decide how probabilities become masks and detections.
POSTPROCESSING_FIELDS = ("threshold", "largest_component", "component_fraction", "min_lesion_size", "min_area")


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    return ndimage.label(mask, structure=structure)


def _component_sizes(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Component labels of a boolean mask and each label's size (the background's, label 0, set to 0)."""
    labels, _ = _label(mask)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels, sizes


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep only the largest connected component of a 2-D slice or 3-D (slices, H, W) volume."""
    mask = np.asarray(mask, dtype=bool)
    labels, sizes = _component_sizes(mask)
    if len(sizes) <= 2:  # background and at most one component
        return mask
    return labels == int(np.argmax(sizes))


def keep_large_components(mask: np.ndarray, fraction: float) -> np.ndarray:
    """Keep the connected components of at least `fraction` × the largest one's size (0 < fraction ≤ 1).

    1.0 keeps the largest (and any of equal size); smaller fractions also keep a second lesion of
    comparable size, which the largest-component rule would drop with the whole of its Dice.
    """
    if not 0.0 < fraction <= 1.0:
        raise BrainsegError(f"component fraction must lie in (0, 1], got {fraction}")
    mask = np.asarray(mask, dtype=bool)
    labels, sizes = _component_sizes(mask)
    if len(sizes) <= 2:
        return mask
    keep = sizes >= fraction * sizes.max()
    keep[0] = False
    return keep[labels]


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


def check_postprocessing(ev: EvalConfig) -> EvalConfig:
    """`ev` unchanged, or a BrainsegError naming the setting that cannot be used."""
    if not 0.0 <= ev.threshold <= 1.0:
        raise BrainsegError(f"threshold must lie in [0, 1], got {ev.threshold}")
    if not 0.0 < ev.component_fraction <= 1.0:
        raise BrainsegError(f"component fraction must lie in (0, 1], got {ev.component_fraction}")
    if ev.min_lesion_size < 0 or ev.min_area < 0:
        raise BrainsegError(
            f"min lesion size and min area must be ≥ 0, got {ev.min_lesion_size} and {ev.min_area}"
        )
    return ev


def postprocessing_dict(ev: EvalConfig) -> dict[str, Any]:
    """The binarisation settings of `ev` as a JSON-ready dict (for result files)."""
    return {k: getattr(ev, k) for k in POSTPROCESSING_FIELDS}


def binarize(probs: np.ndarray, ev: EvalConfig) -> np.ndarray:
    """Probabilities (N, H, W) of one case (a patient volume) → boolean masks, as `ev` says.

    Threshold (probability ≥ `ev.threshold`), then with `ev.largest_component` only the largest
    3-D component of the whole case (and, with `ev.component_fraction` < 1, every component of at
    least that fraction of its size), then 2-D components under `ev.min_lesion_size` pixels dropped.
    """
    pred = np.asarray(probs) >= ev.threshold
    if ev.largest_component:
        fraction = float(ev.component_fraction)
        pred = largest_component(pred) if fraction >= 1.0 else keep_large_components(pred, fraction)
    if ev.min_lesion_size > 1:
        pred = np.stack([remove_small_components(p, ev.min_lesion_size) for p in pred])
    return pred

"""Boundary, volume and lesion-wise metrics of one patient's 3-D masks (slices × H × W).

The metrics a neuro-radiology reader expects beside Dice: 95th-percentile Hausdorff distance
(HD95), average symmetric surface distance (ASSD), normalised surface Dice (NSD) at a stated
tolerance, absolute and relative volume error, and lesion-wise detection by 3-D connected
components. Definitions follow MONAI's (`compute_hausdorff_distance(percentile=95)`,
`compute_average_surface_distance(symmetric=True)`, `compute_surface_dice`), so the tests
compare against it to float precision:

- *Boundary*: the mask minus its binary erosion by the cross-shaped (4-/6-connected) structuring
  element, pixels outside the image counting as background.
- *Distances*: from every boundary pixel of one mask to the nearest boundary pixel of the other
  (Euclidean, scaled by the spacing; exact nearest neighbours by a k-d tree).
- HD95 = max(95th percentile of pred→truth, 95th percentile of truth→pred), percentiles with
  linear interpolation; ASSD = mean of both sets of distances pooled; NSD = the share of pooled
  boundary pixels within `tolerance` (≤) of the other boundary (Nikolov et al. 2021; boundary
  length counted in pixels, no sub-voxel areas).

Geometry, `mode="slice"` (the default, and the only one possible without a slice spacing):
kaggle_3m gives no voxel spacing and its slices are several times thicker than its in-plane
pixels, so treating one slice as one pixel would invent a z-distance. Boundaries and distances are
therefore computed *in-plane, slice by slice*, and the patient's boundary pixels are pooled over
all its slices before the percentile/mean (a slice weighs by its boundary length, as a surface
patch would in 3-D). A boundary pixel in a slice where the other mask is empty has no in-plane
distance: it is left out of HD95/ASSD, counted as a miss (beyond tolerance) by NSD, and its share
is reported as `boundary_unmatched_frac`; whole missed lesions are what the lesion-wise counts
report. `mode="volume"` needs a full spacing (dz, dy, dx) and computes 3-D boundaries and
distances, exactly as MONAI does on the 3-D volume.

Empty cases (never a NaN that breaks a mean over patients):
both masks empty → HD95 = ASSD = 0, NSD = 1, volume errors 0, lesion sensitivity 1;
no matched boundary (one mask empty, or no slice where both are present) → HD95 = ASSD = the
image diagonal (the largest distance possible, in the same unit), NSD = 0, `surface_fallback` = 1;
empty truth → `vol_rel_err` uses a denominator of one voxel, lesion sensitivity 1 (nothing to miss).
Units: pixels (distances) and voxels (volumes) without a spacing; mm and mm³ with one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from brainseg.errors import BrainsegError

__all__ = [
    "DEFAULT_CONNECTIVITY",
    "DEFAULT_TOLERANCE",
    "SURFACE_METRIC_KEYS",
    "SURFACE_METRICS_POLICY",
    "lesion_counts",
    "patient_surface_metrics",
    "surface_distances",
    "surface_metrics_policy",
]

DEFAULT_TOLERANCE = 2.0  # NSD tolerance, in the distance unit (pixels without a spacing)
DEFAULT_CONNECTIVITY = 26  # lesions: 3-D components, faces, edges and corners touching

# Every key patient_surface_metrics returns, in a stable order (per_patient.csv columns).
SURFACE_METRIC_KEYS = (
    "hd95",
    "assd",
    "nsd",
    "vol_truth",
    "vol_pred",
    "vol_abs_err",
    "vol_rel_err",
    "lesions_truth",
    "lesions_pred",
    "lesions_detected",
    "lesion_sensitivity",
    "fp_lesions",
    "boundary_unmatched_frac",
    "surface_fallback",
    "empty_truth",
    "empty_pred",
)

_CONNECTIVITY_RANK = {6: 1, 18: 2, 26: 3}
Mode = Literal["slice", "volume"]


def _as_mask(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == np.bool_:
        return a
    if a.dtype.kind not in "biuf" or not np.all((a == 0) | (a == 1)):
        raise BrainsegError(f"surface metrics: {name} must be a boolean (or 0/1) mask, got dtype {a.dtype}")
    return a.astype(bool)


def _check(pred: Any, truth: Any, spacing: Sequence[float] | None, mode: str) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    p, t = _as_mask(pred, "pred"), _as_mask(truth, "truth")
    if p.ndim != 3 or p.shape != t.shape:
        raise BrainsegError(
            f"surface metrics: pred and truth must be 3-D volumes (slices × H × W) of one shape, got {p.shape} and {t.shape}"
        )
    if mode not in ("slice", "volume"):
        raise BrainsegError(f"surface metrics: mode must be 'slice' or 'volume', got {mode!r}")
    if spacing is None:
        if mode == "volume":
            raise BrainsegError("surface metrics: mode='volume' needs the spacing (dz, dy, dx); without it use mode='slice'")
        return p, t, (1.0, 1.0, 1.0)
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise BrainsegError(f"surface metrics: spacing must be three positive numbers (dz, dy, dx) in mm, got {spacing!r}")
    return p, t, sp  # type: ignore[return-value]


def _bbox(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box of the foreground (None when empty), one slice object per axis."""
    out = []
    for ax in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(i for i in range(mask.ndim) if i != ax)))
        if hit.size == 0:
            return None
        out.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(out)


def _edges(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    # Cropping to the union's bounding box is exact: every pixel outside it is background, which
    # is what border_value=0 assumes.
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _nearest(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Distance from each point of `src` to the nearest point of `dst` (rows are coordinates).

    A k-d tree over the boundary points, not a dense distance transform: boundaries are sparse,
    and a false-positive speck far from the tumour would otherwise blow the box up to the slice.
    Exact, like `distance_transform_edt(sampling=spacing)` restricted to boundary pixels.
    """
    return cKDTree(dst).query(src, k=1)[0]


def _distances(
    p: np.ndarray, t: np.ndarray, sp: tuple[float, float, float], mode: str, box: tuple[slice, ...] | None
) -> tuple[np.ndarray, np.ndarray, int]:
    empty = np.zeros(0, dtype=np.float64)
    if box is None:
        return empty, empty, 0
    scale = np.asarray(sp, dtype=np.float64)
    if mode == "volume":
        cross = ndimage.generate_binary_structure(3, 1)
        ep, et = _edges(p[box], cross), _edges(t[box], cross)
        if not ep.any() or not et.any():
            return empty, empty, int(ep.sum() + et.sum())
        pp, tp = np.argwhere(ep) * scale, np.argwhere(et) * scale
        return _nearest(pp, tp), _nearest(tp, pp), 0
    cross2d = ndimage.generate_binary_structure(2, 1)[None]  # in-plane only: no erosion across slices
    ep, et = _edges(p[box], cross2d), _edges(t[box], cross2d)
    both = ep.any(axis=(1, 2)) & et.any(axis=(1, 2))
    unmatched = int(ep[~both].sum() + et[~both].sum())
    if not both.any():
        return empty, empty, unmatched
    ep[~both] = False
    et[~both] = False
    # One tree for all slices: z is scaled far beyond any in-plane distance, so a point's nearest
    # neighbour always lies in its own slice (every kept slice has points of both masks) and the
    # distance returned is the in-plane one (the z term is exactly 0).
    far = 4.0 * math.hypot(ep.shape[1] * sp[1], ep.shape[2] * sp[2]) + 1.0
    scale[0] = far
    pp, tp = np.argwhere(ep) * scale, np.argwhere(et) * scale
    return _nearest(pp, tp), _nearest(tp, pp), unmatched


def surface_distances(
    pred: Any,
    truth: Any,
    *,
    spacing: Sequence[float] | None = None,
    mode: Mode = "slice",
) -> tuple[np.ndarray, np.ndarray, int]:
    """Boundary-to-boundary distances between two masks (see the module docstring).

    Args:
        pred, truth: boolean volumes (slices × H × W) of one shape.
        spacing: (dz, dy, dx) in mm; None → pixels. `mode="slice"` uses only (dy, dx).
        mode: "slice" (in-plane per slice, pooled) or "volume" (3-D; needs `spacing`).

    Returns:
        (pred→truth distances, truth→pred distances, unmatched): the distances of the matched
        boundary pixels, and how many boundary pixels (of either mask) lie in a slice where the
        other mask is empty (in volume mode: all of them when one mask is empty, else 0).
    """
    p, t, sp = _check(pred, truth, spacing, mode)
    return _distances(p, t, sp, mode, _bbox(p | t))


def _structure(connectivity: int) -> np.ndarray:
    if connectivity not in _CONNECTIVITY_RANK:
        raise BrainsegError(f"lesion counts: connectivity must be 6, 18 or 26, got {connectivity!r}")
    return ndimage.generate_binary_structure(3, _CONNECTIVITY_RANK[connectivity])


def _lesions(p: np.ndarray, t: np.ndarray, connectivity: int, box: tuple[slice, ...] | None) -> dict[str, float]:
    structure = _structure(connectivity)
    n_t = n_p = hit_t = hit_p = 0
    if box is not None:  # components never leave the bounding box of the union
        pc, tc = p[box], t[box]
        lt, n_t = ndimage.label(tc, structure=structure)
        lp, n_p = ndimage.label(pc, structure=structure)
        hit_t = np.unique(lt[pc & tc]).size
        hit_p = np.unique(lp[pc & tc]).size
    return {
        "lesions_truth": float(n_t),
        "lesions_pred": float(n_p),
        "lesions_detected": float(hit_t),
        "lesion_sensitivity": hit_t / n_t if n_t else 1.0,
        "fp_lesions": float(n_p - hit_p),
    }


def lesion_counts(pred: Any, truth: Any, *, connectivity: int = DEFAULT_CONNECTIVITY) -> dict[str, float]:
    """Lesion-wise detection by 3-D connected components.

    A truth lesion (component) is detected when any predicted voxel overlaps it; a predicted
    component that overlaps no truth voxel is a false-positive lesion.

    Args:
        pred, truth: boolean volumes (slices × H × W).
        connectivity: 6, 18 or 26 (3-D neighbours that join voxels into one lesion).

    Returns:
        lesions_truth, lesions_pred, lesions_detected, lesion_sensitivity (detected / truth;
        1 when there is no truth lesion: nothing was missed), fp_lesions.
    """
    p, t, _ = _check(pred, truth, None, "slice")
    return _lesions(p, t, connectivity, _bbox(p | t))


def _diagonal(shape: tuple[int, ...], sp: tuple[float, float, float], mode: str) -> float:
    if mode == "volume":
        return math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, sp)))
    return math.hypot(shape[1] * sp[1], shape[2] * sp[2])


def patient_surface_metrics(
    pred: Any,
    truth: Any,
    *,
    spacing: Sequence[float] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    mode: Mode = "slice",
    connectivity: int = DEFAULT_CONNECTIVITY,
) -> dict[str, float]:
    """Every boundary, volume and lesion metric of one patient (keys: SURFACE_METRIC_KEYS).

    Args:
        pred, truth: boolean volumes (slices × H × W, slices in the patient's order, native
            in-plane pixels).
        spacing: (dz, dy, dx) in mm where known; None → distances in pixels, volumes in voxels.
        tolerance: NSD tolerance in the distance unit (pixels, or mm with a spacing).
        mode: "slice" (in-plane distances per slice, pooled; default) or "volume" (3-D; needs
            `spacing`). See the module docstring for why slice is the default.
        connectivity: 6, 18 or 26 for the lesion components.

    Returns:
        hd95, assd (distance unit), nsd (0–1), vol_truth, vol_pred, vol_abs_err = |pred − truth|
        (voxels, or mm³ with a spacing), vol_rel_err = |pred − truth| / truth (voxel counts; a
        denominator of at least one voxel), the lesion counts of `lesion_counts`,
        boundary_unmatched_frac (share of boundary pixels in slices where the other mask is
        empty), and the 0/1 flags surface_fallback (HD95/ASSD took the image diagonal: no
        matched boundary), empty_truth, empty_pred. All values are finite floats.
    """
    try:
        tol = float(tolerance)
    except (TypeError, ValueError):
        tol = math.nan
    if not (math.isfinite(tol) and tol >= 0):
        raise BrainsegError(f"surface metrics: tolerance must be a finite number >= 0, got {tolerance!r}")
    _structure(connectivity)  # fail before the work
    p, t, sp = _check(pred, truth, spacing, mode)
    n_p, n_t = int(p.sum()), int(t.sum())
    box = _bbox(p | t)
    d_pt, d_tp, unmatched = _distances(p, t, sp, mode, box)
    matched = d_pt.size + d_tp.size
    total = matched + unmatched
    fallback = 0.0
    if total == 0:  # both empty: perfect agreement on "no tumour"
        hd95, assd, nsd = 0.0, 0.0, 1.0
    elif d_pt.size == 0 or d_tp.size == 0:
        hd95 = assd = _diagonal(p.shape, sp, mode)
        nsd, fallback = 0.0, 1.0
    else:
        hd95 = float(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))
        assd = float((d_pt.sum() + d_tp.sum()) / matched)
        nsd = float((np.count_nonzero(d_pt <= tol) + np.count_nonzero(d_tp <= tol)) / total)
    voxel = sp[0] * sp[1] * sp[2]
    out = {
        "hd95": hd95,
        "assd": assd,
        "nsd": nsd,
        "vol_truth": n_t * voxel,
        "vol_pred": n_p * voxel,
        "vol_abs_err": abs(n_p - n_t) * voxel,
        "vol_rel_err": abs(n_p - n_t) / max(n_t, 1),
        **_lesions(p, t, connectivity, box),
        "boundary_unmatched_frac": unmatched / total if total else 0.0,
        "surface_fallback": fallback,
        "empty_truth": float(n_t == 0),
        "empty_pred": float(n_p == 0),
    }
    return {k: float(out[k]) for k in SURFACE_METRIC_KEYS}


def surface_metrics_policy(
    *,
    spacing: Sequence[float] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    mode: Mode = "slice",
    connectivity: int = DEFAULT_CONNECTIVITY,
) -> dict[str, Any]:
    """The units and policies behind `patient_surface_metrics`, for summary.json and the report."""
    dist_unit = "px" if spacing is None else "mm"
    vol_unit = "voxels" if spacing is None else "mm^3"
    geometry = (
        "in-plane per slice (2-D boundaries and distances; no slice spacing assumed), boundary pixels pooled over the patient"
        if mode == "slice"
        else "3-D boundaries and distances over the volume with the stated spacing"
    )
    return {
        "mode": mode,
        "geometry": geometry,
        "spacing": None if spacing is None else [float(s) for s in spacing],
        "distance_unit": dist_unit,
        "volume_unit": vol_unit,
        "boundary": "mask minus its erosion by the 4-connected cross (6-connected in 3-D), as MONAI",
        "hd95": "max of the two directed 95th percentiles (linear interpolation), as MONAI",
        "assd": "mean of the pooled boundary-to-boundary distances, both directions, as MONAI",
        "nsd_tolerance": float(tolerance),
        "nsd": f"share of boundary pixels within {tolerance:g} {dist_unit} (<=) of the other boundary",
        "unmatched_boundary": "boundary pixels in a slice where the other mask is empty: left out of HD95/ASSD, "
        "counted as misses by NSD, reported as boundary_unmatched_frac",
        "both_empty": "hd95 = assd = 0, nsd = 1, volume errors 0, lesion_sensitivity = 1",
        "no_matched_boundary": f"hd95 = assd = image diagonal ({dist_unit}), nsd = 0, surface_fallback = 1",
        "empty_truth": "vol_rel_err divides by max(truth voxels, 1); lesion_sensitivity = 1",
        "lesions": f"3-D connected components, {connectivity}-connectivity; a truth lesion is detected when any "
        "predicted voxel overlaps it; fp_lesions = predicted components overlapping no truth voxel",
    }


SURFACE_METRICS_POLICY = surface_metrics_policy()

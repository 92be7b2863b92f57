"""Surface, volume and lesion metrics against MONAI on the same masks, and by hand on tiny ones."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from brainseg.errors import BrainsegError
from brainseg.metrics.surface import (
    SURFACE_METRIC_KEYS,
    SURFACE_METRICS_POLICY,
    lesion_counts,
    patient_surface_metrics,
    surface_distances,
    surface_metrics_policy,
)

monai_metrics = pytest.importorskip("monai.metrics")
monai_utils = pytest.importorskip("monai.metrics.utils")


def _blobs(rng: np.random.Generator, shape: tuple[int, int, int], sigma: float, frac: float) -> np.ndarray:
    """Smooth random blobs (several components) covering about `frac` of the volume."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=sigma)
    return field > np.quantile(field, 1.0 - frac)


def _monai(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...] | None, tol: float) -> tuple[float, float, float]:
    """MONAI's HD95, ASSD and NSD on one volume or slice (batch and channel of one)."""
    yp = torch.from_numpy(pred[None, None].astype(np.float32))
    yt = torch.from_numpy(truth[None, None].astype(np.float32))
    sp = None if spacing is None else list(spacing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = monai_metrics.compute_hausdorff_distance(yp, yt, include_background=True, percentile=95, spacing=sp)
        asd = monai_metrics.compute_average_surface_distance(yp, yt, include_background=True, symmetric=True, spacing=sp)
        nsd = monai_metrics.compute_surface_dice(yp, yt, class_thresholds=[tol], include_background=True, spacing=sp)
    return float(hd), float(asd), float(nsd)


def _pair(rng: np.random.Generator, shape: tuple[int, int, int], kind: str) -> tuple[np.ndarray, np.ndarray]:
    truth = _blobs(rng, shape, sigma=2.5, frac=0.08)
    if kind == "random":
        pred = _blobs(rng, shape, sigma=2.5, frac=0.08) | (truth & (rng.random(shape) < 0.7))
    elif kind == "shifted":
        pred = np.roll(truth, shift=(0, 3, -2), axis=(0, 1, 2))
    elif kind == "dilated":
        pred = ndimage.binary_dilation(truth, iterations=2)
    else:  # eroded, plus a far false-positive speck that stretches the bounding box
        pred = ndimage.binary_erosion(truth, iterations=1)
        pred[-1, -3:, -3:] = True
    return pred, truth


@pytest.mark.parametrize("kind", ["random", "shifted", "dilated", "eroded"])
@pytest.mark.parametrize("seed", range(2))
def test_volume_mode_matches_monai_3d_with_anisotropic_spacing(kind: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pred, truth = _pair(rng, (12, 40, 36), kind)
    spacing = (3.3, 0.7, 0.9)
    tol = 1.5
    got = patient_surface_metrics(pred, truth, spacing=spacing, tolerance=tol, mode="volume")
    hd, asd, nsd = _monai(pred, truth, spacing, tol)
    assert got["hd95"] == pytest.approx(hd, rel=1e-5)
    assert got["assd"] == pytest.approx(asd, rel=1e-5)
    assert got["nsd"] == pytest.approx(nsd, abs=1e-6)
    assert got["surface_fallback"] == 0.0 and got["boundary_unmatched_frac"] == 0.0


def test_volume_mode_isotropic_unit_spacing_matches_monai_default() -> None:
    pred, truth = _pair(np.random.default_rng(7), (10, 32, 32), "random")
    got = patient_surface_metrics(pred, truth, spacing=(1, 1, 1), mode="volume")
    hd, asd, nsd = _monai(pred, truth, None, 2.0)  # MONAI's spacing=None is unit spacing
    assert (got["hd95"], got["assd"], got["nsd"]) == pytest.approx((hd, asd, nsd), rel=1e-5)


@pytest.mark.parametrize("kind", ["random", "shifted", "dilated", "eroded"])
@pytest.mark.parametrize("spacing", [None, (5.0, 0.6, 1.1)])
def test_slice_mode_on_one_slice_matches_monai_2d(kind: str, spacing: tuple[float, ...] | None) -> None:
    rng = np.random.default_rng(11)
    pred, truth = _pair(rng, (1, 48, 44), kind)
    if not (pred.any() and truth.any()):
        pytest.skip("draw left a mask empty")
    got = patient_surface_metrics(pred, truth, spacing=spacing, tolerance=2.0)
    hd, asd, nsd = _monai(pred[0], truth[0], None if spacing is None else spacing[1:], 2.0)
    assert got["hd95"] == pytest.approx(hd, rel=1e-5)
    assert got["assd"] == pytest.approx(asd, rel=1e-5)
    assert got["nsd"] == pytest.approx(nsd, abs=1e-6)


def _monai_pooled_slices(pred: np.ndarray, truth: np.ndarray, in_plane: tuple[float, float] | None, tol: float):
    """Our slice-mode definition assembled from MONAI's own per-slice edges and distances."""
    d_pt, d_tp, unmatched = [], [], 0
    for p, t in zip(pred, truth):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MONAI 1.6 warns about its own deprecated default argument
            if p.any() and t.any():
                _, (a, b), _ = monai_utils.get_edge_surface_distance(
                    torch.from_numpy(p), torch.from_numpy(t), spacing=in_plane, symmetric=True
                )
                d_pt.append(a.numpy().astype(np.float64))
                d_tp.append(b.numpy().astype(np.float64))
            elif p.any() or t.any():
                ep, et = monai_utils.get_mask_edges(p, t)
                unmatched += int(ep.sum() + et.sum())
    a, b = np.concatenate(d_pt), np.concatenate(d_tp)
    total = a.size + b.size + unmatched
    hd95 = max(np.percentile(a, 95), np.percentile(b, 95))
    assd = (a.sum() + b.sum()) / (a.size + b.size)
    nsd = (np.sum(a <= tol) + np.sum(b <= tol)) / total
    return hd95, assd, nsd, unmatched / total


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("spacing", [None, (4.0, 0.8, 0.5)])
def test_slice_mode_pools_monai_per_slice_distances(seed: int, spacing: tuple[float, ...] | None) -> None:
    rng = np.random.default_rng(100 + seed)
    pred, truth = _pair(rng, (14, 40, 40), ["random", "shifted", "eroded"][seed])
    pred[0] = False
    truth[0, 5:9, 5:9] = True  # a slice where only the truth has tumour: unmatched boundary
    got = patient_surface_metrics(pred, truth, spacing=spacing, tolerance=1.0)
    hd95, assd, nsd, unm = _monai_pooled_slices(pred, truth, None if spacing is None else spacing[1:], 1.0)
    assert unm > 0
    assert got["hd95"] == pytest.approx(hd95, rel=1e-5)
    assert got["assd"] == pytest.approx(assd, rel=1e-5)
    assert got["nsd"] == pytest.approx(nsd, abs=1e-9)
    assert got["boundary_unmatched_frac"] == pytest.approx(unm, abs=1e-12)


def _square(shift: int = 0) -> np.ndarray:
    m = np.zeros((1, 32, 32), dtype=bool)
    m[0, 10:20, 10 + shift : 20 + shift] = True
    return m


def test_square_shifted_by_two_pixels_by_hand() -> None:
    # Boundaries of 36 pixels each. Truth → pred: left column 8 × 2, top and bottom rows 2 + 1
    # each, right column 1 + 6 × 2 + 1: sum 36, the largest 2 (in 10 of 36 pixels, so p95 = 2).
    # Symmetric the other way: ASSD = 72 / 72 = 1. Within 1 px: 9 + 9 + 0 + 2 = 20 of 36 per side.
    truth, pred = _square(0), _square(2)
    got = patient_surface_metrics(pred, truth, tolerance=2.0)
    assert got["hd95"] == 2.0
    assert got["assd"] == pytest.approx(1.0)
    assert got["nsd"] == 1.0
    assert patient_surface_metrics(pred, truth, tolerance=1.0)["nsd"] == pytest.approx(40 / 72)
    assert patient_surface_metrics(pred, truth, tolerance=0.0)["nsd"] == pytest.approx(32 / 72)
    a, b, unmatched = surface_distances(pred, truth)
    assert (a.size, b.size, unmatched, a.sum(), b.sum()) == (36, 36, 0, 36.0, 36.0)
    assert (got["vol_truth"], got["vol_pred"], got["vol_abs_err"], got["vol_rel_err"]) == (100, 100, 0, 0)


def test_identical_masks_and_spacing_units() -> None:
    m = _square()
    got = patient_surface_metrics(m, m, spacing=(3.0, 0.5, 0.5))
    assert (got["hd95"], got["assd"], got["nsd"]) == (0.0, 0.0, 1.0)
    assert got["vol_truth"] == pytest.approx(100 * 3.0 * 0.25)  # mm³ with a spacing
    shifted = patient_surface_metrics(_square(2), m, spacing=(3.0, 0.5, 0.5))
    assert shifted["hd95"] == pytest.approx(1.0)  # 2 px × 0.5 mm
    assert surface_metrics_policy(spacing=(3.0, 0.5, 0.5))["distance_unit"] == "mm"


def test_unmatched_slice_counts_against_nsd_only() -> None:
    # Three slices of a 4×4 square (12 boundary pixels each); the prediction misses the last one.
    truth = np.zeros((3, 16, 16), dtype=bool)
    truth[:, 4:8, 4:8] = True
    pred = truth.copy()
    pred[2] = False
    got = patient_surface_metrics(pred, truth)
    assert (got["hd95"], got["assd"]) == (0.0, 0.0)
    assert got["nsd"] == pytest.approx(48 / 60)
    assert got["boundary_unmatched_frac"] == pytest.approx(12 / 60)
    assert got["surface_fallback"] == 0.0
    assert got["vol_rel_err"] == pytest.approx(16 / 48)


def test_empty_cases_are_documented_finite_values() -> None:
    empty = np.zeros((5, 256, 256), dtype=bool)
    tumour = empty.copy()
    tumour[2, 100:110, 100:110] = True
    diag = math.hypot(256, 256)

    both = patient_surface_metrics(empty, empty)
    assert (both["hd95"], both["assd"], both["nsd"]) == (0.0, 0.0, 1.0)
    assert (both["vol_abs_err"], both["vol_rel_err"], both["lesion_sensitivity"], both["fp_lesions"]) == (0, 0, 1, 0)
    assert (both["empty_truth"], both["empty_pred"], both["surface_fallback"]) == (1.0, 1.0, 0.0)

    missed = patient_surface_metrics(empty, tumour)
    assert (missed["hd95"], missed["assd"], missed["nsd"]) == (pytest.approx(diag), pytest.approx(diag), 0.0)
    assert (missed["surface_fallback"], missed["empty_pred"], missed["empty_truth"]) == (1.0, 1.0, 0.0)
    assert (missed["lesions_truth"], missed["lesions_detected"], missed["lesion_sensitivity"]) == (1, 0, 0.0)
    assert missed["vol_rel_err"] == 1.0 and missed["boundary_unmatched_frac"] == 1.0

    false_alarm = patient_surface_metrics(tumour, empty, spacing=(2.0, 0.5, 0.5))
    assert false_alarm["hd95"] == pytest.approx(math.hypot(128, 128))  # the diagonal in mm
    assert false_alarm["nsd"] == 0.0 and false_alarm["surface_fallback"] == 1.0
    assert false_alarm["vol_rel_err"] == 100.0  # denominator of one voxel
    assert (false_alarm["lesion_sensitivity"], false_alarm["fp_lesions"]) == (1.0, 1.0)
    vol = patient_surface_metrics(tumour, empty, spacing=(2.0, 0.5, 0.5), mode="volume")
    assert vol["hd95"] == pytest.approx(math.sqrt(10**2 + 128**2 + 128**2))

    # Both present but never in the same slice: no in-plane distance at all.
    other = empty.copy()
    other[4, 100:110, 100:110] = True
    apart = patient_surface_metrics(other, tumour)
    assert apart["hd95"] == pytest.approx(diag) and apart["surface_fallback"] == 1.0 and apart["nsd"] == 0.0

    for row in (both, missed, false_alarm, vol, apart):
        assert list(row) == list(SURFACE_METRIC_KEYS)
        assert all(math.isfinite(v) for v in row.values())


def test_monai_disagrees_only_on_the_empty_cases_we_define() -> None:
    empty = np.zeros((8, 8), dtype=bool)
    tumour = empty.copy()
    tumour[2:5, 2:5] = True
    hd, asd, nsd = _monai(empty, tumour, None, 2.0)
    # MONAI: HD95 NaN (the percentile of infinities), ASSD inf, NSD 0; ours: the diagonal, and NSD 0.
    assert math.isnan(hd) and math.isinf(asd) and nsd == 0.0
    assert patient_surface_metrics(empty[None], tumour[None])["hd95"] == pytest.approx(math.hypot(8, 8))
    hd, asd, nsd = _monai(empty, empty, None, 2.0)
    assert all(math.isnan(v) for v in (hd, asd, nsd))  # MONAI: NaN; ours: 0, 0, 1


def test_lesion_counts_by_hand_and_connectivity() -> None:
    truth = np.zeros((6, 20, 20), dtype=bool)
    truth[0:2, 2:5, 2:5] = True  # lesion A: hit by the prediction
    truth[3:5, 10:14, 10:14] = True  # lesion B: missed
    truth[5, 17, 17] = True  # lesion C: one voxel, hit
    pred = np.zeros_like(truth)
    pred[1, 4:7, 4:7] = True  # overlaps A at (1, 4, 4) and spills out: still one detection, no FP
    pred[5, 17, 17] = True
    pred[0, 15:17, 0:2] = True  # false positive
    pred[1, 17, 2] = True  # touches the FP above only diagonally (across a slice, a row and a column)
    pred[1, 17, 3] = True
    got = lesion_counts(pred, truth)
    assert got == {"lesions_truth": 3.0, "lesions_pred": 3.0, "lesions_detected": 2.0,
                   "lesion_sensitivity": pytest.approx(2 / 3), "fp_lesions": 1.0}
    six = lesion_counts(pred, truth, connectivity=6)
    assert (six["lesions_pred"], six["fp_lesions"]) == (4.0, 2.0)  # the diagonal touch splits the FP
    full = patient_surface_metrics(pred, truth, connectivity=6)
    assert (full["lesions_detected"], full["fp_lesions"]) == (2.0, 2.0)


def test_lesion_counts_against_scipy_labels_on_random_blobs() -> None:
    rng = np.random.default_rng(5)
    truth = _blobs(rng, (10, 48, 48), sigma=1.5, frac=0.04)
    pred = _blobs(rng, (10, 48, 48), sigma=1.5, frac=0.04)
    lt, n_t = ndimage.label(truth, structure=np.ones((3, 3, 3)))
    lp, n_p = ndimage.label(pred, structure=np.ones((3, 3, 3)))
    detected = sum(bool(pred[lt == i].any()) for i in range(1, n_t + 1))
    fp = sum(not truth[lp == j].any() for j in range(1, n_p + 1))
    assert n_t > 3 and n_p > 3
    got = lesion_counts(pred, truth)
    assert (got["lesions_truth"], got["lesions_pred"], got["lesions_detected"], got["fp_lesions"]) == (n_t, n_p, detected, fp)


def test_bad_input_is_one_clear_error() -> None:
    m = np.zeros((2, 8, 8), dtype=bool)
    with pytest.raises(BrainsegError, match="same shape|one shape"):
        patient_surface_metrics(m, m[:, :4])
    with pytest.raises(BrainsegError, match="3-D"):
        patient_surface_metrics(m[0], m[0])
    with pytest.raises(BrainsegError, match="boolean"):
        patient_surface_metrics(m + 0.5, m)
    with pytest.raises(BrainsegError, match="needs the spacing"):
        patient_surface_metrics(m, m, mode="volume")
    with pytest.raises(BrainsegError, match="spacing"):
        patient_surface_metrics(m, m, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(BrainsegError, match="tolerance"):
        patient_surface_metrics(m, m, tolerance=-1)
    with pytest.raises(BrainsegError, match="tolerance"):
        patient_surface_metrics(m, m, tolerance="two")
    with pytest.raises(BrainsegError, match="connectivity"):
        patient_surface_metrics(m, m, connectivity=4)
    with pytest.raises(BrainsegError, match="connectivity"):
        lesion_counts(m, m, connectivity=8)
    ok = patient_surface_metrics(m.astype(np.uint8), m.astype(np.float32), tolerance=np.float32(1))  # 0/1 masks
    assert ok["nsd"] == 1.0


def test_policy_states_units_and_is_json() -> None:
    policy = json.loads(json.dumps(SURFACE_METRICS_POLICY))
    assert policy["distance_unit"] == "px" and policy["volume_unit"] == "voxels"
    assert policy["mode"] == "slice" and policy["nsd_tolerance"] == 2.0
    assert "26-connectivity" in policy["lesions"]

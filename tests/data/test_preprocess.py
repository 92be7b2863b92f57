"""Resizing (nearest-neighbour masks stay binary) and the stated intensity normalisations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import stats

from brainseg.data.preprocess import (
    normalize,
    preprocess_image,
    preprocessing_dict,
    resize_image,
    resize_mask,
    select_channels,
)
from brainseg.errors import BrainsegError


def _blobs(shape: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(shape) < 0.3).astype(np.uint8)


@pytest.mark.parametrize(("shape", "size"), [((256, 256), 128), ((64, 64), 96), ((37, 53), 16), ((32, 32), 32)])
def test_resize_mask_is_nearest_neighbour_and_stays_binary(shape: tuple[int, int], size: int) -> None:
    mask = _blobs(shape, seed=size)
    out = resize_mask(mask, size)
    assert out.shape == (size, size) and out.dtype == np.uint8
    assert set(np.unique(out)) <= {0, 1}
    # PyTorch's "nearest-exact" samples the same pixel centres
    ref = F.interpolate(torch.from_numpy(mask)[None, None].float(), size=(size, size), mode="nearest-exact")
    np.testing.assert_array_equal(out, ref[0, 0].numpy().astype(np.uint8))


def test_resize_mask_keeps_a_shape_when_halving() -> None:
    mask = np.zeros((256, 256), np.uint8)
    mask[100:140, 60:100] = 1  # 40×40 square at even coordinates
    out = resize_mask(mask, 128)
    expected = np.zeros((128, 128), np.uint8)
    expected[50:70, 30:50] = 1
    np.testing.assert_array_equal(out, expected)


def test_resize_image_is_antialiased_bilinear() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    out = resize_image(img, 128)
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8
    ref = np.asarray(Image.fromarray(img).resize((128, 128), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out, ref)
    # shrinking white noise by 2 averages ~4 pixels: the spread drops (aliasing would keep it)
    assert out.astype(float).std() < 0.7 * img.astype(float).std()
    flat = np.full((50, 70, 3), 77, np.uint8)
    assert (resize_image(flat, 32) == 77).all()


def test_unit_normalisation_is_x_over_255() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
    x = normalize(img, "unit")
    assert x.shape == (3, 16, 20) and x.dtype == np.float32
    np.testing.assert_allclose(x, img.transpose(2, 0, 1) / 255.0, rtol=0, atol=1e-7)
    assert x.min() >= 0.0 and x.max() <= 1.0


def test_zscore_normalisation_over_brain_pixels() -> None:
    rng = np.random.default_rng(2)
    img = np.zeros((40, 40, 3), np.uint8)
    img[5:35, 8:30] = rng.integers(1, 256, (30, 22, 3), dtype=np.uint8)  # brain: no zero pixel
    x = normalize(img, "zscore")
    brain = (img != 0).any(axis=2)
    for c in range(3):
        np.testing.assert_allclose(x[c][brain], stats.zscore(img[:, :, c][brain].astype(np.float64)), atol=1e-5)
        assert (x[c][~brain] == 0).all()  # background stays exactly 0
    assert (normalize(np.zeros((8, 8, 3), np.uint8), "zscore") == 0).all()  # no brain: zeros, no NaN
    flat = normalize(np.full((8, 8, 3), 9, np.uint8), "zscore")
    assert np.isfinite(flat).all() and (flat == 0).all()


def test_rank_normalisation_matches_scipy_ranks_through_the_normal_quantile() -> None:
    rng = np.random.default_rng(5)
    img = np.zeros((40, 40, 3), np.uint8)
    img[5:35, 8:30] = rng.integers(0, 60, (30, 22, 3), dtype=np.uint8)  # many ties, zeros inside and out
    x = normalize(img, "rank")
    n = img.shape[0] * img.shape[1]
    for c in range(3):
        vals = img[:, :, c].ravel().astype(np.float64)
        u = (stats.rankdata(vals, method="average") - 0.5) / n  # mid-rank among all the slice's pixels
        np.testing.assert_allclose(x[c].ravel(), stats.norm.ppf(u), atol=1e-5)
    assert (normalize(np.zeros((8, 8, 3), np.uint8), "rank") == 0).all()  # all equal: the median, 0, no NaN
    flat = normalize(np.full((8, 8, 3), 9, np.uint8), "rank")
    assert np.isfinite(flat).all() and (flat == 0).all()


def test_rank_normalisation_ignores_increasing_intensity_changes_that_zscore_follows() -> None:
    rng = np.random.default_rng(6)
    img = rng.integers(1, 16, (32, 32, 3), dtype=np.uint8)
    # an increasing map that keeps distinct values distinct: v → v² (1..15 → 1..225), a gamma of 2
    squared = (img.astype(np.int64) ** 2).astype(np.uint8)
    np.testing.assert_array_equal(normalize(squared, "rank"), normalize(img, "rank"))
    assert not np.allclose(normalize(squared, "zscore"), normalize(img, "zscore"), atol=0.05)


def _input_change_under_gamma_2(normalizations: tuple[str, ...]) -> dict[str, float]:
    """Mean |Δ| of the model input over the head pixels when an MR-like slice — faint background
    noise (1–11, as in kaggle_3m) around a textured head — goes through a gamma of 2.0 rounded to uint8."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:256, :256]
    head = (yy - 128) ** 2 / 100**2 + (xx - 128) ** 2 / 80**2 < 1
    img = rng.integers(1, 12, (256, 256, 3)).astype(np.uint8)
    texture = 60 + 120 * (0.5 + 0.5 * np.sin(xx / 9.0)[..., None] * np.cos(yy / 13.0)[..., None])
    img[head] = np.clip(texture + rng.normal(0, 8, (256, 256, 3)), 20, 250).astype(np.uint8)[head]
    lut = np.round(255.0 * (np.arange(256) / 255.0) ** 2.0).astype(np.uint8)
    clear = resize_image(img, 128)[:, :, 1] > 30  # head pixels
    change = {}
    for norm in normalizations:
        a = preprocess_image(img, size=128, normalization=norm)
        b = preprocess_image(lut[img], size=128, normalization=norm)
        change[norm] = float(np.abs(a - b)[:, clear].mean())
    return change


def test_rank_input_barely_moves_under_a_rounded_gamma_on_a_noisy_background() -> None:
    # An MR-like slice: faint background noise (1–11, as in kaggle_3m) and a textured head. A gamma
    # of 2.0 rounded to uint8 sends the noise to 0 and merges dark values; after resizing to 128 the
    # head's rank input must stay nearly unchanged, while z-scores follow the curve.
    change = _input_change_under_gamma_2(("rank", "zscore"))
    assert change["rank"] < 0.1 < 0.3 < change["zscore"], change


def test_the_normalisations_are_listed_alike_where_they_are_named() -> None:
    from brainseg.bundles import NORMALIZATION_RULES
    from brainseg.config import RunConfig
    from brainseg.data.preprocess import NORMALIZATIONS

    assert set(NORMALIZATION_RULES) == set(NORMALIZATIONS)
    for norm in NORMALIZATIONS:  # the settings check accepts each, and nothing else
        cfg = RunConfig()
        cfg.set("data.normalization", norm)
        assert cfg.data.normalization == norm
    with pytest.raises(BrainsegError, match="normalization"):
        RunConfig().set("data.normalization", "minmax")


def test_normalisation_is_stated_and_checked() -> None:
    d = preprocessing_dict(128, 3, "zscore")
    assert d["normalization"] == "zscore" and d["mask_resize"] == "nearest" and d["size"] == 128
    assert d["channels"] == ["pre-contrast", "FLAIR", "post-contrast"]
    assert preprocessing_dict(64, 1, "unit")["channels"] == ["FLAIR"]
    with pytest.raises(BrainsegError, match="normalization must be one of"):
        normalize(np.zeros((4, 4, 3), np.uint8), "minmax")


def test_channel_selection_and_full_pipeline() -> None:
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(select_channels(img, 1)[:, :, 0], img[:, :, 1])  # FLAIR is channel 1
    x = preprocess_image(img, size=32, in_channels=1, normalization="unit")
    assert x.shape == (1, 32, 32)
    ref = np.asarray(Image.fromarray(np.ascontiguousarray(img[:, :, 1])).resize((32, 32), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(x[0], ref / 255.0, atol=1e-7)
    with pytest.raises(BrainsegError, match="expects 3"):
        preprocess_image(img[:, :, 1], size=32, in_channels=3)
    with pytest.raises(BrainsegError, match="dtype"):
        preprocess_image(img.astype(np.float32), size=32)


def _log_levels(v: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(v.astype(np.float64), 1.0))


def test_otsu_threshold_level_minimises_the_within_class_variance_of_log_intensities() -> None:
    # Otsu's original criterion, computed directly on the pixels: the split ≤ k / > k with the least
    # within-class variance of log(max(v, 1)) (the same split as the largest between-class variance).
    from brainseg.data.preprocess import otsu_threshold_level

    rng = np.random.default_rng(11)
    for trial in range(5):
        v = np.concatenate([rng.integers(0, 12, 400 + 50 * trial), rng.integers(40, 220, 900)]).astype(np.uint8)
        logv = _log_levels(v)
        best, best_k = np.inf, None
        for k in range(255):
            lo, hi = logv[v <= k], logv[v > k]
            if lo.size == 0 or hi.size == 0:
                continue
            within = lo.size * lo.var() + hi.size * hi.var()
            if within < best - 1e-9:
                best, best_k = within, k
        k = otsu_threshold_level(np.bincount(v, minlength=256))
        lo, hi = logv[v <= k], logv[v > k]
        assert np.isclose(lo.size * lo.var() + hi.size * hi.var(), best), (k, best_k)
        assert 11 <= k < 40  # between the noise and the head
    assert otsu_threshold_level(np.bincount(np.full(50, 7), minlength=256)) is None  # one grey level
    assert otsu_threshold_level(np.bincount(np.array([0, 1, 0, 1]), minlength=256)) is None  # log 0 = log 1


def test_zscore_otsu_takes_its_statistics_over_the_head_and_applies_them_everywhere() -> None:
    from brainseg.data.preprocess import otsu_brain

    rng = np.random.default_rng(12)
    img = rng.integers(1, 8, (40, 40, 3)).astype(np.uint8)  # faint background noise, no zero pixel
    head = np.zeros((40, 40), bool)
    head[6:34, 9:31] = True
    img[head] = rng.integers(60, 240, (int(head.sum()), 3)).astype(np.uint8)
    assert np.array_equal(otsu_brain(img), head)
    x = normalize(img, "zscore_otsu")
    for c in range(3):
        vals = img[:, :, c][head].astype(np.float64)
        np.testing.assert_allclose(x[c], (img[:, :, c] - vals.mean()) / vals.std(), atol=1e-4)
    for flat in (np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 9, np.uint8)):
        out = normalize(flat, "zscore_otsu")  # no threshold: statistics over every pixel
        assert np.isfinite(out).all() and (out == 0).all()


def test_zscore_otsu_ignores_a_gain_exactly() -> None:
    # x → 2x shifts log intensities by log 2: the same brain, and z-scores are unchanged by a gain
    rng = np.random.default_rng(13)
    img = rng.integers(2, 10, (32, 32, 3)).astype(np.uint8)
    img[8:26, 6:28] = rng.integers(40, 127, (18, 22, 3)).astype(np.uint8)
    np.testing.assert_allclose(normalize(2 * img, "zscore_otsu"), normalize(img, "zscore_otsu"), atol=1e-5)


def test_zscore_otsu_input_moves_far_less_than_zscore_under_a_rounded_gamma() -> None:
    # The MR-like slice of the rank test above: gamma 2.0 sends the background noise to 0, which moves
    # the brain of "zscore" (non-zero pixels) and so every z-score; Otsu's brain on log intensity stays.
    change = _input_change_under_gamma_2(("zscore_otsu", "zscore"))
    assert change["zscore_otsu"] < 0.5 * change["zscore"], change


def test_zscore_otsu_keeps_an_empty_sequence_small() -> None:
    # A missing post-contrast sequence: 0 over the head, a few faint pixels (1–4) outside it, as in
    # kaggle_3m's TCGA_DU_A5TW slice 10. Its std over the head is 0; floored at one grey level, the
    # faint pixels become (v − 0) / 1, not thousands.
    rng = np.random.default_rng(14)
    img = rng.integers(1, 6, (32, 32, 3)).astype(np.uint8)
    img[6:26, 6:26, :2] = rng.integers(50, 200, (20, 20, 2)).astype(np.uint8)
    img[:, :, 2] = 0
    img[0, :5, 2] = [1, 2, 3, 4, 4]
    x = normalize(img, "zscore_otsu")
    np.testing.assert_array_equal(x[2], img[:, :, 2].astype(np.float32))  # mean 0 over the head, std floored to 1
    assert np.abs(x[:2]).max() < 10

"""Paired augmentation: one geometry for image and mask, masks stay binary, intensity touches images only."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from brainseg.data.transforms import Augment, intensity_lut
from brainseg.errors import BrainsegError

H, W = 64, 80


def _marked(r0: int, c0: int, side: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """A black slice with one bright square, and a mask marking exactly that square."""
    img = np.zeros((H, W, 3), np.uint8)
    img[r0 : r0 + side, c0 : c0 + side] = 255
    mask = np.zeros((H, W), np.uint8)
    mask[r0 : r0 + side, c0 : c0 + side] = 1
    return img, mask


def _centroid(a: np.ndarray) -> np.ndarray:
    return np.array(ndimage.center_of_mass(a.astype(float)))


def test_flips_move_image_and_mask_identically() -> None:
    img, mask = _marked(5, 9, side=1)  # one marked pixel at row 5, column 9
    h_img, h_mask = Augment(hflip=1.0, vflip=0.0, p_affine=0.0, p_intensity=0.0)(img, mask, np.random.default_rng(0))
    assert list(zip(*np.nonzero(h_mask))) == [(5, W - 1 - 9)]
    assert list(zip(*np.nonzero(h_img[:, :, 0]))) == [(5, W - 1 - 9)]
    v_img, v_mask = Augment(hflip=0.0, vflip=1.0, p_affine=0.0, p_intensity=0.0)(img, mask, np.random.default_rng(0))
    assert list(zip(*np.nonzero(v_mask))) == [(H - 1 - 5, 9)]
    assert list(zip(*np.nonzero(v_img.max(axis=2)))) == [(H - 1 - 5, 9)]


def test_rotation_and_zoom_move_image_and_mask_together() -> None:
    rotate, scale = 30.0, (0.8, 1.25)
    aug = Augment(hflip=0.0, rotate=rotate, scale=scale, p_affine=1.0, p_intensity=0.0)
    img, mask = _marked(12, 50)
    centre = np.array([H / 2 - 0.5, W / 2 - 0.5])  # pixel-centre coordinates of the slice centre
    v0 = _centroid(mask) - centre
    moved = 0
    for seed in range(25):
        a_img, a_mask = aug(img, mask, np.random.default_rng(seed))
        assert set(np.unique(a_mask)) <= {0, 1}
        c_mask, c_img = _centroid(a_mask), _centroid(a_img[:, :, 1])
        assert np.abs(c_mask - c_img).max() < 1.0  # the bright square is where the mask says
        # the square's offset from the centre turned by at most ±rotate and scaled within the zoom range
        v = c_mask - centre
        ratio = np.linalg.norm(v) / np.linalg.norm(v0)
        turn = math.degrees(math.atan2(v0[0] * v[1] - v0[1] * v[0], v0 @ v))
        assert scale[0] - 0.05 < ratio < scale[1] + 0.05 and abs(turn) < rotate + 2.0
        moved += np.linalg.norm(v - v0) > 2.0
    assert moved >= 20  # it really transforms


@pytest.mark.parametrize("scale_value", [1, 255])
def test_masks_stay_binary_under_the_default_augmentation(scale_value: int) -> None:
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    mask = (ndimage.gaussian_filter(rng.random((H, W)), 3) > 0.5).astype(np.uint8) * np.uint8(scale_value)
    aug = Augment(vflip=0.5)
    for seed in range(30):
        out_img, out_mask = aug(img, mask, np.random.default_rng(seed))
        assert out_mask.dtype == np.uint8 and out_img.dtype == np.uint8
        assert out_mask.shape == (H, W) and out_img.shape == (H, W, 3)
        assert set(np.unique(out_mask)) <= {0, scale_value}


def test_intensity_jitter_touches_the_image_only_and_keeps_order() -> None:
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    img[:10] = 0
    mask = (rng.random((H, W)) < 0.2).astype(np.uint8)
    aug = Augment(hflip=0.0, p_affine=0.0, p_intensity=1.0)
    changed = 0
    for seed in range(10):
        out, out_mask = aug(img, mask, np.random.default_rng(seed))
        np.testing.assert_array_equal(out_mask, mask)
        assert (out[:10] == 0).all()  # background stays 0
        for c in range(3):  # a monotone map per channel: brighter stays at least as bright
            order = np.argsort(img[:, :, c], axis=None, kind="stable")
            assert (np.diff(out[:, :, c].ravel()[order].astype(int)) >= 0).all()
        changed += (out != img).any()
    assert changed == 10


def test_intensity_lut_formula() -> None:
    lut = intensity_lut(np.array([1.0, 2.0]), np.array([1.0, 0.5]), np.array([0.0, 0.1]))
    v = np.arange(256) / 255.0
    np.testing.assert_array_equal(lut[0], np.arange(256))  # identity
    expected = np.rint(np.clip(0.5 * v**2 + 0.1, 0, 1) * 255)
    expected[0] = 0
    np.testing.assert_array_equal(lut[1], expected)


def test_same_generator_same_result_and_bad_settings() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    mask = (rng.random((H, W)) < 0.3).astype(np.uint8)
    aug = Augment()
    a = aug(img, mask, np.random.default_rng(42))
    b = aug(img, mask, np.random.default_rng(42))
    c = aug(img, mask, np.random.default_rng(43))
    assert all((x == y).all() for x, y in zip(a, b))
    assert not (a[0] == c[0]).all()
    with pytest.raises(BrainsegError, match="probability"):
        Augment(hflip=1.5)
    with pytest.raises(BrainsegError, match="H×W mask"):
        aug(img, mask[:10], np.random.default_rng(0))

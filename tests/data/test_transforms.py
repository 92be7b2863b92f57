"""Paired augmentation: one geometry for image and mask, masks stay binary, intensity touches images only."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from brainseg.data.transforms import CURVE_POINTS, Augment, curve_points, intensity_lut, random_curve_lut
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


def _three_sequences(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A slice whose three channels differ everywhere inside a brain disc (background 0)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((H, W, 3), np.uint8)
    yy, xx = np.mgrid[:H, :W]
    brain = (yy - H / 2) ** 2 + (xx - W / 2) ** 2 < (H / 2.5) ** 2
    for k, (lo, hi) in enumerate(((20, 80), (100, 160), (180, 250))):
        img[:, :, k] = np.where(brain, rng.integers(lo, hi, (H, W)), 0)
    mask = np.zeros((H, W), np.uint8)
    mask[20:30, 30:40] = 1
    return img, mask


def test_sequence_dropout_copies_flair_like_the_dataset() -> None:
    img, mask = _three_sequences()
    aug = Augment(hflip=0.0, p_affine=0.0, p_intensity=0.0, seq_dropout=1.0)
    modes = {"pre": 0, "post": 0, "both": 0}
    n = 600
    for s in range(n):
        out, out_mask = aug(img, mask, np.random.default_rng(s))
        np.testing.assert_array_equal(out[:, :, 1], img[:, :, 1])  # FLAIR itself untouched
        np.testing.assert_array_equal(out_mask, mask)
        pre, post = np.array_equal(out[:, :, 0], img[:, :, 1]), np.array_equal(out[:, :, 2], img[:, :, 1])
        # a channel is either exactly FLAIR or exactly the original sequence
        assert pre or np.array_equal(out[:, :, 0], img[:, :, 0])
        assert post or np.array_equal(out[:, :, 2], img[:, :, 2])
        modes["both" if pre and post else "pre" if pre else "post"] += 1
    for k, count in modes.items():  # one of three modes, equally likely: 200 ± 4 SE
        assert abs(count - n / 3) < 4 * math.sqrt(n * (1 / 3) * (2 / 3)), (k, count)
    # probability 0.25: a quarter of the slices changed (binomial, 4 SE)
    aug = Augment(hflip=0.0, p_affine=0.0, p_intensity=0.0, seq_dropout=0.25)
    changed = sum(not np.array_equal(aug(img, mask, np.random.default_rng(s))[0], img) for s in range(n))
    assert abs(changed - 0.25 * n) < 4 * math.sqrt(n * 0.25 * 0.75)


def test_bias_field_is_smooth_multiplicative_and_bounded() -> None:
    img, mask = _three_sequences(1)
    flat = np.where(img > 0, 100, 0).astype(np.uint8)  # constant 100 inside the brain
    alpha = 0.5
    aug = Augment(hflip=0.0, p_affine=0.0, p_intensity=1.0, brightness=0.0, contrast=0.0, gamma=(1.0, 1.0),
                  bias_field=alpha)
    seen_change = False
    for s in range(20):
        out, _ = aug(flat, mask, np.random.default_rng(s))
        assert (out[flat == 0] == 0).all()  # background stays 0
        inside = out[:, :, 0][flat[:, :, 0] > 0].astype(float)
        # the field lies in [e^-alpha, e^alpha] (± rounding to uint8)
        assert inside.min() >= np.floor(100 * math.exp(-alpha)) and inside.max() <= np.ceil(100 * math.exp(alpha))
        np.testing.assert_array_equal(out[:, :, 0], out[:, :, 2])  # one field for every channel
        seen_change |= inside.max() - inside.min() > 5
    assert seen_change
    # a quadratic field: its discrete third differences along a row vanish (up to uint8 rounding)
    out, _ = aug(np.full((H, W, 3), 100, np.uint8), mask, np.random.default_rng(3))
    log_row = np.log(out[H // 2, :, 0].astype(float))
    assert np.abs(np.diff(log_row, 3)).max() < 0.05


def test_new_levers_at_their_defaults_keep_earlier_draws() -> None:
    """Draws for the newer levers come last: at their defaults the result is what the original
    draw order gives, rebuilt here by hand from the same Generator (flip, then the intensity LUT)."""
    img, mask = _three_sequences(2)
    aug = Augment(p_affine=0.0)
    for s in range(8):
        rng = np.random.default_rng(s)
        u = rng.random(4)
        rng.uniform(-aug.rotate, aug.rotate)
        rng.uniform(*aug.scale)
        gamma = np.exp(rng.uniform(math.log(aug.gamma[0]), math.log(aug.gamma[1]), size=3))
        gain = rng.uniform(1 - aug.contrast, 1 + aug.contrast, size=3)
        shift = rng.uniform(-aug.brightness, aug.brightness, size=3)
        expected = img[:, ::-1] if u[0] < aug.hflip else img
        if u[3] < aug.p_intensity:
            lut = intensity_lut(gamma, gain, shift)
            expected = np.stack([lut[k][expected[:, :, k]] for k in range(3)], axis=2)
        np.testing.assert_array_equal(aug(img, mask, np.random.default_rng(s))[0], expected)
    with pytest.raises(BrainsegError, match="seq_dropout"):
        Augment(seq_dropout=1.5)
    with pytest.raises(BrainsegError, match="bias_field"):
        Augment(bias_field=-0.1)


class _Replay:
    """A stand-in for MONAI's RandomState that replays given uniforms: MONAI draws each interior
    point as uniform(y_{i-1}, x_{i+1}); this returns a + u[i]·(b − a) for the i-th such draw."""

    def __init__(self, u: np.ndarray, n: int) -> None:
        self.u, self.n, self.i = u, n, 0

    def rand(self) -> float:  # the probability decision: always transform
        return 0.0

    def randint(self, a: int, b: int) -> int:  # the number of control points
        return self.n

    def uniform(self, a: float, b: float) -> float:
        self.i += 1
        return a + self.u[self.i] * (b - a)


def test_curve_points_follow_monai_rand_histogram_shift() -> None:
    """The curve is MONAI's RandHistogramShift: replaying its own draws through our uniforms gives its
    control points, and our lookup table is its intensity mapping of a 0…255 ramp (± uint8 rounding)."""
    from monai.transforms import RandHistogramShift

    lo, hi = CURVE_POINTS
    ramp = np.arange(256, dtype=np.float64).reshape(1, 1, 256)  # MONAI maps over the image's min…max
    for s in range(30):
        u = np.random.default_rng(s).random(hi)
        x, y = curve_points(u)
        t = RandHistogramShift(num_control_points=len(x), prob=1.0)

        t.R = _Replay(u, len(x))
        t.randomize()
        np.testing.assert_allclose(t.floating_control_points, y, atol=1e-12)
        np.testing.assert_array_equal(t.reference_control_points, x)
        theirs = np.asarray(t(ramp, randomize=False)).ravel()
        ours = random_curve_lut(u).astype(np.float64)
        assert np.abs(ours[1:] - theirs[1:]).max() <= 0.5 + 1e-9
        assert lo <= len(x) <= hi


def test_intensity_curves_are_monotone_per_channel_and_keep_the_background() -> None:
    img, mask = _three_sequences(3)
    aug = Augment(hflip=0.0, p_affine=0.0, p_intensity=0.0, curves=1.0)
    counts = set()
    for s in range(40):
        out, out_mask = aug(img, mask, np.random.default_rng(s))
        np.testing.assert_array_equal(out_mask, mask)
        assert (out[img == 0] == 0).all()
        for k in range(3):  # a monotone map: the order of the channel's intensities is kept
            order = np.argsort(img[:, :, k], axis=None, kind="stable")
            assert (np.diff(out[:, :, k].ravel()[order].astype(int)) >= 0).all()
        # each channel its own curve: the channels' mappings differ (checked on the input's ranges)
        counts.add(tuple(int(out[:, :, k].mean()) for k in range(3)))
    assert len(counts) > 30
    for u in np.random.default_rng(5).random((4, CURVE_POINTS[1])):
        lut = random_curve_lut(u)
        assert lut[0] == 0 and lut[255] == 255 and (np.diff(lut.astype(int)) >= 0).all()
    # probability 0.3: about 30% of the slices change (binomial, 4 SE)
    aug = Augment(hflip=0.0, p_affine=0.0, p_intensity=0.0, curves=0.3)
    n = 400
    changed = sum(not np.array_equal(aug(img, mask, np.random.default_rng(s))[0], img) for s in range(n))
    assert abs(changed - 0.3 * n) < 4 * math.sqrt(n * 0.3 * 0.7)
    with pytest.raises(BrainsegError, match="curves"):
        Augment(curves=1.2)

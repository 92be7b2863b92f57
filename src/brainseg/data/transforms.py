"""Paired augmentation of uint8 slices and their masks, reproducible from a numpy Generator.

Geometry (flips, rotation, scaling) is applied to image and mask together: bilinear for the image,
nearest neighbour for the mask, so the mask stays exactly binary. Intensity jitter (brightness,
contrast, gamma, drawn per channel) touches the image only, through a 256-entry lookup table per
channel, and keeps the background (value 0) at 0 so the brain region of `zscore` is unchanged.

Two further levers model what real LGG data contains: a smooth multiplicative bias field
(`bias_field`, a quadratic — the robustness test uses cubic fields, so the test is not the training
set) and *sequence dropout* (`seq_dropout`): where a patient lacked the pre- or post-contrast
sequence, the dataset's authors copied FLAIR into that channel, so with this probability a slice
gets FLAIR copied into its pre-contrast, post-contrast or both channels (one of the three, equally
likely), exactly as such patients look.

A third, *intensity curves* (`curves`), is another family of contrast change than the gamma jitter:
with this probability every channel passes through its own random monotone piecewise-linear curve
through (0, 0) and (255, 255) — MONAI's RandHistogramShift (the interior control points drawn one
after the other, each uniformly between the previous drawn point and the next reference point), with
4 to 6 control points — a curve can darken or brighten mid-tones, as a gamma does, but also bend the
intensities in ways no gamma or contrast factor does. The robustness test's gamma curves stay a
different family from the training curves.

Every call draws the same number of random values whatever it decides, so the result depends
only on the Generator passed in (the dataset seeds one per slice from seed, epoch and index).
Draws added for newer levers come after the older ones, so settings that leave the new levers at
their defaults reproduce earlier runs exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from brainseg.errors import BrainsegError


@dataclass(frozen=True)
class Augment:
    """Random paired transforms for one H×W×3 uint8 image and its H×W {0, 1} mask.

    Attributes:
        hflip: probability of a left-right flip (anatomically plausible: brains are near-symmetric).
        vflip: probability of an up-down (anterior-posterior) flip; off by default.
        rotate: maximum rotation in degrees (uniform in ±rotate).
        scale: (min, max) zoom factor, uniform.
        p_affine: probability of applying the rotation/zoom at all.
        brightness: maximum additive shift as a fraction of the full range (uniform in ±brightness).
        contrast: maximum relative contrast change (factor uniform in 1 ± contrast).
        gamma: (min, max) gamma, drawn log-uniformly.
        p_intensity: probability of applying the intensity jitter (and bias field) at all.
        bias_field: maximum amplitude alpha of a smooth field exp(alpha·b), b a random quadratic
            with max |b| = 1, alpha uniform in [0, bias_field]; 0 → off.
        seq_dropout: probability of copying FLAIR into pre-contrast, post-contrast or both
            (3-channel images only); 0 → off.
        curves: probability of passing every channel through its own random monotone
            piecewise-linear intensity curve (`random_curve_lut`); 0 → off.
    """

    hflip: float = 0.5
    vflip: float = 0.0
    rotate: float = 15.0
    scale: tuple[float, float] = (0.9, 1.1)
    p_affine: float = 0.8
    brightness: float = 0.1
    contrast: float = 0.1
    gamma: tuple[float, float] = (0.8, 1.25)
    p_intensity: float = 0.8
    bias_field: float = 0.0
    seq_dropout: float = 0.0
    curves: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.bias_field <= 2.0:
            raise BrainsegError(f"augment: bias_field must be an amplitude in [0, 2], got {self.bias_field}")
        for name in ("hflip", "vflip", "p_affine", "p_intensity", "seq_dropout", "curves"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise BrainsegError(f"augment: {name} must be a probability in [0, 1], got {getattr(self, name)}")
        if not (0 < self.scale[0] <= self.scale[1]):
            raise BrainsegError(f"augment: scale must be (min, max) with 0 < min ≤ max, got {self.scale}")
        if not (0 < self.gamma[0] <= self.gamma[1]):
            raise BrainsegError(f"augment: gamma must be (min, max) with 0 < min ≤ max, got {self.gamma}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return augmented copies (uint8 H×W×C image, uint8 H×W mask with the input's values)."""
        if image.ndim != 3 or image.dtype != np.uint8 or mask.shape != image.shape[:2]:
            raise BrainsegError(
                f"augment: expected a uint8 H×W×C image and an H×W mask, got {image.dtype} {image.shape} "
                f"and {mask.shape}"
            )
        c = image.shape[2]
        # Draw everything up front, always the same count, so outcomes never shift each other.
        u = rng.random(4)
        angle = rng.uniform(-self.rotate, self.rotate)
        zoom = rng.uniform(self.scale[0], self.scale[1])
        log_gamma = rng.uniform(math.log(self.gamma[0]), math.log(self.gamma[1]), size=3)
        gain = rng.uniform(1.0 - self.contrast, 1.0 + self.contrast, size=3)
        shift = rng.uniform(-self.brightness, self.brightness, size=3)
        # newer levers' draws (after the older ones, see the module docstring)
        u_new = rng.random(3)  # bias-field amplitude, sequence-dropout decision, its mode
        bias_coef = rng.uniform(-1.0, 1.0, size=len(_QUADRATIC))
        u_curve = rng.random(1 + 3 * (1 + CURVE_POINTS[1] - 2))  # decision; per channel: count, points

        if u[0] < self.hflip:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if u[1] < self.vflip:
            image, mask = image[::-1], mask[::-1]
        if u[2] < self.p_affine and (angle != 0.0 or zoom != 1.0):
            image, mask = _affine(image, mask, angle, zoom)
        image = np.ascontiguousarray(image)
        mask = np.ascontiguousarray(mask)
        if u[3] < self.p_intensity:
            image = _intensity(image, np.exp(log_gamma[:c]), gain[:c], shift[:c])
            if self.bias_field > 0:
                image = _apply_bias(image, self.bias_field * u_new[0], bias_coef)
        if u_curve[0] < self.curves:
            per_channel = u_curve[1:].reshape(3, -1)
            lut = np.stack([random_curve_lut(per_channel[k % 3]) for k in range(c)])
            image = _apply_lut(image, lut)
        if c == 3 and u_new[1] < self.seq_dropout:
            image = copy_flair(image, SEQ_DROPOUT_MODES[min(int(u_new[2] * 3), 2)])
        return image, mask


# Channel order of kaggle_3m slices: pre-contrast, FLAIR, post-contrast.
SEQ_DROPOUT_MODES: tuple[tuple[int, ...], ...] = ((0,), (2,), (0, 2))
#: (min, max) number of control points of an intensity curve, end points included.
CURVE_POINTS = (4, 6)
_QUADRATIC = ((1, 0), (0, 1), (2, 0), (1, 1), (0, 2))  # powers (i, j) of u^i v^j


def copy_flair(image: np.ndarray, channels: tuple[int, ...]) -> np.ndarray:
    """A copy of an H×W×3 slice with FLAIR (channel 1) written into `channels`, as the dataset does."""
    out = image.copy()
    for k in channels:
        out[:, :, k] = image[:, :, 1]
    return out


def _apply_bias(image: np.ndarray, alpha: float, coef: np.ndarray) -> np.ndarray:
    """Multiply every channel by exp(alpha·b), b = Σ c·u^i·v^j (quadratic, scaled to max |b| = 1)."""
    h, w = image.shape[:2]
    v, u = np.meshgrid(np.linspace(-1.0, 1.0, h), np.linspace(-1.0, 1.0, w), indexing="ij")
    b = sum(cf * u**i * v**j for cf, (i, j) in zip(coef, _QUADRATIC))
    peak = float(np.abs(b).max())
    field = np.exp(alpha * (b / peak if peak > 0 else b))
    return np.rint(np.clip(image * field[:, :, None], 0.0, 255.0)).astype(np.uint8)


def _affine(image: np.ndarray, mask: np.ndarray, angle: float, zoom: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate by `angle` degrees and zoom by `zoom` about the slice centre (Pillow, fast C loops)."""
    from PIL import Image

    h, w = mask.shape
    # Pillow maps each output pixel (x, y) to the input point (a·x + b·y + c, d·x + e·y + f):
    # the inverse of "zoom then rotate about the centre".
    t = math.radians(angle)
    cos, sin = math.cos(t) / zoom, math.sin(t) / zoom
    cx, cy = w / 2.0, h / 2.0
    data = (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)
    size = (w, h)
    if image.shape[2] == 3:
        img_out = np.asarray(
            Image.fromarray(np.ascontiguousarray(image)).transform(
                size, Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR
            )
        )
    else:
        img_out = np.stack(
            [
                np.asarray(
                    Image.fromarray(np.ascontiguousarray(image[:, :, k])).transform(
                        size, Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR
                    )
                )
                for k in range(image.shape[2])
            ],
            axis=2,
        )
    mask_out = np.asarray(
        Image.fromarray(np.ascontiguousarray(mask)).transform(
            size, Image.Transform.AFFINE, data, resample=Image.Resampling.NEAREST
        )
    )
    return img_out, mask_out


def intensity_lut(gamma: np.ndarray, gain: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Per-channel lookup tables (C, 256) uint8 for y = clip(gain·(v/255)^gamma + shift); 0 stays 0."""
    v = np.arange(256, dtype=np.float64) / 255.0
    y = gain[:, None] * v[None, :] ** gamma[:, None] + shift[:, None]
    lut = np.rint(np.clip(y, 0.0, 1.0) * 255.0).astype(np.uint8)
    lut[:, 0] = 0
    return lut


def curve_points(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The control points (reference x, floating y, both in [0, 1]) of one random intensity curve.

    `u` holds uniforms in [0, 1): u[0] picks the number of points n in `CURVE_POINTS`, u[1:n-1] the
    interior points, drawn as MONAI's RandHistogramShift draws them: y_i uniform in [y_{i-1}, x_{i+1}],
    so the curve is monotone and keeps its end points.
    """
    lo, hi = CURVE_POINTS
    n = lo + min(int(u[0] * (hi - lo + 1)), hi - lo)
    x = np.linspace(0.0, 1.0, n)
    y = x.copy()
    for i in range(1, n - 1):
        y[i] = y[i - 1] + u[i] * (x[i + 1] - y[i - 1])
    return x, y


def random_curve_lut(u: np.ndarray) -> np.ndarray:
    """A uint8 lookup table (256,) of the curve `curve_points(u)` over [0, 255]; 0 stays 0."""
    x, y = curve_points(u)
    v = np.arange(256, dtype=np.float64) / 255.0
    lut = np.rint(np.interp(v, x, y) * 255.0).astype(np.uint8)
    lut[0] = 0
    return lut


def _intensity(image: np.ndarray, gamma: np.ndarray, gain: np.ndarray, shift: np.ndarray) -> np.ndarray:
    return _apply_lut(image, intensity_lut(gamma, gain, shift))


def _apply_lut(image: np.ndarray, lut: np.ndarray) -> np.ndarray:
    out = np.empty_like(image)
    for k in range(image.shape[2]):  # uint8 indices gather straight from a 256-entry table
        out[:, :, k] = lut[k][image[:, :, k]]
    return out

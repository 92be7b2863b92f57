"""Image perturbations that mimic scanner and site variation: seeded pure functions on one patient.

Real MRI varies between scanners, sites and sessions: noise, blur, smooth intensity
inhomogeneity, different contrast, lower in-plane resolution, a tilted head, and missing
sequences (in 15 of the 110 LGG patients a missing pre- or post-contrast channel was replaced by
FLAIR; Buda et al. 2019). This module makes each of those a seeded pure function on one patient's
native slices (`brainseg.evaluation.robustness` measures models under them).

Every perturbation takes native uint8 slices ``images`` (N, H, W, 3: pre-contrast, FLAIR,
post-contrast) and masks ``masks`` (N, H, W) and returns new arrays of the same shapes and dtypes;
the inputs are never modified. ``severity`` is an integer from 0 to the perturbation's
`PerturbationSpec.max_severity`; severity 0 is the identity (an exact copy). The parameter value
at each severity is in `PERTURBATIONS[name].levels` (index = severity). Intensities are handled
as floats in [0, 255], clipped to [0, 255] and rounded back to uint8. Only `rotation` changes the
masks; the others score the model against the unchanged native ground truth.

====================== =========================================================================
name                   parameter (levels at severity 0…5) and what it does
====================== =========================================================================
gaussian_noise         sigma = 0, .02, .04, .07, .10, .15 of full scale (×255): x + sigma·n,
                       n ~ N(0, 1) independently per pixel and channel (also in the background).
rician_noise           same sigmas: |x + sigma·(n₁ + i·n₂)|, the magnitude-image noise of MRI
                       (Gudbjartsson & Patz 1995); it also lifts the dark background.
blur                   sigma = 0, .75, 1.5, 2.5, 4, 6 pixels of a 256-pixel-wide slice (scaled to
                       the slice's own width): in-plane Gaussian blur of every channel.
bias_field             alpha = 0, .15, .3, .45, .6, .8: x·exp(alpha·b(u, v)), b a random cubic
                       polynomial of the in-plane coordinates scaled to max |b| = 1, the same for
                       every slice and channel of the patient (a smooth coil-sensitivity field;
                       the polynomial model of Van Leemput et al. 1999, as in MONAI's RandBiasField).
gamma                  gamma = 1, 1.3, 1.6, 2, 2.5, 3: 255·(x/255)^gamma (darker mid-tones).
contrast               factor = 1, .8, .6, .45, .3, .2: per slice and channel, brain pixels (any
                       channel non-zero) become m + factor·(x − m), m their mean; the zero
                       background stays zero. Invisible to zscore-normalised models up to rounding.
low_resolution         factor = 1, 1.5, 2, 3, 4, 6: each slice is shrunk to round(H/f)×round(W/f)
                       (Pillow bilinear, antialiased) and enlarged back to H×W (bilinear).
rotation               angle = 0, 5, 10, 20, 30, 45 degrees, counter-clockwise as displayed (row 0
                       at the top) about the slice centre ((H−1)/2, (W−1)/2): images bilinear,
                       masks nearest neighbour (they stay binary); outside is filled with 0.
missing_sequence       severity 1: post-contrast (channel 2) replaced by FLAIR (channel 1);
                       2: pre-contrast (channel 0) replaced; 3: both (as in the LGG set).
missing_sequence_zero  the same channels set to 0 instead.
====================== =========================================================================

Randomness (noise, bias field) comes from ``numpy.random.default_rng([seed, crc32(name),
crc32(images)])``: the same seed and patient give the same result whatever the order in which
patients are evaluated, different patients get independent draws, and one draw is scaled across
severities (common random numbers), so a curve's steps come from the severity, not from luck.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from brainseg.errors import BrainsegError

__all__ = [
    "PERTURBATIONS",
    "Perturbation",
    "PerturbationSpec",
    "bias_field_map",
    "make_perturbation",
    "perturb",
    "perturbation_spec",
]

# A perturbation takes native uint8 slices (N,H,W,3) and masks (N,H,W) of one patient and
# returns perturbed copies.
Perturbation = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
CHANNEL_NAMES = ("pre-contrast", "FLAIR", "post-contrast")
FLAIR = 1
REFERENCE_WIDTH = 256  # blur sigmas are given in pixels of a slice this wide (LGG's native size)


def _check(images: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images, masks = np.asarray(images), np.asarray(masks)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise BrainsegError(
            f"perturbations take uint8 slices (N, H, W, 3); got {images.dtype} array of shape {images.shape}"
        )
    if masks.shape != images.shape[:3]:
        raise BrainsegError(f"masks have shape {masks.shape}; the slices need {images.shape[:3]}")
    return images, masks


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _gaussian_noise(images: np.ndarray, masks: np.ndarray, sigma: float, rng: np.random.Generator):
    n = rng.standard_normal(images.shape, dtype=np.float32)
    return _to_uint8(images.astype(np.float32) + (sigma * 255.0) * n), masks


def _rician_noise(images: np.ndarray, masks: np.ndarray, sigma: float, rng: np.random.Generator):
    n = rng.standard_normal((2, *images.shape), dtype=np.float32) * np.float32(sigma * 255.0)
    real = images.astype(np.float32) + n[0]
    return _to_uint8(np.sqrt(real * real + n[1] * n[1])), masks


def _blur(images: np.ndarray, masks: np.ndarray, sigma: float, rng: np.random.Generator):
    from scipy.ndimage import gaussian_filter

    s = sigma * images.shape[2] / REFERENCE_WIDTH
    out = gaussian_filter(images.astype(np.float32), sigma=(0, s, s, 0), mode="nearest", truncate=4.0)
    return _to_uint8(out), masks


def bias_field_map(shape: tuple[int, int], alpha: float, rng: np.random.Generator, degree: int = 3) -> np.ndarray:
    """A smooth multiplicative field exp(alpha·b) of shape (H, W), float32.

    b = Σ c_ij u^i v^j over 1 ≤ i + j ≤ `degree` with c_ij ~ U(−1, 1) and u, v ∈ [−1, 1] the
    column and row coordinates, scaled so that max |b| = 1; the field lies in [e^−alpha, e^alpha].
    """
    h, w = shape
    v, u = np.meshgrid(np.linspace(-1.0, 1.0, h), np.linspace(-1.0, 1.0, w), indexing="ij")
    terms = [(i, j) for i in range(degree + 1) for j in range(degree + 1 - i) if i + j > 0]
    coef = rng.uniform(-1.0, 1.0, len(terms))
    b = sum(c * u**i * v**j for c, (i, j) in zip(coef, terms))
    peak = float(np.abs(b).max())
    b = b / peak if peak > 0 else b
    return np.exp(alpha * b).astype(np.float32)


def _bias_field(images: np.ndarray, masks: np.ndarray, alpha: float, rng: np.random.Generator):
    field = bias_field_map(images.shape[1:3], alpha, rng)
    return _to_uint8(images.astype(np.float32) * field[None, :, :, None]), masks


def _gamma(images: np.ndarray, masks: np.ndarray, gamma: float, rng: np.random.Generator):
    lut = _to_uint8(255.0 * (np.arange(256) / 255.0) ** gamma)  # uint8 in, uint8 out: a lookup table
    return lut[images], masks


def _contrast(images: np.ndarray, masks: np.ndarray, factor: float, rng: np.random.Generator):
    x = images.astype(np.float32)
    brain = (images != 0).any(axis=3)  # (N, H, W), the brain definition of the zscore normalisation
    n = brain.sum(axis=(1, 2)).astype(np.float32)  # (N,)
    mean = (x * brain[..., None]).sum(axis=(1, 2)) / np.maximum(n, 1)[:, None]  # (N, 3)
    out = mean[:, None, None, :] + factor * (x - mean[:, None, None, :])
    return _to_uint8(out * brain[..., None]), masks


def _low_resolution(images: np.ndarray, masks: np.ndarray, factor: float, rng: np.random.Generator):
    from PIL import Image

    h, w = images.shape[1:3]
    small = (max(1, round(w / factor)), max(1, round(h / factor)))  # Pillow sizes are (width, height)
    out = np.empty_like(images)
    for k, img in enumerate(images):
        down = Image.fromarray(img).resize(small, Image.Resampling.BILINEAR)  # antialiased when shrinking
        out[k] = np.asarray(down.resize((w, h), Image.Resampling.BILINEAR))
    return out, masks


def _rotation(images: np.ndarray, masks: np.ndarray, angle: float, rng: np.random.Generator):
    from scipy.ndimage import rotate

    # scipy rotates counter-clockwise as displayed (row 0 on top) for a positive angle, about the
    # centre (n−1)/2 of each axis; order 1 is plain bilinear (no spline prefilter, no overshoot).
    img = rotate(images.astype(np.float32), angle, axes=(1, 2), reshape=False, order=1, mode="constant", cval=0.0)
    msk = rotate(masks, angle, axes=(1, 2), reshape=False, order=0, mode="constant", cval=0)
    return _to_uint8(img), msk.astype(masks.dtype, copy=False)


def _replace_with_flair(images: np.ndarray, masks: np.ndarray, channels: tuple[int, ...], rng: np.random.Generator):
    out = images.copy()
    for c in channels:
        out[..., c] = images[..., FLAIR]
    return out, masks


def _zero_channels(images: np.ndarray, masks: np.ndarray, channels: tuple[int, ...], rng: np.random.Generator):
    out = images.copy()
    for c in channels:
        out[..., c] = 0
    return out, masks


Apply = Callable[[np.ndarray, np.ndarray, Any, np.random.Generator], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class PerturbationSpec:
    """One perturbation: its parameter at each severity (index 0 = identity) and how it is applied."""

    name: str
    description: str
    parameter: str  # name of the parameter, e.g. "sigma"
    unit: str  # unit of the parameter, e.g. "px" ("" when dimensionless)
    levels: tuple[Any, ...]
    apply: Apply

    @property
    def max_severity(self) -> int:
        return len(self.levels) - 1

    def value(self, severity: int) -> Any:
        """The parameter at `severity` (BrainsegError if out of range)."""
        if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not (
            0 <= severity <= self.max_severity
        ):
            raise BrainsegError(
                f"severity of {self.name} must be an integer from 0 to {self.max_severity}, got {severity!r}"
            )
        return self.levels[int(severity)]

    def describe(self, severity: int) -> str:
        """The parameter as written into robustness.csv, e.g. "sigma=0.04" or "post-contrast←FLAIR"."""
        v = self.value(severity)
        if isinstance(v, tuple):
            if not v:
                return "none"
            arrow = "←FLAIR" if self.apply is _replace_with_flair else "=0"
            return ", ".join(f"{CHANNEL_NAMES[c]}{arrow}" for c in v)
        return f"{self.parameter}={v:g}{self.unit}"


_CHANNEL_LEVELS = ((), (2,), (0,), (0, 2))
_NOISE_LEVELS = (0.0, 0.02, 0.04, 0.07, 0.10, 0.15)

PERTURBATIONS: dict[str, PerturbationSpec] = {
    s.name: s
    for s in (
        PerturbationSpec("gaussian_noise", "additive Gaussian noise, sigma as a fraction of 255", "sigma", "",
                         _NOISE_LEVELS, _gaussian_noise),
        PerturbationSpec("rician_noise", "Rician (magnitude) noise, sigma as a fraction of 255", "sigma", "",
                         _NOISE_LEVELS, _rician_noise),
        PerturbationSpec("blur", "in-plane Gaussian blur, sigma in pixels of a 256-pixel-wide slice", "sigma", "px",
                         (0.0, 0.75, 1.5, 2.5, 4.0, 6.0), _blur),
        PerturbationSpec("bias_field", "smooth multiplicative field exp(alpha·b), |b| ≤ 1 a cubic polynomial",
                         "alpha", "", (0.0, 0.15, 0.3, 0.45, 0.6, 0.8), _bias_field),
        PerturbationSpec("gamma", "gamma curve 255·(x/255)^gamma", "gamma", "", (1.0, 1.3, 1.6, 2.0, 2.5, 3.0), _gamma),
        PerturbationSpec("contrast", "brain contrast scaled about its mean per slice and channel", "factor", "",
                         (1.0, 0.8, 0.6, 0.45, 0.3, 0.2), _contrast),
        PerturbationSpec("low_resolution", "bilinear down-sampling by a factor, then up-sampling back", "factor", "",
                         (1.0, 1.5, 2.0, 3.0, 4.0, 6.0), _low_resolution),
        PerturbationSpec("rotation", "in-plane rotation, counter-clockwise; masks nearest neighbour", "angle", "°",
                         (0.0, 5.0, 10.0, 20.0, 30.0, 45.0), _rotation),
        PerturbationSpec("missing_sequence", "channel(s) replaced by FLAIR, as in the LGG set", "channels", "",
                         _CHANNEL_LEVELS, _replace_with_flair),
        PerturbationSpec("missing_sequence_zero", "channel(s) set to zero", "channels", "",
                         _CHANNEL_LEVELS, _zero_channels),
    )
}  # fmt: skip


def perturbation_spec(name: str) -> PerturbationSpec:
    """The spec of perturbation `name` (BrainsegError naming the known ones otherwise)."""
    if name not in PERTURBATIONS:
        raise BrainsegError(f"unknown perturbation {name!r}; known: {', '.join(PERTURBATIONS)}")
    return PERTURBATIONS[name]


def perturb(
    images: np.ndarray, masks: np.ndarray, name: str, severity: int, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Apply perturbation `name` at `severity` to one patient's slices; a pure, seeded function.

    Args:
        images: native uint8 slices (N, H, W, 3).
        masks: their masks (N, H, W), any dtype (values are kept: {0, 1} or {0, 255}).
        name: a key of `PERTURBATIONS`.
        severity: 0 (identity: exact copies) to `PERTURBATIONS[name].max_severity`.
        seed: with the perturbation's name and the image content, fixes every random draw.

    Returns:
        (images, masks): new arrays with the input shapes and dtypes.

    Raises:
        BrainsegError: unknown name, severity out of range, or arrays of the wrong shape/dtype.
    """
    spec = perturbation_spec(name)
    value = spec.value(severity)
    images, masks = _check(images, masks)
    if severity == 0:
        return images.copy(), masks.copy()
    rng = np.random.default_rng(
        [int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode()), zlib.crc32(np.ascontiguousarray(images).data)]
    )
    return spec.apply(images, masks, value, rng)


def make_perturbation(name: str, severity: int, *, seed: int = 0) -> Perturbation:
    """`perturb` with its settings fixed: the `perturb=` callable of `evaluate_patients`."""
    perturbation_spec(name).value(severity)  # fail now, not inside the evaluation loop

    def apply(images: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return perturb(images, masks, name, severity, seed=seed)

    return apply

"""Robustness: evaluate trained runs under controlled image perturbations and by strata.

Real MRI varies between scanners, sites and sessions: noise, blur, smooth intensity
inhomogeneity, different contrast, lower in-plane resolution, a tilted head, and missing
sequences (in 15 of the 110 LGG patients a missing pre- or post-contrast channel was replaced by
FLAIR; Buda et al. 2019). This module makes each of those a seeded pure function on one patient's
native slices, and measures how each model's test Dice changes as the perturbation grows.

Perturbations
-------------
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

Strata (no perturbation)
------------------------
`strata_rows` splits the unperturbed per-slice results three ways: by institution (the TCGA
site code in the folder name), by tumour size (tertiles of the test patients' ground-truth tumour
volumes, counted in native pixels summed over slices: small ≤ q⅓ < medium ≤ q⅔ < large; patients
without tumour form "no tumour"), and by slice position (each patient's slices ranked by number
and cut into first / middle / last third). Each stratum's Dice per patient is computed from that
patient's counts within the stratum, then averaged over patients, with the run's empty policy.

Files written by `run_robustness` (read by brainseg.reporting.report's robustness section):
robustness.csv, strata.csv, robustness.json and robustness_<model>.png.
"""

from __future__ import annotations

import math
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainseg.errors import BrainsegError

__all__ = [
    "PERTURBATIONS",
    "ROBUSTNESS_COLUMNS",
    "STRATA_COLUMNS",
    "PerturbationSpec",
    "Target",
    "bias_field_map",
    "make_perturbation",
    "perturb",
    "resolve_targets",
    "run_robustness",
    "size_thresholds",
    "strata_rows",
]

ROBUSTNESS_COLUMNS = (
    "model", "perturbation", "severity", "parameter", "dice_patient", "dice_patient_ci_low",
    "dice_patient_ci_high", "dice_drop", "dice_retained", "iou_patient", "precision_patient", "recall_patient", "dice_slice",
    "dice_micro", "n_patients", "n_slices",
)  # fmt: skip
STRATA_COLUMNS = (
    "model", "stratum_type", "stratum", "definition", "n_patients", "n_slices", "n_tumour_slices",
    "dice_patient", "dice_patient_ci_low", "dice_patient_ci_high", "iou_patient", "dice_slice",
)  # fmt: skip
STRATUM_TYPES = ("institution", "tumour_size", "slice_position")
CLEAN = "none"  # perturbation name of the unperturbed rows (the report draws it at severity 0)
REFERENCE_WIDTH = 256  # blur sigmas are given in pixels of a slice this wide (LGG's native size)
CHANNEL_NAMES = ("pre-contrast", "FLAIR", "post-contrast")
FLAIR = 1


# ------------------------------------------------------------------------------- perturbations


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


def _spec(name: str) -> PerturbationSpec:
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
    spec = _spec(name)
    value = spec.value(severity)
    images, masks = _check(images, masks)
    if severity == 0:
        return images.copy(), masks.copy()
    rng = np.random.default_rng(
        [int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode()), zlib.crc32(np.ascontiguousarray(images).data)]
    )
    return spec.apply(images, masks, value, rng)


def make_perturbation(name: str, severity: int, *, seed: int = 0) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """`perturb` with its settings fixed: the `perturb=` callable of `evaluate_patients`."""
    _spec(name).value(severity)  # fail now, not inside the evaluation loop

    def apply(images: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return perturb(images, masks, name, severity, seed=seed)

    return apply


# --------------------------------------------------------------------------------------- strata


def size_thresholds(volumes: Sequence[float]) -> tuple[float, float]:
    """Tertile cut-offs (q⅓, q⅔) of the non-zero tumour volumes (NumPy's linear quantiles)."""
    v = np.asarray([x for x in volumes if x > 0], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    q1, q2 = np.quantile(v, [1 / 3, 2 / 3])
    return float(q1), float(q2)


def _size_group(volume: float, q1: float, q2: float) -> str:
    if volume <= 0:
        return "no tumour"
    if volume <= q1:
        return "small"
    return "medium" if volume <= q2 else "large"


def _sub_summary(acc: Any, keep: Callable[[str, int], bool], policy: str, seed: int) -> dict[str, Any] | None:
    from brainseg.metrics.accumulator import MetricAccumulator

    state = acc.state_dict()
    pairs = [(k, v) for k, v in zip(state["keys"], state["values"]) if keep(k[0], int(k[1]))]
    if not pairs:
        return None
    sub = MetricAccumulator.from_states(
        [{**state, "keys": [k for k, _ in pairs], "values": [v for _, v in pairs], "loss_sum": 0.0, "loss_count": 0}]
    )
    return sub.summary(policy, seed=seed)


def strata_rows(
    acc: Any, institutions: dict[str, str], *, empty_policy: str = "one", model: str = "", seed: int = 0
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Unperturbed results split by institution, tumour size and slice position (module docstring).

    Args:
        acc: the MetricAccumulator of the clean evaluation.
        institutions: patient → institution code.
        empty_policy: how a slice/patient with empty truth and prediction scores.
        model: written into each row's "model" column.
        seed: of the bootstrap intervals.

    Returns:
        (rows with `STRATA_COLUMNS`, {"size_thresholds_px": [q1, q2], ...} describing the cut-offs).
    """
    slice_rows = acc.per_slice_rows(empty_policy)
    volume: dict[str, float] = {}
    slices_of: dict[str, list[int]] = {}
    for r in slice_rows:
        volume[r["patient"]] = volume.get(r["patient"], 0.0) + float(r["true_area"])
        slices_of.setdefault(r["patient"], []).append(int(r["slice"]))
    q1, q2 = size_thresholds(list(volume.values()))
    third: dict[tuple[str, int], int] = {}
    for p, sl in slices_of.items():
        for rank, s in enumerate(sorted(sl)):
            third[(p, s)] = min(2, 3 * rank // len(sl))

    size_def = {
        "small": f"≤ {q1:.0f} px",
        "medium": f"{q1:.0f}–{q2:.0f} px",
        "large": f"> {q2:.0f} px",
        "no tumour": "0 px",
    }
    groups: list[tuple[str, str, str, Callable[[str, int], bool]]] = []
    for inst in sorted({institutions.get(p, "") for p in volume}):
        groups.append(("institution", inst or "unknown", f"site {inst or 'unknown'}",
                       lambda p, s, inst=inst: institutions.get(p, "") == inst))
    for g in ("small", "medium", "large", "no tumour"):
        groups.append(("tumour_size", g, f"tumour volume {size_def[g]} (tertiles of the test patients)",
                       lambda p, s, g=g: _size_group(volume[p], q1, q2) == g))
    for k, label in enumerate(("first third", "middle third", "last third")):
        groups.append(("slice_position", label, f"slices ranked by number within each patient, {label}",
                       lambda p, s, k=k: third[(p, s)] == k))

    rows: list[dict[str, Any]] = []
    for stype, stratum, definition, keep in groups:
        s = _sub_summary(acc, keep, empty_policy, seed)
        if s is None:
            continue
        d = s["dice"]
        rows.append({
            "model": model, "stratum_type": stype, "stratum": stratum, "definition": definition,
            "n_patients": s["n_patients"], "n_slices": s["n_slices"], "n_tumour_slices": s["n_tumour_slices"],
            "dice_patient": d["per_patient"]["mean"], "dice_patient_ci_low": d["per_patient"]["ci_low"],
            "dice_patient_ci_high": d["per_patient"]["ci_high"], "iou_patient": s["iou"]["per_patient"]["mean"],
            "dice_slice": d["per_slice"]["mean"],
        })  # fmt: skip
    info = {
        "size_thresholds_px": [q1, q2],
        "size_rule": "tertiles of the test patients' ground-truth tumour volumes (native pixels summed over "
        "slices); small ≤ q1 < medium ≤ q2 < large; patients without tumour form 'no tumour'",
        "slice_position_rule": "each patient's slices ranked by slice number and cut into thirds "
        "(rank·3 // n_slices)",
    }
    return rows, info


# ------------------------------------------------------------------------------------ the study


@dataclass
class Target:
    """One model to study: a label and its run folder(s) (several when pooled over folds)."""

    name: str | None  # None: the checkpoint's model name
    run_dirs: list[Path]


def _has_checkpoint(d: Path, checkpoint: str) -> bool:
    return (d / f"checkpoint_{checkpoint}.pt").is_file()


def resolve_targets(paths: Sequence[str | Path], *, checkpoint: str = "best") -> tuple[list[Target], Path | None]:
    """Turn command-line folders into models to study.

    A folder may be a run (holds checkpoint_<checkpoint>.pt), a folder of fold runs (fold<k>/…,
    pooled), or a comparison made by `brainseg compare` (protocol.json and runs/<model>/: every
    trained model in it). Returns the targets and the comparison folder when exactly one folder
    was given and it is a comparison (None otherwise).

    Raises:
        BrainsegError: a folder that is none of these.
    """
    from brainseg.fileio import read_json

    def folds_of(d: Path) -> list[Path]:
        fs = [f for f in d.glob("fold*") if f.is_dir() and f.name[4:].isdigit() and _has_checkpoint(f, checkpoint)]
        return sorted(fs, key=lambda f: int(f.name[4:]))

    targets: list[Target] = []
    comparison = None
    for raw in paths:
        d = Path(raw)
        if not d.is_dir():
            raise BrainsegError(f"{d} is not a folder (expected a run folder or a comparison folder)")
        if (d / "protocol.json").is_file() and (d / "runs").is_dir():
            models = read_json(d / "protocol.json").get("models") or sorted(p.name for p in (d / "runs").iterdir())
            found = 0
            for m in models:
                md = d / "runs" / str(m)
                if _has_checkpoint(md, checkpoint):
                    targets.append(Target(str(m), [md]))
                elif folds := folds_of(md):
                    targets.append(Target(str(m), folds))
                else:
                    continue
                found += 1
            if not found:
                raise BrainsegError(f"comparison {d} has no trained model yet (no runs/<model>/checkpoint_{checkpoint}.pt)")
            if len(paths) == 1:
                comparison = d
        elif _has_checkpoint(d, checkpoint):
            targets.append(Target(None, [d]))
        elif folds := folds_of(d):
            targets.append(Target(d.name, folds))
        else:
            raise BrainsegError(
                f"{d} holds no checkpoint_{checkpoint}.pt, no fold<k>/ runs and no comparison (protocol.json, runs/)"
            )
    if not targets:
        raise BrainsegError("no run folder given")
    return targets, comparison


@dataclass
class _Loaded:
    name: str
    run_dirs: list[Path]
    predictors: list[Any]
    patients: list[list[str]]
    eval_cfg: Any
    root: Path


def _tasks(perturbations: Sequence[str], severities: Sequence[int] | None) -> tuple[list[tuple[str, int]], list[str]]:
    tasks, skipped = [], []
    for p in perturbations:
        spec = _spec(p)
        for s in severities if severities is not None else range(1, spec.max_severity + 1):
            if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
                raise BrainsegError(f"severities must be non-negative integers, got {s!r}")
            if s > spec.max_severity:
                skipped.append(f"{p} has no severity {s} (at most {spec.max_severity})")
                continue
            tasks.append((p, int(s)))
    return tasks, skipped


def run_robustness(
    targets: Sequence[Target],
    out_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    split: str = "test",
    perturbations: Sequence[str] | None = None,
    severities: Sequence[int] | None = None,
    seed: int = 0,
    checkpoint: str = "best",
    device: str = "auto",
    batch_size: int = 16,
    progress: bool = True,
    announce: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate every target under every perturbation and severity; write the result files.

    Each model is scored with its own run's evaluation settings (threshold, post-processing,
    empty policy) on its own split, exactly as `brainseg evaluate` does; fold runs are pooled.
    Each patient's TIFs are decoded once, and each perturbed patient is computed once per
    (perturbation, severity) and shared by all models. Severity 0 is the identity, so its rows
    reuse the unperturbed evaluation.

    Args:
        targets: from `resolve_targets`.
        out_dir: where robustness.csv, strata.csv, robustness.json, robustness_<model>.png go.
        data_root: dataset folder (default: the one each run was trained on).
        split: which patients of each run ("test" by default).
        perturbations: names from `PERTURBATIONS` (default: all, in that order).
        severities: severities to run (default: 1 … each perturbation's maximum); those above a
            perturbation's maximum are skipped with a note.
        seed: seed of every perturbation (and of the bootstrap intervals).
        checkpoint: "best" or "last".

    Returns:
        The contents of robustness.json (plus "files": name → path).
    """
    from brainseg.config import RunConfig
    from brainseg.data.lgg import index_dataset
    from brainseg.data.phantom import resolve_data_root
    from brainseg.evaluation.evaluate import evaluate_patients, split_patients
    from brainseg.evaluation.predict import Predictor
    from brainseg.fileio import write_csv_atomic, write_json_atomic
    from brainseg.training.checkpoint import load_checkpoint

    say = announce or (lambda m: print(m, file=sys.stderr, flush=True))
    perts = list(perturbations) if perturbations is not None else list(PERTURBATIONS)
    for p in perts:
        _spec(p)
    if len(set(perts)) != len(perts):
        raise BrainsegError(f"a perturbation is listed twice: {','.join(perts)}")
    tasks, skipped = _tasks(perts, severities)
    for note in skipped:
        say(f"robustness: {note}; skipped")
    out = Path(out_dir)
    t_start = time.perf_counter()

    # ---- load every model once; one dataset index and one decoded-slice cache per data root
    indexes: dict[Path, Any] = {}
    caches: dict[Path, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    loaded: list[_Loaded] = []
    for t in targets:
        preds, pats, eval_cfg, root, name = [], [], None, None, t.name
        for rd in t.run_dirs:
            ckpt = load_checkpoint(Path(rd) / f"checkpoint_{checkpoint}.pt")
            cfg = RunConfig.from_dict(ckpt["config"], ckpt["path"])
            name = name or cfg.model.name
            r = Path(resolve_data_root(data_root if data_root is not None else cfg.data.root, announce=say))
            if root is not None and r != root:
                raise BrainsegError(f"the folds of {t.run_dirs[0].parent} were trained on different data ({root}, {r})")
            root = r
            if root not in indexes:
                indexes[root] = index_dataset(root, skip_bad=cfg.data.skip_bad)
                caches[root] = {}
            patients = split_patients(ckpt, split)
            missing = [p for p in patients if p not in indexes[root].by_patient()]
            if missing:
                raise BrainsegError(
                    f"the {split} patients of {rd} are not all in {root}: missing {', '.join(missing[:5])}"
                    f"{' …' if len(missing) > 5 else ''}"
                )
            preds.append(Predictor([ckpt], device=device, tta=cfg.eval.tta, batch_size=batch_size))
            pats.append(patients)
            eval_cfg = eval_cfg or cfg.eval
        loaded.append(_Loaded(str(name), list(t.run_dirs), preds, pats, eval_cfg, root))  # type: ignore[arg-type]
    names = [m.name for m in loaded]
    for m in loaded:  # two runs of one architecture: tell them apart by folder
        if names.count(m.name) > 1:
            m.name = f"{m.name} ({m.run_dirs[0].name})"
    if len({m.name for m in loaded}) != len(loaded):
        raise BrainsegError(f"two of the runs have the same model and folder name: {', '.join(names)}")

    # ---- evaluate: tasks outermost, so each perturbed patient is made once and shared by all models
    all_tasks = [(CLEAN, 0)] + tasks
    bar = None
    if progress:
        from tqdm.auto import tqdm

        n_eval = sum(1 for p, s in all_tasks if p == CLEAN or s > 0)
        bar = tqdm(total=n_eval * len(loaded), desc="robustness", mininterval=1.0, file=sys.stderr)
    clean: dict[str, Any] = {}
    clean_acc: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for pname, sev in all_tasks:
        if pname != CLEAN and sev == 0:
            results = clean  # severity 0 is the identity (tested): no need to evaluate again
        else:
            memo: dict[int, tuple[np.ndarray, np.ndarray]] = {}
            base = None if pname == CLEAN else make_perturbation(pname, sev, seed=seed)

            def shared(images: np.ndarray, masks: np.ndarray, base=base, memo=memo) -> tuple[np.ndarray, np.ndarray]:
                key = id(images)  # the cache hands out the same array object for a patient every time
                if key not in memo:
                    memo[key] = base(images, masks)
                return memo[key]

            results = {}
            for m in loaded:
                if bar is not None:
                    bar.set_postfix_str(f"{m.name}: {pname}" + (f" {sev}" if pname != CLEAN else ""))
                acc = None
                for pred, pats in zip(m.predictors, m.patients):
                    a, _ = evaluate_patients(
                        pred, indexes[m.root], pats, m.eval_cfg, perturb=None if base is None else shared,
                        cache=caches[m.root], progress=False,
                    )
                    acc = a if acc is None else acc.merge(a)
                results[m.name] = acc.summary(m.eval_cfg.empty_policy, seed=seed)  # type: ignore[union-attr]
                if pname == CLEAN:
                    clean[m.name], clean_acc[m.name] = results[m.name], acc
                if bar is not None:
                    bar.update(1)
            memo.clear()
        for m in loaded:
            s = results[m.name]
            base_dice = clean[m.name]["dice"]["per_patient"]["mean"]
            d = s["dice"]
            rows.append({
                "model": m.name, "perturbation": pname, "severity": sev,
                "parameter": "" if pname == CLEAN else PERTURBATIONS[pname].describe(sev),
                "dice_patient": d["per_patient"]["mean"], "dice_patient_ci_low": d["per_patient"]["ci_low"],
                "dice_patient_ci_high": d["per_patient"]["ci_high"], "dice_drop": base_dice - d["per_patient"]["mean"],
                "dice_retained": d["per_patient"]["mean"] / base_dice if base_dice > 0 else float("nan"),
                "iou_patient": s["iou"]["per_patient"]["mean"], "precision_patient": s["precision"]["per_patient"]["mean"],
                "recall_patient": s["recall"]["per_patient"]["mean"], "dice_slice": d["per_slice"]["mean"],
                "dice_micro": d["micro"], "n_patients": s["n_patients"], "n_slices": s["n_slices"],
            })  # fmt: skip
    if bar is not None:
        bar.close()

    # ---- strata of the clean evaluation
    srows: list[dict[str, Any]] = []
    strata_info: dict[str, Any] = {}
    for m in loaded:
        r, info = strata_rows(
            clean_acc[m.name], indexes[m.root].institutions, empty_policy=m.eval_cfg.empty_policy,
            model=m.name, seed=seed,
        )
        srows += r
        strata_info[m.name] = info

    # ---- which model degrades least: mean Dice drop over every perturbed row (a model that finds
    # nothing cannot drop much either, so the clean Dice and the retained fraction are reported too)
    degradation, retained = {}, {}
    for m in loaded:
        mine = [r for r in rows if r["model"] == m.name and r["perturbation"] != CLEAN and r["severity"] > 0]
        drops = [r["dice_drop"] for r in mine if not math.isnan(r["dice_drop"])]
        kept = [r["dice_retained"] for r in mine if not math.isnan(r["dice_retained"])]
        degradation[m.name] = float(np.mean(drops)) if drops else float("nan")
        retained[m.name] = float(np.mean(kept)) if kept else float("nan")
    ranking = sorted(degradation, key=lambda k: (math.isnan(degradation[k]), degradation[k]))

    out.mkdir(parents=True, exist_ok=True)
    files = {
        "robustness_csv": write_csv_atomic(out / "robustness.csv", rows, ROBUSTNESS_COLUMNS),
        "strata_csv": write_csv_atomic(out / "strata.csv", srows, STRATA_COLUMNS),
    }
    for m in loaded:
        files[f"curves_{m.name}"] = plot_model_curves(rows, m.name, out / f"robustness_{_safe(m.name)}.png")
    summary = {
        "split": split,
        "seed": seed,
        "checkpoint": checkpoint,
        "models": {m.name: {"run_dirs": [str(d) for d in m.run_dirs], "data_root": str(m.root),
                            "n_patients": clean[m.name]["n_patients"], "n_slices": clean[m.name]["n_slices"],
                            "empty_policy": m.eval_cfg.empty_policy, "threshold": m.eval_cfg.threshold}
                   for m in loaded},
        "perturbations": {
            p: {"description": PERTURBATIONS[p].description, "parameter": PERTURBATIONS[p].parameter,
                "levels": {str(s): PERTURBATIONS[p].describe(s) for s in range(PERTURBATIONS[p].max_severity + 1)}}
            for p in perts
        },
        "severities_run": sorted({s for _, s in tasks}),
        "skipped": skipped,
        "seeding": "numpy default_rng([seed, crc32(perturbation name), crc32(patient's slices)])",
        "strata": strata_info,
        "clean_dice_patient": {m.name: clean[m.name]["dice"]["per_patient"]["mean"] for m in loaded},
        "mean_dice_drop": degradation,
        "mean_dice_retained": retained,
        "degrades_least": ranking[0] if ranking and not math.isnan(degradation[ranking[0]]) else None,
        "seconds": round(time.perf_counter() - t_start, 1),
    }  # fmt: skip
    files["robustness_json"] = write_json_atomic(out / "robustness.json", summary)
    summary["files"] = {k: str(v) for k, v in files.items()}
    return summary


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def plot_model_curves(rows: Sequence[dict[str, Any]], model: str, path: str | Path) -> Path:
    """Dice per patient against severity for one model, one line per perturbation (PNG)."""
    from brainseg.reporting.plots import new_figure, save_figure

    mine = [r for r in rows if r["model"] == model]
    base = next((r["dice_patient"] for r in mine if r["perturbation"] == CLEAN), float("nan"))
    fig = new_figure(7.0, 4.4)
    ax = fig.add_subplot(1, 1, 1)
    for p in dict.fromkeys(r["perturbation"] for r in mine if r["perturbation"] != CLEAN):
        pts = sorted((r["severity"], r["dice_patient"]) for r in mine if r["perturbation"] == p)
        if pts[0][0] != 0:
            pts = [(0, base)] + pts
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o", ms=3.5, lw=1.5, label=p.replace("_", " "))
    ax.axhline(base, color="#888888", lw=0.8, ls="--")
    ax.set_xlabel("severity (0 = unperturbed)")
    ax.set_ylabel("Dice per patient (mean)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{model}: test Dice under perturbations")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    return save_figure(fig, path)

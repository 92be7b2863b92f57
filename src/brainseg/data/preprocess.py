"""Resizing and intensity normalisation: the one definition training, evaluation and prediction share.

A checkpoint stores `preprocessing_dict(...)`; `preprocess_image` with those settings turns a
native uint8 slice into exactly the model input the network was trained on.

Pipeline for one slice (H×W×C uint8, channels pre-contrast T1, FLAIR, post-contrast T1):

1. Resize to size×size with `resize_image` (Pillow bilinear; when shrinking, Pillow widens the
   filter to the scale factor, so it averages like an area filter instead of aliasing). Masks use
   nearest neighbour (`resize_mask`) so they stay binary. Non-square slices are stretched.
2. Select channels: `in_channels=3` keeps all three; `in_channels=1` keeps FLAIR (channel 1), the
   sequence the LGG masks were drawn on. A 1-channel image given to a 3-channel model is an error
   (copying FLAIR into the T1 slots would feed the model inputs it never saw).
3. Normalise intensities (`NORMALIZATIONS`):

   - ``"unit"``: x / 255, so values lie in [0, 1].
   - ``"zscore"``: per slice and per channel, (x − mean) / std over the *brain* pixels, defined
     as the pixels where at least one selected channel is non-zero; the background (all channels
     zero) stays exactly 0. The std is floored at 1e-6·255 so a flat slice does not divide by zero;
     a slice with no non-zero pixel becomes all zeros.
   - ``"zscore_otsu"``: per slice and per channel, (x − mean) / std with mean and std taken over a
     brain found by Otsu's threshold on the log intensity of the brightest channel, and applied to
     every pixel (nothing is zeroed). Otsu's threshold maximises the between-class variance of the
     two classes it makes; on log intensities a gain (x → a·x) only shifts the values and a gamma
     curve 255·(x/255)^γ only scales log(x/255), so the brain it finds does not move with either,
     up to uint8 rounding. The "brain" of ``"zscore"`` does move: MR slices carry faint background
     noise (values 1–11 in kaggle_3m) that makes nearly every pixel non-zero, and a gamma curve
     rounds that noise to 0, so the pixels the statistics are taken over change from the whole
     slice to the head alone. The std is floored at one grey level (1.0): a channel flat over the
     brain, such as an empty sequence with a few faint pixels outside the head, stays within a few
     units instead of thousands. Log intensities are floored at log 1 (0 and 1 are one level); a slice
     with a single grey level, or whose threshold leaves fewer than 16 pixels above it, takes its
     statistics over every pixel.
   - ``"rank"``: per slice and per channel, each pixel's mid-rank among all the slice's pixels
     (u = (number below + half the number equal) / n, in (0, 1)), mapped through the inverse
     standard normal CDF; a slice whose pixels are all equal (an empty or zeroed channel) becomes
     0. It depends only on the order of the intensities: an increasing intensity change (gamma,
     contrast, gain) moves a pixel only where it merges distinct values (uint8 rounding of dark
     values). Ranks are taken over every pixel, not only the "brain" above, because the faint
     background noise of MR slices (values 1–11 in kaggle_3m) is what a gamma curve rounds to 0:
     a brain defined by non-zero pixels would shrink, and every rank with it.

4. 2.5-D context (`context` = k > 0, off by default): each slice's input is followed and preceded
   by its k neighbours in the volume, each preprocessed as above and stacked along the channels in
   slice order (offsets −k … +k), so the model sees in_channels × (2k + 1) channels. At the ends of
   a volume the nearest existing slice is repeated. A model with context therefore needs whole
   volumes in slice order (`stack_context`), as evaluation, `predict` and the viewer give it.

5. Sequence flags (`sequence_flags`, off by default; 3-channel models only): two constant planes
   follow the channels above, 1.0 where the slice's pre-contrast (first plane) or post-contrast
   (second plane) channel is an exact copy of its FLAIR channel — how the LGG set fills a missing
   sequence (`brainseg.data.sequences.copied_sequences`, read on the uint8 slice as given, before
   resizing) — and 0.0 elsewhere; a slice whose FLAIR is all zero is flagged nowhere. The network
   is told which sequences are missing instead of having to infer it from identical channels. A
   2.5-D model gets the flags of the centre slice once, after its stacked neighbours
   (`add_sequence_flags`). In training the flags also mark the copies sequence dropout makes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from brainseg.errors import BrainsegError

NORMALIZATIONS = ("unit", "zscore", "rank", "zscore_otsu")
FLAIR_CHANNEL = 1
PREPROCESSING_VERSION = 1


def _check_size(size: int) -> int:
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
        raise BrainsegError(f"size must be a positive integer, got {size!r}")
    return int(size)


def _as_hwc(img: np.ndarray, what: str = "image") -> np.ndarray:
    """(H, W) → (H, W, 1); checks uint8 and a plausible channel count."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise BrainsegError(f"{what} has dtype {img.dtype}; expected uint8 (0–255) slices")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3):
        raise BrainsegError(f"{what} has shape {img.shape}; expected H×W×3 or H×W×1 (or H×W)")
    return img


def resize_image(img: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 H×W×C (C = 1 or 3) or H×W slice to size×size (bilinear, antialiased); uint8."""
    from PIL import Image

    size = _check_size(size)
    hwc = _as_hwc(img)
    if hwc.shape[:2] == (size, size):
        return np.array(img, copy=True)
    if hwc.shape[2] == 3:
        out = np.asarray(Image.fromarray(hwc).resize((size, size), Image.Resampling.BILINEAR))
    else:
        out = np.asarray(Image.fromarray(np.ascontiguousarray(hwc[:, :, 0])).resize((size, size), Image.Resampling.BILINEAR))
        out = out[:, :, None] if np.asarray(img).ndim == 3 else out
    return out


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel for nearest-neighbour resizing with aligned pixel centres."""
    idx = np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64)
    return np.minimum(idx, n_in - 1)


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an H×W mask to size×size (or (h, w)); stays binary; uint8."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise BrainsegError(f"mask has shape {mask.shape}; expected H×W")
    h, w = (size, size) if np.isscalar(size) else size
    h, w = _check_size(h), _check_size(w)
    out = mask[nearest_indices(mask.shape[0], h)[:, None], nearest_indices(mask.shape[1], w)[None, :]]
    return out.astype(np.uint8, copy=False)


def resize_probability(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float probability map (h×w, or N×h×w) back to a native (H, W); float32."""
    from PIL import Image

    prob = np.asarray(prob, dtype=np.float32)
    H, W = _check_size(shape[0]), _check_size(shape[1])
    if prob.ndim == 3:
        return np.stack([resize_probability(p, (H, W)) for p in prob]) if len(prob) else np.zeros((0, H, W), np.float32)
    if prob.ndim != 2:
        raise BrainsegError(f"probability map has shape {prob.shape}; expected h×w or N×h×w")
    if prob.shape == (H, W):
        return prob.copy()
    out = np.asarray(Image.fromarray(prob).resize((W, H), Image.Resampling.BILINEAR))
    # bilinear weights are convex, so only float rounding can step outside [0, 1]
    return np.clip(out, 0.0, 1.0) if prob.min() >= 0.0 and prob.max() <= 1.0 else out


def select_channels(img: np.ndarray, in_channels: int) -> np.ndarray:
    """H×W×C uint8 → H×W×in_channels by the documented channel rule (FLAIR for 1 channel)."""
    hwc = _as_hwc(img)
    c = hwc.shape[2]
    if in_channels == 3:
        if c != 3:
            raise BrainsegError(
                f"image has {c} channel(s) but the model expects 3 (pre-contrast, FLAIR, post-contrast); "
                "use a model trained with in_channels=1 for FLAIR-only slices"
            )
        return hwc
    if in_channels == 1:
        return hwc[:, :, FLAIR_CHANNEL : FLAIR_CHANNEL + 1] if c == 3 else hwc
    raise BrainsegError(f"in_channels must be 1 or 3, got {in_channels!r}")


def normalize(img: np.ndarray, normalization: str = "unit") -> np.ndarray:
    """uint8 H×W×C → float32 C×H×W with the named normalisation (see the module docstring)."""
    if normalization not in NORMALIZATIONS:
        raise BrainsegError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
    hwc = _as_hwc(img)
    if normalization == "unit":
        x = np.ascontiguousarray(hwc.transpose(2, 0, 1), dtype=np.float32)
        x *= 1.0 / 255.0
        return x
    if normalization == "rank":
        return _rank_normal(hwc)
    if normalization == "zscore_otsu":
        # floored at one grey level: a channel flat over the brain (an empty sequence) must not turn
        # the few faint pixels outside it into values of thousands (nothing is zeroed here)
        return _standardise(hwc, otsu_brain(hwc), std_floor=1.0)
    brain = (hwc != 0).any(axis=2)
    if not brain.any():
        return np.zeros((hwc.shape[2], *hwc.shape[:2]), dtype=np.float32)
    x = _standardise(hwc, brain, std_floor=1e-6 * 255.0)
    x *= brain[None]
    return x


_LEVELS = np.arange(256, dtype=np.float64)


def _standardise(hwc: np.ndarray, brain: np.ndarray, std_floor: float) -> np.ndarray:
    """uint8 H×W×C → float32 C×H×W (v − mean) / max(std, std_floor), mean and std per channel over the
    pixels of `brain` (not empty).

    uint8 values make it a histogram per channel and a 256-entry lookup table: mean and std in
    float64, each pixel's value rounded once to float32 — 3× faster than float32 arithmetic over the
    pixels and more exact (that differed by up to ~4e-4 on slices of a narrow intensity range)."""
    out = np.empty((hwc.shape[2], *hwc.shape[:2]), dtype=np.float32)
    for c in range(hwc.shape[2]):
        channel = hwc[:, :, c]
        counts = np.bincount(channel[brain], minlength=256).astype(np.float64)
        n = counts.sum()
        mean = counts @ _LEVELS / n
        std = max(math.sqrt(counts @ (_LEVELS - mean) ** 2 / n), std_floor)
        out[c] = ((_LEVELS - mean) / std).astype(np.float32)[channel]
    return out


def otsu_threshold_level(counts: np.ndarray) -> int | None:
    """Otsu's threshold over the 256 uint8 levels, on log intensity: the level k such that splitting
    the pixels into ≤ k and > k maximises the between-class variance of log(max(level, 1)).

    `counts` is the histogram (256 pixel counts). None when no split separates two non-empty
    classes of different log intensity (a single grey level, or only the levels 0 and 1)."""
    counts = np.asarray(counts, dtype=np.float64)
    logv = np.log(np.maximum(np.arange(256, dtype=np.float64), 1.0))
    w0 = np.cumsum(counts)[:-1]  # class ≤ k, k = 0 … 254
    total = counts.sum()
    w1 = total - w0
    s0 = np.cumsum(counts * logv)[:-1]
    s1 = (counts * logv).sum() - s0
    ok = (w0 > 0) & (w1 > 0)
    if not ok.any():
        return None
    between = np.zeros_like(w0)
    between[ok] = w0[ok] * w1[ok] * (s0[ok] / w0[ok] - s1[ok] / w1[ok]) ** 2
    if between.max() <= 0:
        return None
    return int(np.argmax(between))


def otsu_brain(img: np.ndarray, min_pixels: int = 16) -> np.ndarray:
    """The brain of the ``"zscore_otsu"`` normalisation: bool H×W, the pixels whose brightest channel
    lies above Otsu's threshold on log intensity (`otsu_threshold_level`); every pixel where there is
    no such threshold or fewer than `min_pixels` lie above it."""
    hwc = _as_hwc(img)
    brightest = hwc.max(axis=2)
    k = otsu_threshold_level(np.bincount(brightest.ravel(), minlength=256))
    if k is not None:
        brain = brightest > k
        if int(brain.sum()) >= min_pixels:
            return brain
    return np.ones(brightest.shape, dtype=bool)


def _rank_normal(hwc: np.ndarray) -> np.ndarray:
    """The "rank" normalisation of a uint8 H×W×C slice: float32 C×H×W (see the module docstring).

    uint8 values make it a 256-entry lookup table per channel (a histogram's cumulative sum), so
    it costs no sort."""
    from scipy.special import ndtri

    n = hwc.shape[0] * hwc.shape[1]
    out = np.empty((hwc.shape[2], *hwc.shape[:2]), dtype=np.float32)
    for c in range(hwc.shape[2]):
        channel = hwc[:, :, c]
        counts = np.bincount(channel.ravel(), minlength=256).astype(np.float64)
        # mid-rank: below + half of the equal ones (every pixel equal: u = 0.5 exactly, ndtri 0)
        u = (np.cumsum(counts) - 0.5 * counts) / n
        lut = ndtri(np.clip(u, 0.5 / n, 1.0 - 0.5 / n)).astype(np.float32)
        out[c] = lut[channel]
    return out


def preprocess_image(
    img: np.ndarray, *, size: int, in_channels: int = 3, normalization: str = "unit"
) -> np.ndarray:
    """A native uint8 slice (H×W×C or H×W) → the model input, float32 (in_channels, size, size).

    Raises:
        BrainsegError: wrong dtype or shape, or a 1-channel image for a 3-channel model.
    """
    hwc = select_channels(img, in_channels)  # check channels before spending time on resizing
    return normalize(resize_image(hwc, size), normalization)


def preprocessing_dict(
    size: int, in_channels: int, normalization: str, context: int = 0, sequence_flags: bool = False
) -> dict[str, Any]:
    """The settings a checkpoint stores so that its inputs can be rebuilt with no other file
    (`context` and `sequence_flags` are recorded only when on, so older checkpoints read the same)."""
    check_preprocessing({"size": size, "in_channels": in_channels, "normalization": normalization, "context": context,
                         "sequence_flags": sequence_flags})
    d = {
        "version": PREPROCESSING_VERSION,
        "size": int(size),
        "in_channels": int(in_channels),
        "normalization": normalization,
        "channels": ["pre-contrast", "FLAIR", "post-contrast"] if in_channels == 3 else ["FLAIR"],
        "image_resize": "bilinear (Pillow, antialiased when shrinking)",
        "mask_resize": "nearest",
    }
    if context:
        d["context"] = int(context)
    if sequence_flags:
        d["sequence_flags"] = True
    return d


MAX_CONTEXT = 3


#: The channels (pre-contrast, post-contrast) whose FLAIR copies the sequence flags mark, in order.
FLAGGED_SEQUENCES = ("pre-contrast", "post-contrast")


def model_channels(prep: dict[str, Any]) -> int:
    """The number of input channels of the network: in_channels × (2·context + 1), plus the two
    sequence flags where they are on."""
    flags = len(FLAGGED_SEQUENCES) if prep.get("sequence_flags") else 0
    return int(prep["in_channels"]) * (2 * int(prep.get("context", 0)) + 1) + flags


def flag_copied_sequences(image: np.ndarray) -> np.ndarray:
    """(2,) float32: 1.0 where the uint8 H×W×3 slice's pre-contrast / post-contrast channel is an
    exact copy of its FLAIR, else 0.0 (see the module docstring)."""
    from brainseg.data.sequences import copied_sequences

    copied = set(copied_sequences(np.asarray(image)))
    return np.array([name in copied for name in FLAGGED_SEQUENCES], dtype=np.float32)


def add_sequence_flags(x: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """Model inputs (N, C, S, S) and their slices' flags (N, 2) → (N, C + 2, S, S): each flag a
    constant plane after the other channels."""
    flags = np.asarray(flags, dtype=np.float32)
    if flags.shape != (x.shape[0], len(FLAGGED_SEQUENCES)):
        raise BrainsegError(f"sequence flags have shape {flags.shape}; expected ({x.shape[0]}, {len(FLAGGED_SEQUENCES)})")
    planes = np.broadcast_to(flags[:, :, None, None], (x.shape[0], flags.shape[1], *x.shape[2:]))
    return np.concatenate([x, planes.astype(x.dtype)], axis=1)


def context_indices(n: int, context: int) -> np.ndarray:
    """(n, 2·context + 1) positions of each slice's neighbours −context … +context in a volume of
    n slices, the nearest existing slice repeated at the ends."""
    offsets = np.arange(-context, context + 1)
    return np.clip(np.arange(n)[:, None] + offsets[None, :], 0, max(n - 1, 0))


def stack_context(x: np.ndarray, context: int) -> np.ndarray:
    """Preprocessed slices of one volume (N, C, S, S), in slice order → (N, C·(2·context + 1), S, S):
    each slice's neighbours stacked along the channels, offset −context first (see the module
    docstring). context 0 returns `x` itself."""
    if not context:
        return x
    n, c = x.shape[:2]
    return np.ascontiguousarray(x[context_indices(n, context)].reshape(n, c * (2 * context + 1), *x.shape[2:]))


def volume_inputs(images: np.ndarray, prep: dict[str, Any]) -> np.ndarray:
    """Native uint8 slices of one volume (N×H×W×C, in slice order) → the network's input, float32
    (N, `model_channels(prep)`, size, size): each slice preprocessed (`preprocess_image`), its
    neighbours stacked for a 2.5-D model (`stack_context`), then the sequence flags where they are on
    (`add_sequence_flags`) — the one path from slices to model input for prediction and export.

    Raises:
        BrainsegError: a slice of the wrong dtype or shape, or a 1-channel slice for a 3-channel model.
    """
    x = stack_context(np.stack([
        preprocess_image(img, size=prep["size"], in_channels=prep["in_channels"], normalization=prep["normalization"])
        for img in images
    ]), int(prep.get("context", 0)))
    if prep.get("sequence_flags"):
        x = add_sequence_flags(x, np.stack([flag_copied_sequences(img) for img in images]))
    return x


def check_preprocessing(d: dict[str, Any], source: str = "preprocessing") -> dict[str, Any]:
    """Validate a preprocessing mapping (e.g. read from a checkpoint); returns it unchanged."""
    for key in ("size", "in_channels", "normalization"):
        if key not in d:
            raise BrainsegError(f"{source}: missing {key!r}")
    _check_size(d["size"])
    if d["in_channels"] not in (1, 3):
        raise BrainsegError(f"{source}: in_channels must be 1 or 3, got {d['in_channels']!r}")
    if d["normalization"] not in NORMALIZATIONS:
        raise BrainsegError(
            f"{source}: normalization must be one of {', '.join(NORMALIZATIONS)}, got {d['normalization']!r}"
        )
    k = d.get("context", 0)
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 0 <= k <= MAX_CONTEXT:
        raise BrainsegError(f"{source}: context must be an integer from 0 to {MAX_CONTEXT}, got {k!r}")
    flags = d.get("sequence_flags", False)
    if not isinstance(flags, bool):
        raise BrainsegError(f"{source}: sequence_flags must be true or false, got {flags!r}")
    if flags and d["in_channels"] != 3:
        raise BrainsegError(f"{source}: sequence_flags need the 3-channel input (pre-contrast, FLAIR, post-contrast), "
                            f"not in_channels={d['in_channels']}")
    return d

"""The example grid: image | ground truth | each model's prediction, with contour overlays.

Reads the arrays a comparison saved in `examples/` (slices.npz and one <model>.npz per model with
the masks its evaluation made), so it needs no model. A folder written by `evaluation.examples`
holds a pool of slices fixed by the ground truth; the figure's rows are the pool's best, typical and
worst slices by mean Dice over the models that have a file for it. Older folders hold the chosen
rows themselves, with each model's probabilities. Ground truth is
drawn in green and the prediction in magenta on the FLAIR channel; each panel's title carries
that slice's Dice, which is the slice's Dice in the model's per_slice.csv.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainseg.config import EvalConfig
from brainseg.errors import BrainsegError
from brainseg.inference.postprocess import binarize

__all__ = ["Examples", "choose_rows", "load_examples", "plot_examples", "slice_dice"]

TRUTH_COLOR = "#00e676"  # green
PRED_COLOR = "#ff2bd6"  # magenta: distinct from green for red–green colour-blind readers too
FLAIR = 1  # channel order of LGG images: pre-contrast, FLAIR, post-contrast


@dataclass
class Examples:
    """Example slices and every model's probabilities for them."""

    images: np.ndarray  # (K, H, W, 3) or (K, H, W) uint8
    masks: np.ndarray  # (K, H, W) {0, 1}
    patients: list[str]
    slices: list[int]
    kinds: list[str]
    probs: dict[str, np.ndarray]  # model → (K, H, W) float
    preds: dict[str, np.ndarray] = field(default_factory=dict)  # model → (K, H, W) bool, as evaluated
    rule: str = ""  # how the candidate slices were drawn (a pool), "" when the rows were chosen when written

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys([*self.preds, *self.probs]))


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    # allow_pickle stays off: a report folder may come from elsewhere, and pickles run code.
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as exc:
        raise BrainsegError(f"{path} cannot be read without pickle (store text as fixed-width str arrays): {exc}") from None
    except OSError as exc:
        raise BrainsegError(f"{path} cannot be read: {exc}") from None


def _fit(probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Probabilities resized (bilinear) to the masks' size when a model saved them at its own size."""
    if probs.shape[-2:] == shape:
        return probs.astype(np.float32)
    from scipy.ndimage import zoom

    k, h, w = probs.shape
    return np.clip(zoom(probs.astype(np.float32), (1, shape[0] / h, shape[1] / w), order=1), 0.0, 1.0)


def load_examples(ex_dir: str | Path, models: Sequence[str]) -> tuple[Examples | None, list[str]]:
    """Read `examples/`; returns (None, notes) when absent or unusable, models without probs are noted."""
    ex_dir = Path(ex_dir)
    notes: list[str] = []
    if not (ex_dir / "slices.npz").is_file():
        return None, [f"{ex_dir / 'slices.npz'} not found (drawing it needs every model's checkpoint): the example figure is left out."]
    try:
        z = _load_npz(ex_dir / "slices.npz")
    except BrainsegError as exc:
        return None, [f"{exc}; the example figure is left out."]
    missing = [k for k in ("images", "masks") if k not in z]
    if missing:
        return None, [f"{ex_dir / 'slices.npz'} lacks {', '.join(missing)}: the example figure is left out."]
    images, masks = z["images"], z["masks"]
    k = len(images)
    if k == 0 or masks.shape[:1] != (k,) or masks.ndim != 3 or images.shape[1:3] != masks.shape[1:3]:
        return None, [
            f"{ex_dir / 'slices.npz'}: images {images.shape} and masks {masks.shape} do not match: "
            "the example figure is left out."
        ]

    def column(name: str, default: list[Any]) -> list[Any]:
        v = z.get(name)
        return [x.item() if hasattr(x, "item") else x for x in v] if v is not None and len(v) == k else default

    pool = str(z["pool"]) if "pool" in z else ""
    patients = [str(x) for x in column("patients", ["?"] * k)]
    slices = [int(x) for x in column("slices", [-1] * k)]
    probs: dict[str, np.ndarray] = {}
    preds: dict[str, np.ndarray] = {}
    for m in models:
        p = ex_dir / f"{m}.npz"
        if not p.is_file():
            notes.append(f"{p} not found: {m} is left out of the example figure.")
            continue
        try:
            z_m = _load_npz(p)
        except BrainsegError as exc:
            notes.append(f"{exc}; {m} is left out of the example figure.")
            continue
        if pool:  # masks for the pool, written for exactly these slices
            b, same = z_m.get("preds"), (
                [str(x) for x in z_m.get("patients", [])] == patients and [int(x) for x in z_m.get("slices", [])] == slices)
            if b is None or b.shape != masks.shape or not same:
                notes.append(f"{p} was not made for the slices of {ex_dir / 'slices.npz'}; {m} is left out of "
                             "the example figure (a re-run of the comparison with its checkpoints rewrites it).")
                continue
            preds[m] = b > 0
            continue
        arr = z_m.get("probs")
        if arr is None or arr.ndim != 3 or len(arr) != k:
            notes.append(f"{p}: 'probs' must have shape ({k}, H, W), got "
                         f"{None if arr is None else arr.shape}; {m} is left out of the example figure.")
            continue
        probs[m] = _fit(arr, masks.shape[1:3])
        b = z_m.get("preds")
        if b is not None and b.shape == masks.shape:
            preds[m] = b > 0
    ex = Examples(
        images=images,
        masks=(masks > 0).astype(np.uint8),
        patients=patients,
        slices=slices,
        kinds=[str(x) for x in column("kinds", [""] * k)],
        probs=probs,
        preds=preds,
        rule=pool,
    )
    if pool and preds:
        n = int(z["n_per_kind"]) if "n_per_kind" in z else 2
        ex = choose_rows(ex, n)
    return ex, notes


def choose_rows(ex: Examples, n_per_kind: int) -> Examples:
    """The pool's best, typical and worst slices by mean Dice over the models that have masks for
    it (ties by patient and slice); a slice is shown once."""
    models = list(ex.preds)
    mean = [float(np.mean([slice_dice(ex.preds[m][i], ex.masks[i]) for m in models])) for i in range(len(ex.masks))]
    order = sorted(range(len(mean)), key=lambda i: (mean[i], ex.patients[i], ex.slices[i]))
    n = min(n_per_kind, max(1, len(order) // 3))
    mid = len(order) // 2
    picked = [(i, "best") for i in order[::-1][:n]] + [(i, "typical") for i in order[mid - n // 2 : mid - n // 2 + n]]
    picked += [(i, "worst") for i in order[:n]]
    seen: set[int] = set()
    picked = [(i, kind) for i, kind in picked if not (i in seen or seen.add(i))]
    rows = [i for i, _ in picked]
    return Examples(
        images=ex.images[rows], masks=ex.masks[rows], patients=[ex.patients[i] for i in rows],
        slices=[ex.slices[i] for i in rows], kinds=[kind for _, kind in picked],
        probs={m: v[rows] for m, v in ex.probs.items()}, preds={m: v[rows] for m, v in ex.preds.items()}, rule=ex.rule,
    )


def slice_dice(pred: np.ndarray, truth: np.ndarray, empty_policy: str = "one") -> float:
    """Dice of one slice through the project's metric definitions (`metrics_from_counts`)."""
    from brainseg.metrics.confusion import metrics_from_counts

    p, t = pred.astype(bool), truth.astype(bool)
    counts = np.array([np.sum(p & t), np.sum(p & ~t), np.sum(~p & t), np.sum(~p & ~t)], dtype=np.float64)
    return float(metrics_from_counts(counts, empty_policy=empty_policy)["dice"])


def _gray(img: np.ndarray) -> np.ndarray:
    return img[..., FLAIR] if img.ndim == 3 and img.shape[-1] >= 2 else img.reshape(img.shape[:2])


def plot_examples(
    ex: Examples,
    labels: Mapping[str, str],
    thresholds: Mapping[str, float],
    path: str | Path,
    *,
    models: Sequence[str] | None = None,
    empty_policy: str = "one",
) -> Path:
    """Grid: one row per example slice; columns FLAIR | ground truth | each model's prediction."""
    from matplotlib.lines import Line2D

    from brainseg.reporting.plots import new_figure, save_figure

    models = [m for m in (models or ex.models) if m in ex.models]
    ncols = 2 + len(models)
    nrows = len(ex.images)
    panel = 2.15
    fig = new_figure(panel * ncols, panel * nrows + 0.55)
    fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.01, hspace=0.01)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i in range(nrows):
        img = _gray(ex.images[i])
        truth = ex.masks[i].astype(bool)
        for j in range(ncols):
            ax = axes[i, j]
            ax.imshow(img, cmap="gray", interpolation="nearest", vmin=0, vmax=max(int(img.max()), 1))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            for s in ax.spines.values():
                s.set_visible(False)
            title = ""
            if j == 0:
                title = "FLAIR"
                ax.set_ylabel(
                    f"{ex.kinds[i]}\n{ex.patients[i]}\nslice {ex.slices[i]}", fontsize=7.5, rotation=90, labelpad=4
                )
            elif j == 1:
                title = f"ground truth ({int(truth.sum())} px)" if truth.any() else "ground truth (empty)"
                if truth.any():
                    ax.imshow(np.ma.masked_where(~truth, truth), cmap=_cmap(TRUTH_COLOR), alpha=0.35, interpolation="nearest")
                    ax.contour(truth, levels=[0.5], colors=[TRUTH_COLOR], linewidths=1.0)
            else:
                m = models[j - 2]
                # The mask evaluation made (TTA, post-processing); older folders hold probabilities only.
                pred = ex.preds[m][i] if m in ex.preds else binarize(
                    ex.probs[m][i][None], EvalConfig(threshold=thresholds.get(m, 0.5)))[0]
                if truth.any():
                    ax.contour(truth, levels=[0.5], colors=[TRUTH_COLOR], linewidths=1.0)
                if pred.any():
                    ax.contour(pred, levels=[0.5], colors=[PRED_COLOR], linewidths=1.0)
                d = slice_dice(pred, truth, empty_policy)
                title = f"{labels.get(m, m)}\nDice {d:.2f}" if not math.isnan(d) else f"{labels.get(m, m)}\nDice n/a (empty)"
            ax.set_title(title, fontsize=8.5, fontweight="normal" if j < 2 else "bold")
    handles = [Line2D([], [], color=TRUTH_COLOR, lw=2, label="ground truth"),
               Line2D([], [], color=PRED_COLOR, lw=2, label="prediction")]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=8.5, frameon=False)
    title = "Example test slices (best, typical, worst by mean Dice over models)"
    if ex.rule:
        title = f"Example test slices: of {ex.rule}, the best, typical and worst by mean Dice over models"
    # wrapped to the figure's width (about 11 characters per inch at this size): with few models
    # the pool's rule is wider than the three columns
    import textwrap

    width = max(30, int(panel * ncols * 11))
    fig.suptitle("\n".join(textwrap.wrap(title, width)), fontsize=11 if not ex.rule else 9.5, fontweight="bold")
    return save_figure(fig, path, dpi=120)


def _cmap(color: str) -> Any:
    from matplotlib.colors import ListedColormap

    return ListedColormap([color])

"""Segment one read case for the viewer: mean probability, per-pixel disagreement and the case figures.

The probability is the mean over *views*: every ensemble member, each on the slices as given and
(with TTA) flipped left-right and up-down, the flip undone on its output. That mean is what
`brainseg predict` thresholds for the same checkpoints and TTA setting; the mask comes from it
through the same post-processing (`brainseg.inference.postprocess.binarize`).

Uncertainty is the per-pixel *range* of the views' probabilities (highest minus lowest, 0–1). A
pixel is *disputed* when that range reaches `DISPUTE` (one view calls it tumour with much more
confidence than another). A case *needs review* when its disputed pixels number at least
`REVIEW_SHARE` of its predicted tumour pixels, and at least ``min_area`` (so a clean empty
prediction with a few noisy pixels is not flagged). `REVIEW_RULE` says this in words for the page.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainseg.config import EvalConfig
from brainseg.inference.postprocess import binarize, postprocessing_dict

#: Range of the views' probabilities from which a pixel counts as disputed.
DISPUTE = 0.5
#: Disputed pixels, as a share of the predicted tumour pixels, from which a case needs review.
REVIEW_SHARE = 0.25
REVIEW_RULE = (
    f"uncertainty = highest minus lowest tumour probability over the views (each ensemble member, on the "
    f"scan as given and flipped left-right and up-down); a pixel is disputed when it is ≥ {DISPUTE}; the "
    f"case needs review when disputed pixels are ≥ {REVIEW_SHARE:.0%} of the predicted tumour pixels "
    "and at least the detection minimum area"
)
#: Flips of (N, H, W[, C]) arrays: none, left-right (columns), up-down (rows).
FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (1,))
#: Slices per step, so progress moves during a long case (× 3 views: whole batches of 16).
CHUNK = 16


@dataclass
class CaseResult:
    """What the viewer shows of one case.

    Attributes:
        probs: mean tumour probability (N, H, W) float32.
        mask: post-processed prediction (N, H, W) bool.
        uncertainty: range of the views' probabilities (N, H, W) float32, or None with one view.
        figures: the case's numbers (see `case_figures`).
    """

    probs: np.ndarray
    mask: np.ndarray
    uncertainty: np.ndarray | None
    figures: dict[str, Any]


def largest_diameter(mask2d: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> float:
    """Longest distance between two points of a 2-D region (its pixels' corners), in spacing units.

    The farthest pair of points of a set lies on its convex hull, and the hull of a region is
    that of its edge pixels' corners: only those are looked at (a few hundred, not the whole area).
    """
    from scipy import ndimage
    from scipy.spatial import ConvexHull, QhullError

    m = np.asarray(mask2d, dtype=bool)
    rows, cols = np.nonzero(m & ~ndimage.binary_erosion(m, border_value=0))
    if rows.size == 0:
        return 0.0
    corners = np.concatenate([np.stack([rows + dr, cols + dc], axis=1) for dr in (0, 1) for dc in (0, 1)])
    pts = corners.astype(np.float64) * np.asarray(spacing, dtype=np.float64)
    try:
        pts = pts[ConvexHull(pts).vertices]
    except QhullError:  # all corners on one line cannot happen for pixels, but stay safe
        pass
    d = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(axis=-1))
    return float(d.max())


def case_figures(
    mask: np.ndarray,
    probs: np.ndarray,
    uncertainty: np.ndarray | None,
    spacing: tuple[float, float, float] | None,
    min_area: int,
) -> dict[str, Any]:
    """Tumour volume, slices involved, largest diameter and the review flag of one case (pure)."""
    n = mask.shape[0]
    areas = mask.reshape(n, -1).sum(axis=1)
    involved = [int(k) for k in np.nonzero(areas >= max(min_area, 1))[0]]
    total = int(areas.sum())
    in_plane = (spacing[0], spacing[1]) if spacing else (1.0, 1.0)
    diam = max((largest_diameter(mask[k], in_plane) for k in range(n) if areas[k]), default=0.0)
    fig: dict[str, Any] = {
        "n_slices": n,
        "height": int(mask.shape[1]),
        "width": int(mask.shape[2]),
        "slices_involved": involved,
        "slice_area_px": [int(a) for a in areas],
        "volume_px": total,
        "volume_ml": total * spacing[0] * spacing[1] * spacing[2] / 1000.0 if spacing else None,
        "voxel_mm": list(spacing) if spacing else None,
        "largest_diameter_mm": diam if spacing else None,
        "largest_diameter_px": None if spacing else diam,
        "prob_max": float(probs.max()) if n else 0.0,
        "size_note": None if spacing else (
            "the input carries no voxel size: sizes are in pixels (a pixel counted as 1×1, a slice as 1 thick)"
        ),
    }
    if uncertainty is None:
        fig.update(disputed_px=None, needs_review=None, review_rule="one view only: no disagreement to measure")
    else:
        disputed = int((uncertainty >= DISPUTE).sum())
        fig.update(
            disputed_px=disputed,
            needs_review=bool(disputed >= max(min_area, REVIEW_SHARE * total, 1)),
            review_rule=REVIEW_RULE,
        )
    return fig


class Segmenter:
    """The loaded model(s) and settings the server segments every upload with.

    Args:
        checkpoints: checkpoint files or run folders (several: an ensemble).
        tta: add the left-right and up-down flipped views (default True: they give the uncertainty
            of a single model).
        device, batch_size, channels: passed to each member's `Predictor`.
        overrides: post-processing overrides (threshold, largest_component, …; None: the checkpoint's).
        engine: "torch", "onnx" or "auto" (`brainseg.engine`).
    """

    def __init__(
        self,
        checkpoints: Sequence[str | Path | dict[str, Any]],
        *,
        tta: bool = True,
        device: str = "cpu",
        batch_size: int = 16,
        channels: str = "strict",
        overrides: dict[str, Any] | None = None,
        engine: str = "torch",
    ) -> None:
        from brainseg.inference.pipeline import resolve_postprocessing
        from brainseg.inference.predictor import Predictor
        from brainseg.training.checkpoint import load_checkpoint

        loaded = [c if isinstance(c, dict) else load_checkpoint(c) for c in checkpoints]
        # one Predictor per member (TTA off): the views are formed here, so each stays visible
        self.members = [Predictor([c], device=device, batch_size=batch_size, channels=channels) for c in loaded]
        from brainseg.engine import apply_engine

        used = [apply_engine(m, engine) for m in self.members]
        self.engine = used[0]["engine"]
        self.engine_note = next((u["onnx_skipped"] for u in used if "onnx_skipped" in u), None)
        self.tta = tta
        self.pp: EvalConfig = resolve_postprocessing(loaded[0], dict(overrides or {}))
        self.in_channels = self.members[0].in_channels
        if any(m.in_channels != self.in_channels for m in self.members):
            from brainseg.errors import BrainsegError

            raise BrainsegError("the ensemble mixes models with different input channel counts")

    @property
    def n_views(self) -> int:
        return len(self.members) * (len(FLIPS) if self.tta else 1)

    def describe(self) -> dict[str, Any]:
        """Models and settings, for the page and the figures JSON."""
        return {
            "models": [d for m in self.members for d in m.describe()],
            "in_channels": self.in_channels,
            "tta": self.tta,
            "engine": self.engine,
            "n_views": self.n_views,
            "postprocessing": postprocessing_dict(self.pp),
            "review_rule": REVIEW_RULE if self.n_views > 1 else "one view only: no disagreement to measure",
        }

    def view_probabilities(
        self, images: np.ndarray, source: str, progress: Callable[[float], None] | None = None
    ) -> np.ndarray:
        """Probabilities (V, N, H, W) of every view for uint8 slices (N, H, W, C)."""
        flips = FLIPS if self.tta else ((),)
        n, h, w = images.shape[:3]
        out = np.zeros((len(self.members) * len(flips), n, h, w), dtype=np.float32)
        # a 2.5-D member reads each slice's neighbours: it gets the whole volume, one call per view
        steps = max(1, sum(len(flips) if mb.context else -(-n // CHUNK) for mb in self.members))
        done = 0
        for m, member in enumerate(self.members):
            if member.context:
                for f, d in enumerate(flips):
                    p = member.predict(np.ascontiguousarray(np.flip(images, d) if d else images), source=source)
                    out[m * len(flips) + f] = np.flip(p, d) if d else p
                    done += 1
                    if progress:
                        progress(done / steps)
                continue
            for lo in range(0, n, CHUNK):
                x = images[lo : lo + CHUNK]
                # all views of a chunk in one call: one pass through the batch loop
                stacked = np.concatenate([np.flip(x, d) if d else x for d in flips])
                p = member.predict(np.ascontiguousarray(stacked), source=source).reshape(len(flips), len(x), h, w)
                for f, d in enumerate(flips):
                    out[m * len(flips) + f, lo : lo + CHUNK] = np.flip(p[f], d) if d else p[f]
                done += 1
                if progress:
                    progress(done / steps)
        return out

    def segment(
        self,
        images: np.ndarray,
        spacing: tuple[float, float, float] | None,
        source: str = "input",
        progress: Callable[[float], None] | None = None,
    ) -> CaseResult:
        """Probabilities, mask, uncertainty and figures of one case's slices (N, H, W, C)."""
        views = self.view_probabilities(images, source, progress)
        probs = views.mean(axis=0)
        uncertainty = (views.max(axis=0) - views.min(axis=0)) if len(views) > 1 else None
        mask = binarize(probs, self.pp)
        return CaseResult(probs, mask, uncertainty, case_figures(mask, probs, uncertainty, spacing, self.pp.min_area))

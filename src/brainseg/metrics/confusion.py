"""Per-sample confusion counts (tp, fp, fn, tn), and every overlap metric computed from them.

All metrics in brainseg come from these counts (the definitions below are the ones every report
prints under "Metric definitions"; README "Layout" places this module): a reduction
(per slice, per patient volume, micro over the dataset) sums counts first, where it needs to,
and only then applies `metrics_from_counts`. Keeping the counts means any reduction can be
recomputed later from the per-slice CSV without the model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from brainseg.errors import BrainsegError

__all__ = [
    "COUNT_COLUMNS",
    "EMPTY_POLICIES",
    "METRICS",
    "check_empty_policy",
    "confusion_counts",
    "metrics_from_counts",
]

#: Metric names returned by `metrics_from_counts`, in report order.
METRICS: tuple[str, ...] = ("dice", "iou", "precision", "recall", "specificity")

#: Column order of the arrays returned by `confusion_counts`.
COUNT_COLUMNS: tuple[str, ...] = ("tp", "fp", "fn", "tn")

#: What a metric is when its denominator is 0. The denominators are: Dice and IoU, 2TP+FP+FN and
#: TP+FP+FN (0 only when truth AND prediction are empty); precision, TP+FP (nothing predicted);
#: recall, TP+FN (truth empty); specificity, TN+FP (every pixel is tumour).
EMPTY_POLICIES: dict[str, str] = {
    "one": (
        "a metric whose denominator is 0 is 1.0 when the sample has no error (FP = FN = 0) and "
        "0.0 otherwise: empty truth and empty prediction score Dice = IoU = precision = recall = 1; "
        "an empty prediction on a tumour slice has precision 0 (and recall 0); a false positive on "
        "an empty slice has recall 0 (and Dice = IoU = precision = 0)"
    ),
    "skip": (
        "a metric whose denominator is 0 is NaN and left out of means (the number of values kept "
        "is reported as n): empty truth and empty prediction give NaN Dice/IoU/precision/recall; "
        "an empty slice with a false positive keeps Dice = IoU = precision = 0 but NaN recall"
    ),
    "zero": (
        "a metric whose denominator is 0 is 0.0 (pessimistic, as scikit-learn's zero_division=0): "
        "empty truth and empty prediction score Dice = IoU = precision = recall = 0"
    ),
}


def check_empty_policy(empty_policy: str) -> str:
    """Return `empty_policy` if known, else raise a BrainsegError listing the known policies."""
    if empty_policy not in EMPTY_POLICIES:
        raise BrainsegError(f"unknown empty-mask policy {empty_policy!r}; known: {', '.join(EMPTY_POLICIES)}")
    return empty_policy


def _squeeze_channel(shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape[:1] + shape[2:] if len(shape) == 4 and shape[1] == 1 else shape


def _binary_torch(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dtype == torch.bool:
        return x
    if x.is_floating_point():
        # Probabilities or logits passed by mistake would silently count as positives; refuse them.
        if not bool(((x == 0) | (x == 1)).all()):
            raise BrainsegError(
                f"confusion_counts: {name} is a float tensor with values other than 0 and 1 "
                "(threshold probabilities before counting)"
            )
    return x != 0


def _binary_numpy(x: np.ndarray, name: str) -> np.ndarray:
    if x.dtype == np.bool_:
        return x
    if np.issubdtype(x.dtype, np.floating):
        if not np.all((x == 0) | (x == 1)):
            raise BrainsegError(
                f"confusion_counts: {name} is a float array with values other than 0 and 1 "
                "(threshold probabilities before counting)"
            )
    elif not np.issubdtype(x.dtype, np.integer):
        raise BrainsegError(f"confusion_counts: {name} has dtype {x.dtype}; expected bool, integer or 0/1 float")
    return x != 0


def confusion_counts(pred: Any, target: Any) -> np.ndarray:
    """Count tp, fp, fn, tn per sample.

    Args:
        pred: predicted masks, shape (N, H, W) or (N, 1, H, W); bool, integer (non-zero is
            positive, so 0/255 masks work) or float holding only 0 and 1. NumPy array or torch
            tensor (a GPU tensor is counted on its device; only the (N, 4) counts are copied back).
        target: ground-truth masks, same shape and rules as `pred`.

    Returns:
        int64 array of shape (N, 4), columns `COUNT_COLUMNS` = (tp, fp, fn, tn).

    Raises:
        BrainsegError: shapes differ or are not (N, H, W) / (N, 1, H, W); float masks that are
            not 0/1 (e.g. probabilities that were not thresholded).
    """
    is_torch = isinstance(pred, torch.Tensor) or isinstance(target, torch.Tensor)
    if is_torch:
        device = pred.device if isinstance(pred, torch.Tensor) else target.device
        p = torch.as_tensor(pred, device=device).detach()
        t = torch.as_tensor(target, device=device).detach()
        if device.type == "cpu":  # NumPy counts CPU masks faster than torch does; the view is free
            p, t, is_torch = _numpy_view(p), _numpy_view(t), False
    else:
        p, t = np.asarray(pred), np.asarray(target)
    ps, ts = _squeeze_channel(tuple(p.shape)), _squeeze_channel(tuple(t.shape))
    if ps != ts or len(ps) != 3:
        raise BrainsegError(
            f"confusion_counts: prediction has shape {tuple(p.shape)} and target {tuple(t.shape)}; "
            "expected the same (N, H, W) or (N, 1, H, W)"
        )
    n = ps[0]
    if is_torch:
        return _counts_torch(_binary_torch(p, "prediction").reshape(n, -1), _binary_torch(t, "target").reshape(n, -1))
    return _counts_numpy(_binary_numpy(p, "prediction").reshape(n, -1), _binary_numpy(t, "target").reshape(n, -1))


def _numpy_view(x: torch.Tensor) -> np.ndarray:
    # NumPy has no bfloat16: widen it (0/1 values stay exact); every other dtype is a free view.
    return (x.float() if x.dtype == torch.bfloat16 else x).numpy()


# Both count with three reductions (tp, |pred|, |truth|); fp, fn and tn follow by subtraction.
def _counts_torch(pb: torch.Tensor, tb: torch.Tensor) -> np.ndarray:
    tp = torch.count_nonzero(pb & tb, dim=1)
    n_pred = torch.count_nonzero(pb, dim=1)
    n_true = torch.count_nonzero(tb, dim=1)
    out = torch.stack([tp, n_pred - tp, n_true - tp, pb.shape[1] - n_pred - n_true + tp], dim=1)
    return out.to(torch.int64).cpu().numpy()


def _counts_numpy(pb: np.ndarray, tb: np.ndarray) -> np.ndarray:
    tp = np.count_nonzero(pb & tb, axis=1)
    n_pred = np.count_nonzero(pb, axis=1)
    n_true = np.count_nonzero(tb, axis=1)
    return np.stack([tp, n_pred - tp, n_true - tp, pb.shape[1] - n_pred - n_true + tp], axis=1).astype(np.int64)


def metrics_from_counts(counts: Any, *, empty_policy: str = "one") -> dict[str, np.ndarray]:
    """Dice, IoU, precision, recall and specificity from confusion counts.

    Dice = 2TP/(2TP+FP+FN), IoU = TP/(TP+FP+FN), precision = TP/(TP+FP), recall = TP/(TP+FN),
    specificity = TN/(TN+FP). When a denominator is 0 the value follows `empty_policy`:

    - "one" (default): 1.0 if the sample has no error at all (FP = FN = 0), else 0.0. So empty
      truth + empty prediction → Dice = IoU = precision = recall = 1.0; empty prediction on a
      tumour slice → precision 0.0; false positive on an empty slice → recall 0.0.
    - "skip": NaN; means over samples then leave these out (use `np.nanmean`) and report n.
    - "zero": 0.0 (scikit-learn's `zero_division=0`).

    See `EMPTY_POLICIES`. Rows whose denominator is non-zero are the same under every policy.

    Args:
        counts: array of shape (..., 4) with columns (tp, fp, fn, tn), non-negative.
        empty_policy: "one", "skip" or "zero".

    Returns:
        `{name: float64 array of shape counts.shape[:-1]}` for each name in `METRICS`.
    """
    check_empty_policy(empty_policy)
    c = np.asarray(counts)
    if c.ndim == 0 or c.shape[-1] != 4:
        raise BrainsegError(f"metrics_from_counts: counts must have shape (..., 4), got {c.shape}")
    c = c.astype(np.float64)
    if np.any(c < 0) or not np.all(np.isfinite(c)):
        raise BrainsegError("metrics_from_counts: counts must be finite and non-negative")
    tp, fp, fn, tn = (c[..., i] for i in range(4))
    no_error = (fp == 0) & (fn == 0)
    if empty_policy == "one":
        fill = np.where(no_error, 1.0, 0.0)
    elif empty_policy == "skip":
        fill = np.full(tp.shape, np.nan)
    else:
        fill = np.zeros(tp.shape)

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        safe = np.where(den > 0, den, 1.0)  # avoid 0/0 warnings; those entries are replaced below
        return np.where(den > 0, num / safe, fill)

    return {
        "dice": ratio(2 * tp, 2 * tp + fp + fn),
        "iou": ratio(tp, tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
    }

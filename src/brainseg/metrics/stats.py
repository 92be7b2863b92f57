"""Statistics for comparing models over patients: bootstrap intervals and paired tests.

The unit of resampling and of pairing is the patient (slices of one patient are not
independent). Functions are pure: NumPy arrays or plain dicts in, plain floats and dicts out.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

from brainseg.errors import BrainsegError

__all__ = ["bootstrap_ci", "holm_correction", "paired_summary", "paired_wilcoxon", "pairwise_comparisons"]

# Resample in chunks so that n_boot × n indices stay below this many elements (≈ 80 MB of int64).
_CHUNK_ELEMENTS = 10_000_000


def _finite_1d(values: Any, name: str = "values") -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if np.any(np.isinf(v)):
        raise BrainsegError(f"{name}: infinite values are not allowed")
    return v[~np.isnan(v)]


def bootstrap_ci(
    values: Any, *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap confidence interval of the mean (Efron & Tibshirani 1993).

    Each of `n_boot` resamples draws len(values) units with replacement; the interval is the
    (1-confidence)/2 and 1-(1-confidence)/2 quantiles of the resampled means. NaNs are dropped
    first (e.g. metrics left undefined by the "skip" empty policy).

    Args:
        values: one value per unit (patient).
        n_boot: number of bootstrap resamples.
        confidence: coverage of the interval, in (0, 1).
        seed: seed of the NumPy generator, so the interval is reproducible.

    Returns:
        (mean, low, high); all NaN when no finite value is left; (v, v, v) for a single value.
    """
    if not 0.0 < confidence < 1.0:
        raise BrainsegError(f"bootstrap_ci: confidence must be in (0, 1), got {confidence}")
    if n_boot < 1:
        raise BrainsegError(f"bootstrap_ci: n_boot must be >= 1, got {n_boot}")
    v = _finite_1d(values)
    n = v.size
    if n == 0:
        return (float("nan"),) * 3
    mean = float(v.mean())
    if n == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    per_chunk = max(1, _CHUNK_ELEMENTS // n)
    means = np.empty(n_boot)
    for start in range(0, n_boot, per_chunk):
        stop = min(n_boot, start + per_chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = v[idx].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return mean, float(low), float(high)


def paired_wilcoxon(a: Any, b: Any) -> dict[str, float]:
    """Wilcoxon signed-rank test of paired values a[i] vs b[i] (two-sided, SciPy's defaults).

    Pairs where either value is NaN are dropped. Zero differences are dropped by the test
    (Wilcoxon's original treatment); when every difference is zero the two samples are
    identical and p = 1.0.

    Returns:
        dict with statistic (SciPy's: min of the signed-rank sums), p_value, n (pairs used),
        mean_difference and median_difference (of a - b), n_up / n_down (pairs with a > b / a < b),
        and r_plus / r_minus, the rank sums of the positive and negative differences (r_plus >
        r_minus: a tends to be larger).
    """
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise BrainsegError(f"paired_wilcoxon: a has {x.size} values and b has {y.size}; they must be paired")
    keep = ~(np.isnan(x) | np.isnan(y))
    d = x[keep] - y[keep]
    out: dict[str, float] = {
        "n": int(d.size),
        "mean_difference": float(d.mean()) if d.size else float("nan"),
        "median_difference": float(np.median(d)) if d.size else float("nan"),
    }
    nz = d[d != 0]
    out["n_up"], out["n_down"] = int((nz > 0).sum()), int((nz < 0).sum())
    if nz.size:
        ranks = sps.rankdata(np.abs(nz))
        out["r_plus"] = float(ranks[nz > 0].sum())
        out["r_minus"] = float(ranks[nz < 0].sum())
    else:
        out["r_plus"] = out["r_minus"] = 0.0
    if d.size == 0:
        out.update(statistic=float("nan"), p_value=float("nan"))
    elif nz.size == 0:
        out.update(statistic=0.0, p_value=1.0)
    else:
        res = sps.wilcoxon(x[keep], y[keep])
        out.update(statistic=float(res.statistic), p_value=float(res.pvalue))
    return out


def paired_summary(a: Any, b: Any, *, alpha: float = 0.05) -> str:
    """One line on paired values a against b: "+0.029 (p 0.020, 1 up / 12 down, ranks lower)".

    The mean difference (a − b), the two-sided Wilcoxon p, how many pairs went up and down, and —
    where p < alpha — which way the signed ranks point. A mean lifted by one large gain while most
    pairs lose reads "ranks lower", so a significant p is never taken for a gain it is not.
    """
    test = paired_wilcoxon(a, b)
    if not np.isfinite(test["p_value"]):
        return f"{test['mean_difference']:+.3f}"
    text = f"{test['mean_difference']:+.3f} (p {test['p_value']:.3f}, {test['n_up']} up / {test['n_down']} down"
    if test["p_value"] < alpha and test["r_plus"] != test["r_minus"]:
        text += ", ranks " + ("higher" if test["r_plus"] > test["r_minus"] else "lower")
    return text + ")"


def holm_correction(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (Holm 1979), in the input order.

    With the m finite p-values sorted ascending, p_(i) becomes max_{j<=i} min(1, (m-j+1)·p_(j)):
    monotone in the original p-values and capped at 1. Rejecting where the adjusted value is
    below α controls the family-wise error rate at α. NaN p-values stay NaN and do not count in m.
    """
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    if finite.size == 0:
        return out
    if np.any((p[finite] < 0) | (p[finite] > 1)):
        raise BrainsegError(f"holm_correction: p-values must lie in [0, 1], got {p[finite].tolist()}")
    m = finite.size
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out


def pairwise_comparisons(
    per_model: Mapping[str, Mapping[str, float]],
    *,
    alpha: float = 0.05,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Compare every pair of models on the patients they share (paired Wilcoxon + Holm).

    Args:
        per_model: model name → {patient id: value (e.g. per-patient Dice)}; pairs are formed in
            the mapping's order (model_a before model_b).
        alpha: family-wise significance level applied to the Holm-adjusted p-values.
        n_boot, confidence, seed: bootstrap settings of the interval of the mean difference.

    Returns:
        One dict per pair: model_a, model_b, n (shared patients with finite values), mean_a,
        mean_b, mean_diff and median_diff (a - b), ci_low / ci_high (bootstrap CI of the mean
        difference over patients), statistic, p (Wilcoxon), p_holm (adjusted over all pairs),
        significant (p_holm < alpha) and better: the model favoured by the signed-rank sums when
        significant, else "none".
    """
    if not 0.0 < alpha < 1.0:
        raise BrainsegError(f"pairwise_comparisons: alpha must be in (0, 1), got {alpha}")
    rows: list[dict[str, Any]] = []
    for name_a, name_b in itertools.combinations(list(per_model), 2):
        va, vb = per_model[name_a], per_model[name_b]
        shared = sorted(set(va) & set(vb))
        a = np.array([va[k] for k in shared], dtype=np.float64)
        b = np.array([vb[k] for k in shared], dtype=np.float64)
        keep = ~(np.isnan(a) | np.isnan(b))
        a, b = a[keep], b[keep]
        test = paired_wilcoxon(a, b)
        _, low, high = bootstrap_ci(a - b, n_boot=n_boot, confidence=confidence, seed=seed)
        rows.append(
            {
                "model_a": name_a,
                "model_b": name_b,
                "n": test["n"],
                "mean_a": float(a.mean()) if a.size else float("nan"),
                "mean_b": float(b.mean()) if b.size else float("nan"),
                "mean_diff": test["mean_difference"],
                "median_diff": test["median_difference"],
                "ci_low": low,
                "ci_high": high,
                "statistic": test["statistic"],
                "p": test["p_value"],
                "_r": (test["r_plus"], test["r_minus"]),
            }
        )
    adjusted = holm_correction([r["p"] for r in rows])
    for row, p_holm in zip(rows, adjusted):
        r_plus, r_minus = row.pop("_r")
        significant = bool(np.isfinite(p_holm) and p_holm < alpha)
        row["p_holm"] = float(p_holm)
        row["significant"] = significant
        if significant and r_plus != r_minus:
            row["better"] = row["model_a"] if r_plus > r_minus else row["model_b"]
        else:
            row["better"] = "none"
    return rows

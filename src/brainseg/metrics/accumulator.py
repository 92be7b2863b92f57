"""Collect per-slice confusion counts during evaluation and reduce them the three stated ways.

Reductions (definitions in `brainseg.metrics.confusion`):

- per patient (volume): counts summed over all of a patient's slices, then the metric; the mean
  over patients is the headline figure (Buda et al. 2019);
- per slice: the metric on each slice, then the mean over slices (empty-mask policy applies);
- micro: counts summed over every slice, then the metric.

Slices are keyed by (patient, slice number), and every output is sorted by that key, so the
results never depend on the order in which the loader delivered the batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from brainseg.errors import BrainsegError
from brainseg.metrics.confusion import (
    COUNT_COLUMNS,
    EMPTY_POLICIES,
    METRICS,
    check_empty_policy,
    metrics_from_counts,
)
from brainseg.metrics.stats import bootstrap_ci

__all__ = ["MetricAccumulator"]

_STATE_VERSION = 2  # 2: the unused running loss is gone from the state


def _vector(x: Any, n: int, name: str) -> np.ndarray:
    """One float per slice from a sequence, NumPy array or torch tensor (None → NaN)."""
    if x is None:
        return np.full(n, np.nan)
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().float().cpu().numpy()
    v = np.asarray(x, dtype=np.float64).reshape(-1)
    if v.size != n:
        raise BrainsegError(f"MetricAccumulator.add: {name} has {v.size} values for {n} slices")
    return v


def _num(x: float) -> int | float:
    """Integral floats as int (pixel areas), others unchanged, so CSV cells read naturally."""
    return int(x) if np.isfinite(x) and float(x).is_integer() else float(x)


class MetricAccumulator:
    """Per-slice confusion counts keyed by (patient, slice).

    Typical use in an evaluation loop::

        acc = MetricAccumulator()
        for batch in loader:
            counts = confusion_counts(probs > 0.5, masks)
            acc.add(batch["patient"], batch["slice"], counts, prob_max=probs.amax((1, 2, 3)))
        summary = acc.summary("one")

    Merge accumulators from several processes with `merge` or `from_states`.
    """

    def __init__(self) -> None:
        # (patient, slice) → (tp, fp, fn, tn, pred_area, true_area, prob_max)
        self._slices: dict[tuple[str, int], tuple[int, int, int, int, float, float, float]] = {}

    def __len__(self) -> int:
        return len(self._slices)

    @property
    def patients(self) -> list[str]:
        """Patient ids seen so far, sorted."""
        return sorted({p for p, _ in self._slices})

    def add(
        self,
        patients: Sequence[str],
        slices: Sequence[int],
        counts: Any,
        *,
        prob_max: Any = None,
        pred_area: Any = None,
        true_area: Any = None,
    ) -> None:
        """Record a batch of slices.

        Args:
            patients: patient id of each slice.
            slices: slice number of each slice (unique within a patient).
            counts: (N, 4) confusion counts (tp, fp, fn, tn), e.g. from `confusion_counts`.
            prob_max: highest tumour probability in each slice (the detection AUROC score);
                None → NaN (detection then falls back to the predicted area).
            pred_area, true_area: predicted / true tumour area in pixels; None → tp+fp / tp+fn.

        Raises:
            BrainsegError: lengths disagree, bad counts, or a (patient, slice) seen before (in
                this batch or an earlier one); nothing is recorded then.
        """
        pats = [str(p) for p in patients]
        n = len(pats)
        sl = [int(s) for s in slices]
        if len(sl) != n:
            raise BrainsegError(f"MetricAccumulator.add: {n} patients but {len(sl)} slice numbers")
        c = np.asarray(counts)
        if c.shape != (n, 4):
            raise BrainsegError(f"MetricAccumulator.add: counts have shape {c.shape}, expected ({n}, 4)")
        if not np.issubdtype(c.dtype, np.integer):
            if not np.all(np.isfinite(c)) or np.any(c != np.round(c)):
                raise BrainsegError("MetricAccumulator.add: counts must be whole numbers")
        c = c.astype(np.int64)
        if np.any(c < 0):
            raise BrainsegError("MetricAccumulator.add: counts must be non-negative")
        pm = _vector(prob_max, n, "prob_max")
        pa = c[:, 0] + c[:, 1] if pred_area is None else _vector(pred_area, n, "pred_area")
        ta = c[:, 0] + c[:, 2] if true_area is None else _vector(true_area, n, "true_area")
        keys = list(zip(pats, sl))
        seen: set[tuple[str, int]] = set()
        for key in keys:
            if key in self._slices or key in seen:
                raise BrainsegError(
                    f"MetricAccumulator.add: patient {key[0]!r} slice {key[1]} was already added "
                    "(each slice must be evaluated once)"
                )
            seen.add(key)
        for i, key in enumerate(keys):
            tp, fp, fn, tn = (int(v) for v in c[i])
            self._slices[key] = (tp, fp, fn, tn, float(pa[i]), float(ta[i]), float(pm[i]))

    # ------------------------------------------------------------------ merging
    def state_dict(self) -> dict[str, Any]:
        """Plain-Python state (lists and numbers): picklable, JSON-able, for `from_states`."""
        keys = sorted(self._slices)
        return {
            "version": _STATE_VERSION,
            "keys": [[p, s] for p, s in keys],
            "values": [list(self._slices[k]) for k in keys],
        }

    @classmethod
    def from_states(cls, states: Iterable[dict[str, Any]]) -> MetricAccumulator:
        """One accumulator holding every slice of several states (duplicates raise)."""
        acc = cls()
        for state in states:
            if state.get("version") != _STATE_VERSION:
                raise BrainsegError(f"MetricAccumulator: unknown state version {state.get('version')!r}")
            part = cls()
            for (p, s), v in zip(state["keys"], state["values"]):
                part._slices[(str(p), int(s))] = (
                    int(v[0]), int(v[1]), int(v[2]), int(v[3]), float(v[4]), float(v[5]), float(v[6])
                )  # fmt: skip
            acc.merge(part)
        return acc

    def merge(self, other: MetricAccumulator) -> MetricAccumulator:
        """Add every slice of `other` to this accumulator; returns self."""
        dup = self._slices.keys() & other._slices.keys()
        if dup:
            p, s = min(dup)
            raise BrainsegError(
                f"MetricAccumulator.merge: {len(dup)} slices appear in both parts, e.g. patient {p!r} slice {s}"
            )
        self._slices.update(other._slices)
        return self

    # ------------------------------------------------------------------ outputs
    def _arrays(self) -> tuple[list[tuple[str, int]], np.ndarray, np.ndarray]:
        keys = sorted(self._slices)
        vals = np.array([self._slices[k] for k in keys], dtype=np.float64).reshape(-1, 7)
        return keys, vals[:, :4].astype(np.int64), vals[:, 4:]

    def per_slice_rows(self, empty_policy: str = "one") -> list[dict[str, Any]]:
        """One row per slice, sorted by (patient, slice): patient, slice, tp, fp, fn, tn,
        each metric in `METRICS` (under `empty_policy`), true_area, pred_area, prob_max."""
        check_empty_policy(empty_policy)
        keys, counts, extra = self._arrays()
        ids = [{"patient": p, "slice": s} for p, s in keys]
        return _rows(ids, counts, extra, empty_policy, ("true_area", "pred_area"))

    def _patient_groups(self) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """Patients (sorted), summed counts (P, 4), n_slices (P,), [pred, true, prob_max] (P, 3)."""
        keys, counts, extra = self._arrays()
        patients = sorted({p for p, _ in keys})
        index = {p: i for i, p in enumerate(patients)}
        group = np.array([index[p] for p, _ in keys], dtype=np.int64)
        n_p = len(patients)
        summed = np.zeros((n_p, 4), dtype=np.int64)
        np.add.at(summed, group, counts)
        n_slices = np.bincount(group, minlength=n_p)
        areas = np.zeros((n_p, 2))
        np.add.at(areas, group, extra[:, :2])
        prob = np.full(n_p, -np.inf)
        np.fmax.at(prob, group, extra[:, 2])  # fmax ignores NaN unless every value is NaN
        prob[np.isneginf(prob)] = np.nan
        return patients, summed, n_slices, np.column_stack([areas, prob])

    def per_patient_rows(self, empty_policy: str = "one") -> list[dict[str, Any]]:
        """One row per patient, sorted: patient, n_slices, tp, fp, fn, tn (summed over slices),
        each metric in `METRICS` computed from the summed counts, true_volume_px, pred_volume_px
        and prob_max (highest slice probability; the patient-level detection score)."""
        check_empty_policy(empty_policy)
        patients, counts, n_slices, extra = self._patient_groups()
        ids = [{"patient": p, "n_slices": int(n)} for p, n in zip(patients, n_slices)]
        return _rows(ids, counts, extra, empty_policy, ("true_volume_px", "pred_volume_px"))

    def summary(
        self, empty_policy: str = "one", *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
    ) -> dict[str, Any]:
        """All three reductions of every metric, and the policy that produced them.

        Returns:
            {"empty_policy", "empty_policy_description", "n_patients", "n_slices",
             "n_tumour_slices",
             <metric> (each of `METRICS`): {
                 "per_patient": {mean, std, n, ci_low, ci_high},  # over patient volumes
                 "per_slice": {mean, std, n},  # over slices, NaNs ("skip") left out
                 "micro": value},              # counts summed over all slices
             "micro_counts": {tp, fp, fn, tn},
             "bootstrap": {n_boot, confidence, seed}}
            std is the sample standard deviation (ddof=1; NaN below two values); ci_low/ci_high
            are the percentile-bootstrap interval of the patient mean (`bootstrap_ci`). Example:
            `summary["dice"]["per_patient"]["mean"]` is the headline figure.
        """
        check_empty_policy(empty_policy)
        keys, counts, extra = self._arrays()
        _, pcounts, _, _ = self._patient_groups()
        slice_m = metrics_from_counts(counts, empty_policy=empty_policy)
        patient_m = metrics_from_counts(pcounts, empty_policy=empty_policy)
        total = counts.sum(axis=0)
        micro_m = metrics_from_counts(total, empty_policy=empty_policy)
        out: dict[str, Any] = {
            "empty_policy": empty_policy,
            "empty_policy_description": EMPTY_POLICIES[empty_policy],
            "n_patients": len(pcounts),
            "n_slices": len(keys),
            "n_tumour_slices": int(np.count_nonzero(extra[:, 1] > 0)),
        }
        for m in METRICS:
            mean, low, high = bootstrap_ci(patient_m[m], n_boot=n_boot, confidence=confidence, seed=seed)
            out[m] = {
                "per_patient": {**_describe(patient_m[m]), "mean": mean, "ci_low": low, "ci_high": high},
                "per_slice": _describe(slice_m[m]),
                # No slice at all: nothing was measured, so micro values are undefined (not "perfect").
                "micro": float(micro_m[m]) if len(keys) else float("nan"),
            }
        out.update(
            {
                "micro_counts": {col: int(total[j]) for j, col in enumerate(COUNT_COLUMNS)},
                "bootstrap": {"n_boot": n_boot, "confidence": confidence, "seed": seed},
            }
        )
        return out


def _rows(
    ids: list[dict[str, Any]], counts: np.ndarray, extra: np.ndarray, policy: str, area_names: tuple[str, str]
) -> list[dict[str, Any]]:
    """Result rows: each id's fields, counts, metrics, then true/pred area (named) and prob_max."""
    mets = metrics_from_counts(counts, empty_policy=policy)
    rows = []
    for i, row in enumerate(ids):
        row.update({col: int(counts[i, j]) for j, col in enumerate(COUNT_COLUMNS)})
        row.update({m: float(mets[m][i]) for m in METRICS})
        row[area_names[0]] = _num(extra[i, 1])
        row[area_names[1]] = _num(extra[i, 0])
        row["prob_max"] = float(extra[i, 2])
        rows.append(row)
    return rows


def _describe(values: np.ndarray) -> dict[str, Any]:
    v = values[~np.isnan(values)]
    return {
        "mean": float(v.mean()) if v.size else float("nan"),
        "std": float(v.std(ddof=1)) if v.size > 1 else float("nan"),
        "n": int(v.size),
    }

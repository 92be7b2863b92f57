"""Unperturbed results split into strata: by institution, tumour size, slice position and sequences.

`strata_rows` splits the unperturbed per-slice results by institution (the TCGA
site code in the folder name), by tumour size (tertiles of the test patients' ground-truth tumour
volumes, counted in native pixels summed over slices: small ≤ q⅓ < medium ≤ q⅔ < large; patients
without tumour form "no tumour"), and by slice position (each patient's slices ranked by number
and cut into first / middle / last third) and, when the caller knows them, by sequences (patients
whose pre- or post-contrast channel is a copy of FLAIR, `brainseg.data.sequences`, against those
with all three sequences). Each stratum's Dice per patient is computed from that
patient's counts within the stratum, then averaged over patients, with the run's empty policy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["STRATA_COLUMNS", "STRATUM_TYPES", "size_thresholds", "strata_rows"]

STRATA_COLUMNS = (
    "model", "stratum_type", "stratum", "definition", "n_patients", "n_slices", "n_tumour_slices",
    "dice_patient", "dice_patient_ci_low", "dice_patient_ci_high", "iou_patient", "dice_slice",
)  # fmt: skip
STRATUM_TYPES = ("institution", "tumour_size", "slice_position", "sequences")


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
        [{**state, "keys": [k for k, _ in pairs], "values": [v for _, v in pairs]}]
    )
    return sub.summary(policy, seed=seed)


def strata_rows(
    acc: Any, institutions: dict[str, str], *, empty_policy: str = "one", model: str = "", seed: int = 0,
    copied: dict[str, tuple[str, ...]] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Unperturbed results split by institution, tumour size, slice position and sequences (module docstring).

    Args:
        acc: the MetricAccumulator of the clean evaluation.
        institutions: patient → institution code.
        empty_policy: how a slice/patient with empty truth and prediction scores.
        model: written into each row's "model" column.
        seed: of the bootstrap intervals.
        copied: patient → the sequences that are FLAIR copies (`patient_copied_sequences`);
            None leaves the "sequences" strata out.

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

    if copied is not None:
        groups.append(("sequences", "FLAIR copies", "pre- or post-contrast channel is a copy of FLAIR on every "
                       "informative slice", lambda p, s: bool(copied.get(p))))
        groups.append(("sequences", "complete", "all three sequences present",
                       lambda p, s: p in copied and not copied[p]))

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
    if copied is not None:
        info["sequences_rule"] = ("a patient is 'FLAIR copies' when brainseg.data.sequences.patient_copied_sequences "
                                  "finds a copied channel on every slice with FLAIR signal")
    return rows, info

"""Segmentation metrics: confusion counts → every metric, stated reductions, detection, statistics.

The definitions live in `brainseg.metrics.confusion` (counts, metrics, the empty-mask policy) and
`brainseg.metrics.accumulator` (the three reductions); README "Layout" shows where they sit.
"""

from __future__ import annotations

from brainseg.metrics.accumulator import MetricAccumulator
from brainseg.metrics.confusion import (
    COUNT_COLUMNS,
    EMPTY_POLICIES,
    METRICS,
    check_empty_policy,
    confusion_counts,
    metrics_from_counts,
)
from brainseg.metrics.detection import auroc, detection_metrics, slice_and_patient_detection
from brainseg.metrics.stats import bootstrap_ci, holm_correction, paired_wilcoxon, pairwise_comparisons
from brainseg.metrics.surface import (
    SURFACE_METRIC_KEYS,
    SURFACE_METRICS_POLICY,
    lesion_counts,
    patient_surface_metrics,
    surface_metrics_policy,
)

__all__ = [
    "COUNT_COLUMNS",
    "EMPTY_POLICIES",
    "METRICS",
    "MetricAccumulator",
    "SURFACE_METRICS_POLICY",
    "SURFACE_METRIC_KEYS",
    "auroc",
    "bootstrap_ci",
    "check_empty_policy",
    "confusion_counts",
    "detection_metrics",
    "holm_correction",
    "lesion_counts",
    "metrics_from_counts",
    "paired_wilcoxon",
    "pairwise_comparisons",
    "patient_surface_metrics",
    "slice_and_patient_detection",
    "surface_metrics_policy",
]

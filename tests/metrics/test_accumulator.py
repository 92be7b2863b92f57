"""MetricAccumulator: the three reductions by hand, order independence, merging, loss."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from brainseg.errors import BrainsegError
from brainseg.metrics.accumulator import MetricAccumulator
from brainseg.metrics.confusion import METRICS, confusion_counts, metrics_from_counts
from brainseg.metrics.stats import bootstrap_ci

# Patient A: one perfectly segmented slice and one small tumour missed.
# Patient B: an empty slice predicted empty, and a one-pixel tumour found with one false-positive pixel.
HAND = [
    ("A", 1, [8, 0, 0, 92]),
    ("A", 2, [0, 0, 2, 98]),
    ("B", 7, [0, 0, 0, 100]),
    ("B", 8, [1, 1, 0, 98]),
]


def _hand() -> MetricAccumulator:
    acc = MetricAccumulator()
    for p, s, c in HAND:
        acc.add([p], [s], np.array([c]))
    return acc


def test_three_reductions_by_hand() -> None:
    acc = _hand()
    # Per patient: counts summed first. A: tp=8, fn=2 → 16/18. B: tp=1, fp=1 → 2/3.
    dice_a, dice_b = 16 / 18, 2 / 3
    rows = acc.per_patient_rows("one")
    assert [r["patient"] for r in rows] == ["A", "B"]
    assert rows[0]["dice"] == pytest.approx(dice_a) and rows[1]["dice"] == pytest.approx(dice_b)
    assert rows[0]["n_slices"] == 2 and rows[0]["true_volume_px"] == 10 and rows[0]["pred_volume_px"] == 8
    assert (rows[1]["tp"], rows[1]["fp"], rows[1]["fn"], rows[1]["tn"]) == (1, 1, 0, 198)

    one = acc.summary("one")
    assert one["dice"]["per_patient"]["mean"] == pytest.approx((dice_a + dice_b) / 2)
    assert one["dice"]["per_patient"]["n"] == 2
    assert one["dice"]["per_patient"]["std"] == pytest.approx(np.std([dice_a, dice_b], ddof=1))
    # Per slice: 1, 0, 1 (empty/empty under "one"), 2/3 → the mean differs from the patient mean.
    assert one["dice"]["per_slice"]["mean"] == pytest.approx((1 + 0 + 1 + 2 / 3) / 4)
    assert one["dice"]["per_slice"]["n"] == 4
    # Micro: tp=9, fp=1, fn=2 → 18/21.
    assert one["dice"]["micro"] == pytest.approx(18 / 21)
    assert one["iou"]["micro"] == pytest.approx(9 / 12)
    assert one["micro_counts"] == {"tp": 9, "fp": 1, "fn": 2, "tn": 388}
    assert one["n_patients"] == 2 and one["n_slices"] == 4 and one["n_tumour_slices"] == 3
    assert one["empty_policy"] == "one" and "FP = FN = 0" in one["empty_policy_description"]

    skip = acc.summary("skip")
    # The empty/empty slice is left out of the per-slice mean, and n says so.
    assert skip["dice"]["per_slice"]["mean"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert skip["dice"]["per_slice"]["n"] == 3
    # Recall is undefined on B's empty slice under "skip": A1 = 1, A2 = 0, B8 = 1 remain.
    assert skip["recall"]["per_slice"]["n"] == 3
    assert skip["recall"]["per_slice"]["mean"] == pytest.approx(2 / 3)
    # Precision is undefined where nothing was predicted (A2, B7): A1 = 1, B8 = 1/2 remain.
    assert skip["precision"]["per_slice"]["n"] == 2
    assert skip["precision"]["per_slice"]["mean"] == pytest.approx(0.75)
    # Per-patient and micro values have no zero denominators here: the policy does not matter.
    assert skip["dice"]["per_patient"]["mean"] == pytest.approx(one["dice"]["per_patient"]["mean"])
    assert [skip[m]["micro"] for m in METRICS] == [one[m]["micro"] for m in METRICS]


def test_per_slice_rows_columns_and_values() -> None:
    acc = _hand()
    rows = acc.per_slice_rows("skip")
    assert [(r["patient"], r["slice"]) for r in rows] == [(p, s) for p, s, _ in HAND]
    expected_cols = ["patient", "slice", "tp", "fp", "fn", "tn", *METRICS, "true_area", "pred_area", "prob_max"]
    assert list(rows[0]) == expected_cols
    want = metrics_from_counts(np.array([c for *_, c in HAND]), empty_policy="skip")
    for i, row in enumerate(rows):
        for m in METRICS:
            np.testing.assert_equal(row[m], want[m][i])
    assert rows[1]["true_area"] == 2 and rows[1]["pred_area"] == 0
    assert math.isnan(rows[0]["prob_max"])  # not given


def test_summary_ci_is_the_bootstrap_of_patient_values() -> None:
    acc = _random_accumulator(0)
    summ = acc.summary("one", n_boot=500, seed=3)
    values = [r["dice"] for r in acc.per_patient_rows("one")]
    mean, low, high = bootstrap_ci(values, n_boot=500, seed=3)
    d = summ["dice"]["per_patient"]
    assert (d["mean"], d["ci_low"], d["ci_high"]) == pytest.approx((mean, low, high))
    assert d["ci_low"] <= d["mean"] <= d["ci_high"]
    assert summ["bootstrap"] == {"n_boot": 500, "confidence": 0.95, "seed": 3}


def _random_slices(seed: int, n_patients: int = 4, n_slices: int = 8) -> list[tuple[str, int, np.ndarray, float]]:
    rng = np.random.default_rng(seed)
    out = []
    for p in range(n_patients):
        for s in rng.permutation(20)[:n_slices]:
            truth = rng.random((6, 6)) < rng.choice([0.0, 0.3])
            pred = rng.random((6, 6)) < rng.choice([0.0, 0.3])
            counts = confusion_counts(pred[None], truth[None])[0]
            out.append((f"TCGA_{p}", int(s), counts, float(rng.random())))
    return out


def _random_accumulator(seed: int, order: np.ndarray | None = None, batch: int = 3) -> MetricAccumulator:
    items = _random_slices(seed)
    if order is not None:
        items = [items[i] for i in order]
    acc = MetricAccumulator()
    for i in range(0, len(items), batch):
        chunk = items[i : i + batch]
        acc.add(
            [c[0] for c in chunk],
            [c[1] for c in chunk],
            np.stack([c[2] for c in chunk]),
            prob_max=[c[3] for c in chunk],
        )
    return acc


def _same(a: object, b: object) -> bool:
    # Equality that treats NaN as equal to NaN (json round trip keeps NaN as NaN).
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@pytest.mark.parametrize("policy", ["one", "skip"])
def test_order_independence(policy: str) -> None:
    ref = _random_accumulator(1)
    rng = np.random.default_rng(5)
    for _ in range(3):
        shuffled = _random_accumulator(1, order=rng.permutation(32), batch=int(rng.integers(1, 6)))
        assert _same(shuffled.per_slice_rows(policy), ref.per_slice_rows(policy))
        assert _same(shuffled.per_patient_rows(policy), ref.per_patient_rows(policy))
        assert _same(shuffled.summary(policy), ref.summary(policy))


def test_duplicates_raise_and_leave_state_unchanged() -> None:
    acc = _hand()
    with pytest.raises(BrainsegError, match="'A' slice 2"):
        acc.add(["C", "A"], [1, 2], np.array([[1, 0, 0, 3], [1, 0, 0, 3]]))
    assert len(acc) == 4 and acc.patients == ["A", "B"]  # "C" was not half-added
    with pytest.raises(BrainsegError, match="already"):
        acc.add(["D", "D"], [1, 1], np.array([[1, 0, 0, 3], [1, 0, 0, 3]]))


def test_bad_inputs_raise() -> None:
    acc = MetricAccumulator()
    with pytest.raises(BrainsegError):
        acc.add(["A"], [1, 2], np.array([[1, 0, 0, 3]]))
    with pytest.raises(BrainsegError):
        acc.add(["A"], [1], np.array([[1, 0, 0]]))
    with pytest.raises(BrainsegError):
        acc.add(["A"], [1], np.array([[1, -1, 0, 3]]))
    with pytest.raises(BrainsegError):
        acc.add(["A"], [1], np.array([[1, 0, 0, 3]]), prob_max=[0.1, 0.2])
    with pytest.raises(BrainsegError, match="known"):
        acc.summary("ignore")


def test_merge_and_states_equal_single_accumulator() -> None:
    items = _random_slices(2)
    whole, part1, part2 = MetricAccumulator(), MetricAccumulator(), MetricAccumulator()
    for i, (p, s, c, pm) in enumerate(items):
        whole.add([p], [s], c[None], prob_max=[pm])
        (part1 if i % 3 else part2).add([p], [s], c[None], prob_max=[pm])
    # States survive a JSON round trip (e.g. sent between processes or saved).
    states = [json.loads(json.dumps(part1.state_dict())), json.loads(json.dumps(part2.state_dict()))]
    rebuilt = MetricAccumulator.from_states(states)
    merged = MetricAccumulator().merge(part1).merge(part2)
    for other in (rebuilt, merged):
        assert _same(other.per_slice_rows("one"), whole.per_slice_rows("one"))
        assert _same(other.summary("skip"), whole.summary("skip"))
    with pytest.raises(BrainsegError, match="both"):
        MetricAccumulator().merge(part1).merge(part1)


def test_summary_carries_no_loss() -> None:
    # The evaluation's loss is computed on logits by evaluate_patients and written once, at the
    # top of summary.json; the metric summary has none (it used to carry an unfed NaN).
    acc = MetricAccumulator()
    acc.add(["A"], [1], np.array([[1, 0, 0, 3]]))
    assert "loss" not in acc.summary() and "loss_count" not in acc.summary()


def test_torch_inputs_and_explicit_areas() -> None:
    pred = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    pred[0, 0, :2, :2] = True
    truth = torch.zeros(2, 1, 4, 4)
    truth[0, 0, :2, :3] = 1
    probs = torch.tensor([0.9, 0.2])
    acc = MetricAccumulator()
    acc.add(["P", "P"], torch.tensor([3, 10]), confusion_counts(pred, truth), prob_max=probs)
    rows = acc.per_slice_rows()
    assert [r["slice"] for r in rows] == [3, 10]
    assert rows[0]["pred_area"] == 4 and rows[0]["true_area"] == 6
    assert rows[0]["prob_max"] == pytest.approx(0.9)
    assert acc.per_patient_rows()[0]["prob_max"] == pytest.approx(0.9)
    acc2 = MetricAccumulator()
    acc2.add(["P"], [1], np.array([[1, 0, 0, 3]]), pred_area=[2.5], true_area=[7])
    assert acc2.per_slice_rows()[0]["pred_area"] == 2.5 and acc2.per_slice_rows()[0]["true_area"] == 7


def test_numeric_slice_order() -> None:
    acc = MetricAccumulator()
    for s in (10, 9, 2):
        acc.add(["P"], [s], np.array([[0, 0, 0, 4]]))
    assert [r["slice"] for r in acc.per_slice_rows()] == [2, 9, 10]


def test_empty_accumulator_summary_is_undefined_not_perfect() -> None:
    summ = MetricAccumulator().summary()
    assert summ["n_slices"] == 0
    assert math.isnan(summ["dice"]["micro"]) and math.isnan(summ["dice"]["per_patient"]["mean"])

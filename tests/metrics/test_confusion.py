"""Confusion counts and metrics: hand-computed cases, every empty policy, sklearn and MONAI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_iou
from sklearn.metrics import f1_score, jaccard_score, precision_score, recall_score

from brainseg.errors import BrainsegError
from brainseg.metrics.confusion import (
    EMPTY_POLICIES,
    METRICS,
    _binary_torch,
    _counts_numpy,
    _counts_torch,
    confusion_counts,
    metrics_from_counts,
)

nan = math.nan


def _mask(cells: list[tuple[int, int]], size: int = 4) -> np.ndarray:
    m = np.zeros((size, size), dtype=bool)
    for r, c in cells:
        m[r, c] = True
    return m


def _one(counts: np.ndarray | list[int], policy: str) -> dict[str, float]:
    return {k: float(v) for k, v in metrics_from_counts(np.array(counts), empty_policy=policy).items()}


def _assert_metrics(got: dict[str, float], want: dict[str, float]) -> None:
    for k, v in want.items():
        if math.isnan(v):
            assert math.isnan(got[k]), (k, got[k])
        else:
            assert got[k] == pytest.approx(v, abs=1e-12), (k, got[k], v)


def test_partial_overlap_by_hand() -> None:
    truth = _mask([(0, 0), (0, 1), (1, 0), (1, 1)])
    pred = _mask([(0, 1), (0, 2), (1, 1), (1, 2)])
    counts = confusion_counts(pred[None], truth[None])
    assert counts.tolist() == [[2, 2, 2, 10]]  # tp, fp, fn, tn
    for policy in EMPTY_POLICIES:  # no zero denominator: every policy agrees
        _assert_metrics(
            _one(counts[0], policy),
            {"dice": 4 / 8, "iou": 2 / 6, "precision": 2 / 4, "recall": 2 / 4, "specificity": 10 / 12},
        )


def test_all_correct() -> None:
    truth = _mask([(1, 1), (2, 2), (3, 1)])
    counts = confusion_counts(truth[None], truth[None])
    assert counts.tolist() == [[3, 0, 0, 13]]
    _assert_metrics(_one(counts[0], "skip"), dict.fromkeys(METRICS, 1.0))


@pytest.mark.parametrize(
    "policy,want",
    [
        ("one", {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0, "specificity": 1.0}),
        ("skip", {"dice": nan, "iou": nan, "precision": nan, "recall": nan, "specificity": 1.0}),
        ("zero", {"dice": 0.0, "iou": 0.0, "precision": 0.0, "recall": 0.0, "specificity": 1.0}),
    ],
)
def test_empty_truth_and_empty_prediction(policy: str, want: dict[str, float]) -> None:
    empty = np.zeros((1, 4, 4), dtype=bool)
    counts = confusion_counts(empty, empty)
    assert counts.tolist() == [[0, 0, 0, 16]]
    _assert_metrics(_one(counts[0], policy), want)


@pytest.mark.parametrize(
    "policy,want",
    [
        ("one", {"dice": 0.0, "iou": 0.0, "precision": 0.0, "recall": 0.0, "specificity": 13 / 16}),
        ("skip", {"dice": 0.0, "iou": 0.0, "precision": 0.0, "recall": nan, "specificity": 13 / 16}),
        ("zero", {"dice": 0.0, "iou": 0.0, "precision": 0.0, "recall": 0.0, "specificity": 13 / 16}),
    ],
)
def test_false_positive_on_empty_slice(policy: str, want: dict[str, float]) -> None:
    pred = _mask([(0, 0), (2, 3), (3, 3)])
    counts = confusion_counts(pred[None], np.zeros((1, 4, 4), dtype=bool))
    assert counts.tolist() == [[0, 3, 0, 13]]
    _assert_metrics(_one(counts[0], policy), want)


@pytest.mark.parametrize(
    "policy,want",
    [
        ("one", {"dice": 0.0, "iou": 0.0, "precision": 0.0, "recall": 0.0, "specificity": 1.0}),
        ("skip", {"dice": 0.0, "iou": 0.0, "precision": nan, "recall": 0.0, "specificity": 1.0}),
    ],
)
def test_missed_tumour(policy: str, want: dict[str, float]) -> None:
    truth = _mask([(1, 1), (1, 2)])
    counts = confusion_counts(np.zeros((1, 4, 4), dtype=bool), truth[None])
    assert counts.tolist() == [[0, 0, 2, 14]]
    _assert_metrics(_one(counts[0], policy), want)


def test_all_tumour_slice_specificity_policy() -> None:
    # Every pixel is tumour: TN + FP = 0, so specificity falls to the policy.
    _assert_metrics(_one([16, 0, 0, 0], "one"), {"specificity": 1.0, "dice": 1.0})
    _assert_metrics(_one([12, 0, 4, 0], "one"), {"specificity": 0.0, "recall": 0.75})
    _assert_metrics(_one([12, 0, 4, 0], "skip"), {"specificity": nan})


def test_counts_accept_channel_axis_torch_and_0_255() -> None:
    rng = np.random.default_rng(0)
    pred = rng.random((5, 1, 8, 8)) < 0.4
    truth = rng.random((5, 8, 8)) < 0.3
    ref = confusion_counts(pred[:, 0], truth)
    assert ref.dtype == np.int64 and ref.shape == (5, 4)
    assert (ref.sum(axis=1) == 64).all()
    np.testing.assert_array_equal(confusion_counts(pred, truth), ref)
    np.testing.assert_array_equal(confusion_counts(torch.from_numpy(pred), torch.from_numpy(truth)), ref)
    np.testing.assert_array_equal(confusion_counts(torch.from_numpy(pred).float(), truth.astype(np.float32)), ref)
    bf16 = torch.from_numpy(pred).to(torch.bfloat16).requires_grad_(True)  # e.g. straight from autocast
    np.testing.assert_array_equal(confusion_counts(bf16, torch.from_numpy(truth).half()), ref)
    np.testing.assert_array_equal(confusion_counts(pred.astype(np.uint8) * 255, truth.astype(np.uint8) * 255), ref)
    # Counts by explicit loops, as an independent check of the vectorised version.
    for i in range(5):
        p, t = pred[i, 0].ravel(), truth[i].ravel()
        manual = [sum(p & t), sum(p & ~t), sum(~p & t), sum(~p & ~t)]
        assert ref[i].tolist() == manual


def test_device_path_matches_numpy_path() -> None:
    # GPU tensors are counted by the torch path; exercise it on CPU tensors directly.
    rng = np.random.default_rng(1)
    pred = rng.random((4, 100)) < 0.5
    truth = rng.random((4, 100)) < 0.2
    np.testing.assert_array_equal(
        _counts_torch(torch.from_numpy(pred), torch.from_numpy(truth)), _counts_numpy(pred, truth)
    )
    assert _binary_torch(torch.tensor([0.0, 1.0]), "x").tolist() == [False, True]
    with pytest.raises(BrainsegError, match="threshold"):
        _binary_torch(torch.tensor([0.0, 0.7]), "x")


def test_counts_reject_probabilities_and_bad_shapes() -> None:
    with pytest.raises(BrainsegError, match="threshold"):
        confusion_counts(torch.rand(2, 1, 4, 4), torch.zeros(2, 1, 4, 4))
    with pytest.raises(BrainsegError, match="threshold"):
        confusion_counts(np.zeros((2, 4, 4)), np.full((2, 4, 4), 0.5))
    with pytest.raises(BrainsegError, match=r"\(2, 4, 4\).*\(2, 4, 5\)"):
        confusion_counts(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 5), bool))
    with pytest.raises(BrainsegError):
        confusion_counts(np.zeros((4, 4), bool), np.zeros((4, 4), bool))  # no sample axis
    with pytest.raises(BrainsegError):
        metrics_from_counts(np.zeros((3, 3)))
    with pytest.raises(BrainsegError):
        metrics_from_counts([1, -1, 0, 0])
    with pytest.raises(BrainsegError, match="known"):
        metrics_from_counts([1, 0, 0, 0], empty_policy="ignore")


def _random_masks(seed: int, n: int = 12, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pred = rng.random((n, size, size)) < rng.uniform(0, 0.5, (n, 1, 1))
    truth = rng.random((n, size, size)) < rng.uniform(0, 0.5, (n, 1, 1))
    pred[0] = truth[0] = False  # empty vs empty
    truth[1] = False  # false positives only
    pred[2] = False  # missed tumour
    return pred, truth


@pytest.mark.parametrize("seed", [0, 1])
def test_against_sklearn(seed: int) -> None:
    pred, truth = _random_masks(seed)
    counts = confusion_counts(pred, truth)
    by_policy = {policy: metrics_from_counts(counts, empty_policy=policy) for policy in EMPTY_POLICIES}
    for i in range(len(pred)):
        p, t = pred[i].ravel(), truth[i].ravel()
        ref = {
            "dice": f1_score(t, p, zero_division=0),
            "iou": jaccard_score(t, p, zero_division=0),
            "precision": precision_score(t, p, zero_division=0),
            "recall": recall_score(t, p, zero_division=0),
            "specificity": recall_score(~t, ~p, zero_division=0),
        }
        denominator_zero = {
            "dice": not (p.any() or t.any()),
            "iou": not (p.any() or t.any()),
            "precision": not p.any(),
            "recall": not t.any(),
            "specificity": t.all(),
        }
        for name, sk in ref.items():
            for policy, mets in by_policy.items():
                want = sk
                if denominator_zero[name] and policy == "one":
                    want = 1.0 if (p == t).all() else 0.0  # 1 only for a sample without any error
                elif denominator_zero[name] and policy == "skip":
                    want = np.nan
                # "zero" is scikit-learn's zero_division=0 everywhere.
                np.testing.assert_allclose(mets[name][i], want, atol=1e-12, err_msg=f"{policy} {name} sample {i}")
    # The hand-made empty cases are really in the sample, so the policies were exercised.
    assert np.isnan(by_policy["skip"]["dice"][0]) and np.isnan(by_policy["skip"]["recall"][1])
    assert np.isnan(by_policy["skip"]["precision"][2])


def test_against_monai() -> None:
    pred, truth = _random_masks(3)
    counts = confusion_counts(pred, truth)
    p = torch.from_numpy(pred[:, None]).float()
    t = torch.from_numpy(truth[:, None]).float()
    one = metrics_from_counts(counts, empty_policy="one")
    # MONAI's ignore_empty=False scores an empty truth 1 if the prediction is empty, else 0: our "one".
    np.testing.assert_allclose(one["dice"], compute_dice(p, t, ignore_empty=False)[:, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(one["iou"], compute_iou(p, t, ignore_empty=False)[:, 0].numpy(), atol=1e-6)
    # Where the truth is non-empty no policy is involved.
    has_truth = truth.reshape(len(truth), -1).any(axis=1)
    skip = metrics_from_counts(counts, empty_policy="skip")
    ref = compute_dice(p, t, ignore_empty=True)[:, 0].numpy()
    np.testing.assert_allclose(skip["dice"][has_truth], ref[has_truth], atol=1e-6)


def test_metrics_keep_leading_shape() -> None:
    counts = np.array([[[2, 2, 2, 10], [0, 0, 0, 16]], [[1, 0, 0, 15], [0, 1, 0, 15]]])
    mets = metrics_from_counts(counts)
    assert set(mets) == set(METRICS)
    assert mets["dice"].shape == (2, 2)
    np.testing.assert_allclose(mets["dice"], [[0.5, 1.0], [1.0, 0.0]])

"""Bootstrap intervals, paired Wilcoxon (against SciPy), Holm by hand, pairwise comparisons."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from brainseg.errors import BrainsegError
from brainseg.metrics import stats
from brainseg.metrics.stats import (
    bootstrap_ci,
    holm_correction,
    paired_summary,
    paired_wilcoxon,
    pairwise_comparisons,
)


def test_bootstrap_contains_mean_and_narrows_with_n() -> None:
    rng = np.random.default_rng(0)
    widths = []
    for n in (10, 100, 1000):
        v = rng.normal(0.8, 0.1, n)
        mean, low, high = bootstrap_ci(v, n_boot=1000)
        assert mean == pytest.approx(v.mean())
        assert low < mean < high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]


def test_bootstrap_width_matches_normal_theory() -> None:
    # For the mean of n iid values the 95% interval is about ±1.96·s/√n.
    v = np.random.default_rng(1).normal(0.0, 1.0, 400)
    _, low, high = bootstrap_ci(v, n_boot=4000, seed=2)
    expected = 2 * 1.96 * v.std(ddof=1) / math.sqrt(v.size)
    assert high - low == pytest.approx(expected, rel=0.1)


def test_bootstrap_nan_safe_seeded_and_edge_cases() -> None:
    v = np.array([0.2, 0.9, np.nan, 0.5, 0.7, np.nan])
    assert bootstrap_ci(v, seed=4) == bootstrap_ci(v[~np.isnan(v)], seed=4)
    assert bootstrap_ci(v, seed=4) == bootstrap_ci(v, seed=4)
    w = np.random.default_rng(0).random(30)
    assert bootstrap_ci(w, n_boot=200, seed=4) != bootstrap_ci(w, n_boot=200, seed=5)
    assert bootstrap_ci([0.3]) == (0.3, 0.3, 0.3)
    assert all(math.isnan(x) for x in bootstrap_ci([np.nan, np.nan]))
    for bad in ({"confidence": 1.0}, {"n_boot": 0}):
        with pytest.raises(BrainsegError):
            bootstrap_ci([0.1, 0.2], **bad)


def test_bootstrap_chunking_does_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    v = np.random.default_rng(3).random(50)
    whole = bootstrap_ci(v, n_boot=300, seed=1)
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 50 * 7)  # 7 resamples per chunk
    assert bootstrap_ci(v, n_boot=300, seed=1) == pytest.approx(whole, abs=1e-15)


@pytest.mark.parametrize("seed", range(3))
def test_paired_wilcoxon_matches_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.random(25)
    b = a - 0.05 + rng.normal(0, 0.1, 25)
    out = paired_wilcoxon(a, b)
    ref = sps.wilcoxon(a, b)
    assert out["statistic"] == pytest.approx(ref.statistic)
    assert out["p_value"] == pytest.approx(ref.pvalue)
    assert out["n"] == 25
    assert out["mean_difference"] == pytest.approx(np.mean(a - b))
    assert out["median_difference"] == pytest.approx(np.median(a - b))
    assert out["r_plus"] + out["r_minus"] == pytest.approx(25 * 26 / 2)
    assert min(out["r_plus"], out["r_minus"]) == pytest.approx(ref.statistic)


def test_paired_wilcoxon_drops_nan_pairs_and_handles_ties() -> None:
    a = np.array([0.9, 0.8, np.nan, 0.7, 0.6, 0.95, 0.85, 0.75])
    b = np.array([0.8, 0.8, 0.5, 0.6, np.nan, 0.90, 0.80, 0.70])
    out = paired_wilcoxon(a, b)
    keep = ~(np.isnan(a) | np.isnan(b))
    assert out["n"] == 6
    assert out["p_value"] == pytest.approx(sps.wilcoxon(a[keep], b[keep]).pvalue)
    same = paired_wilcoxon([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert same["p_value"] == 1.0 and same["statistic"] == 0.0 and same["mean_difference"] == 0.0
    assert math.isnan(paired_wilcoxon([np.nan], [0.1])["p_value"])
    with pytest.raises(BrainsegError):
        paired_wilcoxon([0.1, 0.2], [0.1])


def test_holm_by_hand() -> None:
    # Sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → raised to 0.06 (monotone).
    np.testing.assert_allclose(holm_correction([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm_correction([0.5, 0.6]), [1.0, 1.0])  # capped at 1
    np.testing.assert_allclose(holm_correction([0.02]), [0.02])
    out = holm_correction([0.01, np.nan, 0.02])  # NaN neither counts in m nor changes
    assert math.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2]], [0.02, 0.02])
    assert holm_correction([]).size == 0
    with pytest.raises(BrainsegError):
        holm_correction([1.5])


def test_holm_is_monotone_and_at_least_raw() -> None:
    p = np.random.default_rng(0).random(20) ** 3
    adj = holm_correction(p)
    order = np.argsort(p)
    assert np.all(np.diff(adj[order]) >= 0)
    assert np.all(adj >= p) and np.all(adj <= 1)
    assert np.all(adj <= np.minimum(p * p.size, 1) + 1e-15)  # never stricter than Bonferroni


def test_pairwise_comparisons() -> None:
    rng = np.random.default_rng(7)
    patients = [f"P{i:02d}" for i in range(30)]
    base = rng.uniform(0.6, 0.9, 30)
    per_model = {
        "unet": dict(zip(patients, base + 0.08 + rng.normal(0, 0.02, 30))),
        "segnet": dict(zip(patients, base)),
        # Same as segnet up to noise, and missing five patients.
        "pspnet": dict(zip(patients[5:], base[5:] + rng.normal(0, 0.02, 25))),
    }
    rows = pairwise_comparisons(per_model, n_boot=500)
    assert [(r["model_a"], r["model_b"]) for r in rows] == list(itertools.combinations(per_model, 2))
    raw = []
    for r in rows:
        shared = sorted(set(per_model[r["model_a"]]) & set(per_model[r["model_b"]]))
        a = np.array([per_model[r["model_a"]][k] for k in shared])
        b = np.array([per_model[r["model_b"]][k] for k in shared])
        assert r["n"] == len(shared)
        assert r["p"] == pytest.approx(sps.wilcoxon(a, b).pvalue)
        assert r["mean_diff"] == pytest.approx(np.mean(a - b))
        assert r["ci_low"] <= r["mean_diff"] <= r["ci_high"]
        raw.append(r["p"])
    np.testing.assert_allclose([r["p_holm"] for r in rows], holm_correction(raw))
    by_pair = {(r["model_a"], r["model_b"]): r for r in rows}
    assert by_pair[("unet", "segnet")]["significant"] and by_pair[("unet", "segnet")]["better"] == "unet"
    assert by_pair[("unet", "pspnet")]["better"] == "unet"
    assert by_pair[("segnet", "pspnet")]["n"] == 25
    for r in rows:
        assert r["significant"] == (r["p_holm"] < 0.05)
        if not r["significant"]:
            assert r["better"] == "none"


def test_pairwise_comparisons_worse_first_model_and_bad_alpha() -> None:
    per_model = {"a": {str(i): 0.5 + 0.001 * i for i in range(20)}, "b": {str(i): 0.7 + 0.002 * i for i in range(20)}}
    (row,) = pairwise_comparisons(per_model, n_boot=200)
    assert row["significant"] and row["better"] == "b" and row["mean_diff"] < 0
    with pytest.raises(BrainsegError):
        pairwise_comparisons(per_model, alpha=0.0)


def test_paired_summary_states_the_direction_of_the_ranks() -> None:
    # Twelve pairs lose 0.01, one gains 0.5: mean (0.5 − 0.12) / 13 = +0.029, but r+ = 13 against
    # r− = 78 (the twelve tied losses share ranks 1–12); SciPy's two-sided p = 0.0195.
    b = np.full(13, 0.4)
    a = np.r_[np.full(12, 0.39), 0.9]
    assert paired_summary(a, b) == "+0.029 (p 0.020, 1 up / 12 down, ranks lower)"
    # the same pairs the other way round: every sign flips
    assert paired_summary(b, a) == "-0.029 (p 0.020, 12 up / 1 down, ranks higher)"
    # p above alpha: no direction claimed; a NaN pair is dropped from the counts too
    a2, b2 = np.array([0.9, 0.8, 0.7, np.nan]), np.array([0.8, 0.7, 0.75, 0.1])
    assert paired_summary(a2, b2) == "+0.050 (p 0.500, 2 up / 1 down)"
    assert paired_summary([0.5], [np.nan]) == "+nan"

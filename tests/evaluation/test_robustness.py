"""Robustness: each perturbation does what it says, severity 0 is exact, strata partition, CLI files."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from brainseg.cli import main as cli_main
from brainseg.config import RunConfig
from brainseg.errors import BrainsegError
from brainseg.evaluation.evaluate import evaluate_patients, evaluate_run
from brainseg.evaluation.perturbations import PERTURBATIONS, bias_field_map, make_perturbation, perturb
from brainseg.evaluation.robustness import CLEAN, ROBUSTNESS_COLUMNS
from brainseg.evaluation.session import split_patients
from brainseg.evaluation.strata import STRATA_COLUMNS, size_thresholds, strata_rows
from brainseg.fileio import read_csv, write_csv_atomic
from brainseg.metrics.accumulator import MetricAccumulator

NAMES = list(PERTURBATIONS)


# ------------------------------------------------------------------------------------ helpers


def texture(n: int = 3, size: int = 64, lo: int = 100, hi: int = 156, seed: int = 0) -> np.ndarray:
    """Uniform random uint8 slices (N, size, size, 3) in [lo, hi]: rough, and far from the clip limits."""
    return np.random.default_rng(seed).integers(lo, hi + 1, (n, size, size, 3), dtype=np.uint8)


def disk_masks(n: int = 3, size: int = 64, r: float = 12.0) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    m = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) <= r * r
    return np.repeat(m[None].astype(np.uint8), n, axis=0)


def high_freq_energy(images: np.ndarray) -> float:
    """Spectral energy above half the Nyquist frequency (per slice and channel, summed)."""
    x = images.astype(np.float64)
    x = x - x.mean(axis=(1, 2), keepdims=True)
    f = np.abs(np.fft.fft2(x, axes=(1, 2))) ** 2
    fy = np.abs(np.fft.fftfreq(x.shape[1]))[:, None]
    fx = np.abs(np.fft.fftfreq(x.shape[2]))[None, :]
    high = np.maximum(fy, fx) > 0.25
    return float(f[:, high].sum())


def value(name: str, severity: int) -> float:
    return PERTURBATIONS[name].levels[severity]


def summaries_equal(a: dict, b: dict) -> bool:
    """Deep equality of two summary dicts where NaN equals NaN."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(summaries_equal(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


# ------------------------------------------------------------------------ pure perturbations


@pytest.mark.parametrize("name", NAMES)
def test_severity_zero_is_an_exact_copy_and_inputs_are_never_changed(name: str) -> None:
    img, msk = texture(size=128, lo=0, hi=255), disk_masks(size=128)
    img0, msk0 = img.copy(), msk.copy()
    out, om = perturb(img, msk, name, 0, seed=5)
    assert np.array_equal(out, img) and np.array_equal(om, msk)
    assert out is not img and om is not msk
    spec = PERTURBATIONS[name]
    for sev in range(1, spec.max_severity + 1):
        out, om = perturb(img, msk, name, sev, seed=5)
        assert out.shape == img.shape and out.dtype == np.uint8
        assert om.shape == msk.shape and om.dtype == msk.dtype
        assert not np.array_equal(out, img), f"{name} severity {sev} left the slices unchanged"
    assert np.array_equal(img, img0) and np.array_equal(msk, msk0)


@pytest.mark.parametrize("name", NAMES)
def test_seeded_and_deterministic(name: str) -> None:
    img, msk = texture(lo=0, hi=255), disk_masks()
    sev = PERTURBATIONS[name].max_severity
    a = perturb(img, msk, name, sev, seed=1)
    b = perturb(img, msk, name, sev, seed=1)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    c = perturb(img, msk, name, sev, seed=2)
    random = name in ("gaussian_noise", "rician_noise", "bias_field")
    assert np.array_equal(a[0], c[0]) != random
    # the draw depends on the patient's own slices, not on what was perturbed before
    other = texture(seed=9)
    d = perturb(other, msk, name, sev, seed=1)
    assert np.array_equal(perturb(img, msk, name, sev, seed=1)[0], a[0])
    if random:
        assert not np.array_equal(d[0] - other, a[0] - img)


@pytest.mark.parametrize("severity", [1, 2, 3, 4])
def test_gaussian_noise_raises_the_std_by_sigma(severity: int) -> None:
    img, msk = texture(n=4, size=96), disk_masks(4, 96)
    out, _ = perturb(img, msk, "gaussian_noise", severity, seed=0)
    sigma = value("gaussian_noise", severity) * 255.0
    added = np.sqrt(out.astype(np.float64).var() - img.astype(np.float64).var())
    # independent noise adds variances; rounding to integers adds about 1/12
    assert added == pytest.approx(math.sqrt(sigma**2 + 1 / 12), rel=0.04)
    assert abs(out.astype(np.float64).mean() - img.mean()) < 0.2


def test_rician_noise_matches_the_rice_distribution() -> None:
    sigma = value("rician_noise", 5) * 255.0
    for level in (0, 40, 110):  # 110 + 3.6 sigma < 255: no clipping
        img = np.full((4, 96, 96, 3), level, dtype=np.uint8)
        out, _ = perturb(img, disk_masks(4, 96), "rician_noise", 5, seed=3)
        expected = stats.rice(b=level / sigma, scale=sigma)
        assert out.mean() == pytest.approx(expected.mean(), rel=0.02, abs=0.3)
        assert out.astype(np.float64).std() == pytest.approx(expected.std(), rel=0.03)
    # A dark background is lifted: magnitude noise on 0 has the Rayleigh mean σ·√(π/2), while
    # Gaussian noise on 0, clipped to uint8, only has the half-normal mean E[max(0, σn)] = σ/√(2π).
    zero = np.zeros((4, 96, 96, 3), dtype=np.uint8)
    rice0, _ = perturb(zero, disk_masks(4, 96), "rician_noise", 5, seed=3)
    gauss0, _ = perturb(zero, disk_masks(4, 96), "gaussian_noise", 5, seed=3)
    assert rice0.mean() == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.03)
    assert gauss0.mean() == pytest.approx(sigma / math.sqrt(2 * math.pi), rel=0.05)


def test_blur_lowers_high_frequency_energy_and_keeps_the_mean() -> None:
    img, msk = texture(n=2, size=256, lo=0, hi=255), disk_masks(2, 256)  # sigmas are in pixels at 256
    energies = [high_freq_energy(img)]
    for sev in range(1, PERTURBATIONS["blur"].max_severity + 1):
        out, om = perturb(img, msk, "blur", sev)
        energies.append(high_freq_energy(out))
        assert abs(out.astype(np.float64).mean() - img.mean()) < 1.0
        assert np.array_equal(om, msk)
    assert all(b < a for a, b in zip(energies, energies[1:]))
    assert energies[2] < 0.1 * energies[0]


def test_blur_sigma_is_scaled_with_the_slice_width() -> None:
    # the same severity blurs a 128-pixel slice of a pattern as much as a 64-pixel one of the same pattern
    small = texture(n=1, size=32, lo=0, hi=255)
    big = np.repeat(np.repeat(small, 4, axis=1), 4, axis=2)  # 128 px, each pixel a 4×4 block
    mid = np.repeat(np.repeat(small, 2, axis=1), 2, axis=2)  # 64 px
    rb = perturb(big, np.zeros(big.shape[:3], np.uint8), "blur", 4)[0].astype(float)
    rm = perturb(mid, np.zeros(mid.shape[:3], np.uint8), "blur", 4)[0].astype(float)
    # down-sample the 128 result to 64 by 2×2 means: close to the 64 result if sigma scaled with width
    rb_ds = rb.reshape(1, 64, 2, 64, 2, 3).mean(axis=(2, 4))
    assert np.abs(rb_ds - rm).mean() < 0.1 * np.abs(rm - rm.mean()).mean() + 0.5


def test_bias_field_is_smooth_and_multiplicative() -> None:
    img = texture(n=2, size=64, lo=60, hi=150, seed=4)
    sev = 3
    alpha = value("bias_field", sev)
    out, _ = perturb(img, disk_masks(2), "bias_field", sev, seed=7)
    log_ratio = np.log(out.astype(np.float64) / img)
    # multiplicative: the ratio does not depend on the (rough) content; the same for every slice/channel
    per_pixel = log_ratio.mean(axis=(0, 3))
    assert np.abs(log_ratio - per_pixel[None, :, :, None]).max() < 0.02
    # smooth: a cubic polynomial in the coordinates explains it up to uint8 rounding
    h, w = per_pixel.shape
    v, u = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    design = np.stack([u**i * v**j for i in range(4) for j in range(4 - i)], axis=-1).reshape(-1, 10)
    coef, *_ = np.linalg.lstsq(design, per_pixel.reshape(-1), rcond=None)
    resid = per_pixel.reshape(-1) - design @ coef
    assert resid.std() < 0.004
    assert per_pixel.std() > 10 * resid.std()
    # its amplitude is alpha: max |log field| = alpha (the field is normalised to max |b| = 1)
    assert np.abs(per_pixel).max() == pytest.approx(alpha, abs=0.01)
    # the input itself is rough: the smoothness is the field's, not the image's
    assert np.abs(np.diff(img.astype(float), axis=2)).mean() > 20
    field = bias_field_map((32, 48), 0.5, np.random.default_rng(0))
    assert field.shape == (32, 48)
    assert field.min() >= math.exp(-0.5) - 1e-6 and field.max() <= math.exp(0.5) + 1e-6


def test_gamma_darkens_midtones_as_the_curve_says() -> None:
    img = np.broadcast_to(np.arange(256, dtype=np.uint8)[None, None, :, None], (1, 4, 256, 3)).copy()
    msk = np.zeros((1, 4, 256), np.uint8)
    means = [img.mean()]
    for sev in range(1, PERTURBATIONS["gamma"].max_severity + 1):
        out, _ = perturb(img, msk, "gamma", sev)
        g = value("gamma", sev)
        assert out[0, 0, 128, 0] == round(255 * (128 / 255) ** g)
        assert out[0, 0, 0, 0] == 0 and out[0, 0, 255, 0] == 255
        means.append(out.mean())
    assert all(b < a for a, b in zip(means, means[1:]))


def test_contrast_scales_the_brain_spread_about_its_mean_and_keeps_the_background() -> None:
    img = texture(n=2, lo=40, hi=220)
    img[:, :8] = 0  # background rows
    brain = (img != 0).any(axis=3)
    for sev in (2, 4):
        out, _ = perturb(img, disk_masks(2), "contrast", sev)
        f = value("contrast", sev)
        assert (out[:, :8] == 0).all()
        for k in range(2):
            for c in range(3):
                a, b = img[k][brain[k], c].astype(float), out[k][brain[k], c].astype(float)
                assert b.std() == pytest.approx(f * a.std(), rel=0.02)
                assert b.mean() == pytest.approx(a.mean(), abs=0.6)


def test_low_resolution_loses_detail_but_keeps_shapes() -> None:
    size = 128
    yy, xx = np.mgrid[:size, :size]
    shape = (((yy - 60) ** 2 / 30**2 + (xx - 70) ** 2 / 20**2) <= 1).astype(np.float64)
    rough = np.random.default_rng(0).integers(-20, 21, (size, size))
    img = np.clip(60 + 140 * shape + rough, 0, 255).astype(np.uint8)
    img = np.repeat(img[None, :, :, None], 3, axis=3)
    msk = shape.astype(np.uint8)[None]
    energies = [high_freq_energy(img)]
    for sev in range(1, PERTURBATIONS["low_resolution"].max_severity + 1):
        out, om = perturb(img, msk, "low_resolution", sev)
        assert out.shape == img.shape and np.array_equal(om, msk)
        energies.append(high_freq_energy(out))
        recovered = out[0, :, :, 0] > 130
        iou = (recovered & (shape > 0)).sum() / (recovered | (shape > 0)).sum()
        assert iou > 0.9, f"severity {sev}: the ellipse is no longer there (IoU {iou:.3f})"
    # the residual energy is the ellipse's edge, which every factor keeps a little of
    assert all(b < 1.05 * a for a, b in zip(energies, energies[1:]))
    assert energies[1] < 0.1 * energies[0] and energies[-1] < 0.3 * energies[1]


@pytest.mark.parametrize("severity", [2, 5])
def test_rotation_moves_a_marked_pixel_counter_clockwise_and_keeps_masks_binary(severity: int) -> None:
    size, r0, c0 = 65, 32, 52  # centre (32, 32); the mark sits 20 px right of it
    img = np.zeros((1, size, size, 3), np.uint8)
    img[0, r0 - 1 : r0 + 2, c0 - 1 : c0 + 2, :] = 250
    msk = np.zeros((1, size, size), np.uint8)
    msk[0, r0 - 1 : r0 + 2, c0 - 1 : c0 + 2] = 1
    out, om = perturb(img, msk, "rotation", severity)
    theta = math.radians(value("rotation", severity))
    x, y = c0 - 32, 32 - r0  # y points up on the screen
    xr, yr = x * math.cos(theta) - y * math.sin(theta), x * math.sin(theta) + y * math.cos(theta)
    expect = np.array([32 - yr, 32 + xr])
    weights = out[0, :, :, 0].astype(float)
    centroid = np.array([(weights * np.arange(size)[:, None]).sum(), (weights * np.arange(size)[None, :]).sum()])
    assert np.allclose(centroid / weights.sum(), expect, atol=0.5)
    assert set(np.unique(om)) <= {0, 1}
    assert np.allclose(np.argwhere(om[0]).mean(axis=0), expect, atol=1.0)
    # {0, 255} masks keep their own values
    om255 = perturb(img, msk * 255, "rotation", severity)[1]
    assert set(np.unique(om255)) <= {0, 255}


def test_rotated_tumour_mask_stays_binary_at_every_severity() -> None:
    img, msk = texture(lo=0, hi=255), disk_masks()
    for sev in range(1, PERTURBATIONS["rotation"].max_severity + 1):
        _, om = perturb(img, msk, "rotation", sev)
        assert set(np.unique(om)) == {0, 1}
        assert abs(int(om.sum()) - int(msk.sum())) <= 0.05 * msk.sum()  # a centred disk keeps its area


@pytest.mark.parametrize("name", ["missing_sequence", "missing_sequence_zero"])
def test_missing_sequence_replaces_channels_by_flair_or_zero(name: str) -> None:
    img, msk = texture(lo=0, hi=255), disk_masks()
    expected = {1: {2}, 2: {0}, 3: {0, 2}}  # 0 pre-contrast, 1 FLAIR, 2 post-contrast
    for sev, gone in expected.items():
        out, _ = perturb(img, msk, name, sev)
        for c in range(3):
            if c in gone:
                want = img[..., 1] if name == "missing_sequence" else np.zeros_like(img[..., 1])
                assert np.array_equal(out[..., c], want)
            else:
                assert np.array_equal(out[..., c], img[..., c])
    assert PERTURBATIONS["missing_sequence"].describe(1) == "post-contrast←FLAIR"
    assert PERTURBATIONS["missing_sequence_zero"].describe(3) == "pre-contrast=0, post-contrast=0"


def test_bad_inputs_are_refused_with_a_clear_message() -> None:
    img, msk = texture(), disk_masks()
    with pytest.raises(BrainsegError, match="unknown perturbation 'snow'.*gaussian_noise"):
        perturb(img, msk, "snow", 1)
    with pytest.raises(BrainsegError, match="severity of blur must be an integer from 0 to 5, got 6"):
        perturb(img, msk, "blur", 6)
    with pytest.raises(BrainsegError, match="severity"):
        make_perturbation("missing_sequence", 4)
    with pytest.raises(BrainsegError, match="uint8"):
        perturb(img.astype(np.float32), msk, "blur", 1)
    with pytest.raises(BrainsegError, match="masks have shape"):
        perturb(img, msk[:, :10], "blur", 1)


# ------------------------------------------------------------------------------------ strata


def _acc(patients: dict[str, list[tuple[int, int, int, int]]]) -> MetricAccumulator:
    acc = MetricAccumulator()
    for p, counts in patients.items():
        acc.add([p] * len(counts), list(range(1, len(counts) + 1)), np.array(counts))
    return acc


def test_strata_partition_the_patients_and_match_hand_computed_values() -> None:
    # six patients, two per site; true volumes (tp+fn) 10, 20, 30, 40, 50, 60 in slice 2 of 3 slices
    inst = {f"TCGA_{s}_{k}": s for k, s in enumerate(["CS", "CS", "DU", "DU", "HT", "HT"])}
    pats, tp = {}, {}
    for k, p in enumerate(inst):
        vol = 10 * (k + 1)
        tp[p] = vol - k  # k missed pixels, k false positives on the first slice
        pats[p] = [(0, k, 0, 100 - k), (tp[p], 0, k, 100 - vol), (0, 0, 0, 100)]
    acc = _acc(pats)
    rows, info = strata_rows(acc, inst, empty_policy="one", model="m")
    assert all(list(r) == list(STRATA_COLUMNS) for r in rows)
    dice = {p: 2 * tp[p] / (2 * tp[p] + 2 * k) for k, p in enumerate(inst)}
    by = {(r["stratum_type"], r["stratum"]): r for r in rows}
    for stype in ("institution", "tumour_size"):
        sub = [r for r in rows if r["stratum_type"] == stype]
        assert sum(r["n_patients"] for r in sub) == 6
        assert sum(r["n_slices"] for r in sub) == 18
    for site in ("CS", "DU", "HT"):
        want = np.mean([dice[p] for p in inst if inst[p] == site])
        assert by[("institution", site)]["dice_patient"] == pytest.approx(want)
    # tertiles of 10…60: q1 = 26.67, q2 = 43.33 → small {10, 20}, medium {30, 40}, large {50, 60}
    assert info["size_thresholds_px"] == pytest.approx([np.quantile([10, 20, 30, 40, 50, 60], 1 / 3),
                                                        np.quantile([10, 20, 30, 40, 50, 60], 2 / 3)])
    names = list(inst)
    for group, members in (("small", names[:2]), ("medium", names[2:4]), ("large", names[4:])):
        assert by[("tumour_size", group)]["n_patients"] == 2
        assert by[("tumour_size", group)]["dice_patient"] == pytest.approx(np.mean([dice[p] for p in members]))
    # slice position: each patient's 3 slices fall one per third; all tumour is in the middle third
    for label in ("first third", "middle third", "last third"):
        assert by[("slice_position", label)]["n_patients"] == 6
        assert by[("slice_position", label)]["n_slices"] == 6
    assert by[("slice_position", "middle third")]["n_tumour_slices"] == 6
    # the first third holds only false positives (patients 1…5) and one clean slice (patient 0, Dice 1)
    assert by[("slice_position", "first third")]["dice_patient"] == pytest.approx(1 / 6)
    assert by[("slice_position", "last third")]["dice_patient"] == pytest.approx(1.0)
    assert not any(r["stratum_type"] == "sequences" for r in rows)  # not known: not made up
    # FLAIR-copy patients (here the 2nd and 5th) against complete ones
    copied = {p: (("pre-contrast",) if k in (1, 4) else ()) for k, p in enumerate(inst)}
    rows, info = strata_rows(acc, inst, empty_policy="one", model="m", copied=copied)
    by = {(r["stratum_type"], r["stratum"]): r for r in rows}
    flair = [p for p in names if copied[p]]
    assert by[("sequences", "FLAIR copies")]["n_patients"] == 2 and by[("sequences", "complete")]["n_patients"] == 4
    assert by[("sequences", "FLAIR copies")]["dice_patient"] == pytest.approx(np.mean([dice[p] for p in flair]))
    assert by[("sequences", "complete")]["dice_patient"] == pytest.approx(
        np.mean([dice[p] for p in names if p not in flair]))
    assert "sequences_rule" in info


def test_size_thresholds_ignore_patients_without_tumour() -> None:
    assert size_thresholds([0, 0, 3, 6, 9]) == pytest.approx((5.0, 7.0))
    assert all(math.isnan(x) for x in size_thresholds([0, 0]))


# --------------------------------------------------------------------- with a trained model


@pytest.fixture(scope="module")
def trained(tiny_run: Path) -> Path:
    evaluate_run(tiny_run, progress=False)  # this module's reference: eval_test/ of the same run
    return tiny_run


@pytest.fixture(scope="module")
def setup(trained: Path):
    from brainseg.data.lgg import index_dataset
    from brainseg.inference.predictor import Predictor
    from brainseg.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(trained / "checkpoint_best.pt")
    cfg = RunConfig.from_dict(ckpt["config"])
    index = index_dataset(cfg.data.root)
    return Predictor([ckpt], device="cpu"), index, split_patients(ckpt, "test"), cfg.eval


def test_severity_zero_reproduces_the_unperturbed_evaluation_exactly(setup, trained: Path) -> None:
    predictor, index, patients, eval_cfg = setup
    cache: dict = {}
    acc, _ = evaluate_patients(predictor, index, patients, eval_cfg, cache=cache, progress=False)
    clean = acc.summary(eval_cfg.empty_policy)
    reference = json.loads((trained / "eval_test" / "summary.json").read_text())["metrics"]
    assert clean["dice"]["per_patient"]["mean"] == reference["dice"]["per_patient"]["mean"]
    for name in NAMES:
        a, _ = evaluate_patients(predictor, index, patients, eval_cfg, perturb=make_perturbation(name, 0),
                                 cache=cache, progress=False)
        assert summaries_equal(a.summary(eval_cfg.empty_policy), clean), name
        assert a.per_slice_rows() == acc.per_slice_rows()


def test_higher_severity_changes_the_metrics(setup) -> None:
    predictor, index, patients, eval_cfg = setup
    cache: dict = {}
    clean, _ = evaluate_patients(predictor, index, patients, eval_cfg, cache=cache, progress=False)
    for name in ("gaussian_noise", "missing_sequence_zero", "rotation"):
        sev = PERTURBATIONS[name].max_severity
        hit, _ = evaluate_patients(predictor, index, patients, eval_cfg, perturb=make_perturbation(name, sev),
                                   cache=cache, progress=False)
        a, b = clean.per_slice_rows(), hit.per_slice_rows()
        assert [(r["tp"], r["fp"], r["fn"]) for r in a] != [(r["tp"], r["fp"], r["fn"]) for r in b], name
        assert [r["prob_max"] for r in a] != [r["prob_max"] for r in b], name


def test_cli_writes_the_tables_and_curves(trained: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "rob"
    rc = cli_main(["robustness", str(trained), "--perturbations", "gaussian_noise,missing_sequence",
                   "--severities", "0,2,5", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "gaussian_noise" in text and "Degrades least" in text
    rows = read_csv(out / "robustness.csv")
    assert list(rows[0]) == list(ROBUSTNESS_COLUMNS)
    keys = [(r["perturbation"], r["severity"]) for r in rows]
    # missing_sequence has no severity 5: skipped
    assert keys == [("none", "0"), ("gaussian_noise", "0"), ("gaussian_noise", "2"), ("gaussian_noise", "5"),
                    ("missing_sequence", "0"), ("missing_sequence", "2")]
    ev = json.loads((trained / "eval_test" / "summary.json").read_text())
    reference = ev["metrics"]["dice"]["per_patient"]
    for r in rows:
        if r["severity"] == "0":
            assert float(r["dice_patient"]) == pytest.approx(reference["mean"], abs=1e-6)
            assert float(r["dice_drop"]) == 0.0
    by = {(r["perturbation"], r["severity"]): r for r in rows}
    assert by[("gaussian_noise", "2")]["parameter"] == "sigma=0.04"
    assert by[("missing_sequence", "2")]["parameter"] == "pre-contrast←FLAIR"
    assert all(r["model"] == "unet" and int(r["n_patients"]) == ev["n_patients"] for r in rows)
    strata = read_csv(out / "strata.csv")
    assert list(strata[0]) == list(STRATA_COLUMNS)
    assert {r["stratum_type"] for r in strata} == {"institution", "tumour_size", "slice_position", "sequences"}
    n = int(by[("none", "0")]["n_patients"])
    for stype in ("institution", "tumour_size", "sequences"):
        assert sum(int(r["n_patients"]) for r in strata if r["stratum_type"] == stype) == n
    assert (out / "robustness_unet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "robustness.json").read_text())
    assert summary["perturbations"]["gaussian_noise"]["levels"]["2"] == "sigma=0.04"


def test_cli_threshold_scores_every_run_at_that_threshold_as_evaluate_does(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "rob"
    assert cli_main(["robustness", str(trained), "--perturbations", "gaussian_noise", "--severities", "1",
                     "--threshold", "0.02", "--out", str(out), "--device", "cpu"]) == 0
    clean = next(r for r in read_csv(out / "robustness.csv") if r["perturbation"] == "none")
    low = evaluate_run(trained, eval_overrides={"threshold": 0.02}, out_dir=tmp_path / "ev", progress=False)
    own = json.loads((trained / "eval_test" / "summary.json").read_text())["metrics"]["dice"]["per_patient"]["mean"]
    want = low["metrics"]["dice"]["per_patient"]["mean"]
    assert want != pytest.approx(own, abs=1e-4)  # the threshold changes this model's score
    assert float(clean["dice_patient"]) == pytest.approx(want, abs=1e-6)
    assert json.loads((out / "robustness.json").read_text())["models"]["unet"]["threshold"] == 0.02
    with pytest.raises(SystemExit):
        cli_main(["robustness", str(trained), "--threshold", "1.5", "--out", str(out)])


def test_cli_on_a_comparison_folder_rebuilds_its_report(trained: Path, tmp_path: Path, capsys) -> None:
    cmp = tmp_path / "cmp"
    shutil.copytree(trained, cmp / "runs" / "unet")
    (cmp / "protocol.json").write_text(json.dumps({"models": ["unet"]}))
    rc = cli_main(["robustness", str(cmp), "--perturbations", "blur", "--severities", "3", "--device", "cpu"])
    assert rc == 0
    rows = read_csv(cmp / "robustness" / "robustness.csv")
    assert [(r["model"], r["perturbation"]) for r in rows] == [("unet", "none"), ("unet", "blur")]
    assert "Robustness" in (cmp / "report.md").read_text()
    assert (cmp / "figures" / "robustness.png").is_file()


def test_cli_errors_are_one_line(tmp_path: Path, capsys, trained: Path) -> None:
    assert cli_main(["robustness", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert cli_main(["robustness", str(trained), "--perturbations", "snow", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "unknown perturbation 'snow'" in err and "Traceback" not in err


def test_resolve_targets_reads_runs_fold_folders_and_comparisons(tmp_path: Path, capsys) -> None:
    from brainseg.evaluation.robustness import resolve_targets

    def ckpt(d: Path) -> Path:
        d.mkdir(parents=True)
        (d / "checkpoint_best.pt").write_bytes(b"")  # only its presence is looked at here
        return d

    run = ckpt(tmp_path / "run")
    folds = [ckpt(tmp_path / "kfold" / f"fold{k}") for k in (0, 1, 10, 2)]
    cmp = tmp_path / "cmp"
    seg = ckpt(cmp / "runs" / "segnet")
    unet_folds = [ckpt(cmp / "runs" / "unet" / f"fold{k}") for k in (0, 1)]
    (cmp / "runs" / "pspnet").mkdir(parents=True)  # not trained yet: left out
    (cmp / "protocol.json").write_text(json.dumps({"models": ["unet", "pspnet", "segnet"]}))

    targets, comparison = resolve_targets([run, tmp_path / "kfold"])
    assert comparison is None
    assert [(t.name, t.run_dirs) for t in targets] == [(None, [run]), ("kfold", [folds[0], folds[1], folds[3], folds[2]])]
    targets, comparison = resolve_targets([cmp])
    assert comparison == cmp
    assert [(t.name, t.run_dirs) for t in targets] == [("unet", unet_folds), ("segnet", [seg])]
    assert capsys.readouterr().err == ""  # pspnet has no checkpoint at all: not trained yet, nothing to say
    with pytest.raises(BrainsegError, match="no checkpoint_last.pt"):
        resolve_targets([run], checkpoint="last")


def test_resolve_targets_says_which_models_and_folds_it_leaves_out(tmp_path: Path, capsys) -> None:
    """A trained model or fold without the checkpoint asked for is named, not silently dropped."""
    from brainseg.evaluation.robustness import resolve_targets

    def ckpt(d: Path, kind: str) -> Path:
        d.mkdir(parents=True)
        (d / f"checkpoint_{kind}.pt").write_bytes(b"")
        return d

    cmp = tmp_path / "cmp"
    ckpt(cmp / "runs" / "segnet", "best")  # best only: left out when last is asked for
    unet = [ckpt(cmp / "runs" / "unet" / f"fold{k}", "last") for k in (0, 1)]
    ckpt(cmp / "runs" / "unet" / "fold2", "best")  # this fold has no last: pooled over two of three
    elsewhere = cmp / "runs" / "pspnet"  # trained on another machine: its results came, its checkpoints did not
    elsewhere.mkdir(parents=True)
    (elsewhere / "config.json").write_text("{}")
    (cmp / "runs" / "deeplabv3plus" / ".remake").mkdir(parents=True)  # not trained: a remake's leftovers only
    (cmp / "runs" / "deeplabv3plus" / ".remake" / "checkpoint_last.pt").write_bytes(b"")
    (cmp / "protocol.json").write_text(json.dumps({"models": ["unet", "segnet", "pspnet", "deeplabv3plus"]}))
    targets, _ = resolve_targets([cmp], checkpoint="last")
    assert [(t.name, t.run_dirs) for t in targets] == [("unet", unet)]
    err = capsys.readouterr().err
    assert "fold2 left out (no checkpoint_last.pt); pooled over 2 of 3 folds" in err
    assert "segnet left out (its runs hold no checkpoint_last.pt here)" in err
    assert "pspnet left out" in err and "deeplabv3plus" not in err


def test_a_comparison_keeps_earlier_models_robustness_when_another_is_added(trained: Path, tmp_path: Path, capsys) -> None:
    """The study's robustness is built model by model, on whichever machine has each model's checkpoints."""
    cmp = tmp_path / "cmp"
    shutil.copytree(trained, cmp / "runs" / "unet")
    (cmp / "protocol.json").write_text(json.dumps({"models": ["unet", "segnet"]}))
    args = ["robustness", str(cmp), "--perturbations", "gamma", "--severities", "3", "--device", "cpu", "--no-report"]
    assert cli_main(args) == 0
    first = read_csv(cmp / "robustness" / "robustness.csv")
    # another machine: unet's checkpoints are gone, segnet's (here the same weights) are present
    shutil.copytree(cmp / "runs" / "unet", cmp / "runs" / "segnet")
    for ck in (cmp / "runs" / "unet").glob("checkpoint_*.pt"):
        ck.unlink()
    assert cli_main(args) == 0
    assert "kept the earlier results of unet" in capsys.readouterr().err
    rows = read_csv(cmp / "robustness" / "robustness.csv")
    assert [r for r in rows if r["model"] == "unet"] == first
    seg = [r for r in rows if r["model"] == "segnet"]
    assert [(r["perturbation"], r["severity"]) for r in seg] == [("none", "0"), ("gamma", "3")]
    assert [r["dice_patient"] for r in seg] == [r["dice_patient"] for r in first]  # the same weights
    summary = json.loads((cmp / "robustness" / "robustness.json").read_text())
    assert set(summary["models"]) == {"unet", "segnet"} and summary["merged_from_earlier"] == ["unet"]
    assert summary["mean_dice_drop"]["unet"] == pytest.approx(summary["mean_dice_drop"]["segnet"], abs=1e-6)
    assert {r["model"] for r in read_csv(cmp / "robustness" / "strata.csv")} == {"unet", "segnet"}
    # results made with other settings are not mixed in, and nothing is overwritten
    before = (cmp / "robustness" / "robustness.csv").read_bytes()
    assert cli_main([*args[:-3], "--severities", "2", "--device", "cpu", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "made with other settings" in err and "gamma 3 (now gamma 2)" in err
    assert (cmp / "robustness" / "robustness.csv").read_bytes() == before
    assert cli_main([*args, "--threshold", "0.3"]) == 2  # another threshold than the kept models' own
    assert "threshold None (now 0.3)" in capsys.readouterr().err
    assert (cmp / "robustness" / "robustness.csv").read_bytes() == before
    # every earlier model evaluated again: nothing is kept, so other settings simply replace the results
    for ck in (cmp / "runs" / "segnet").glob("checkpoint_*.pt"):
        shutil.copy(ck, cmp / "runs" / "unet" / ck.name)
    assert cli_main([*args[:-3], "--severities", "2", "--device", "cpu", "--no-report"]) == 0
    summary = json.loads((cmp / "robustness" / "robustness.json").read_text())
    assert summary["merged_from_earlier"] == [] and summary["severities_run"] == [2]


def test_earlier_robustness_results_that_cannot_be_kept_give_a_one_line_error(tmp_path: Path) -> None:
    from brainseg.evaluation.robustness import _previous

    out = tmp_path / "robustness"
    out.mkdir()
    row = {"model": "unet", "perturbation": "gamma", "severity": 3, "parameter": "γ 1.5", "dice_patient": 0.5,
           "dice_drop": 0.1, "dice_retained": float("nan"), "n_patients": 2, "n_slices": 9}
    write_csv_atomic(out / "robustness.csv", [{**row, "perturbation": CLEAN, "severity": 0}, row], ROBUSTNESS_COLUMNS)
    (out / "strata.csv").write_text("model,stratum_type,stratum,dice_patient\nunet,size,small,0.4\n")
    old = {"split": "test", "seed": 0, "checkpoint": "best", "models": {"unet": {"n_patients": 2}},
           "mean_dice_drop": {"unet": 0.1}, "mean_dice_retained": {"unet": 0.8}, "clean_dice_patient": {"unet": 0.6}}
    (out / "robustness.json").write_text(json.dumps(old))
    kept, rows, srows = _previous(out, {"segnet"}, "test", 0, "best", [("gamma", 3)])
    assert kept["unet"]["mean_dice_retained"] == 0.8 and math.isnan(rows[1]["dice_retained"]) and len(srows) == 1
    # unet evaluated again: other settings do not matter, nothing is kept
    assert _previous(out, {"unet"}, "val", 1, "last", [("blur", 1)]) == ({}, [], [])
    # an older robustness.json without a key, or without an entry for a kept model
    for broken in ({k: v for k, v in old.items() if k != "mean_dice_retained"},
                   {**old, "mean_dice_drop": {}}, {**old, "models": ["unet"]}):
        (out / "robustness.json").write_text(json.dumps(broken))
        with pytest.raises(BrainsegError, match="earlier robustness results cannot be read"):
            _previous(out, {"segnet"}, "test", 0, "best", [("gamma", 3)])

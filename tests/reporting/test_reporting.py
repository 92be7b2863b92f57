"""brainseg.reporting on fake comparison folders: numbers recomputed independently from the CSVs."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from fake_comparison import add_robustness, make_comparison
from PIL import Image
from scipy import stats as sps

from brainseg.errors import BrainsegError
from brainseg.metrics.detection import roc_curve
from brainseg.metrics.stats import bootstrap_ci
from brainseg.reporting import build_report
from brainseg.reporting.comparison import load_comparison
from brainseg.reporting.formatting import display_name
from brainseg.reporting.leaderboard import leaderboard
from brainseg.reporting.leakage import check_leakage
from brainseg.reporting.significance import significance, verdict

N_BOOT = 500
FIGURES = ("paired_dice", "metrics_bars", "dice_per_patient", "learning_curves", "detection", "examples", "robustness")


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _col(rows: list[dict[str, str]], key: str) -> np.ndarray:
    return np.array([float(r[key]) if r[key] != "" else np.nan for r in rows])


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    d = make_comparison(tmp_path_factory.mktemp("cmp") / "single")
    add_robustness(d)
    return d, build_report(d, n_boot=N_BOOT)


@pytest.fixture(scope="module")
def folds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_comparison(tmp_path_factory.mktemp("cmp") / "folds", folds=2, n_patients=8, seed=1)


# --------------------------------------------------------------------------------------- leaderboard


def test_leaderboard_ranked_by_dice_and_equal_to_numpy(single):
    d, written = single
    board = _csv(written["leaderboard_csv"])
    dice = [float(r["dice_patient"]) for r in board]
    assert dice == sorted(dice, reverse=True)
    assert [int(r["rank"]) for r in board] == list(range(1, len(board) + 1))
    assert {r["model"] for r in board} == {"segnet", "unet", "pspnet"}
    for r in board:
        pp = _csv(d / "runs" / r["model"] / "eval_test" / "per_patient.csv")
        for metric in ("dice", "iou", "recall", "precision"):
            vals = _col(pp, metric)
            assert float(r[f"{metric}_patient"]) == pytest.approx(vals.mean(), rel=1e-5)
            lo, hi = float(r[f"{metric}_patient_ci_low"]), float(r[f"{metric}_patient_ci_high"])
            assert lo <= vals.mean() <= hi
            _, blo, bhi = bootstrap_ci(vals, n_boot=N_BOOT, seed=0)
            assert (lo, hi) == pytest.approx((blo, bhi), rel=1e-5)
        assert int(r["n_patients"]) == len(pp)
        summary = json.loads((d / "runs" / r["model"] / "eval_test" / "summary.json").read_text())
        assert float(r["loss"]) == pytest.approx(summary["loss"], rel=1e-5)
        assert float(r["params"]) == summary["params"]
        assert float(r["flops"]) == pytest.approx(summary["flops"])


def test_slice_means_micro_and_detection_from_csv(single):
    d, written = single
    for r in _csv(written["leaderboard_csv"]):
        ev = d / "runs" / r["model"] / "eval_test"
        sl = _csv(ev / "per_slice.csv")
        assert float(r["dice_slice"]) == pytest.approx(_col(sl, "dice").mean(), rel=1e-5)
        tp, fp, fn = (_col(sl, k).sum() for k in ("tp", "fp", "fn"))
        assert float(r["dice_micro"]) == pytest.approx(2 * tp / (2 * tp + fp + fn), rel=1e-5)
        assert float(r["recall_micro"]) == pytest.approx(tp / (tp + fn), rel=1e-5)
        det = {row["level"]: row for row in _csv(ev / "detection.csv")}
        assert float(r["slice_auroc"]) == pytest.approx(float(det["slice"]["auroc"]), rel=1e-5)
        assert float(r["slice_specificity"]) == pytest.approx(float(det["slice"]["specificity"]), rel=1e-5)


def test_fold_pooling(folds):
    cmp = load_comparison(folds)
    assert cmp.n_folds == 2
    board = leaderboard(cmp, n_boot=N_BOOT)
    for r in board:
        runs = [folds / "runs" / r["model"] / f"fold{k}" for k in range(2)]
        per_fold = [_csv(rd / "eval_test" / "per_patient.csv") for rd in runs]
        pooled = np.concatenate([_col(p, "dice") for p in per_fold])
        assert r["n_patients"] == len(pooled) == 8
        assert r["dice_patient"] == pytest.approx(pooled.mean())
        _, lo, hi = bootstrap_ci(pooled, n_boot=N_BOOT, seed=0)
        assert (r["dice_patient_ci_low"], r["dice_patient_ci_high"]) == pytest.approx((lo, hi))
        fold_means = [_col(p, "dice").mean() for p in per_fold]
        assert r["dice_fold_mean"] == pytest.approx(np.mean(fold_means))
        assert r["dice_fold_sd"] == pytest.approx(np.std(fold_means, ddof=1))
        secs = [json.loads((rd / "train_summary.json").read_text())["train_seconds"] for rd in runs]
        assert r["train_seconds"] == pytest.approx(sum(secs))
        # the median epoch over both folds' history.csv (3, 4, 2, 3+40, 4, 2 s each): of the 12
        # epochs sorted, the 6th and 7th are 3 and 4 → 3.5 s; the slow epochs do not move it
        epochs = [float(h["epoch_seconds"]) for rd in runs for h in _csv(rd / "history.csv")]
        assert r["epoch_seconds_median"] == pytest.approx(np.median(epochs)) == pytest.approx(3.5)
        # Slice detection over the pooled folds: counts from both folds' per_slice.csv.
        sl = [row for rd in runs for row in _csv(rd / "eval_test" / "per_slice.csv")]
        truth = np.array([float(s["true_area"]) > 0 for s in sl])
        pred = np.array([float(s["pred_area"]) >= 10 for s in sl])
        assert r["slice_sensitivity"] == pytest.approx((truth & pred).sum() / truth.sum())
        assert r["slice_specificity"] == pytest.approx((~truth & ~pred).sum() / (~truth).sum())
        from sklearn.metrics import roc_auc_score

        assert r["slice_auroc"] == pytest.approx(roc_auc_score(truth, [float(s["prob_max"]) for s in sl]))
    sig = significance(cmp, board, n_boot=N_BOOT)
    assert all(s["n"] == 8 for s in sig)


def test_fold_report_builds(folds):
    written = build_report(folds, n_boot=N_BOOT)
    board = _csv(written["leaderboard_csv"])
    assert {"n_folds", "dice_fold_mean", "dice_fold_sd"} <= set(board[0])
    html = written["report_html"].read_text()
    assert "2-fold cross-validation" in html and "Dice over 2 folds" in html
    assert "Passed" in html


# -------------------------------------------------------------------------------------- significance


def test_significance_matches_scipy(single):
    d, written = single
    sig = _csv(written["significance_csv"])
    assert len(sig) == 3
    md_lines = written["report_md"].read_text().splitlines()
    assert any("Median Δ" in line for line in md_lines)
    ranked = [r["model"] for r in _csv(written["leaderboard_csv"])]
    scipy_p: dict[tuple[str, str], float] = {}
    for s in sig:
        assert ranked.index(s["model_a"]) < ranked.index(s["model_b"])  # pairs in leaderboard order
        a = {r["patient"]: float(r["dice"]) for r in _csv(d / "runs" / s["model_a"] / "eval_test" / "per_patient.csv")}
        b = {r["patient"]: float(r["dice"]) for r in _csv(d / "runs" / s["model_b"] / "eval_test" / "per_patient.csv")}
        keys = sorted(a)
        res = sps.wilcoxon([a[k] for k in keys], [b[k] for k in keys])
        assert float(s["p"]) == pytest.approx(res.pvalue, rel=1e-5)
        assert float(s["mean_diff"]) == pytest.approx(np.mean([a[k] - b[k] for k in keys]), rel=1e-4)
        # the report's table shows the median difference beside the mean's interval
        median = float(np.median([a[k] - b[k] for k in keys]))
        row = next(line for line in md_lines if line.startswith(f"| {display_name(s['model_a'])} vs {display_name(s['model_b'])} |"))
        assert row.split("|")[5].strip() == f"{median:+.3f}" and f"; median {median:+.3f})" in s["statement"]
        scipy_p[(s["model_a"], s["model_b"])] = res.pvalue
    # Holm's step-down adjustment by hand from SciPy's p-values: the i-th smallest of m is
    # max over j ≤ i of min(1, (m − j)·p_(j)); a pair is real when that is below α = 0.05.
    order = sorted(scipy_p, key=scipy_p.get)
    holm, running = {}, 0.0
    for j, pair in enumerate(order):
        running = max(running, min(1.0, (len(order) - j) * scipy_p[pair]))
        holm[pair] = running
    for s in sig:
        expected = holm[(s["model_a"], s["model_b"])]
        assert float(s["p_holm"]) == pytest.approx(expected, rel=1e-5)
        assert ("a real difference" in s["statement"]) == (expected < 0.05)
        assert ("not distinguishable" in s["statement"]) == (expected >= 0.05)


def test_verdict_with_too_few_patients(tmp_path):
    d = make_comparison(tmp_path / "few", models=("unet", "segnet"), n_patients=4, examples=False)
    cmp = load_comparison(d)
    board = leaderboard(cmp, n_boot=N_BOOT)
    sig = significance(cmp, board, n_boot=N_BOOT)
    # 4 pairs: the exact two-sided p is at least 2/2^4 = 0.125, so nothing can be significant.
    assert sig[0]["p"] >= 0.125 and not sig[0]["significant"]
    text = verdict(board, sig)
    assert text.startswith("UNet has the highest mean per-patient Dice")
    assert "cannot be told apart from SegNet" in text and "more test patients" in text


def test_roc_curve_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    from brainseg.metrics.detection import auroc

    rng = np.random.default_rng(5)
    y = rng.random(60) < 0.4
    s = np.round(rng.random(60) + 0.4 * y, 1)  # rounded: many ties
    fpr, tpr, area = roc_curve(s, y)
    assert area == pytest.approx(roc_auc_score(y, s))
    assert area == pytest.approx(auroc(s, y))
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.isnan(roc_curve([0.1, 0.2], [True, True])[2])


# ------------------------------------------------------------------------------------ figures, HTML


def test_every_figure_is_a_sensible_png(single):
    _, written = single
    for name in FIGURES:
        path = written[f"figure_{name}"]
        assert path.parent.name == "figures" and path.name == f"{name}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            w, h = im.size
            assert 500 <= w <= 2600 and 350 <= h <= 2600, (name, im.size)
            # Not a blank canvas: a real figure uses many grey levels.
            assert len(np.unique(np.asarray(im.convert("L")))) > 20


def test_html_is_self_contained(single):
    _, written = single
    html = written["report_html"].read_text()
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert html.count("data:image/png;base64,") == len(FIGURES) == len(uris)
    # Each embedded image is byte-for-byte the PNG written to figures/.
    assert sorted(base64.b64decode(u) for u in uris) == sorted(written[f"figure_{n}"].read_bytes() for n in FIGURES)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "<script" not in html.lower() and "<link" not in html.lower() and "@import" not in html
    for section in ("Results", "Data and split", "Protocol", "Significance and verdict", "Beside the slice-split study",
                    "Figures", "Robustness", "Reproduce"):
        assert f">{section}</h2>" in html
    assert ">Leaderboard</h3>" in html
    # a results section: the headline table and figure come before how they were made
    assert html.index(">Results</h2>") < html.index('alt="paired per-patient Dice"') < html.index(">Protocol</h2>")
    assert "Leakage check — Passed" in html
    assert "brainseg compare --size 32" in html  # the command from protocol.json
    assert "empty truth and empty prediction score 1" in html  # the empty policy text from summary.json


def test_markdown_links_figures_relatively(single):
    d, written = single
    md = written["report_md"].read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == len(FIGURES)
    assert all(not Path(link).is_absolute() and (d / link).is_file() for link in links)
    board_md = written["leaderboard_md"].read_text()
    assert board_md.index("UNet") < board_md.index("PSPNet") < board_md.index("SegNet")


def test_robustness_table_values(single):
    d, written = single
    html = written["report_html"].read_text()
    rows = _csv(d / "robustness" / "robustness.csv")
    blur3 = next(r for r in rows if r["model"] == "unet" and r["perturbation"] == "blur" and r["severity"] == "3")
    assert f"{float(blur3['dice_patient']):.3f}" in html
    assert "Mean per-patient Dice by institution" in html


def test_report_without_optional_parts(tmp_path):
    d = make_comparison(tmp_path / "bare", models=("unet",), examples=False, flops=False)
    (d / "runs" / "unet" / "history.csv").unlink()
    (d / "splits.json").unlink()
    proto = json.loads((d / "protocol.json").read_text())
    for k in ("split", "splits", "command", "data"):
        proto.pop(k)
    (d / "protocol.json").write_text(json.dumps(proto))
    written = build_report(d, n_boot=N_BOOT)
    assert {k for k in written if k.startswith("figure_")} == {"figure_metrics_bars", "figure_dice_per_patient", "figure_paired_dice",
                                                                "figure_detection"}
    html = written["report_html"].read_text()
    assert html.count("data:image/png;base64,") == 4
    assert "slices.npz not found" in html and "No history.csv" in html and "Not checked" in html
    assert "reconstructed" in html
    assert _csv(written["leaderboard_csv"])[0]["flops"] == ""
    assert _csv(written["significance_csv"]) == []  # one model: no pair to test
    assert "it is the only model in this comparison" in html


def test_unevaluated_model_is_left_out_with_a_note(tmp_path):
    d = make_comparison(tmp_path / "partial", examples=False)
    shutil.rmtree(d / "runs" / "pspnet" / "eval_test")
    written = build_report(d, n_boot=N_BOOT)
    assert [r["model"] for r in _csv(written["leaderboard_csv"])] == ["unet", "segnet"]
    assert "pspnet: not evaluated yet" in written["report_html"].read_text()


def test_split_leak_is_reported(tmp_path):
    d = make_comparison(tmp_path / "leak", models=("unet", "segnet"), examples=False)
    proto = json.loads((d / "protocol.json").read_text())
    leaked = proto["splits"][0]["test"][0]
    proto["splits"][0]["train"].append(leaked)
    (d / "protocol.json").write_text(json.dumps(proto))
    ok, lines = check_leakage(load_comparison(d))
    assert ok is False and any(leaked in line for line in lines)


def test_examples_resized_and_pickles_refused(tmp_path):
    from brainseg.reporting.overlays import load_examples, slice_dice

    d = make_comparison(tmp_path / "ex", models=("unet", "segnet"))
    ex_dir = d / "examples"
    np.savez(ex_dir / "segnet.npz", probs=np.zeros((3, 16, 16), np.float16))  # saved at the model's size
    np.savez(ex_dir / "unet.npz", probs=np.array([None, None, None], dtype=object))  # needs pickle
    ex, notes = load_examples(ex_dir, ["unet", "segnet"])
    assert ex.probs["segnet"].shape == (3, 32, 32)
    assert "unet" not in ex.probs and any("pickle" in n for n in notes)
    assert ex.kinds == ["best", "typical", "worst"] and ex.slices == [3, 5, 7]
    truth = np.zeros((4, 4), bool)
    truth[:2, :2] = True
    pred = np.zeros((4, 4), bool)
    pred[:2, :1] = True
    pred[3, 3] = True
    assert slice_dice(pred, truth) == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))
    assert slice_dice(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0


# ------------------------------------------------------------------------------------ errors and CLI


def test_not_a_comparison_folder(tmp_path):
    with pytest.raises(BrainsegError, match=r"not a comparison folder: protocol\.json is missing"):
        build_report(tmp_path)
    with pytest.raises(BrainsegError, match="is not a folder"):
        build_report(tmp_path / "nowhere")
    (tmp_path / "protocol.json").write_text(json.dumps({"models": ["unet"]}))
    (tmp_path / "runs").mkdir()
    with pytest.raises(BrainsegError, match=f"{re.escape(str(tmp_path))}: no model has evaluation results"):
        build_report(tmp_path)


def test_cli_report(single, capsys):
    from brainseg.cli import main

    d, _ = single
    assert main(["report", str(d), "--n-boot", "200"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[2].split()[:2] == ["1", "UNet"]
    assert str(d / "report.html") in out and str(d / "figures" / "examples.png") in out
    assert main(["report", str(d / "runs")]) == 2
    assert "brainseg report: error:" in capsys.readouterr().err


def test_verdict_states_best_model_and_real_differences(single):
    d, _ = single
    cmp = load_comparison(d)
    board = leaderboard(cmp, n_boot=N_BOOT)
    sig = significance(cmp, board, n_boot=N_BOOT)
    text = verdict(board, sig)
    gap = board[0]["dice_patient"] - board[1]["dice_patient"]
    assert text.startswith(f"{board[0]['label']} has the highest mean per-patient Dice, {board[0]['dice_patient']:.3f}")
    assert f"{gap:+.3f} ahead of {board[1]['label']}" in text
    vs_best = [s for s in sig if s["model_a"] == board[0]["model"]]
    if all(s["significant"] for s in vs_best):
        assert "significantly better than every other model" in text
    else:
        assert "cannot be told apart" in text
    for s in sig:
        loser = s["model_b"] if s["better"] == s["model_a"] else s["model_a"]
        pair = f"{display_name(s['better'])} > {display_name(loser)}"
        assert (pair in text) == s["significant"]


def test_example_rows_are_the_pools_best_typical_and_worst_by_mean_dice():
    """choose_rows on a hand-made pool: mean Dice over two models decides the rows."""
    from brainseg.reporting.overlays import Examples, choose_rows

    masks = np.zeros((6, 4, 4), np.uint8)
    masks[:, :2, :2] = 1  # 4 truth pixels per slice
    # model A marks k of the 4 truth pixels on slice k-1 (k = 1..4), all 4 on slices 4 and 5;
    # model B marks all 4 everywhere except slice 5 (nothing)
    a = np.zeros((6, 4, 4), bool)
    for i, k in enumerate((1, 2, 3, 4, 4, 4)):
        a[i].flat[[0, 1, 4, 5][:k]] = True
    b = np.repeat(masks.astype(bool)[:1], 6, axis=0)
    b[5] = False
    # slice Dice: A = 2k/(k+4) → 0.4, 0.667, 0.857, 1, 1, 1; B = 1, 1, 1, 1, 1, 0
    # means: 0.7, 0.833, 0.929, 1.0, 1.0, 0.5 → worst slice 5, best slice 4 (ties: later patient first)
    ex = Examples(images=np.zeros((6, 4, 4), np.uint8), masks=masks, patients=[f"P{i}" for i in range(6)],
                  slices=list(range(6)), kinds=[""] * 6, probs={}, preds={"A": a, "B": b}, rule="pool")
    rows = choose_rows(ex, 1)
    # sorted: P5, P0, P1, P2, P3, P4; the typical row is the middle one, sorted[6 // 2] = P2
    assert list(zip(rows.kinds, rows.patients)) == [("best", "P4"), ("typical", "P2"), ("worst", "P5")]
    np.testing.assert_array_equal(rows.preds["A"][2], a[5])
    two = choose_rows(ex, 2)
    assert [p for p in two.patients] == ["P4", "P3", "P1", "P2", "P5", "P0"]


def test_headline_counts_models_and_names_those_not_yet_run(tmp_path):
    d = make_comparison(tmp_path / "part", models=("unet", "segnet"), examples=False)
    proto = json.loads((d / "protocol.json").read_text())
    proto["models"] = ["unet", "attention_unet", "segnet", "pspnet"]
    (d / "protocol.json").write_text(json.dumps(proto))
    build_report(d)
    assert "2 models compared (2 of the protocol's 4; Attention UNet, PSPNet not yet run) on" in (d / "report.md").read_text()
    one = make_comparison(tmp_path / "one", models=("unet",), examples=False)
    build_report(one)
    assert "> One model evaluated on" in (one / "report.md").read_text()

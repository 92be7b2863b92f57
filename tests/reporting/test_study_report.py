"""The study parts of the report: surface columns of the leaderboard, the section beside the
slice-split study, the what-is-established paragraph, folded settings and the run environment."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from fake_comparison import make_comparison

from brainseg.reporting import build_report
from brainseg.reporting.comparison import load_comparison, read_table
from brainseg.reporting.leaderboard import leaderboard, pooled_patients
from brainseg.reporting.significance import significance
from brainseg.reporting.study_sections import LEAKY_REFERENCE, established_text

N_BOOT = 200


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    d = make_comparison(tmp_path_factory.mktemp("study") / "cmp", models=("unet", "segnet", "pspnet"), folds=2,
                        n_patients=12)
    return d, build_report(d, n_boot=N_BOOT)


def test_leaderboard_surface_columns_recomputed_from_per_patient_files(study) -> None:
    d, written = study
    board = {r["model"]: r for r in read_table(written["leaderboard_csv"])}
    for m in ("unet", "segnet", "pspnet"):
        rows = [r for k in range(2) for r in read_table(d / "runs" / m / f"fold{k}" / "eval_test" / "per_patient.csv")]
        assert len(rows) == 12  # every patient once, pooled over the folds
        hd = np.array([r["hd95"] for r in rows])
        assert board[m]["hd95_median"] == pytest.approx(np.median(hd), rel=1e-5)
        assert board[m]["dice_patient_median"] == pytest.approx(np.median([r["dice"] for r in rows]), rel=1e-5)
        assert board[m]["hd95_mean"] == pytest.approx(hd.mean(), rel=1e-5)
        assert board[m]["assd_mean"] == pytest.approx(np.mean([r["assd"] for r in rows]), rel=1e-5)
        assert board[m]["nsd_mean"] == pytest.approx(np.mean([r["nsd"] for r in rows]), rel=1e-5)
        found, truth = sum(r["lesions_detected"] for r in rows), sum(r["lesions_truth"] for r in rows)
        assert board[m]["lesion_sensitivity"] == pytest.approx(found / truth, rel=1e-5)
        assert board[m]["fp_lesions_per_patient"] == pytest.approx(np.mean([r["fp_lesions"] for r in rows]), rel=1e-5)
    md = written["leaderboard_md"].read_text()
    assert "HD95 median (px)" in md and "Lesion sensitivity" in md and "NSD (τ = 2 px)" in md


def test_beside_the_slice_split_study_shows_three_averagings(study) -> None:
    d, written = study
    md = written["report_md"].read_text()
    part = md[md.index("## Beside the slice-split study"):]
    part = part[: part.index("\n## ", 5)]
    board = {r["model"]: r for r in read_table(written["leaderboard_csv"])}
    lines = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]] for ln in part.splitlines()
             if ln.startswith("| ") and not ln.startswith("| Model")}
    for m, name in (("unet", "UNet"), ("segnet", "SegNet"), ("pspnet", "PSPNet")):
        theirs, ours, per_slice, micro, delta = lines[name]
        assert theirs.startswith(f"{LEAKY_REFERENCE[m]:.4f}")
        assert ours.startswith(f"{board[m]['dice_patient']:.3f}") and per_slice == f"{board[m]['dice_slice']:.3f}"
        assert micro == f"{board[m]['dice_micro']:.3f}"
        assert float(delta) == pytest.approx(board[m]["dice_patient"] - LEAKY_REFERENCE[m], abs=6e-4)
    # models of the leaky study that this comparison lacks are listed, without our numbers
    assert lines["Attention UNet"][0].startswith("0.8895 (#1)") and lines["Attention UNet"][1] == "–"
    for word in ("Split.", "Averaging.", "Budget and resolution.", "32×32 px input", "6 epochs"):
        assert word in part, word


def test_established_paragraph_names_real_and_unresolved_differences(study) -> None:
    d, _ = study
    cmp = load_comparison(d)
    board = leaderboard(cmp, n_boot=N_BOOT)
    sig = significance(cmp, board, alpha=0.05, n_boot=N_BOOT)
    text = established_text(board, sig, alpha=0.05, n_folds=cmp.n_folds)
    real = [r for r in sig if r["significant"]]
    assert real  # the fake qualities are far apart: UNet 0.85 recall vs SegNet 0.55 on 12 patients
    assert "12 patients from 2-fold cross-validation" in text and "UNet > SegNet" in text
    assert "Holm over all 3 pairs" in text
    # too few patients for any significance: nothing is called established
    small = make_comparison(d.parent / "small", models=("unet", "segnet"), n_patients=3)
    c2 = load_comparison(small)
    b2 = leaderboard(c2, n_boot=N_BOOT)
    s2 = significance(c2, b2, alpha=0.05, n_boot=N_BOOT)
    t2 = established_text(b2, s2, alpha=0.05, n_folds=0)
    assert "no difference in per-patient Dice between any two models" in t2
    assert "Not established: the order within UNet vs SegNet" in t2


def test_settings_folded_and_environment_only_when_recorded(study, tmp_path) -> None:
    d, written = study
    html, md = written["report_html"].read_text(), written["report_md"].read_text()
    folded = re.search(r"<details><summary>Shared settings \((\d+) rows; click to show\)</summary>(.*?)</details>", html, re.S)
    assert folded and "<td class=\"l\">train.lr</td>" in folded.group(2)
    assert "<details><summary>Shared settings" in md  # GitHub renders it folded too
    assert "Run environment" not in md  # the fake runs record none
    env = {"python": "3.11.9", "torch": "2.13.0+cpu", "cpu": {"cores": 2}}
    d2 = make_comparison(tmp_path / "env", models=("unet", "segnet"))
    for m in ("unet", "segnet"):
        p = d2 / "runs" / m / "train_summary.json"
        s = json.loads(p.read_text())
        s["environment"] = {**env, "host": f"box-{m}"}
        p.write_text(json.dumps(s))
    md2 = build_report(d2, n_boot=N_BOOT)["report_md"].read_text()
    part = md2[md2.index("### Run environment"):]
    assert "| torch | 2.13.0+cpu |" in part and "| cpu.cores | 2 |" in part and "box-segnet; box-unet" in part


def test_report_without_surface_columns_has_no_surface_table(tmp_path) -> None:
    d = make_comparison(tmp_path / "old", models=("unet", "segnet"), surface=False)
    written = build_report(d, n_boot=N_BOOT)
    board = read_table(written["leaderboard_csv"])
    assert all(math.isnan(r["hd95_median"]) for r in board)
    assert "HD95" not in written["report_md"].read_text()
    cmp = load_comparison(d)
    assert all("hd95" not in r for r in pooled_patients(cmp.runs["unet"])[0])


def test_a_fold_without_surface_columns_leaves_the_model_out_of_the_surface_table(tmp_path) -> None:
    d = make_comparison(tmp_path / "mixed", models=("unet", "segnet"), folds=2, n_patients=8)
    old = d / "runs" / "segnet" / "fold1" / "eval_test" / "per_patient.csv"
    rows = read_table(old)
    keep = ["patient", "institution", "n_slices", "tp", "fp", "fn", "tn", "dice", "iou", "precision", "recall",
            "specificity", "true_volume_px", "pred_volume_px"]
    old.write_text("\n".join([",".join(keep)] + [",".join(str(r[k]) for k in keep) for r in rows]) + "\n")
    written = build_report(d, n_boot=N_BOOT)
    board = {r["model"]: r for r in read_table(written["leaderboard_csv"])}
    assert math.isnan(board["segnet"]["hd95_median"]) and math.isnan(board["segnet"]["lesion_sensitivity"])
    assert not math.isnan(board["unet"]["hd95_median"])
    md = written["report_md"].read_text()
    assert "segnet/fold1 has no surface metrics" in md and "run `brainseg evaluate` on it again" in md


def test_headline_of_an_unfinished_study_says_how_many_folds_are_in(tmp_path) -> None:
    import shutil

    d = make_comparison(tmp_path / "cmp", models=("unet",), folds=2, n_patients=12)
    shutil.rmtree(d / "runs" / "unet" / "fold1")
    md = build_report(d, n_boot=N_BOOT)["report_md"].read_text()
    headline = next(ln for ln in md.splitlines() if ln.startswith("> "))
    assert "6 test patients pooled over 1 of 2 folds (the others not yet run)" in headline
    d2 = make_comparison(tmp_path / "full", models=("unet",), folds=2, n_patients=12)
    assert "12 test patients pooled over 2 folds." in build_report(d2, n_boot=N_BOOT)["report_md"].read_text()


def test_a_model_with_folds_missing_is_listed_after_the_complete_ones_and_not_ranked(tmp_path) -> None:
    import shutil

    # UNet is the fake's best model (recall 0.85 against PSPNet's 0.72) but has only 1 of 2 folds
    d = make_comparison(tmp_path / "cmp", models=("pspnet", "unet"), folds=2, n_patients=12)
    shutil.rmtree(d / "runs" / "unet" / "fold1")
    cmp = load_comparison(d)
    board = leaderboard(cmp, n_boot=N_BOOT)
    by = {r["model"]: r for r in board}
    assert by["unet"]["dice_patient"] > by["pspnet"]["dice_patient"]  # better on its own 6 patients...
    assert [r["model"] for r in board] == ["pspnet", "unet"]  # ...yet listed after the complete model
    assert (by["unet"]["partial"], by["pspnet"]["partial"]) == (True, False)
    assert (by["unet"]["n_patients"], by["pspnet"]["n_patients"]) == (6, 12)
    md = build_report(d, n_boot=N_BOOT)["report_md"].read_text()
    headline = next(ln for ln in md.splitlines() if ln.startswith("> "))
    assert "Best: PSPNet" in headline and "Not ranked yet: UNet (1 of 2 folds, 6 patients)." in headline
    assert "| – | UNet (1 of 2 folds) |" in md and "| UNet (1 of 2 folds) | " in md.split("Boundary and lesions")[1]
    assert "PSPNet has the highest mean per-patient Dice" in md and "UNet is not ranked yet" in md
    assert "than every other model" not in md  # the ranking leaves the incomplete UNet out
    from brainseg.reporting.comparison import read_table
    from brainseg.reporting.report import leaderboard_text

    text = leaderboard_text(read_table(d / "leaderboard.csv"))  # what `brainseg report` prints
    assert " 1  PSPNet " in text and " –  UNet (1 fold) " in text
    # with no complete model at all, the leader is named as such
    shutil.rmtree(d / "runs" / "pspnet" / "fold1")
    md = build_report(d, n_boot=N_BOOT)["report_md"].read_text()
    assert "Leading so far: UNet" in next(ln for ln in md.splitlines() if ln.startswith("> "))


def test_a_claim_on_fewer_patients_than_the_others_says_how_many() -> None:
    from brainseg.reporting.significance import pair_claim

    sig = [{"model_a": "unet", "model_b": "attention_unet", "better": "unet", "n": 54},
           {"model_a": "unet", "model_b": "segnet", "better": "unet", "n": 33},
           {"model_a": "segnet", "model_b": "attention_unet", "better": "attention_unet", "n": 33}]
    assert [pair_claim(r, sig) for r in sig] == [
        "UNet > Attention UNet", "UNet > SegNet (on 33 patients)", "Attention UNet > SegNet (on 33 patients)"]


def test_a_protocol_model_with_no_run_folder_gets_one_note(tmp_path) -> None:
    d = make_comparison(tmp_path / "cmp", models=("unet",), folds=2, n_patients=8)
    protocol = json.loads((d / "protocol.json").read_text())
    protocol["models"].append("pspnet")
    (d / "protocol.json").write_text(json.dumps(protocol))
    notes = load_comparison(d).notes
    assert [n for n in notes if "pspnet" in n] == [f"pspnet: not run yet (no {d / 'runs' / 'pspnet'}); left out."]
    (d / "runs" / "pspnet" / "fold0").mkdir(parents=True)  # begun: each fold's state is named
    notes = load_comparison(d).notes
    assert sum("pspnet fold" in n for n in notes) == 2


def test_the_robustness_section_names_the_models_not_yet_perturbed(tmp_path) -> None:
    from fake_comparison import add_robustness

    d = make_comparison(tmp_path / "cmp", models=("unet", "segnet", "pspnet"), folds=2, n_patients=8)
    add_robustness(d, models=("segnet",))
    md = build_report(d, n_boot=N_BOOT)["report_md"].read_text()
    section = md.split("## Robustness")[1].split("\n## ")[0]
    assert "Not yet run under the perturbations: UNet, PSPNet (" in section
    add_robustness(d, models=("segnet", "unet", "pspnet"))
    md = build_report(d, n_boot=N_BOOT)["report_md"].read_text()
    assert "Not yet run under the perturbations" not in md


def test_the_robustness_section_says_which_models_were_perturbed_as_other_runs(tmp_path) -> None:
    """A clean robustness Dice that is not the comparison's own (folds trained again on a machine
    that could not repeat them) is named, with both figures; one that matches is not."""
    from fake_comparison import add_robustness

    from brainseg.fileio import read_csv, write_csv_atomic

    d = make_comparison(tmp_path / "cmp", models=("unet", "segnet"), folds=2, n_patients=8)
    add_robustness(d, models=("unet", "segnet"))
    board = {r["model"]: float(r["dice_patient"]) for r in read_csv(build_report(d, n_boot=N_BOOT)["leaderboard_csv"])}
    path = d / "robustness" / "robustness.csv"
    rows = read_csv(path)
    clean = {"unet": board["unet"] + 0.0002, "segnet": board["segnet"] - 0.0412}  # within / beyond rounding
    for r in rows:
        if r["perturbation"] == "none":
            r["dice_patient"] = str(clean[r["model"]])
    write_csv_atomic(path, rows, list(rows[0]))
    section = build_report(d, n_boot=N_BOOT)["report_md"].read_text().split("## Robustness")[1].split("\n## ")[0]
    note = next(ln for ln in section.splitlines() if "score otherwise here than in the comparison" in ln)
    assert f"SegNet (clean per-patient Dice {clean['segnet']:.4f} here, {board['segnet']:.4f} above)" in note
    assert "UNet" not in note

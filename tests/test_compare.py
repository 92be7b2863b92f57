"""`brainseg compare` end to end on tiny phantoms: one split for all, reuse on re-run, LOIO folds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from brainseg.cli import main
from brainseg.data.lgg import index_dataset
from brainseg.fileio import read_csv, read_json
from brainseg.training.checkpoint import load_checkpoint

TINY = ["--size", "32", "--width", "4", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
        "--set", "data.val_fraction=0.25", "--set", "data.test_fraction=0.25"]


def test_compare_two_models_then_reuse(tiny_phantoms: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp"
    args = ["compare", "--data", str(tiny_phantoms), "--models", "unet,segnet", "--out", str(out), *TINY]
    assert main(args) == 0
    rows = read_csv(out / "leaderboard.csv")
    assert sorted(r["model"] for r in rows) == ["segnet", "unet"]
    for name in ("report.html", "report.md", "leaderboard.md", "protocol.json", "splits.json"):
        assert (out / name).is_file(), name
    # every model was tested on the same patients, none of whom it trained on
    split = read_json(out / "splits.json")["splits"][0]
    for m in ("unet", "segnet"):
        tested = {r["patient"] for r in read_csv(out / "runs" / m / "eval_test" / "per_patient.csv")}
        assert tested == set(split["test"])
        ckpt_split = load_checkpoint(out / "runs" / m / "checkpoint_best.pt")["split"]
        assert ckpt_split["id"] == split["id"] and tested.isdisjoint(ckpt_split["train"])
    ckpt = out / "runs" / "unet" / "checkpoint_best.pt"
    before = ckpt.stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    assert "result files present and matching the protocol, skipping training and evaluation" in capsys.readouterr().err
    assert ckpt.stat().st_mtime_ns == before
    # other training settings in the same folder are refused, not mixed in
    assert main([*args[:-len(TINY)], *TINY[:6], "--epochs", "2", *TINY[8:]]) == 2
    assert "other settings" in capsys.readouterr().err


def test_leave_each_institution_out(tiny_phantoms: Path, tmp_path: Path) -> None:
    out = tmp_path / "loio"
    args = ["compare", "--data", str(tiny_phantoms), "--models", "unet", "--out", str(out),
            "--holdout-institution", "all", *TINY]
    assert main(args) == 0
    index = index_dataset(tiny_phantoms)
    sites = sorted(set(index.institutions.values()))
    splits = read_json(out / "splits.json")["splits"]
    assert len(splits) == len(sites)
    for k, site in enumerate(sites):
        tested = {r["patient"] for r in read_csv(out / "runs" / "unet" / f"fold{k}" / "eval_test" / "per_patient.csv")}
        assert tested == {p for p, s in index.institutions.items() if s == site}
        assert tested.isdisjoint(splits[k]["train"]) and tested.isdisjoint(splits[k]["val"])
    assert (out / "report.html").is_file()


@pytest.mark.parametrize("models, match", [("unet,nope", "unknown model"), ("unet,unet", "twice")])
def test_bad_model_lists(tmp_path: Path, capsys, models: str, match: str) -> None:
    assert main(["compare", "--models", models, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


RESULT_NAMES = ("train_summary.json", "history.csv", "config.json", "eval_test/summary.json",
                "eval_test/per_patient.csv", "eval_test/per_slice.csv", "eval_test/detection.csv")
REPORT_NAMES = ("leaderboard.csv", "leaderboard.md", "significance.csv", "report.md", "report.html")


def test_committed_results_resume_without_checkpoints(tiny_phantoms: Path, tmp_path: Path, capsys) -> None:
    """A study folder copied without its weights (docs/study): a rerun trains and evaluates nothing,
    keeps the examples, and `brainseg report` rebuilds the same report files."""
    from brainseg.config import RunConfig
    from brainseg.protocol import result_settings, settings_hash

    out = tmp_path / "study"
    args = ["compare", "--data", str(tiny_phantoms), "--models", "unet,segnet", "--out", str(out),
            "--folds", "2", *TINY]
    assert main(args) == 0
    runs = [out / "runs" / m / f"fold{k}" for m in ("unet", "segnet") for k in range(2)]
    splits = read_json(out / "splits.json")["splits"]
    for run in runs:  # each result file records the hash of the fold's own settings and split
        cfg = RunConfig.from_dict(read_json(run / "config.json"))
        want = settings_hash(result_settings(cfg), splits[int(run.name[-1])]["id"])
        assert read_json(run / "train_summary.json")["settings_hash"] == want
        assert read_json(run / "eval_test" / "summary.json")["settings_hash"] == want
    for pt in out.rglob("*.pt"):
        pt.unlink()
    before = {p: p.read_bytes() for run in runs for p in (run / n for n in RESULT_NAMES)}
    examples = {p: p.read_bytes() for p in (out / "examples").glob("*.npz")}
    reports = {n: (out / n).read_bytes() for n in REPORT_NAMES}
    assert examples and len(before) == 4 * len(RESULT_NAMES)
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count("skipping training and evaluation") == 4, err
    assert "training →" not in err and "keeping the example slices" in err
    assert not list(out.rglob("*.pt"))
    assert {p: p.read_bytes() for p in before} == before
    assert {p: p.read_bytes() for p in examples} == examples
    for n in REPORT_NAMES:
        (out / n).unlink()
    assert main(["report", str(out)]) == 0
    assert {n: (out / n).read_bytes() for n in REPORT_NAMES} == reports
    # no examples and no checkpoints: the slices come back from the data, the models are left out
    # of the figure with a note, nothing crashes
    for p in examples:
        p.unlink()
    assert main(args) == 0
    assert "unet, segnet: no checkpoints here" in capsys.readouterr().err
    assert (out / "examples" / "slices.npz").is_file()
    assert "unet.npz not found: unet is left out of the example figure" in (out / "report.md").read_text()


def test_a_run_evaluated_with_other_flags_is_named_not_called_another_split(
    tiny_phantoms: Path, tmp_path: Path, capsys
) -> None:
    """`brainseg evaluate RUN --threshold 0.3` rewrites eval_test under other eval settings: a rerun of
    compare names that setting and the folder to delete (it said "made on split S, not S")."""
    out = tmp_path / "cmp"
    args = ["compare", "--data", str(tiny_phantoms), "--models", "unet", "--out", str(out), *TINY]
    assert main(args) == 0
    run = out / "runs" / "unet"
    assert main(["evaluate", str(run), "--threshold", "0.3", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "eval_test was evaluated with other settings (eval.threshold: 0.3 → 0.5)" in err, err
    assert "made on split" not in err and "delete that folder" in err
    for f in (run / "eval_test").iterdir():
        f.unlink()
    assert main(args) == 0  # evaluated again, under the protocol's threshold
    assert read_json(run / "eval_test" / "summary.json")["threshold"] == 0.5


def test_committed_results_of_another_protocol_are_refused(tiny_phantoms: Path, tmp_path: Path, capsys) -> None:
    """Result files whose recorded hash differs name the differing setting, and nothing is trained."""
    import json

    out = tmp_path / "study"
    args = ["compare", "--data", str(tiny_phantoms), "--models", "unet", "--out", str(out), *TINY]
    assert main(args) == 0
    run = out / "runs" / "unet"
    for pt in run.glob("*.pt"):
        pt.unlink()
    cfg_path = run / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["train"]["lr"] = 0.5  # as if another machine had trained this fold under other settings
    cfg_path.write_text(json.dumps(cfg))
    for name in ("train_summary.json", "eval_test/summary.json"):
        s = json.loads((run / name).read_text())
        s["settings_hash"] = "0123456789abcdef"
        (run / name).write_text(json.dumps(s))
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "train.lr" in err and "Traceback" not in err
    assert not list(run.glob("*.pt"))


def test_committed_results_from_before_a_setting_was_added_are_still_reused(
    tiny_phantoms: Path, tmp_path: Path, capsys
) -> None:
    """A hash covers today's defaults: a setting added to brainseg after a fold was committed changes the
    hash but not the fold's settings, so the fold is still skipped (it was refused as "another split")."""
    import json

    from brainseg.config import RunConfig
    from brainseg.protocol import result_settings, settings_hash

    out = tmp_path / "study"
    args = ["compare", "--data", str(tiny_phantoms), "--models", "unet", "--out", str(out), *TINY]
    assert main(args) == 0
    run = out / "runs" / "unet"
    for pt in run.glob("*.pt"):
        pt.unlink()
    # what the brainseg before eval.min_lesion_size existed recorded: the hash without that setting
    older = result_settings(RunConfig.from_dict(read_json(run / "config.json")))
    del older["eval.min_lesion_size"]
    for name in ("train_summary.json", "eval_test/summary.json"):
        s = read_json(run / name)
        s["settings_hash"] = settings_hash(older, s["split_id"])
        if "eval_config" in s:
            del s["eval_config"]["min_lesion_size"]
        (run / name).write_text(json.dumps(s))
    before = {n: (run / n).read_bytes() for n in RESULT_NAMES}
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "skipping training and evaluation" in err and "training →" not in err, err
    assert {n: (run / n).read_bytes() for n in RESULT_NAMES} == before
    assert not list(run.glob("*.pt"))
    # the same older files under another threshold are still refused, naming it
    assert main([*args, "--set", "eval.threshold=0.4"]) == 2
    assert "eval.threshold" in capsys.readouterr().err


@pytest.mark.parametrize("path, ignored", [
    ("docs/study/runs/unet/fold0/checkpoint_best.pt", True),
    ("docs/study/runs/unet/fold0/checkpoint_last.pt", True),
    ("docs/study/.brainseg.lock", True),
    ("docs/study/runs/unet/fold0/.brainseg.lock", True),
    ("docs/study/runs/unet/fold0/eval_test/.summary.json.k2j4.tmp", True),
    ("docs/study/runs/unet/fold0/.remake/history.csv", True),
    *((f"docs/study/runs/unet/fold0/{name}", False) for name in RESULT_NAMES),
    ("docs/study/examples/unet.npz", False),
    ("docs/study/report.md", False),
])
def test_gitignore_keeps_study_results_and_drops_weights(path: str, ignored: bool) -> None:
    """The committed study (docs/study) keeps its result files although `runs/` is ignored elsewhere."""
    import shutil
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (repo / ".git").exists():
        pytest.skip("not a git checkout")
    rc = subprocess.run(["git", "check-ignore", "-q", path], cwd=repo, check=False).returncode
    assert rc in (0, 1) and (rc == 0) == ignored, path


def test_examples_of_a_model_trained_elsewhere_are_kept(tiny_phantoms: Path, tmp_path: Path, capsys) -> None:
    """A study finished over two machines: unet's checkpoints are gone (trained elsewhere), segnet
    is trained here; the example figure shows both, on the same slices (the ground truth's pool)."""
    from brainseg.evaluation.examples import pool_of
    from brainseg.reporting.overlays import load_examples

    out = tmp_path / "study"
    base = ["compare", "--data", str(tiny_phantoms), "--out", str(out), "--folds", "2", *TINY]
    assert main([*base, "--models", "unet"]) == 0
    unet_npz = out / "examples" / "unet.npz"
    written = unet_npz.read_bytes()
    for pt in (out / "runs" / "unet").rglob("*.pt"):
        pt.unlink()
    capsys.readouterr()
    assert main([*base, "--models", "unet,segnet"]) == 0
    err = capsys.readouterr().err
    assert err.count("skipping training and evaluation") == 2 and "keeping the example slices of unet" in err
    assert unet_npz.read_bytes() == written
    pool = pool_of(out / "examples" / "slices.npz")
    assert pool_of(unet_npz) == pool_of(out / "examples" / "segnet.npz") == pool
    # the pool is each test patient's largest-tumour slice, over both folds
    truth = {}
    for k in range(2):
        for r in read_csv(out / "runs" / "segnet" / f"fold{k}" / "eval_test" / "per_slice.csv"):
            if float(r["true_area"]) > 0:
                truth.setdefault(r["patient"], []).append((-float(r["true_area"]), int(r["slice"])))
    assert pool == sorted((p, min(v)[1]) for p, v in truth.items())
    ex, notes = load_examples(out / "examples", ["unet", "segnet"])
    assert ex is not None and set(ex.preds) == {"unet", "segnet"}, notes
    assert "left out of the example figure" not in (out / "report.md").read_text()
    assert (out / "figures" / "examples.png").is_file()


def test_robustness_model_by_model_as_each_finishes(tiny_phantoms: Path, tmp_path: Path, capsys) -> None:
    """--robustness: each model is run under the perturbations once its runs finish, into
    <out>/robustness/; a re-run without the checkpoints keeps those results and adds nothing."""
    out = tmp_path / "rob"
    args = ["compare", "--data", str(tiny_phantoms), "--models", "unet,segnet", "--out", str(out),
            "--robustness", "quick", *TINY]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count("robustness done") == 2
    rob = read_json(out / "robustness" / "robustness.json")
    assert set(rob["models"]) == {"unet", "segnet"}
    rows = read_csv(out / "robustness" / "robustness.csv")
    assert {(r["perturbation"], r["severity"]) for r in rows if r["model"] == "unet"} == {
        (r["perturbation"], r["severity"]) for r in rows if r["model"] == "segnet"}
    assert {int(r["severity"]) for r in rows} == {0, 1, 3, 5}
    assert (out / "robustness" / "robustness_unet.png").is_file() and "## Robustness" in (out / "report.md").read_text()
    before = (out / "robustness" / "robustness.csv").read_bytes()
    for pt in out.rglob("*.pt"):
        pt.unlink()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "unet: robustness results present" in err and "segnet: robustness results present" in err
    assert (out / "robustness" / "robustness.csv").read_bytes() == before
    # robustness results gone too (a machine with neither): the runs are trained again for their
    # checkpoints, checked epoch for epoch; the committed result files do not change
    files = {p: p.read_bytes() for m in ("unet", "segnet") for p in (out / "runs" / m / n for n in RESULT_NAMES)}
    shutil.rmtree(out / "robustness")
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count("training again for them") == 2 and err.count("repeated epoch for epoch") == 2, err
    assert {p: p.read_bytes() for p in files} == files
    assert not list(out.rglob(".remake"))
    rob = read_json(out / "robustness" / "robustness.json")
    for m in ("unet", "segnet"):  # the remade weights are the evaluated ones: same clean Dice
        committed = read_json(out / "runs" / m / "eval_test" / "summary.json")["metrics"]["dice"]["per_patient"]["mean"]
        assert rob["clean_dice_patient"][m] == pytest.approx(committed, abs=1e-9)


def test_an_ensembles_results_in_a_runs_eval_folder_are_not_taken_for_the_runs(
    tiny_phantoms: Path, tmp_path: Path, capsys
) -> None:
    import json

    out = tmp_path / "study"
    args = ["compare", "--data", str(tiny_phantoms), "--models", "unet", "--out", str(out), *TINY]
    assert main(args) == 0
    summary = out / "runs" / "unet" / "eval_test" / "summary.json"
    s = read_json(summary)  # as `brainseg evaluate RUN_A RUN_B` writes it: no single run's hash
    s.update(settings_hash=None, model="ensemble: unet + segnet", ensemble=[{"run_dir": "a"}, {"run_dir": "b"}])
    summary.write_text(json.dumps(s))
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "ensemble" in err and str(summary.parent) in err and "Traceback" not in err


def test_a_remake_that_leaves_the_committed_curve_stops_after_that_epoch(
    tiny_phantoms: Path, tmp_path: Path, capsys
) -> None:
    """Another machine cannot repeat a committed run bit for bit: the remake for robustness stops
    at the first epoch that differs (not after the whole training), its checkpoints are not used,
    the model's other folds are not tried, and a re-run does not resume the diverged remake."""
    out = tmp_path / "study"
    args = ["compare", "--data", str(tiny_phantoms), "--models", "unet", "--out", str(out), "--folds", "2",
            *TINY, "--epochs", "3"]
    assert main(args) == 0
    runs = [out / "runs" / "unet" / f"fold{k}" for k in range(2)]
    for r in runs:
        for pt in r.glob("*.pt"):
            pt.unlink()
        # as if trained elsewhere: epoch 2's validation Dice is not what this machine computes
        rows = read_csv(r / "history.csv")
        rows[1]["val_dice"] = str(float(rows[1]["val_dice"]) + 0.125)
        lines = [",".join(rows[0])] + [",".join(str(v) for v in row.values()) for row in rows]
        (r / "history.csv").write_text("\n".join(lines) + "\n")
    files = {p: p.read_bytes() for r in runs for p in (r / n for n in RESULT_NAMES)}
    capsys.readouterr()
    assert main([*args, "--robustness", "quick"]) == 0
    err = capsys.readouterr().err
    assert "did not repeat the committed run at epoch 2 (committed: train loss" in err, err
    assert "fold 2/2: checkpoints not here, and an earlier fold was not repeated" in err
    assert "no checkpoints here, so no robustness run" in err
    remade = runs[0] / ".remake"
    assert [r["epoch"] for r in read_csv(remade / "history.csv")] == ["1", "2"]  # epoch 3 never trained
    assert not (runs[0] / "checkpoint_best.pt").exists() and not (runs[1] / ".remake").exists()
    assert not (out / "robustness").exists()
    assert {p: p.read_bytes() for p in files} == files
    # again: the diverged remake is refused as it stands, not resumed
    assert main([*args, "--robustness", "quick"]) == 0
    err = capsys.readouterr().err
    assert "did not repeat the committed run" in err and "training again for them" not in err, err
    assert len(read_csv(remade / "history.csv")) == 2


def test_a_remake_that_ends_before_the_committed_run_is_named_as_such(tiny_phantoms: Path, tmp_path: Path,
                                                                       capsys) -> None:
    """Every remade epoch matches but the committed run went on (a time limit that ends at another
    epoch on another machine): refused with that reason, not as a different curve."""
    out = tmp_path / "single"
    args = ["compare", "--data", str(tiny_phantoms), "--models", "unet", "--out", str(out), *TINY, "--epochs", "2"]
    assert main(args) == 0
    run = out / "runs" / "unet"
    for pt in run.glob("*.pt"):
        pt.unlink()
    text = (run / "history.csv").read_text()
    last = text.strip().splitlines()[-1].split(",")
    (run / "history.csv").write_text(text + ",".join(["3", *last[1:]]) + "\n")
    capsys.readouterr()
    assert main([*args, "--robustness", "quick"]) == 0
    err = capsys.readouterr().err
    assert "stopped after epoch 2, where the committed run went on to epoch 3" in err, err
    assert "did not repeat" not in err and not (run / "checkpoint_best.pt").exists()


def test_a_study_run_a_fold_at_a_time(tiny_phantoms: Path, tmp_path: Path, capsys) -> None:
    """`compare --fold K` trains and evaluates only fold K; the report follows the last fold, and the
    folds are the same runs a comparison of every fold at once makes."""
    out = tmp_path / "byfold"
    base = ["compare", "--data", str(tiny_phantoms), "--models", "unet", "--out", str(out), "--folds", "2", *TINY]
    assert main([*base, "--fold", "1"]) == 0
    err = capsys.readouterr().err
    assert "1 of 2 folds finished" in err
    assert (out / "runs" / "unet" / "fold1" / "eval_test" / "per_patient.csv").is_file()
    assert not (out / "runs" / "unet" / "fold0").exists()
    assert not (out / "report.html").exists() and not (out / "leaderboard.csv").exists()
    kept = (out / "runs" / "unet" / "fold1" / "checkpoint_best.pt").stat().st_mtime_ns
    assert main([*base, "--fold", "0"]) == 0
    assert (out / "runs" / "unet" / "fold1" / "checkpoint_best.pt").stat().st_mtime_ns == kept
    assert (out / "report.html").is_file()
    whole = tmp_path / "whole"
    assert main(["compare", "--data", str(tiny_phantoms), "--models", "unet", "--out", str(whole), "--folds", "2",
                 *TINY]) == 0
    splits = read_json(out / "splits.json")["splits"]
    assert read_json(whole / "splits.json")["splits"] == splits
    for k in range(2):
        a = read_csv(out / "runs" / "unet" / f"fold{k}" / "eval_test" / "per_patient.csv")
        b = read_csv(whole / "runs" / "unet" / f"fold{k}" / "eval_test" / "per_patient.csv")
        assert {r["patient"] for r in a} == set(splits[k]["test"])
        assert [(r["patient"], r["dice"]) for r in a] == [(r["patient"], r["dice"]) for r in b]
    timings = ("train_seconds", "epoch_seconds_median", "inference_ms_per_slice")
    [a], [b] = ([{k: v for k, v in r.items() if k not in timings} for r in read_csv(d / "leaderboard.csv")]
                for d in (out, whole))
    assert a == b
    capsys.readouterr()
    assert main([*base, "--fold", "2"]) == 2
    err = capsys.readouterr().err
    assert "fold 2 asked for, but only 2 split(s) were drawn" in err and "Traceback" not in err
    assert main(["compare", "--data", str(tiny_phantoms), "--models", "unet", "--out", str(tmp_path / "one"),
                 "--fold", "0", *TINY]) == 2
    assert "no folds" in capsys.readouterr().err

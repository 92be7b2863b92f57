"""`brainseg compare` end to end on tiny phantoms: one split for all, reuse on re-run, LOIO folds."""

from __future__ import annotations

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
    assert "already trained" in capsys.readouterr().err
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

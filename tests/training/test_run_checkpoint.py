"""Which checkpoint of a run folder is used when none is named: the run's `eval.checkpoint`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from brainseg.errors import CheckpointError
from brainseg.training.checkpoint import load_checkpoint, run_checkpoint


def _run_saying(src: Path, dest: Path, which: str | None) -> Path:
    """A copy of the run `src` whose config.json says eval.checkpoint = `which` (None: the key removed,
    as in runs made before the setting existed)."""
    shutil.copytree(src, dest)
    cfg = json.loads((dest / "config.json").read_text())
    if which is None:
        cfg["eval"].pop("checkpoint", None)
    else:
        cfg["eval"]["checkpoint"] = which
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


def test_run_checkpoint_follows_the_runs_setting_and_an_explicit_choice_wins(tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    assert run_checkpoint(bare) == bare / "checkpoint_best.pt"  # no config.json: brainseg's default
    (bare / "config.json").write_text(json.dumps({"eval": {"checkpoint": "last"}}))
    assert run_checkpoint(bare) == bare / "checkpoint_last.pt"
    assert run_checkpoint(bare, "best") == bare / "checkpoint_best.pt"
    (bare / "config.json").write_text(json.dumps({"eval": {"threshold": 0.5}}))  # an older run's file
    assert run_checkpoint(bare) == bare / "checkpoint_best.pt"


@pytest.mark.parametrize(("text", "match"), [("{not json", "config.json cannot be read"),
                                             ('{"eval": {"checkpoint": "final"}}', "'final'.*not one of best, last")])
def test_a_bad_config_json_is_named(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=match):
        run_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="not one of best, last"):
        run_checkpoint(tmp_path / "elsewhere", "first")


def test_a_run_folder_loads_the_checkpoint_its_config_names(tiny_run: Path, tmp_path: Path) -> None:
    last = _run_saying(tiny_run, tmp_path / "last", "last")
    best = _run_saying(tiny_run, tmp_path / "best", "best")
    old = _run_saying(tiny_run, tmp_path / "old", None)
    assert Path(load_checkpoint(last)["path"]).name == "checkpoint_last.pt"
    assert Path(load_checkpoint(best)["path"]).name == "checkpoint_best.pt"
    assert Path(load_checkpoint(old)["path"]).name == "checkpoint_best.pt"
    (last / "checkpoint_last.pt").unlink()  # the named one missing: the other is read, as before
    assert Path(load_checkpoint(last)["path"]).name == "checkpoint_best.pt"


def test_evaluate_and_robustness_use_the_runs_checkpoint_unless_one_is_named(
    tiny_run: Path, tiny_phantoms: Path, tmp_path: Path, capsys
) -> None:
    from brainseg.cli import main
    from brainseg.fileio import read_json

    run = _run_saying(tiny_run, tmp_path / "run", "last")
    assert main(["evaluate", str(run), "--data", str(tiny_phantoms), "--out", str(tmp_path / "ev")]) == 0
    summary = read_json(tmp_path / "ev" / "summary.json")
    assert Path(summary["checkpoint"]).name == "checkpoint_last.pt"
    assert f"checkpoint {run / 'checkpoint_last.pt'}, epoch {summary['checkpoint_epoch']}" in capsys.readouterr().out
    assert main(["evaluate", str(run), "--checkpoint", "best", "--data", str(tiny_phantoms),
                 "--out", str(tmp_path / "ev_best")]) == 0
    assert Path(read_json(tmp_path / "ev_best" / "summary.json")["checkpoint"]).name == "checkpoint_best.pt"

    assert main(["robustness", str(run), "--perturbations", "gamma", "--severities", "1", "--data", str(tiny_phantoms),
                 "--out", str(tmp_path / "rob")]) == 0
    assert read_json(tmp_path / "rob" / "robustness.json")["checkpoint"] == "last"
    (run / "checkpoint_last.pt").unlink()
    assert main(["robustness", str(run), "--perturbations", "gamma", "--severities", "1", "--data", str(tiny_phantoms),
                 "--out", str(tmp_path / "rob2")]) == 2
    err = capsys.readouterr().err
    assert "checkpoint (best or last, as its eval.checkpoint says)" in err and "Traceback" not in err

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


def test_a_run_folder_loads_the_checkpoint_its_config_names(tiny_run: Path, tmp_path: Path, capsys) -> None:
    last = _run_saying(tiny_run, tmp_path / "last", "last")
    best = _run_saying(tiny_run, tmp_path / "best", "best")
    old = _run_saying(tiny_run, tmp_path / "old", None)
    assert Path(load_checkpoint(last)["path"]).name == "checkpoint_last.pt"
    assert Path(load_checkpoint(best)["path"]).name == "checkpoint_best.pt"
    assert Path(load_checkpoint(old)["path"]).name == "checkpoint_best.pt"
    (last / "checkpoint_last.pt").unlink()  # the named one missing: the other is read, as before
    assert Path(load_checkpoint(last)["path"]).name == "checkpoint_best.pt"
    assert "checkpoint_last.pt (the run's eval.checkpoint) is missing; using checkpoint_best.pt" in capsys.readouterr().err


def test_evaluate_and_robustness_use_the_runs_checkpoint_unless_one_is_named(
    tiny_run: Path, tiny_phantoms: Path, tmp_path: Path, capsys
) -> None:
    from brainseg.cli import main
    from brainseg.fileio import read_json

    run = _run_saying(tiny_run, tmp_path / "run", "last")
    assert main(["evaluate", str(run), "--data", str(tiny_phantoms), "--out", str(tmp_path / "ev")]) == 0
    summary = read_json(tmp_path / "ev" / "summary.json")
    assert Path(summary["checkpoint"]).name == "checkpoint_last.pt" and summary["eval_config"]["checkpoint"] == "last"
    assert f"checkpoint {run / 'checkpoint_last.pt'}, epoch {summary['checkpoint_epoch']}" in capsys.readouterr().out
    assert main(["evaluate", str(run), "--checkpoint", "best", "--data", str(tiny_phantoms),
                 "--out", str(tmp_path / "ev_best")]) == 0
    named = read_json(tmp_path / "ev_best" / "summary.json")
    assert Path(named["checkpoint"]).name == "checkpoint_best.pt"
    assert named["eval_config"]["checkpoint"] == "best"  # the settings recorded are those evaluated
    assert named["settings_hash"] != summary["settings_hash"]

    assert main(["robustness", str(run), "--perturbations", "gamma", "--severities", "1", "--data", str(tiny_phantoms),
                 "--out", str(tmp_path / "rob")]) == 0
    assert read_json(tmp_path / "rob" / "robustness.json")["checkpoint"] == "last"
    (run / "checkpoint_last.pt").unlink()
    assert main(["robustness", str(run), "--perturbations", "gamma", "--severities", "1", "--data", str(tiny_phantoms),
                 "--out", str(tmp_path / "rob2")]) == 2
    err = capsys.readouterr().err
    assert "checkpoint (best or last, as its eval.checkpoint says)" in err and "Traceback" not in err


def test_resuming_an_older_run_takes_new_eval_settings_but_no_other_change(tmp_path: Path) -> None:
    """A run started before eval.checkpoint existed resumes under the recipe that now sets it (training
    does not read eval settings); any other result-changing difference is still refused."""
    from brainseg.config import RunConfig, build_config
    from brainseg.errors import BrainsegError
    from brainseg.training.run import resumed_config

    older = RunConfig().to_dict()
    older["eval"].pop("checkpoint")
    said: list[str] = []
    cfg = resumed_config(build_config(None, {"eval.checkpoint": "last", "eval.threshold": 0.4}), older, 3, tmp_path,
                         said.append)
    assert (cfg.eval.checkpoint, cfg.eval.threshold) == ("last", 0.4)
    assert len(said) == 1 and 'eval.checkpoint: "best" → "last"' in said[0] and "eval.threshold: 0.5 → 0.4" in said[0]
    with pytest.raises(BrainsegError, match=r"other settings \(data.size: 128 → 64\); resume without"):
        resumed_config(build_config(None, {"eval.checkpoint": "last", "data.size": 64}), older, 3, tmp_path, said.append)

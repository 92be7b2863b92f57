"""Repeatability: the same `brainseg train` command, run twice in separate processes, gives the
same weights bit for bit and the same figures; the run records its thread count and environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from brainseg.errors import BrainsegError
from brainseg.training.determinism import configure_run, warn_environment_change


def _train(data: Path, out: Path, model: str, hash_seed: str) -> subprocess.Popen[str]:
    cmd = [
        sys.executable, "-m", "brainseg", "train", "--data", str(data), "--model", model, "--size", "32",
        "--width", "4", "--epochs", "2", "--batch-size", "8", "--device", "cpu", "--out", str(out), "--evaluate",
        "--set", "train.max_batches_per_epoch=3", "--set", "data.val_fraction=0.25", "--set", "data.test_fraction=0.25",
        "--set", "train.threads=1",
    ]  # fmt: skip
    # Another hash seed (set and dict-of-str order) and a torch default of 2 threads, which the
    # run's train.threads=1 must override.
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "2"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from brainseg.training.checkpoint import load_checkpoint

    return load_checkpoint(run / "checkpoint_last.pt")["state_dict"]


def _figures(run: Path) -> tuple[list[list[str]], dict]:
    """history.csv without its timing columns, and the test metrics of summary.json."""
    lines = [line.split(",") for line in (run / "history.csv").read_text().splitlines()]
    timing = [i for i, name in enumerate(lines[0]) if name in ("epoch_seconds", "train_slices_per_s")]
    kept = [[v for i, v in enumerate(row) if i not in timing] for row in lines]
    return kept, json.loads((run / "eval_test" / "summary.json").read_text())["metrics"]


# segnet: max_unpool2d, which torch flags as nondeterministic (see determinism.py); slow to keep the suite short
@pytest.mark.parametrize("model", ["unet", pytest.param("segnet", marks=pytest.mark.slow)])
def test_same_command_in_two_processes_gives_identical_weights(tiny_phantoms: Path, tmp_path: Path, model: str) -> None:
    runs = [tmp_path / "a", tmp_path / "b"]
    procs = [_train(tiny_phantoms, run, model, seed) for run, seed in zip(runs, ("1", "2"))]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out[-3000:]
    a, b = (_weights(r) for r in runs)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs between two runs of the same command"
    assert _figures(runs[0]) == _figures(runs[1])
    for run in runs:
        env = json.loads((run / "train_summary.json").read_text())["environment"]
        assert env["threads"] == 1 and env["deterministic_algorithms"] is True
        assert json.loads((run / "config.json").read_text())["train"]["threads"] == 1
        assert json.loads((run / "eval_test" / "summary.json").read_text())["environment"]["torch"] == torch.__version__


def test_configure_run_sets_threads_and_deterministic_mode() -> None:
    configure_run(3, 2, torch.device("cpu"))
    assert torch.get_num_threads() == 2 and torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    first = torch.rand(4)
    configure_run(3, 1, torch.device("cpu"), deterministic=False)
    assert torch.get_num_threads() == 1
    assert torch.equal(torch.rand(4), first)  # reseeded: the same draws again


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_configure_run_rejects_bad_thread_counts(bad: object) -> None:
    with pytest.raises(BrainsegError, match="train.threads"):
        configure_run(0, bad, torch.device("cpu"))  # type: ignore[arg-type]


def test_bad_thread_count_is_one_line_from_the_cli(tiny_phantoms: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from brainseg.cli import main

    code = main(["train", "--data", str(tiny_phantoms), "--device", "cpu", "--out", str(tmp_path / "r"),
                 "--set", "train.threads=-2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "train.threads" in err[0] and "-2" in err[0]
    assert not (tmp_path / "r" / "checkpoint_last.pt").exists()


def test_resume_on_another_environment_is_reported() -> None:
    said: list[str] = []
    old = {"torch": "2.13.0", "threads": 2, "cpu_model": "AMD EPYC", "python": "3.11.1"}
    warn_environment_change(old, {**old, "threads": 4, "python": "3.11.9"}, said.append)
    assert len(said) == 1 and "threads: 2 → 4" in said[0] and "python" not in said[0]
    warn_environment_change(old, dict(old), said.append)
    warn_environment_change(None, old, said.append)  # a checkpoint from before environments were recorded
    assert len(said) == 1

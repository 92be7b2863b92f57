"""benchmarks/trained_weights.py: a train.ema run's copy that holds the weights as trained."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from brainseg.training.checkpoint import load_checkpoint, model_from_checkpoint
from brainseg.training.run import train_run
from helpers_runs import load_benchmark, tiny_cfg


def _load():
    return load_benchmark("trained_weights")


def test_the_copy_loads_the_weights_as_trained_and_refuses_a_run_without_an_average(
    tiny_phantoms: Path, tmp_path: Path
) -> None:
    mod = _load()
    cfg = tiny_cfg(tiny_phantoms, epochs=2)
    cfg.train.ema = 0.5
    train_run(cfg, tmp_path / "ema", progress=False)
    assert mod.main([str(tmp_path / "ema"), str(tmp_path / "trained")]) == 0
    for name in ("checkpoint_best.pt", "checkpoint_last.pt"):
        src, copy = load_checkpoint(tmp_path / "ema" / name), load_checkpoint(tmp_path / "trained" / name)
        assert "trained_state_dict" not in copy and "ema_steps" not in copy
        assert copy["epoch"] == src["epoch"] and copy["config"] == src["config"]
        model = model_from_checkpoint(copy)
        for k, v in src["trained_state_dict"].items():
            assert torch.equal(model.state_dict()[k], v), (name, k)
    assert (tmp_path / "trained" / "config.json").is_file()
    train_run(tiny_cfg(tiny_phantoms, epochs=1), tmp_path / "plain", progress=False)
    with pytest.raises(SystemExit, match="not trained with train.ema"):
        mod.main([str(tmp_path / "plain"), str(tmp_path / "x")])

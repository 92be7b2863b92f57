"""A tiny trained checkpoint (and a perturbed twin for ensembles), made once per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch


@dataclass
class Trained:
    run: Path  # run folder of a 1-epoch width-4 UNet trained at 32×32 on the tiny phantoms
    ckpt: Path  # its checkpoint_best.pt
    twin: Path  # the same checkpoint with perturbed weights: a second, different ensemble member
    data: Path  # the tiny phantom kaggle_3m folder it was trained on (64×64 slices)


@pytest.fixture(scope="session")
def trained(tiny_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    from brainseg.training.checkpoint import load_checkpoint, save_checkpoint
    from brainseg.training.run import train_run
    from helpers_runs import tiny_cfg

    cfg = tiny_cfg(tiny_phantoms, epochs=1)
    base = tmp_path_factory.mktemp("inference_run")
    run = base / "run"
    train_run(cfg, run, progress=False)
    ckpt = load_checkpoint(run / "checkpoint_best.pt")
    gen = torch.Generator().manual_seed(7)
    twin = {k: v for k, v in ckpt.items() if k != "path"}
    twin["state_dict"] = {
        # weights only: BatchNorm's running statistics must stay valid (a variance stays positive)
        k: v + 0.2 * v.std() * torch.randn(v.shape, generator=gen)
        if v.is_floating_point() and v.numel() > 1 and "running" not in k
        else v
        for k, v in ckpt["state_dict"].items()
    }
    twin_path = base / "twin.pt"
    save_checkpoint(twin_path, twin)
    return Trained(run, run / "checkpoint_best.pt", twin_path, tiny_phantoms)

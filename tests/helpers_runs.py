"""The tiny training configuration every engine test uses (width-4 models at 32×32, tiny phantoms)."""

from __future__ import annotations

from pathlib import Path

from brainseg.config import RunConfig


def tiny_cfg(root: Path, epochs: int = 2, model: str = "unet") -> RunConfig:
    cfg = RunConfig()
    cfg.data.root = str(root)
    cfg.data.size = 32
    cfg.data.val_fraction = 0.25
    cfg.data.test_fraction = 0.25
    cfg.model.name = model
    cfg.model.width = 4
    cfg.train.epochs = epochs
    cfg.train.batch_size = 8
    cfg.train.lr = 3e-3
    cfg.train.device = "cpu"
    cfg.train.threads = 1  # a second thread buys nothing at 32×32 on a shared CPU
    return cfg

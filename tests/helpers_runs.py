"""The tiny training configuration every engine test uses (width-4 models at 32×32, tiny phantoms), and
`load_benchmark`, a script of benchmarks/ imported as a module."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

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


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/<name>.py imported as a module (the folder is not a package), registered in sys.modules
    under its name (dataclasses defined in it look their module up there)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod

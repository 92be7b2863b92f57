"""Settings for data, model, training and evaluation, saved into every run folder.

A run's settings come from (lowest to highest priority) the defaults below, a YAML or TOML file
(`--config`), then command-line flags. The merged result is written to `<run>/config.json` and
into every checkpoint, so a run can always be reproduced and its model rebuilt.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from brainseg.errors import BrainsegError


@dataclass
class DataConfig:
    """Which data, how it is split and how slices are prepared."""

    root: str | None = None  # dataset folder; None → the cached phantom set
    size: int = 128  # slices are resized to size×size (256 is native for LGG)
    in_channels: int = 3  # 3 = pre-contrast, FLAIR, post-contrast; 1 = FLAIR only
    normalization: str = "unit"  # see brainseg.data.preprocess.NORMALIZATIONS
    augment: bool = True
    tumour_weight: float = 0.0  # >0: sample tumour slices this many times more often
    split_file: str | None = None  # a user's own splits.json; None → drawn from the seed
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    folds: int = 0  # >1 → k-fold cross-validation over patients
    fold: int = 0
    holdout_institution: str | None = None  # leave-one-institution-out: test on this one
    seed: int = 0
    skip_bad: bool = False


@dataclass
class ModelConfig:
    """Architecture name (see `brainseg models`) and its constructor arguments."""

    name: str = "unet"
    width: int | None = None  # base feature width; None → the architecture's default
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Optimisation protocol; the same for every model in a comparison."""

    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    loss: str = "bce+dice"  # see brainseg.losses.build_loss
    grad_clip: float = 1.0  # max gradient norm; 0 → off
    amp: str = "auto"  # auto → bf16 autocast on CUDA, off elsewhere; "off", "bf16", "fp16"
    device: str = "auto"  # auto → cuda, then mps, then cpu
    patience: int = 0  # early stopping after this many epochs without val Dice gain; 0 → off
    num_workers: int = 0
    channels_last: bool = False  # force NHWC on every device; on a CPU each model has its own measured layout
    compile: bool = False
    seed: int = 0
    threads: int = 2  # intra-op CPU threads; results depend on it (see README, Reproducibility); 0 → torch's default
    deterministic: bool = True  # torch.use_deterministic_algorithms (warn-only); on CUDA also no cuDNN autotuning
    max_batches_per_epoch: int = 0  # 0 → a full pass over the training slices
    time_limit_minutes: float = 0.0  # stop after the epoch that reaches this much training time; 0 → none


@dataclass
class EvalConfig:
    """How probabilities become masks and how metrics are reduced."""

    threshold: float = 0.5
    tta: bool = False  # test-time augmentation: mean probability over the identity and the two flips
    min_area: int = 10  # detection: a slice is positive when its predicted area ≥ this (native pixels)
    min_lesion_size: int = 0  # post-processing: drop predicted 2-D components smaller than this (pixels)
    largest_component: bool = False  # keep only the largest 3-D connected component per patient
    empty_policy: str = "one"  # per-slice score when prediction and truth are both empty: "one" or "skip"


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> RunConfig:
        cfg = cls()
        cfg.update(d, source)
        return cfg

    def update(self, d: dict[str, Any], source: str = "config") -> RunConfig:
        """Merge a nested mapping {section: {key: value}} into this config, checking names."""
        sections = {f.name: f for f in dataclasses.fields(self)}
        for sec, values in d.items():
            if sec not in sections:
                raise BrainsegError(f"{source}: unknown section {sec!r}; known: {sorted(sections)}")
            if not isinstance(values, dict):
                raise BrainsegError(f"{source}: section {sec!r} must be a mapping, got {values!r}")
            target = getattr(self, sec)
            known = {f.name: f for f in dataclasses.fields(target)}
            for key, value in values.items():
                if key not in known:
                    raise BrainsegError(f"{source}: unknown setting {sec}.{key}; known: {sorted(known)}")
                setattr(target, key, _coerce(value, getattr(target, key), f"{source}: {sec}.{key}"))
        return self

    def set(self, dotted: str, value: Any) -> None:
        sec, _, key = dotted.partition(".")
        self.update({sec: {key: value}}, "command line")


def _coerce(value: Any, current: Any, where: str) -> Any:
    """Light type check so that 'epochs: ten' fails here, not deep inside training."""
    if value is None or current is None or isinstance(current, dict):
        return value
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        raise BrainsegError(f"{where} must be true or false, got {value!r}")
    if isinstance(current, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise BrainsegError(f"{where} must be an integer, got {value!r}")
    if isinstance(current, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise BrainsegError(f"{where} must be a number, got {value!r}")
    if isinstance(current, str) and not isinstance(value, str):
        raise BrainsegError(f"{where} must be a string, got {value!r}")
    return value


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or TOML (.toml) settings file into a nested dict."""
    p = Path(path)
    if not p.is_file():
        raise BrainsegError(f"config file {p} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            raise BrainsegError(f"config file {p}: use .yaml, .yml, .toml or .json")
    except BrainsegError:
        raise
    except Exception as exc:  # parser errors carry line numbers; keep them
        raise BrainsegError(f"config file {p} cannot be parsed: {exc}") from None
    if not isinstance(data, dict):
        raise BrainsegError(f"config file {p} must hold a mapping of sections, got {type(data).__name__}")
    return data


def build_config(
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Defaults ← `base` preset ← config file ← overrides ({"train.epochs": 5, …}; None values ignored)."""
    cfg = RunConfig()
    if base:
        cfg.update(base, "preset")
    if config_file:
        cfg.update(load_config_file(config_file), str(config_file))
    for dotted, value in (overrides or {}).items():
        if value is not None:
            cfg.set(dotted, value)
    return cfg

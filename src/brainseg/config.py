"""Settings for data, model, training and evaluation, saved into every run folder.

A run's settings come from (lowest to highest priority) the defaults below, a YAML or TOML file
(`--config`), then command-line flags. The merged result is written to `<run>/config.json` and
into every checkpoint, so a run can always be reproduced and its model rebuilt.

Every value is checked where the configuration is built, before any data is read: first its type,
read from the dataclass field's annotation, then the rule `RULES` holds for its "section.key"
(a field without a rule gets the type check alone). A bad value is one line naming the key, the
value and what is allowed. YAML numbers such as ``3e-4`` are numbers (`parse_yaml`; YAML 1.1
would read them as text).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable
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
    augment: bool = True  # paired flips/rotation/zoom and intensity jitter (brainseg.data.transforms)
    gamma_max: float = 1.25  # augmentation: per-channel gamma drawn log-uniformly in [1/gamma_max, gamma_max]
    bias_field: float = 0.0  # augmentation: max amplitude of a smooth quadratic bias field; 0 → off
    seq_dropout: float = 0.0  # augmentation: probability of copying FLAIR into pre/post-contrast (as LGG does)
    intensity_curves: float = 0.0  # augmentation: probability of a random monotone intensity curve per channel
    context: int = 0  # 2.5-D: k neighbouring slices on each side as extra input channels; 0 → off
    sequence_flags: bool = False  # two input planes marking pre-/post-contrast channels that are FLAIR copies
    mask_targets: str = "binary"  # training targets at model size: binary (nearest) or soft (tumour fraction per pixel)
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


#: Learning-rate schedules after the warm-up (`brainseg.training.trainer.lr_multiplier`).
LR_SCHEDULES = ("cosine", "poly", "constant")


@dataclass
class TrainConfig:
    """Optimisation protocol; the same for every model in a comparison."""

    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    lr_schedule: str = "cosine"  # after the warm-up: cosine (to 1% of lr), poly ((1 − t)^0.9, nnU-Net) or constant
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
    # with largest_component: also keep every 3-D component of at least this fraction of the
    # largest one's size (1.0: the largest only), so a second lesion is not dropped whole
    component_fraction: float = 1.0
    empty_policy: str = "one"  # per-slice score when prediction and truth are both empty: "one" or "skip"


@dataclass(frozen=True)
class Rule:
    """What one setting allows: `check(value)` is True for a good value; `allowed` says it in words."""

    check: Callable[[Any], bool]
    allowed: str


def _at_least(lo: float, what: str = "") -> Rule:
    return Rule(lambda v: v >= lo, f"≥ {lo:g}{what}")


def _one_of(*choices: Any) -> Rule:
    return Rule(lambda v: v in choices, "one of " + ", ".join(map(str, choices)))


_FRACTION = Rule(lambda v: 0.0 <= v < 1.0, "a fraction in [0, 1)")
_PROBABILITY = Rule(lambda v: 0.0 <= v <= 1.0, "a probability in [0, 1]")

#: "section.key" → the rule its value must meet (after the type check). None passes where the
#: field allows None. New fields need no entry: their type is checked from the annotation.
RULES: dict[str, Rule] = {
    "data.size": _at_least(1, " (pixels; each model also needs a multiple of its size divisor)"),
    "data.in_channels": _one_of(1, 3),
    "data.normalization": _one_of("unit", "zscore", "rank", "zscore_otsu"),
    "data.mask_targets": _one_of("binary", "soft"),
    "data.gamma_max": _at_least(1, " (gamma is drawn in [1/gamma_max, gamma_max])"),
    "data.bias_field": _at_least(0, " (0: off)"),
    "data.seq_dropout": _PROBABILITY,
    "data.intensity_curves": _PROBABILITY,
    "data.context": Rule(lambda v: 0 <= v <= 3, "an integer from 0 to 3 (neighbouring slices on each side; 0: off)"),
    "data.tumour_weight": _at_least(0),
    "data.val_fraction": _FRACTION,
    "data.test_fraction": _FRACTION,
    "data.folds": _at_least(0),
    "data.fold": _at_least(0),
    "data.seed": _at_least(0),
    "model.name": Rule(lambda v: bool(v.strip()), "a model name (see `brainseg models`)"),
    "model.width": _at_least(1),
    "train.epochs": _at_least(1),
    "train.batch_size": _at_least(1),
    "train.lr": Rule(lambda v: v > 0, "> 0"),
    "train.weight_decay": _at_least(0),
    "train.warmup_epochs": _at_least(0),
    "train.lr_schedule": _one_of(*LR_SCHEDULES),
    "train.grad_clip": _at_least(0, " (0: off)"),
    "train.amp": _one_of("auto", "off", "bf16", "fp16"),
    "train.patience": _at_least(0, " (0: off)"),
    "train.num_workers": _at_least(0),
    "train.seed": _at_least(0),
    "train.max_batches_per_epoch": _at_least(0, " (0: a full pass)"),
    "train.time_limit_minutes": _at_least(0, " (0: none)"),
    "eval.threshold": _PROBABILITY,
    "eval.min_area": _at_least(0),
    "eval.min_lesion_size": _at_least(0),
    "eval.component_fraction": Rule(lambda v: 0.0 < v <= 1.0, "a fraction in (0, 1]"),
    "eval.empty_policy": _one_of("one", "skip"),
}


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
                setattr(target, key, check_value(f"{sec}.{key}", value, known[key].type, source))
        return self

    def validate(self, source: str = "settings") -> RunConfig:
        """Check every value against its type and `RULES` (for configs built in code)."""
        for sec in dataclasses.fields(self):
            target = getattr(self, sec.name)
            for f in dataclasses.fields(target):
                check_value(f"{sec.name}.{f.name}", getattr(target, f.name), f.type, source)
        return self

    def set(self, dotted: str, value: Any) -> None:
        sec, _, key = dotted.partition(".")
        self.update({sec: {key: value}}, "command line")


def _kind(annotation: Any) -> tuple[str, bool]:
    """A field annotation ("int", "str | None", "dict[str, Any]") → (base type name, allows None)."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    parts = [p.strip() for p in text.split("|")]
    base = next((p for p in parts if p != "None"), "Any")
    return base.split("[")[0], "None" in parts


_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
               "dict": "a mapping, e.g. {aux: true}", "list": "a list"}


def check_value(key: str, value: Any, annotation: Any, source: str = "settings") -> Any:
    """Type-check `value` for the field `key` ("section.key"), then apply `RULES[key]`.

    Returns:
        The value (an integer given for a float field becomes a float).

    Raises:
        BrainsegError: one line naming the source, the key, the value and what is allowed.
    """
    kind, optional = _kind(annotation)
    rule = RULES.get(key)
    given = value

    def bad(allowed: str) -> BrainsegError:
        return BrainsegError(f"{source}: {key} must be {allowed}, got {given!r}")

    if value is None:
        if optional or kind == "Any":
            return value
        raise bad(_TYPE_WORDS.get(kind, kind))
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool" and not isinstance(value, bool):
        raise bad(_TYPE_WORDS["bool"])
    if kind == "int" and not (is_number and float(value).is_integer()):
        raise bad(_TYPE_WORDS["int"] + (f" {rule.allowed}" if rule else ""))
    if kind == "float" and not is_number:
        raise bad(_TYPE_WORDS["float"] + (f" {rule.allowed}" if rule else ""))
    if kind in ("str", "dict", "list") and not isinstance(value, {"str": str, "dict": dict, "list": list}[kind]):
        raise bad(_TYPE_WORDS[kind])
    if kind == "float" and not math.isfinite(value):
        raise bad("a finite number" + (f" {rule.allowed}" if rule else ""))
    if kind == "int":
        value = int(value)
    elif kind == "float":
        value = float(value)
    if rule is not None and not rule.check(value):
        raise bad(rule.allowed)
    return value


class _Yaml12Loader:
    """Built lazily: a SafeLoader whose floats follow YAML 1.2 (``3e-4``, ``1E5`` are numbers)."""

    loader: Any = None

    @classmethod
    def get(cls) -> Any:
        if cls.loader is None:
            import yaml

            class Loader(yaml.SafeLoader):
                pass

            Loader.add_implicit_resolver(
                "tag:yaml.org,2002:float",
                re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
                list("-+0123456789."),
            )
            cls.loader = Loader
        return cls.loader


def parse_yaml(text: str) -> Any:
    """`yaml.safe_load` with YAML 1.2 floats (a value of ``--set`` or a whole settings file)."""
    import yaml

    return yaml.load(text, Loader=_Yaml12Loader.get())  # noqa: S506 - a SafeLoader subclass


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or TOML (.toml) settings file into a nested dict."""
    p = Path(path)
    if not p.is_file():
        raise BrainsegError(f"config file {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BrainsegError(f"config file {p} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise BrainsegError(f"config file {p} cannot be read: {exc.strerror or exc}") from None
    try:
        if p.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif p.suffix.lower() in (".yaml", ".yml"):
            data = parse_yaml(text) or {}
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
    return cfg.validate()

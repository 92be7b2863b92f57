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


def _setting(default: Any = None, help: str = "", *, factory: Callable[[], Any] | None = None) -> Any:
    """A settings field with its default and the one line `settings_reference` (and --help) shows."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class DataConfig:
    """Which data, how it is split and how slices are prepared."""

    root: str | None = _setting(None, "dataset folder in the kaggle_3m layout; null: the built-in phantom set")
    size: int = _setting(128, "slices are resized to size×size (256 is LGG's native size)")
    in_channels: int = _setting(3, "3: pre-contrast, FLAIR, post-contrast; 1: FLAIR only")
    normalization: str = _setting(
        "unit", "unit: x/255; zscore: per slice and channel over the non-zero pixels; rank: intensity order "
        "only; zscore_otsu: statistics over an Otsu brain on log intensity (brainseg.data.preprocess)")
    augment: bool = _setting(True, "paired flips/rotation/zoom and intensity jitter (brainseg.data.transforms)")
    gamma_max: float = _setting(1.25, "augmentation: a gamma curve per channel, gamma drawn log-uniformly")
    bias_field: float = _setting(0.0, "augmentation: largest amplitude of a smooth quadratic bias field")
    seq_dropout: float = _setting(
        0.0, "augmentation: probability that a slice gets FLAIR copied into pre-, post-contrast or both (as LGG "
        "does for missing sequences)")
    intensity_curves: float = _setting(
        0.0, "augmentation: probability of a random monotone intensity curve per channel")
    context: int = _setting(0, "2.5-D: neighbouring slices of the same patient as extra input channels")
    train_crop: int = _setting(
        0, "> 0: train on a random train_crop×train_crop window of each (augmented, normalised) slice, which "
        "costs (train_crop/size)² of a whole slice's step; validation and inference take whole slices; 0: off")
    sequence_flags: bool = _setting(
        False, "two more input planes saying whether pre-/post-contrast is a FLAIR copy")
    mask_targets: str = _setting(
        "binary", "training targets at model size: binary (nearest) or soft (tumour fraction of each pixel)")
    tumour_weight: float = _setting(0.0, "> 0: tumour slices are drawn this many times as often as others")
    split_file: str | None = _setting(None, "a splits.json of your own; null: a split drawn from data.seed")
    val_fraction: float = _setting(0.15, "share of the patients held for validation (learning curves, the best checkpoint)")
    test_fraction: float = _setting(0.2, "share of the patients held out for testing")
    folds: int = _setting(0, "k > 1: k-fold cross-validation over patients")
    fold: int = _setting(0, "which fold (with data.folds or data.split_file)")
    holdout_institution: str | None = _setting(
        None, "leave-one-institution-out: test on this institution's patients (e.g. HT)")
    seed: int = _setting(0, "seed of the split (the --seed flag sets train.seed too)")
    skip_bad: bool = _setting(False, "leave out patients with bad files, and say so (otherwise: an error)")


@dataclass
class ModelConfig:
    """Architecture name (see `brainseg models`) and its constructor arguments."""

    name: str = _setting("unet", "the architecture")
    width: int | None = _setting(None, "base feature width; null: the architecture's own")
    kwargs: dict[str, Any] = _setting(
        factory=dict, help="the architecture's own options, e.g. {deep_supervision: true} "
        "(listed by `brainseg models --json`)")


#: Learning-rate schedules after the warm-up (`brainseg.training.trainer.lr_multiplier`).
LR_SCHEDULES = ("cosine", "poly", "constant")


@dataclass
class TrainConfig:
    """Optimisation protocol; the same for every model in a comparison."""

    epochs: int = _setting(20, "number of epochs")
    batch_size: int = _setting(16, "global batch size (split over the processes under torchrun)")
    lr: float = _setting(1e-3, "peak learning rate of AdamW")
    weight_decay: float = _setting(1e-4, "AdamW's decoupled weight decay")
    warmup_epochs: float = _setting(1.0, "linear warm-up of the learning rate over this many epochs")
    lr_schedule: str = _setting(
        "cosine", "after the warm-up: cosine (to 1% of lr), poly ((1 − t)^0.9, nnU-Net's) or constant")
    loss: str = _setting("bce+dice", "loss spec, e.g. bce+dice, 0.5*bce+1*dice, bce+tversky, focal+dice")
    grad_clip: float = _setting(1.0, "largest gradient norm")
    ema: float = _setting(
        0.0, "> 0: validate, save and use an exponential moving average of the weights and BatchNorm statistics, "
        "updated after every step with this decay (e.g. 0.999); 0: the weights as trained")
    amp: str = _setting("auto", "mixed precision: auto (bf16 autocast on CUDA, off elsewhere), off, bf16, fp16")
    device: str = _setting("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    patience: int = _setting(0, "early stopping after this many epochs without validation gain")
    num_workers: int = _setting(0, "DataLoader worker processes")
    channels_last: bool = _setting(
        False, "force NHWC on every device; on a CPU each model has its own measured layout")
    compile: bool = _setting(False, "torch.compile the model")
    seed: int = _setting(0, "seed of initialisation, slice sampling and augmentation")
    threads: int = _setting(
        2, "intra-op CPU threads; results depend on it (README, Reproducibility); 0: torch's default")
    deterministic: bool = _setting(
        True, "torch.use_deterministic_algorithms (warn-only); on CUDA also no cuDNN autotuning")
    max_batches_per_epoch: int = _setting(0, "batches per epoch")
    time_limit_minutes: float = _setting(0.0, "stop after the epoch that reaches this much training time")
    init_weights: str | None = _setting(None, "fine-tuning (train, not compare): a checkpoint or run folder whose "
                                        "model weights (an ema run's average) start training; null: random")


@dataclass
class EvalConfig:
    """How probabilities become masks and how metrics are reduced."""

    threshold: float = _setting(0.5, "probability threshold of a tumour pixel")
    tta: bool = _setting(False, "test-time augmentation: mean probability over the slice and its two flips")
    min_area: int = _setting(10, "detection: a slice is positive when its predicted area reaches this (native pixels)")
    min_lesion_size: int = _setting(0, "post-processing: drop predicted 2-D components smaller than this (pixels)")
    largest_component: bool = _setting(False, "keep only the largest 3-D connected component per patient")
    component_fraction: float = _setting(
        1.0, "with largest_component: also keep 3-D components of at least this fraction of the largest one's "
        "size (1: the largest only)")
    empty_policy: str = _setting("one", "per-slice score when prediction and truth are both empty: one or skip")
    checkpoint: str = _setting(
        "best", "the run folder's checkpoint that evaluate, robustness, bundle and -c RUN (predict, serve, export) "
        "use unless one is named: best (highest validation Dice) or last (the final epoch)")


@dataclass(frozen=True)
class Rule:
    """What one setting allows: `check(value)` is True for a good value; `allowed` says it in words."""

    check: Callable[[Any], bool]
    allowed: str


def _at_least(lo: float, what: str = "") -> Rule:
    return Rule(lambda v: v >= lo, f"≥ {lo:g}{what}")


def _one_of(*choices: Any) -> Rule:
    return Rule(lambda v: v in choices, "one of " + ", ".join(map(str, choices)))


#: The checkpoints a run folder keeps (`eval.checkpoint`; `brainseg.training.checkpoint.run_checkpoint`).
CHECKPOINT_KINDS = ("best", "last")
#: The losses `brainseg.losses.LOSSES` builds (a test keeps the two equal; this one needs no torch).
LOSS_NAMES = ("bce", "dice", "focal", "tversky")
_LOSS_TERM = re.compile(r"^(?:(?P<w>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*\*\s*)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)$")


def parse_loss_spec(spec: str) -> list[tuple[float, str]]:
    """(weight, name) terms of a loss spec such as "bce+dice" or "0.5*bce+1*dice" (a missing weight is 1).

    Raises:
        BrainsegError: empty spec, unknown name, malformed term, non-positive weight or a repeated term.
    """
    known = ", ".join(LOSS_NAMES)
    if not isinstance(spec, str) or not spec.strip():
        raise BrainsegError(f"loss spec {spec!r} is empty; use e.g. 'bce+dice' (known: {known})")
    terms: list[tuple[float, str]] = []
    for raw in spec.split("+"):
        part = raw.strip()
        m = _LOSS_TERM.match(part)
        if m is None:
            raise BrainsegError(f"loss spec {spec!r}: cannot read term {part!r}; expected NAME or WEIGHT*NAME "
                                f"(known names: {known})")
        name = m["name"].lower()
        if name not in LOSS_NAMES:
            raise BrainsegError(f"loss spec {spec!r}: unknown loss {name!r}; known: {known}")
        if name in (n for _, n in terms):
            raise BrainsegError(f"loss spec {spec!r}: {name!r} appears twice; give it one weight instead")
        weight = float(m["w"]) if m["w"] is not None else 1.0
        if not weight > 0:
            raise BrainsegError(f"loss spec {spec!r}: weight of {name!r} must be > 0, got {weight}")
        terms.append((weight, name))
    return terms


def _loss_spec_ok(spec: str) -> bool:
    try:
        parse_loss_spec(spec)
    except BrainsegError:
        return False
    return True


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
    "data.train_crop": _at_least(0, " (0: whole slices)"),
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
    "train.ema": Rule(lambda v: 0 <= v < 1, "in [0, 1) (0: off)"),
    "train.warmup_epochs": _at_least(0),
    "train.lr_schedule": _one_of(*LR_SCHEDULES),
    "train.loss": Rule(_loss_spec_ok, "a loss spec: terms NAME or WEIGHT*NAME (weight > 0, each name once) joined by +, "
                       "names " + ", ".join(LOSS_NAMES)),
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
    "eval.checkpoint": _one_of(*CHECKPOINT_KINDS),
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


def _shown(value: Any) -> str:
    """A default as it would be written in a settings file or after --set (YAML)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_shown(v)}" for k, v in value.items()) + "}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def settings_reference(width: int = 100) -> str:
    """Every setting as `section.key = default`, what it does and what values it takes (for --help)."""
    import textwrap

    lines = textwrap.wrap("settings (a --config file's sections, or --set SECTION.KEY=VALUE), with their defaults:", width)
    for sec in dataclasses.fields(RunConfig):
        section = sec.default_factory()  # type: ignore[misc]
        for f in dataclasses.fields(section):
            key = f"{sec.name}.{f.name}"
            kind, optional = _kind(f.type)
            rule = RULES.get(key)
            allowed = rule.allowed if rule else _TYPE_WORDS.get(kind, kind)
            if optional:  # None passes the type check before any rule (check_value)
                allowed += " or null"
            text = f"{f.metadata.get('help', '')} [{allowed}]"
            lines.append(f"  {key} = {_shown(getattr(section, f.name))}")
            lines.extend(textwrap.wrap(text, width, initial_indent="      ", subsequent_indent="      "))
    return "\n".join(lines)


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

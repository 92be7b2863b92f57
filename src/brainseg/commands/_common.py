"""Flags shared by the commands that train (train, compare) and how they map onto RunConfig."""

from __future__ import annotations

import argparse
from typing import Any

from brainseg.errors import BrainsegError

# flag dest → dotted config key. None values (flag not given) leave the config untouched.
TRAIN_FLAGS: dict[str, str] = {
    "data": "data.root",
    "size": "data.size",
    "in_channels": "data.in_channels",
    "split_file": "data.split_file",
    "folds": "data.folds",
    "fold": "data.fold",
    "seed": "data.seed",
    "holdout_institution": "data.holdout_institution",
    "skip_bad": "data.skip_bad",
    "width": "model.width",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "loss": "train.loss",
    "device": "train.device",
    "amp": "train.amp",
    "workers": "train.num_workers",
    "patience": "train.patience",
}


def add_training_arguments(
    p: argparse.ArgumentParser, fold_help: str = "which fold to train (with --folds or --split-file)"
) -> None:
    p.add_argument("--data", metavar="DIR", help="dataset folder in the kaggle_3m layout (default: built-in phantoms)")
    p.add_argument("--config", metavar="FILE", help="YAML or TOML settings file; flags override it")
    p.add_argument("--size", type=int, help="train/infer at SIZE×SIZE (default 128; 256 is LGG's native size)")
    p.add_argument("--in-channels", type=int, choices=(1, 3), help="3: pre-contrast, FLAIR, post-contrast; 1: FLAIR")
    p.add_argument("--width", type=int, help="base feature width of the model (default: the architecture's own)")
    p.add_argument("--epochs", type=int, help="number of epochs (default 20)")
    p.add_argument("--batch-size", type=int, help="global batch size (default 16)")
    p.add_argument("--lr", type=float, help="peak learning rate of AdamW (default 1e-3)")
    p.add_argument("--loss", help="loss, e.g. bce+dice (default), dice, focal+dice, tversky")
    p.add_argument("--patience", type=int, help="early stopping after N epochs without validation gain (0: off)")
    p.add_argument("--split-file", metavar="FILE", help="use this splits.json instead of drawing one")
    p.add_argument("--folds", type=int, help="k-fold cross-validation over patients")
    p.add_argument("--fold", type=int, help=fold_help)
    p.add_argument("--holdout-institution", metavar="CODE",
                   help="leave-one-institution-out: test on this institution's patients (e.g. HT), train on the rest; "
                        "'all' runs one split per institution (with compare; train takes --fold)")
    p.add_argument("--seed", type=int, help="seed of the split (and, unless train.seed is set, of training)")
    p.add_argument("--device", help="auto (default: cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), help="mixed precision (auto: bf16 on CUDA only)")
    p.add_argument("--workers", type=int, help="DataLoader worker processes (default 0)")
    p.add_argument("--skip-bad", action="store_true", default=None, help="leave out patients with bad files, and say so")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="any other setting (all are listed below), e.g. --set train.weight_decay=0 "
             "--set model.kwargs={deep_supervision: true}",
    )
    add_settings_reference(p)


_SETTINGS_EPILOG = "(every setting)"  # stands for `settings_reference()` until help is shown


class _SettingsHelpFormatter(argparse.HelpFormatter):
    """argparse's own wrapping, except the epilog: every setting, built only when help is printed."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text == _SETTINGS_EPILOG:
            from brainseg.config import settings_reference

            return settings_reference(width)
        return super()._fill_text(text, width, indent)


def add_checkpoint_argument(p: argparse.ArgumentParser) -> None:
    """--checkpoint best|last of a run folder; unset, the run's own `eval.checkpoint` decides."""
    from brainseg.config import CHECKPOINT_KINDS

    p.add_argument("--checkpoint", choices=CHECKPOINT_KINDS,
                   help="best (highest validation Dice) or last (final epoch) checkpoint of each run "
                        "(default: the run's eval.checkpoint, best unless its config says last)")


def add_settings_reference(p: argparse.ArgumentParser) -> None:
    """End `p`'s help with every setting, its default and its values."""
    p.formatter_class = _SettingsHelpFormatter
    p.epilog = _SETTINGS_EPILOG


def config_from_args(
    args: argparse.Namespace, extra: dict[str, Any] | None = None, base: dict[str, Any] | None = None
) -> Any:
    """Defaults ← `base` preset ← --config file ← flags ← --set, as one RunConfig."""
    from brainseg.config import build_config, parse_yaml

    overrides: dict[str, Any] = {key: getattr(args, dest, None) for dest, key in TRAIN_FLAGS.items()}
    if getattr(args, "seed", None) is not None:
        overrides["train.seed"] = args.seed
    overrides.update(extra or {})
    for item in getattr(args, "set", []) or []:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise BrainsegError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. train.lr=3e-4")
        try:
            overrides[key.strip()] = parse_yaml(raw)
        except Exception as exc:  # a YAML syntax error: say where, in one line
            raise BrainsegError(f"--set {item!r}: the value is not valid YAML ({str(exc).splitlines()[0]})") from None
    return build_config(getattr(args, "config", None), overrides, base)


# argparse types for flags that bypass RunConfig (evaluate, predict, export): a bad value is
# argparse's one-line usage error (exit 2), never a traceback later.
def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability in [0, 1]")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be ≥ 0")
    return value


def positive_int(text: str) -> int:
    value = non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be ≥ 1")
    return value

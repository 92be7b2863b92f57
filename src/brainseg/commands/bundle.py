"""`brainseg bundle`: turn a trained run into a model bundle (weights + metadata.json) that predict can ship."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from brainseg.commands._common import add_checkpoint_argument
from brainseg.errors import BrainsegError

DESCRIPTION = (
    "Write a model bundle from a trained run: model.pt (inference-only checkpoint, float16 weights when "
    "their predictions match float32 within the stated tolerance) and metadata.json (architecture, input "
    "contract, eval settings, training patients, dataset citation and licence, the recipe's cross-validated "
    "figures from --cv, a check figure on --check patients, intended use). Put it under "
    "src/brainseg/bundles/<name>/ to ship it; `brainseg models --bundles` lists bundles."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUNDIR", help="a run folder made by `brainseg train` (the checkpoint its "
                   "eval.checkpoint names, best unless its config says last; --checkpoint picks)")
    p.add_argument("--out", required=True, metavar="DIR", help="bundle folder to write")
    p.add_argument("--name", required=True, help="bundle name, e.g. lgg_unet_cpu")
    p.add_argument("--version", default="1.0.0", help="bundle version (default 1.0.0)")
    add_checkpoint_argument(p)
    p.add_argument("--cv", metavar="CMPDIR", help="k-fold comparison folder of the same recipe, or a folder of its "
                   "fold runs' evaluations (DIR/fold<k>/per_patient.csv from `brainseg evaluate`): its pooled "
                   "per-patient figures go into the metadata")
    p.add_argument("--data", metavar="DIR", help="the dataset of --cv, to report its FLAIR-copy patients apart "
                   "(default: the folder the run was trained on, when it exists here)")
    p.add_argument("--cv-model", default=None, help="model of --cv to take (default: the run's architecture)")
    p.add_argument("--check", action="append", required=True, metavar="PATIENT_DIR",
                   help="kaggle_3m patient folder for the fp16 and regression check (repeat; 2-3 suffice)")
    p.add_argument("--description", default="", help="one paragraph for people")
    p.add_argument("--eval", action="append", default=[], metavar="KEY=VALUE",
                   help="an evaluation setting the bundle predicts with instead of the run's, e.g. "
                        "--eval component_fraction=0.35 (post-processing chosen by cross-validation; repeat)")


def eval_overrides(items: list[str]) -> dict[str, Any]:
    """--eval KEY=VALUE items → {key: value}, each checked as the setting eval.KEY."""
    from brainseg.config import RunConfig, parse_yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise BrainsegError(f"--eval {item!r}: expected KEY=VALUE, e.g. component_fraction=0.35")
        try:
            value = parse_yaml(raw)
        except Exception as exc:
            raise BrainsegError(f"--eval {item!r}: the value is not valid YAML ({str(exc).splitlines()[0]})") from None
        RunConfig().set(f"eval.{key.strip()}", value)  # an unknown key or a bad value: one line naming it
        out[key.strip()] = value
    return out


def cv_figures(cmp_dir: str, model: str, data_root: str | None) -> dict[str, Any]:
    """Pooled per-patient Dice of `model` over the folds of a comparison (mean, median, CI, groups).

    `cmp_dir` is a `brainseg compare` folder, or a folder of one model's per-fold evaluations
    (`brainseg evaluate RUN/fold<k> --checkpoint last --out DIR/fold<k>`), whose model is taken as given.
    """
    import numpy as np

    from brainseg.errors import BrainsegError
    from brainseg.metrics.stats import bootstrap_ci
    from brainseg.reporting.comparison import load_comparison
    from brainseg.reporting.leaderboard import evaluated_fold_values, is_fold_evaluations, per_patient_values

    if is_fold_evaluations(cmp_dir):
        vals, n_folds = evaluated_fold_values(cmp_dir)
    else:
        cmp = load_comparison(cmp_dir)
        vals, n_folds = per_patient_values(cmp, "dice").get(model) or {}, cmp.n_folds
    if not vals:
        raise BrainsegError(f"{cmp_dir} has no results for {model}")
    v = np.array(list(vals.values()))
    mean, lo, hi = bootstrap_ci(v)
    out: dict[str, Any] = {
        "folder": str(cmp_dir), "folds": n_folds, "n_patients": int(v.size),
        "dice_per_patient_mean": round(mean, 4), "dice_per_patient_median": round(float(np.median(v)), 4),
        "dice_per_patient_ci95": [round(lo, 4), round(hi, 4)],
        "patients_below_0.5": int((v < 0.5).sum()), "patients_below_0.7": int((v < 0.7).sum()),
        "how": "each patient tested once by the fold model that never saw it; recipe evaluation settings",
    }
    if data_root:
        from brainseg.data.lgg import index_dataset
        from brainseg.data.sequences import flair_copy_patients

        copies = flair_copy_patients(index_dataset(data_root), vals)
        if copies:
            out["flair_copy_patients"] = sorted(copies)
            out["dice_flair_copy_mean"] = round(float(np.mean([vals[p] for p in copies])), 4)
            out["dice_others_mean"] = round(float(np.mean([vals[p] for p in vals if p not in copies])), 4)
    return out


def run(args: argparse.Namespace) -> int:
    from brainseg.bundles import describe, make_bundle
    from brainseg.training.checkpoint import checkpoint_kind, load_checkpoint, run_checkpoint

    ckpt = load_checkpoint(run_checkpoint(args.run_dir, args.checkpoint))
    cv = None
    if args.cv:
        root = args.data or ckpt.get("data_root")
        if root and not Path(root).is_dir():
            print(f"brainseg bundle: {root} (the run's data) is not here: pass --data to split the CV figures by "
                  "FLAIR-copy patients", file=sys.stderr)
            root = None
        cv = cv_figures(args.cv, args.cv_model or ckpt["model"]["name"], root)
    split = ckpt.get("split", {})
    patients = list(split.get("train", [])) + list(split.get("val", []))
    meta = make_bundle(
        ckpt["path"], args.out, name=args.name, version=args.version, check_patients=args.check,
        cross_validation=cv, training_patients=patients, description=args.description,
        eval_overrides={**eval_overrides(args.eval), "checkpoint": checkpoint_kind(ckpt)},  # the one bundled
    )
    print(f"wrote bundle {describe(meta)} to {args.out} (weights {meta['weights']['dtype']})", file=sys.stderr)
    return 0

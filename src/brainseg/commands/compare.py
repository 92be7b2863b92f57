"""`brainseg compare`: the main job — five architectures, one protocol, one report."""

from __future__ import annotations

import argparse
import shlex
import sys

from brainseg.commands._common import add_training_arguments, config_from_args
from brainseg.compare import PHANTOM_PRESET

DESCRIPTION = (
    "Train every selected model on the same patient-level split with the same budget, evaluate each "
    "on the same test patients, and write leaderboard.csv/.md, significance tests, figures/ and "
    "report.html/.md to --out. Finished runs are reused and interrupted ones resumed on a re-run. "
    "Without --data (and without --config) it runs on the built-in phantoms with small models "
    "({size}×{size}, width {width}, {epochs} epochs, tumour slices drawn {tw:g}× as often) so that it "
    "finishes in minutes on a laptop CPU; flags still override these."
).format(
    size=PHANTOM_PRESET["data"]["size"], width=PHANTOM_PRESET["model"]["width"],
    epochs=PHANTOM_PRESET["train"]["epochs"], tw=PHANTOM_PRESET["data"]["tumour_weight"],
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--models",
        default="unet,attention_unet,segnet,deeplabv3plus,pspnet",
        help="comma-separated architectures (default: all five)",
    )
    p.add_argument("--out", default="results/compare", metavar="DIR", help="comparison folder (default results/compare)")
    p.add_argument("--examples", type=int, default=2, help="example slices per kind (best/typical/worst) in the figure")
    p.add_argument("--robustness", choices=("off", "quick", "full"), default="off",
                   help="after each model's runs finish, run it under every perturbation of `brainseg robustness` "
                        "(quick: severities 1, 3, 5; full: all) into <out>/robustness/ while its checkpoints are "
                        "here; a model whose results are there is skipped, and one whose fold results are committed but "
                        "whose checkpoints are not here is trained again for them, checked epoch for epoch against "
                        "its committed history.csv (default off)")
    add_training_arguments(
        p, fold_help="train and evaluate only this fold of each model (with --folds, --holdout-institution all or "
                     "a split file of several splits), to run a long study a fold at a time; the examples, "
                     "robustness and report follow once every fold is finished (default: every fold)")


def run(args: argparse.Namespace) -> int:
    from brainseg.compare import compare

    base = PHANTOM_PRESET if args.data is None and args.config is None else None
    cfg = config_from_args(args, base=base)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    command = "brainseg " + shlex.join(getattr(args, "argv", None) or sys.argv[1:])
    robustness = {"off": None, "quick": [1, 3, 5], "full": []}[args.robustness]
    result = compare(cfg, args.out, models, command=command, n_examples=args.examples, robustness=robustness,
                     only_fold=args.fold)
    rep = result.get("report", {})
    if rep:
        board = rep.get("leaderboard_md")
        if board:
            print(open(board, encoding="utf-8").read())
        for name, path in rep.items():
            print(f"{name}: {path}")
    return 0

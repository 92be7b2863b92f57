"""`brainseg train`: train one model on a patient-level split."""

from __future__ import annotations

import argparse

from brainseg.commands._common import add_training_arguments, config_from_args

DESCRIPTION = (
    "Train one model. Settings: defaults ← --config FILE ← flags ← --set. The run folder gets "
    "config.json, splits.json, checkpoint_last.pt, checkpoint_best.pt, history.csv and "
    "train_summary.json. A killed run continues with --resume. Runs under torchrun with DDP."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="architecture (see `brainseg models`; default unet)")
    p.add_argument("--out", metavar="RUNDIR", help="run folder (default runs/<model>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint, under its own settings (flags that "
                        "change a result are refused, except --epochs, which extends the run, and eval settings)")
    p.add_argument("--evaluate", action="store_true", help="evaluate the run on its test split afterwards (the checkpoint "
                   "eval.checkpoint names: best unless the config says last)")
    add_training_arguments(p)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from brainseg.errors import BrainsegError
    from brainseg.fileio import read_json
    from brainseg.training.run import CONFIG_NAME, train_run

    out = Path(args.out) if args.out else None
    base = None
    if args.resume:  # the run's own settings, so that only the flags given now can differ from them
        out = out or Path(f"runs/{args.model or 'unet'}")
        if (out / CONFIG_NAME).is_file():
            try:
                base = read_json(out / CONFIG_NAME)
            except ValueError as exc:
                raise BrainsegError(f"{out / CONFIG_NAME} cannot be read as JSON ({exc}); the run cannot be "
                                    "resumed") from None
        elif (out / "checkpoint_last.pt").is_file():  # a run folder without its config.json
            from brainseg.training.checkpoint import load_checkpoint

            base = load_checkpoint(out / "checkpoint_last.pt")["config"]
    cfg = config_from_args(args, {"model.name": args.model}, base=base)
    out = out or Path(f"runs/{cfg.model.name}")
    summary = train_run(cfg, out, resume=args.resume)
    print(
        f"{summary['model']}: {summary['epochs_run']} epochs, best validation Dice (per patient) "
        f"{summary['best_val_dice']:.4f} at epoch {summary['best_epoch']}, {summary['train_seconds']:.0f} s → {out}"
    )
    if args.evaluate:
        from brainseg.training import distributed as dist_utils

        if dist_utils.is_main():
            from brainseg.commands.evaluate import print_summary
            from brainseg.evaluation.evaluate import evaluate_run

            print_summary(evaluate_run(out, data_root=args.data))
    return 0

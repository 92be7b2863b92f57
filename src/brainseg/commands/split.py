"""`brainseg split`: draw patient-level splits and write them to splits.json."""

from __future__ import annotations

import argparse

DESCRIPTION = (
    "Draw a patient-level split, stratified by institution and seeded, and write it to a JSON file: "
    "hold-out (default), k-fold (--folds K) or leave-one-institution-out (--holdout-institution CODE). "
    "Pass the file to train/compare with --split-file; a different existing file is never overwritten "
    "without --force."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", nargs="?", metavar="DIR", help="dataset folder (default: the built-in phantom set)")
    p.add_argument("--data", metavar="DIR", help="same as DIR")
    p.add_argument("--out", default="splits.json", metavar="FILE", help="output file (default splits.json)")
    p.add_argument("--folds", type=int, default=0, metavar="K", help="k-fold cross-validation with K folds")
    p.add_argument("--val-fraction", type=float, default=0.15, help="validation share of all patients (default 0.15)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="test share for hold-out (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--holdout-institution", metavar="CODE", help="test on all patients of this institution")
    p.add_argument("--skip-bad", action="store_true", help="leave out patients with bad files, and say so")
    p.add_argument("--force", action="store_true", help="overwrite an existing, different split file")


def run(args: argparse.Namespace) -> int:
    import sys
    import warnings
    from pathlib import Path

    from brainseg.data import splits as S
    from brainseg.data.lgg import SkippedPatientWarning, index_dataset
    from brainseg.data.roots import resolve_data_root
    from brainseg.errors import BrainsegError
    from brainseg.fileio import ensure_writable_folder

    if args.dir and args.data and args.dir != args.data:
        raise BrainsegError(f"give the dataset once: DIR {args.dir} and --data {args.data} differ")
    if args.folds and args.holdout_institution:
        raise BrainsegError("choose one of --folds and --holdout-institution")

    def say(msg: str) -> None:
        print(msg, file=sys.stderr)

    ensure_writable_folder(Path(args.out).expanduser().parent)  # before indexing, which takes a while
    root = resolve_data_root(args.dir or args.data, announce=say)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedPatientWarning)
        index = index_dataset(root, skip_bad=args.skip_bad)
    for patient, reason in index.skipped.items():
        say(f"skipped patient {patient}: {reason}")

    if args.holdout_institution:
        splits = [
            S.leave_institution_out(
                index.patients, index.institutions, institution=args.holdout_institution,
                val_fraction=args.val_fraction, seed=args.seed,
            )
        ]  # fmt: skip
    elif args.folds:
        splits = S.kfold_splits(
            index.patients, index.institutions, k=args.folds, seed=args.seed, val_fraction=args.val_fraction
        )
    else:
        splits = [
            S.holdout_split(
                index.patients, index.institutions, val_fraction=args.val_fraction,
                test_fraction=args.test_fraction, seed=args.seed,
            )
        ]  # fmt: skip

    out = Path(args.out)
    if out.exists() and not args.force:
        try:
            old = S.load_splits(out)
        except BrainsegError:
            old = None
        if old is not None and [s.id for s in old] == [s.id for s in splits]:
            print(f"{out} already holds these splits (unchanged)")
            return 0
        raise BrainsegError(f"{out} exists and holds other splits; splits are never re-drawn silently (use --force)")
    S.save_splits(out, splits)
    for s in splits:
        label = f"fold {s.fold}" if s.fold is not None else (f"leave out {s.institution}" if s.institution else "hold-out")
        print(f"{label}: train {len(s.train)}, val {len(s.val)}, test {len(s.test)} patients (id {s.id})")
    print(f"wrote {len(splits)} split(s) of {len(index.patients)} patients to {out}")
    return 0

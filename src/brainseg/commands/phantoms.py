"""`brainseg phantoms`: write a synthetic MRI phantom dataset in the kaggle_3m layout."""

from __future__ import annotations

import argparse

DESCRIPTION = (
    "Write seeded synthetic MRI-like phantoms (skull, tissue, ventricles, 3-D lesions visible mainly in "
    "FLAIR) to OUT/kaggle_3m, in exactly the LGG layout with a data.csv. The same arguments give "
    "byte-identical files. Commands run without --data use a cached set made the same way."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from brainseg.data.phantom import DEFAULT_PATIENTS, DEFAULT_SEED, DEFAULT_SIZE, DEFAULT_SLICES

    p.add_argument("out", metavar="OUT", help="parent folder; the dataset is written to OUT/kaggle_3m")
    p.add_argument("--patients", type=int, default=DEFAULT_PATIENTS, help=f"number of patients (default {DEFAULT_PATIENTS})")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"generator seed (default {DEFAULT_SEED})")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help=f"slice height and width (default {DEFAULT_SIZE})")
    p.add_argument(
        "--slices",
        type=int,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=DEFAULT_SLICES,
        help=f"slices per patient, inclusive range (default {DEFAULT_SLICES[0]} {DEFAULT_SLICES[1]})",
    )


def run(args: argparse.Namespace) -> int:
    import time

    from brainseg.data.lgg import index_dataset
    from brainseg.data.phantom import write_phantoms
    from brainseg.fileio import ensure_writable_folder

    ensure_writable_folder(args.out)
    t0 = time.perf_counter()
    root = write_phantoms(args.out, patients=args.patients, seed=args.seed, slices=tuple(args.slices), size=args.size)
    seconds = time.perf_counter() - t0
    s = index_dataset(root).summary()
    inst = ", ".join(f"{k} {v}" for k, v in s["institutions"].items())
    print(
        f"wrote {s['patients']} phantom patients ({inst}), {s['slices']} slices of {args.size}×{args.size}, "
        f"{s['tumour_slices']} with tumour, to {root} in {seconds:.1f} s"
    )
    return 0

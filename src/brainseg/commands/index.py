"""`brainseg index`: index and validate a dataset folder, then summarise it."""

from __future__ import annotations

import argparse
from typing import Any

DESCRIPTION = (
    "Index a dataset in the kaggle_3m layout (TCGA_<inst>_<id>_<date>/…_<n>.tif and …_<n>_mask.tif), "
    "decoding every slice to check it, and print a summary: patients, slices, tumour slices, "
    "institutions. DIR may be the kaggle_3m folder or its parent; without DIR the built-in phantom "
    "set is used. Bad files are reported by name; --skip-bad leaves their patients out instead."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", nargs="?", metavar="DIR", help="dataset folder (default: the built-in phantom set)")
    p.add_argument("--data", metavar="DIR", help="same as DIR (for symmetry with the other commands)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the human summary")
    p.add_argument("--skip-bad", action="store_true", help="leave out patients with bad files, and say which and why")


def _human(s: dict[str, Any]) -> str:
    slices, tumour = s["slices"], s["tumour_slices"]
    inst = ", ".join(f"{k} {v}" for k, v in s["institutions"].items())
    spp = s["slices_per_patient"]
    sizes = ", ".join(f"{k.replace('x', '×')} ({v})" for k, v in s["image_sizes"].items())
    lines = [
        f"dataset      {s['root']}",
        f"patients     {s['patients']}  (institutions: {inst})",
        f"slices       {slices}  ({tumour} with tumour = {100 * tumour / max(slices, 1):.1f} %, "
        f"{s['empty_slices']} without"
        + (f", {s['unlabelled_slices']} without mask" if s["unlabelled_slices"] else "")
        + ")",
        f"per patient  {spp['min']}–{spp['max']} slices (median {spp['median']:g})",
        f"slice size   {sizes}",
        f"data.csv     {s['clinical_patients']} of {s['patients']} patients have a row",
    ]
    if s["skipped"]:
        lines.append(f"skipped      {len(s['skipped'])} patient(s) with bad files (see above)")
    lines.append(f"ignored      {ignored_line(s.get('ignored', {}))}")
    return "\n".join(lines)


def ignored_line(ignored: dict[str, str], show: int = 5) -> str:
    """'N entries: a (why), b (why), …' for what a dataset folder holds besides its patients."""
    if not ignored:
        return "nothing (every entry is a patient folder or data.csv)"
    items = [f"{name} ({why})" for name, why in list(ignored.items())[:show]]
    more = f", … ({len(ignored) - show} more)" if len(ignored) > show else ""
    return f"{len(ignored)} entr{'y' if len(ignored) == 1 else 'ies'}: {', '.join(items)}{more}"


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    import warnings

    from brainseg.data.lgg import SkippedPatientWarning, index_dataset
    from brainseg.data.roots import resolve_data_root
    from brainseg.errors import BrainsegError

    if args.dir and args.data and args.dir != args.data:
        raise BrainsegError(f"give the dataset once: DIR {args.dir} and --data {args.data} differ")

    def say(msg: str) -> None:  # stderr, so that --json output stays pure JSON
        print(msg, file=sys.stderr)

    root = resolve_data_root(args.dir or args.data, announce=say)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedPatientWarning)  # printed below, one clean line each
        index = index_dataset(root, skip_bad=args.skip_bad)
    for patient, reason in index.skipped.items():
        say(f"skipped patient {patient}: {reason}")
    if index.ignored:  # on every run, so nothing leaves the dataset unseen
        say(f"ignored in {index.root}: {ignored_line(index.ignored)}")
    summary = index.summary()
    print(json.dumps(summary, indent=2) if args.json else _human(summary))
    return 0

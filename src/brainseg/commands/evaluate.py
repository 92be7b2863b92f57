"""`brainseg evaluate`: score a trained run on its own split."""

from __future__ import annotations

import argparse
from typing import Any

from brainseg.commands._common import add_checkpoint_argument, non_negative_int, probability

DESCRIPTION = (
    "Evaluate a run's best (or last) checkpoint on its split. Writes per_slice.csv, per_patient.csv "
    "(with HD95, ASSD, surface Dice, volume errors and lesion-wise detection in native pixels), "
    "detection.csv and summary.json to RUNDIR/eval_<split>/ (or --out), with the threshold, "
    "post-processing and empty-mask policy used. Several RUNDIRs trained on the same split (the models of "
    "one fold) are scored as an ensemble, their mean probability, into --out."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUNDIR", nargs="+",
                   help="a run folder made by `brainseg train`; several: an ensemble of runs with the same split "
                        "(mean probability; the first run's eval settings; needs --out)")
    p.add_argument("--split", default="test", choices=("train", "val", "test", "all"),
                   help="which patients (default test); 'all': every patient in --data, e.g. an external test "
                        "set (patients the model trained on are flagged)")
    p.add_argument("--data", metavar="DIR", help="dataset folder (default: the one the run was trained on)")
    add_checkpoint_argument(p)
    p.add_argument("--threshold", type=probability, help="probability threshold in [0, 1] (default: the run's, 0.5)")
    p.add_argument("--largest-component", action=argparse.BooleanOptionalAction, default=None,
                   help="keep only the largest 3-D connected component per patient volume (default: the run's)")
    p.add_argument("--component-fraction", type=float, metavar="F",
                   help="with the largest component: also keep 3-D components of at least F × its size, "
                        "0 < F ≤ 1 (default: the run's, 1: the largest only)")
    p.add_argument("--min-area", type=non_negative_int, help="detection: predicted area (pixels) for a positive slice (default 10)")
    p.add_argument("--min-lesion-size", type=non_negative_int, help="drop predicted 2-D components smaller than this (pixels)")
    p.add_argument("--empty-policy", choices=("one", "skip"), help="per-slice score of an empty/empty slice")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="test-time augmentation: mean probability over identity and flips (default: the run's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", metavar="DIR", help="where to write the result files")


def print_summary(s: dict[str, Any]) -> None:
    m = s["metrics"]
    pp = s["postprocessing"]
    how = [f"threshold {s['threshold']}"] + (["flip TTA"] if s.get("tta") else [])
    frac = pp.get("component_fraction", 1.0)
    how += ([f"largest 3-D component{f' and those ≥ {frac:g} of it' if frac < 1 else ''}"]
            if pp["largest_component_per_volume"] else [])
    how += ([f"lesions ≥ {pp['min_lesion_size']} px"] if pp["min_lesion_size"] > 1 else [])
    print(f"{s['model']} on {s['split']} ({s['n_patients']} patients, {s['n_slices']} slices; {', '.join(how)}; "
          f"empty policy {s['empty_policy']!r}):")
    if s.get("checkpoint"):
        epoch = f", epoch {s['checkpoint_epoch']}" if s.get("checkpoint_epoch") is not None else ""
        print(f"  checkpoint {s['checkpoint']}{epoch}")
    print(f"  {'':<12}{'per patient':>14}{'per slice':>12}{'micro':>10}")
    for name in ("dice", "iou", "precision", "recall"):
        r = m[name]
        print(f"  {name:<12}{r['per_patient']['mean']:>14.4f}{r['per_slice']['mean']:>12.4f}{r['micro']:>10.4f}")
    print(f"  loss ({s['loss_name']}) {s['loss']:.4f}" + (f"  ({s['loss_note']})" if s.get("loss_note") else ""))
    sf = s.get("surface")
    if sf:
        unit = s.get("surface_metrics_policy", {}).get("distance_unit", "px")
        print(f"  HD95 median {sf['hd95']['median']:.2f} {unit}  ASSD mean {sf['assd']['mean']:.2f} {unit}  "
              f"NSD mean {sf['nsd']['mean']:.3f}  lesion sensitivity {sf['lesion_sensitivity_pooled']:.3f}  "
              f"FP lesions/patient {sf['fp_lesions_per_patient']:.2f}")
    for lvl in ("slice", "patient"):
        d = s["detection"][lvl]
        print(f"  detection per {lvl}: sensitivity {d['sensitivity']:.3f}  specificity {d['specificity']:.3f}  "
              f"accuracy {d['accuracy']:.3f}  AUROC {d['auroc']:.3f}")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from brainseg.errors import BrainsegError
    from brainseg.evaluation.evaluate import evaluate_run
    from brainseg.fileio import ensure_writable_folder

    dirs = list(args.run_dir)
    if len(dirs) > 1 and not args.out:
        raise BrainsegError(f"{len(dirs)} run folders make an ensemble: give --out DIR for its results")
    if Path(dirs[0]).is_dir():  # find out it cannot write before the work, not after
        ensure_writable_folder(args.out or Path(dirs[0]) / f"eval_{args.split}")

    summary = evaluate_run(
        dirs if len(dirs) > 1 else dirs[0],
        split=args.split,
        data_root=args.data,
        checkpoint=args.checkpoint,
        eval_overrides={
            "threshold": args.threshold,
            "largest_component": args.largest_component,
            "component_fraction": args.component_fraction,
            "min_area": args.min_area,
            "min_lesion_size": args.min_lesion_size,
            "empty_policy": args.empty_policy,
        },
        device=args.device,
        tta=args.tta,
        out_dir=args.out,
    )
    print_summary(summary)
    return 0

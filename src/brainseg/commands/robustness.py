"""`brainseg robustness`: test Dice of trained runs under perturbations, and by strata."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from brainseg.commands._common import add_checkpoint_argument, probability
from brainseg.errors import BrainsegError

DESCRIPTION = (
    "Evaluate trained runs on their test patients under seeded perturbations of increasing severity "
    "(Gaussian and Rician noise, blur, bias field, gamma, contrast, lower resolution, rotation, missing "
    "sequence replaced by FLAIR or zeroed; severity 0 is the unperturbed image), and split the unperturbed "
    "results by institution, tumour size, slice position and FLAIR-copied sequences. RUNDIR is a run "
    "folder, a folder of fold runs, or a comparison folder (every model in it that has its checkpoints here is evaluated, results go to "
    "<comparison>/robustness/, where the results of its other models from an earlier run are kept, and the "
    "comparison's report gains a robustness section). Writes robustness.csv, "
    "strata.csv, robustness.json and robustness_<model>.png. Parameters of each perturbation: `brainseg robustness --list`."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", metavar="RUNDIR", nargs="*", help="run folder(s) or one comparison folder")
    p.add_argument("--data", metavar="DIR", help="dataset folder (default: the one each run was trained on)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="which patients (default test)")
    p.add_argument("--perturbations", metavar="A,B,…", help="comma-separated perturbation names (default: all)")
    p.add_argument("--severities", metavar="1,2,…",
                   help="comma-separated severities (default: 1 to each perturbation's maximum; 0 is the identity)")
    p.add_argument("--quick", action="store_true", help="severities 1, 3 and 5 only (about half the time)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: <comparison>/robustness, <run>/robustness, "
                   "or ./robustness for several runs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the perturbations and bootstrap intervals (default 0)")
    add_checkpoint_argument(p)
    p.add_argument("--threshold", type=probability,
                   help="probability threshold in [0, 1] for every run (default: each run's own, as evaluate)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N, mps")
    p.add_argument("--batch-size", type=int, default=16, help="slices per forward pass (default 16)")
    p.add_argument("--no-report", action="store_true", help="do not rebuild the comparison's report")
    p.add_argument("--list", action="store_true", help="list the perturbations and their parameters, then exit")


def _safe(name: str) -> str:
    """A model label as a file-name part."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BrainsegError(f"{flag} expects comma-separated integers, got {text!r}") from None


def print_perturbations() -> None:
    from brainseg.evaluation.perturbations import PERTURBATIONS

    for name, spec in PERTURBATIONS.items():
        levels = "; ".join(f"{s}: {spec.describe(s)}" for s in range(1, spec.max_severity + 1))
        print(f"{name:<23}{spec.description}\n{'':<23}severity {levels}")


def print_table(rows: list[dict[str, Any]]) -> None:
    models = list(dict.fromkeys(r["model"] for r in rows))
    keys = list(dict.fromkeys((r["perturbation"], r["severity"], r["parameter"]) for r in rows))
    width = max(12, *(len(m) + 2 for m in models))
    print(f"{'perturbation':<23}{'sev':>4}  {'parameter':<30}" + "".join(f"{m:>{width}}" for m in models))
    for p, s, par in keys:
        vals = {r["model"]: r["dice_patient"] for r in rows if (r["perturbation"], r["severity"], r["parameter"]) == (p, s, par)}
        cells = "".join(f"{vals[m]:>{width}.4f}" if m in vals else f"{'–':>{width}}" for m in models)
        print(f"{p:<23}{s:>4}  {(par or '–')[:30]:<30}{cells}")


def run(args: argparse.Namespace) -> int:
    if args.list:
        print_perturbations()
        return 0
    if not args.run_dirs:
        raise BrainsegError("give at least one RUNDIR (a run folder or a comparison folder)")
    from brainseg.evaluation.robustness import resolve_targets, run_robustness
    from brainseg.reporting.plots import plot_model_curves

    targets, comparison = resolve_targets(args.run_dirs, checkpoint=args.checkpoint)
    if args.out:
        out = Path(args.out)
    elif comparison is not None:
        out = comparison / "robustness"
    elif len(args.run_dirs) == 1:
        out = Path(args.run_dirs[0]) / "robustness"
    else:
        out = Path("robustness")
    perts = [x.strip() for x in args.perturbations.split(",") if x.strip()] if args.perturbations else None
    sevs = _int_list(args.severities, "--severities") if args.severities else None
    if args.quick and sevs is None:
        sevs = [1, 3, 5]
    if args.batch_size < 1:
        raise BrainsegError(f"--batch-size must be at least 1, got {args.batch_size}")
    summary = run_robustness(
        targets, out, data_root=args.data, split=args.split, perturbations=perts, severities=sevs,
        seed=args.seed, checkpoint=args.checkpoint, device=args.device, batch_size=args.batch_size,
        threshold=args.threshold, merge=comparison is not None and out.resolve() == (comparison / "robustness").resolve(),
    )
    rows = summary["rows"]
    for m in summary["models"]:
        summary["files"][f"curves_{m}"] = str(plot_model_curves(rows, m, out / f"robustness_{_safe(m)}.png"))
    print(f"Mean per-patient Dice on the {args.split} patients ({summary['seconds']} s):")
    print_table(rows)
    drops, kept, clean = summary["mean_dice_drop"], summary["mean_dice_retained"], summary["clean_dice_patient"]
    print("Mean over all perturbed rows (model: clean Dice, mean drop, mean fraction retained):")
    for m, d in sorted(drops.items(), key=lambda kv: kv[1]):
        print(f"  {m}: {clean[m]:.4f}, {d:.4f}, {kept[m]:.3f}")
    if summary["degrades_least"]:
        print(f"Degrades least: {summary['degrades_least']}")
    if comparison is not None and not args.no_report:
        if out.resolve() == (comparison / "robustness").resolve():
            from brainseg.reporting import build_report

            written = build_report(comparison)
            print(f"report with a robustness section: {written['report_html']}")
        else:
            print(f"note: the report of {comparison} reads {comparison / 'robustness'}; results went to {out}, "
                  "so it was not rebuilt", file=sys.stderr)
    width = max(map(len, summary["files"]), default=0) + 2
    for name, path in summary["files"].items():
        print(f"{name:<{width}}{path}")
    return 0

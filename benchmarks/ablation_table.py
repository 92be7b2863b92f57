"""The lever table of the CPU recipe: cross-validated per-patient Dice of one model under several settings.

Each argument is LABEL=CMPDIR, a k-fold comparison folder made by `brainseg compare` on the same
patients and folds (the first is the baseline). For every lever it prints the pooled per-patient
Dice over all patients (each tested once, by the fold model that never saw it): mean with a 95%
bootstrap CI, median, patients below 0.5 / 0.7, the mean over patients whose missing sequences were
filled with FLAIR copies against the rest, the difference to the baseline with a paired Wilcoxon p
and how many patients went up and down (where p < 0.05, also which way the signed ranks point: a mean
lifted by one patient while most patients lose is "ranks lower"), and the training minutes summed
over folds.

    python benchmarks/ablation_table.py base=runs/abl_base seq=runs/abl_seq --data DIR [--md docs/ablation.md]

A LABEL=DIR may also be a folder of `brainseg evaluate` outputs, one per fold (`DIR/fold<k>/
per_patient.csv`): an evaluation of the folds' last checkpoints, or of an ensemble of runs trained
on the same folds (`brainseg evaluate RUN_A/fold<k> RUN_B/fold<k> --out DIR/fold<k>`). Its train
minutes are not known there and print as "–".

LABEL=DIR1,DIR2,… averages replicates (the same lever trained with other seeds, on the same folds):
each patient's Dice is its mean over the replicates, the minutes are the replicates' mean. Two seeds
of one lever against two of another compare the levers with less of one training's noise.

`--exclude ID[,ID…]` leaves patients out of every row (a patient id, or the start of one such as
TCGA_CS_6188): how a comparison reads without the patients one post-processing rule flips. An ID that
matches no patient of any row is refused.

`--plot PNG` draws each lever's difference to the first row as a chart (a forest plot): the mean
paired difference in per-patient Dice on the patients both rows hold, with its 95% bootstrap CI
(patients resampled with replacement) and the Wilcoxon p; a CI that does not cross 0 is drawn solid.

Robustness under perturbations is not in this table: `brainseg robustness CMPDIR` writes its own
(`robustness/robustness.csv`, and the report's section).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from brainseg.data.lgg import index_dataset
from brainseg.data.sequences import flair_copy_patients
from brainseg.errors import BrainsegError
from brainseg.fileio import write_text_atomic
from brainseg.metrics.stats import bootstrap_ci, paired_summary, paired_wilcoxon
from brainseg.reporting.comparison import load_comparison
from brainseg.reporting.formatting import fmt_p
from brainseg.reporting.leaderboard import evaluated_fold_values, is_fold_evaluations, per_patient_values


def train_minutes(cmp_dir: Path, model: str) -> float:
    total = 0.0
    for f in sorted((cmp_dir / "runs" / model).glob("**/train_summary.json")):
        total += float(json.loads(f.read_text())["train_seconds"])
    return total / 60.0


def evaluated_values(folder: Path) -> tuple[dict[str, float], int]:
    """Per-patient Dice pooled over `folder/fold<k>/per_patient.csv` (evaluate outputs), and the fold count."""
    try:
        return evaluated_fold_values(folder)
    except BrainsegError as exc:
        raise SystemExit(str(exc)) from None


def lever_values(folder: str, model: str) -> tuple[dict[str, float], int, float]:
    """(patient → Dice, folds, train minutes) of a comparison folder or a folder of per-fold evaluations."""
    path = Path(folder)
    if is_fold_evaluations(path):
        vals, n_folds = evaluated_values(path)
        return vals, n_folds, float("nan")
    cmp = load_comparison(folder)
    return per_patient_values(cmp, "dice").get(model) or {}, cmp.n_folds, train_minutes(path, model)


def shared_patients(values: list[dict[str, float]]) -> set[str]:
    """The patients every one of `values` (patient → Dice) holds."""
    return set(values[0]).intersection(*values[1:])


def replicate_values(folders: str, model: str) -> tuple[dict[str, float], int, float]:
    """`lever_values` of comma-separated replicates, each patient's Dice averaged over them."""
    parts = [lever_values(f, model) for f in folders.split(",")]
    common = shared_patients([v for v, _, _ in parts])
    vals = {p: float(np.mean([v[p] for v, _, _ in parts])) for p in sorted(common)}
    return vals, parts[0][1], float(np.mean([m for _, _, m in parts]))


def excluded_patients(spec: str, values: list[dict[str, float]]) -> set[str]:
    """The patients of `values` that `spec` (comma-separated ids or id prefixes) names; SystemExit
    naming an entry that matches none."""
    known = set().union(*values) if values else set()
    out: set[str] = set()
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        hits = {p for p in known if p.startswith(entry)}  # an id is its own prefix
        if not hits:
            raise SystemExit(f"--exclude: {entry!r} matches no patient of the rows")
        out |= hits
    return out


def paired_arrays(lever: dict[str, float], base: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """The Dice of `lever` and of `base` on the patients both hold, in one patient order (the pairs of the
    table's Δ column and of the plot)."""
    common = sorted(set(base) & set(lever))
    return np.array([lever[p] for p in common]), np.array([base[p] for p in common])


def paired_deltas(levers: list[tuple[str, dict[str, float]]]) -> list[dict]:
    """Each (label, patient → Dice) after the first against the first, on the patients both hold: n, the
    mean paired difference (lever − first) with its 95% bootstrap CI, and the Wilcoxon p."""
    if not levers:
        return []
    base = levers[0][1]
    out = []
    for label, vals in levers[1:]:
        a, b = paired_arrays(vals, base)
        if not a.size:
            raise SystemExit(f"--plot: {label!r} shares no patient with {levers[0][0]!r}")
        mean, lo, hi = bootstrap_ci(a - b)
        p = paired_wilcoxon(a, b)["p_value"]
        out.append({"lever": label, "n": int(a.size), "delta": mean, "lo": lo, "hi": hi, "p": p})
    return out


def plot_deltas(deltas: list[dict], baseline: str, path: str | Path) -> Path:
    """A forest plot of `paired_deltas`: one row per lever, its CI as a bar, 0 as a reference line."""
    from brainseg.reporting.plots import new_figure, save_figure

    if not deltas:
        raise SystemExit("--plot: needs at least two rows (a baseline and a lever)")
    fig = new_figure(9.0, 1.2 + 0.42 * len(deltas))
    ax = fig.add_subplot(1, 1, 1)
    ys = np.arange(len(deltas))[::-1]
    for y, d in zip(ys, deltas):
        clear = d["lo"] > 0 or d["hi"] < 0
        colour = ("#1b7837" if d["delta"] > 0 else "#b2182b") if clear else "#555555"
        ax.plot([d["lo"], d["hi"]], [y, y], color=colour, lw=2.2 if clear else 1.4, ls="-" if clear else "--")
        ax.plot([d["delta"]], [y], "o", color=colour, ms=6)
        if not np.isfinite(d["p"]):
            p = ""
        else:  # two decimals down to 0.01, below that the tables' rule ("0.004", "< 0.001")
            p = f", p {d['p']:.2f}" if d["p"] >= 0.01 else f", p {fmt_p(d['p'])}"
        ax.annotate(
            f"{d['delta']:+.3f}{p}", (d["hi"], y), xytext=(6, 0), textcoords="offset points", va="center", fontsize=8
        )
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_yticks(ys, [f"{d['lever']} ({d['n']})" for d in deltas])
    lo = min(d["lo"] for d in deltas)
    hi = max(d["hi"] for d in deltas)
    span = max(hi - lo, 0.02)
    ax.set_xlim(min(lo, 0.0) - 0.05 * span, max(hi, 0.0) + 0.35 * span)
    ax.set_ylim(-0.7, len(deltas) - 0.3)
    ax.set_xlabel(f"per-patient Dice − {baseline}\n(mean paired difference, 95% bootstrap CI; patients in brackets)")
    ax.grid(axis="y", visible=False)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("levers", nargs="+", metavar="LABEL=DIR[,DIR...]")
    ap.add_argument("--model", default="unet")
    ap.add_argument("--data", help="dataset folder, to find the FLAIR-copy patients")
    ap.add_argument("--md", help="also write the table to this Markdown file")
    ap.add_argument(
        "--plot",
        metavar="PNG",
        help="also draw each lever's paired difference to the first row, with its 95%% bootstrap CI",
    )
    ap.add_argument(
        "--common",
        action="store_true",
        help="score every row on the patients all rows share (e.g. a lever run on some of the folds "
        "against full cross-validations); the folds and train-minutes columns stay each folder's own",
    )
    ap.add_argument(
        "--exclude",
        metavar="ID[,ID...]",
        help="leave these patients (ids or id prefixes, e.g. TCGA_CS_6188) out of every row",
    )
    args = ap.parse_args(argv)

    copies = flair_copy_patients(index_dataset(args.data)) if args.data else set()
    levers = []
    for spec in args.levers:
        label, _, folder = spec.partition("=")
        vals, n_folds, minutes = replicate_values(folder, args.model)
        if not vals:
            print(f"{folder}: no results for {args.model}", file=sys.stderr)
            continue
        levers.append((label, vals, n_folds, minutes))
    if args.exclude and levers:
        drop = excluded_patients(args.exclude, [v for _, v, _, _ in levers])
        print(f"left out: {', '.join(sorted(drop))}")
        levers = [(label, {p: x for p, x in v.items() if p not in drop}, n, m) for label, v, n, m in levers]
    if args.common and levers:
        shared = shared_patients([v for _, v, _, _ in levers])
        if not shared:
            raise SystemExit("--common: the rows share no patient")
        levers = [(label, {p: v[p] for p in shared}, n, m) for label, v, n, m in levers]
    rows, base = [], None
    for label, vals, n_folds, minutes in levers:
        patients = sorted(vals)
        v = np.array([vals[p] for p in patients])
        mean, lo, hi = bootstrap_ci(v)
        row = {
            "lever": label,
            "n": len(v),
            "folds": n_folds,
            "mean": mean,
            "lo": lo,
            "hi": hi,
            "median": float(np.median(v)),
            "below05": int((v < 0.5).sum()),
            "below07": int((v < 0.7).sum()),
            "copies": float(np.mean([vals[p] for p in patients if p in copies])) if copies else float("nan"),
            "others": float(np.mean([vals[p] for p in patients if p not in copies]))
            if copies
            else float("nan"),
            "minutes": minutes,
            "vals": vals,
        }
        if base is None:
            base = row
            row["delta_text"] = "+0.000"
        else:
            row["delta_text"] = paired_summary(*paired_arrays(vals, base["vals"]))
        rows.append(row)

    head = (
        "| lever | patients (folds) | per-patient Dice [95% CI] | median | < 0.5 / < 0.7 | FLAIR-copy / others "
        "| Δ vs first (Wilcoxon p) | train min |"
    )
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r['lever']} | {r['n']} ({r['folds']}) | {r['mean']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}] | "
            f"{r['median']:.3f} | {r['below05']} / {r['below07']} | {r['copies']:.3f} / {r['others']:.3f} | "
            f"{r['delta_text']} | {'–' if np.isnan(r['minutes']) else format(r['minutes'], '.0f')} |"
        )
    text = "\n".join(lines)
    print(text)
    if args.md:
        write_text_atomic(args.md, text + "\n")
    if args.plot:
        deltas = paired_deltas([(label, vals) for label, vals, _, _ in levers])
        print(f"plot: {plot_deltas(deltas, levers[0][0], args.plot)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Post-processing chosen by cross-validation: thresholds × component rules, one prediction pass.

    python benchmarks/postprocess_sweep.py /work/runs/study/runs/unet          # its fold<k>/ runs
    python benchmarks/postprocess_sweep.py /work/runs/study                    # every model of a comparison
    python benchmarks/postprocess_sweep.py RUN_A RUN_B --thresholds 0.4,0.5 --out sweep.csv

Each fold model predicts its own test patients once (with the run's TTA); every rule is then
applied to the same probabilities, so rules are compared patient by patient (paired Wilcoxon
against the runs' own setting). Rules: ``none`` (threshold only), ``largest`` (the largest 3-D
component, `eval.largest_component`), ``frac<f>`` (every 3-D component of at least f × the
largest one's size, `keep_large_components`). Per-patient Dice as `brainseg evaluate` computes it:
counts summed over the patient's native-size slices, 1 where truth and prediction are both empty.
As nnU-Net does, the rule is chosen on the cross-validation predictions of the development data —
never on the patients the recipe is finally measured on. Since a rule chosen on the same predictions it is
scored on flatters itself, a last line gives the nested estimate: each fold's patients scored with the rule
that is best on the other folds' patients (`nested_choice`). Needs the checkpoints; prints a table.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np


def rule_mask(probs: np.ndarray, threshold: float, rule: str) -> np.ndarray:
    from brainseg.inference.postprocess import keep_large_components, largest_component

    pred = probs >= threshold
    if rule == "largest":
        return largest_component(pred)
    if rule.startswith("frac"):
        return keep_large_components(pred, float(rule[4:]))
    if rule != "none":
        raise SystemExit(f"unknown rule {rule!r}: none, largest or frac<f>")
    return pred


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    inter, total = int(np.logical_and(pred, truth).sum()), int(pred.sum() + truth.sum())
    return 1.0 if total == 0 else 2.0 * inter / total


def nested_choice(scores: dict[tuple[float, str], dict[str, float]], fold_of: dict[str, str]
                  ) -> tuple[dict[str, float], dict[str, tuple[float, str]]]:
    """Each patient's Dice under the rule with the highest mean Dice over the patients of the other folds
    (ties: the first rule in `scores`' order). Returns (patient → Dice, fold → the rule chosen for it)."""
    chosen: dict[str, tuple[float, str]] = {}
    out: dict[str, float] = {}
    for fold in sorted(set(fold_of.values())):
        others = [p for p, f in fold_of.items() if f != fold]
        if not others:
            raise SystemExit("postprocess_sweep: a nested choice needs at least two folds")
        best = max(scores, key=lambda c: float(np.mean([scores[c][p] for p in others])))
        chosen[fold] = best
        out.update({p: scores[best][p] for p, f in fold_of.items() if f == fold})
    return out, chosen


def run_dirs(paths: list[str], checkpoint: str = "best") -> list[Path]:
    """The run folders behind `paths`, found as `brainseg robustness` finds them (a run, a folder of
    fold<k>/ runs, or a comparison): every one that holds checkpoint_<checkpoint>.pt."""
    from brainseg.errors import BrainsegError
    from brainseg.evaluation.robustness import resolve_targets

    try:
        targets, _ = resolve_targets(paths, checkpoint=checkpoint)
    except BrainsegError as e:
        raise SystemExit(f"postprocess_sweep: {e}") from None
    return [d for t in targets for d in t.run_dirs]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders, folders of fold<k>/ runs, or comparisons")
    ap.add_argument("--thresholds", default="0.3,0.4,0.5,0.6")
    ap.add_argument("--rules", default="none,largest,frac0.1,frac0.2,frac0.35,frac0.5")
    ap.add_argument("--checkpoint", default="best", choices=("best", "last"))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", help="CSV of every patient's Dice under every rule")
    args = ap.parse_args(argv)

    import torch

    from brainseg.evaluation.evaluate import load_patient
    from brainseg.evaluation.session import EvalRun
    from brainseg.metrics.stats import bootstrap_ci, paired_summary

    if args.threads:
        torch.set_num_threads(args.threads)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    rules = args.rules.split(",")
    combos = [(t, r) for t in thresholds for r in rules]
    scores: dict[tuple[float, str], dict[str, float]] = {c: {} for c in combos}
    own: dict[str, tuple[float, str]] = {}
    fold_of: dict[str, str] = {}
    shared: set[str] = set()  # patients tested by more than one run (the table keeps the last run's Dice)
    runs = run_dirs(args.runs, args.checkpoint)
    for rd in runs:
        run = EvalRun.load(rd, args.checkpoint, split="test")
        predictor, by = run.predictor(device="cpu"), run.index.by_patient()
        ev = run.cfg.eval
        if ev.min_lesion_size > 1:
            print(f"note: {rd} also drops 2-D lesions under {ev.min_lesion_size} px; this sweep does not", file=sys.stderr)
        for patient in run.patients:
            images, masks = load_patient(by[patient])
            probs, truth = predictor.predict(images, source=patient), masks > 0
            for t, r in combos:
                scores[(t, r)][patient] = dice(rule_mask(probs, t, r), truth)
            own[patient] = (ev.threshold, "largest" if ev.largest_component else "none")
            if patient in fold_of:
                shared.add(patient)
            fold_of[patient] = str(rd)
        print(f"{rd}: {len(run.patients)} patients", file=sys.stderr, flush=True)
    patients = sorted(own)
    settings = set(own.values())
    base = next(iter(settings)) if len(settings) == 1 else None
    if base is not None and base not in scores:
        base = None
    n = len(patients)
    print(f"per-patient Dice of {n} test patients pooled over {len(runs)} run(s); "
          f"paired against the runs' own setting {base}")
    print(f"{'threshold':>9} {'rule':<9} {'mean':>6} {'95% CI':>15} {'median':>7} {'<0.5':>5}   Δ against it (Wilcoxon p, patients up / down)")
    ranked = sorted(combos, key=lambda c: -np.mean([scores[c][p] for p in patients]))
    for c in ranked:
        v = np.array([scores[c][p] for p in patients])
        m, lo, hi = bootstrap_ci(v, seed=0)
        if base is not None:
            b = np.array([scores[base][p] for p in patients])
            delta = paired_summary(v, b)
        else:
            delta = "–"
        mark = " *" if c == base else ""
        print(f"{c[0]:>9.2f} {c[1]:<9} {m:>6.3f} [{lo:.3f}, {hi:.3f}] {np.median(v):>7.3f} {int((v < 0.5).sum()):>5} "
              f"  {delta}{mark}")
    if args.out:
        with open(args.out, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["patient", "run", *(f"t{t}_{r}" for t, r in combos)])
            for p in patients:
                w.writerow([p, fold_of[p], *(f"{scores[c][p]:.6f}" for c in combos)])
        print(f"per-patient table: {args.out}")
    if shared or len(set(fold_of.values())) < 2:
        print("no nested line: it needs two or more runs whose test patients do not overlap (folds)")
    else:
        nested, chosen = nested_choice(scores, fold_of)
        v = np.array([nested[p] for p in patients])
        m, lo, hi = bootstrap_ci(v, seed=0)
        delta = paired_summary(v, np.array([scores[base][p] for p in patients])) if base is not None else "–"
        picks = ", ".join(sorted({f"{t:.2f} {r}" for t, r in chosen.values()}))
        print(f"{'nested':>9} {'':<9} {m:>6.3f} [{lo:.3f}, {hi:.3f}] {np.median(v):>7.3f} {int((v < 0.5).sum()):>5} "
              f"  {delta}   (each run's patients under the rule best on the other runs': {picks})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

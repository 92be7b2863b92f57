"""Robustness study: evaluate trained runs under every perturbation and severity, and by strata.

Each model is scored with its own run's evaluation settings on its own split, exactly as
`brainseg evaluate` does (`brainseg.evaluation.session.EvalRun`); fold runs are pooled. The
perturbations are in `brainseg.evaluation.perturbations`, the strata in
`brainseg.evaluation.strata`. `run_robustness` writes robustness.csv, strata.csv and
robustness.json (read by brainseg.reporting.report's robustness section) and returns the rows;
`brainseg robustness` prints them and draws robustness_<model>.png.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainseg.errors import BrainsegError
from brainseg.evaluation.perturbations import PERTURBATIONS, make_perturbation, perturbation_spec
from brainseg.evaluation.strata import STRATA_COLUMNS, strata_rows

__all__ = ["CLEAN", "ROBUSTNESS_COLUMNS", "Target", "resolve_targets", "run_robustness"]

ROBUSTNESS_COLUMNS = (
    "model", "perturbation", "severity", "parameter", "dice_patient", "dice_patient_ci_low",
    "dice_patient_ci_high", "dice_drop", "dice_retained", "iou_patient", "precision_patient", "recall_patient", "dice_slice",
    "dice_micro", "n_patients", "n_slices",
)  # fmt: skip
CLEAN = "none"  # perturbation name of the unperturbed rows (the report draws it at severity 0)


@dataclass
class Target:
    """One model to study: a label and its run folder(s) (several when pooled over folds)."""

    name: str | None  # None: the checkpoint's model name
    run_dirs: list[Path]


def _has_checkpoint(d: Path, checkpoint: str | None) -> bool:
    from brainseg.training.checkpoint import run_checkpoint

    return run_checkpoint(d, checkpoint).is_file()


def _fold_dirs(d: Path) -> list[Path]:
    """The fold<k>/ run folders of `d`, by k."""
    return sorted((f for f in d.glob("fold*") if f.is_dir() and f.name[4:].isdigit()), key=lambda f: int(f.name[4:]))


def _trained(d: Path) -> bool:
    """Whether a comparison's model folder holds a run or fold runs (a config.json or a checkpoint), as
    opposed to a model not trained yet; a `.remake` folder's leftovers do not count."""
    runs = [d, *_fold_dirs(d)] if d.is_dir() else []
    return any((r / "config.json").is_file() or any(r.glob("checkpoint_*.pt")) for r in runs)


def resolve_targets(paths: Sequence[str | Path], *, checkpoint: str | None = None) -> tuple[list[Target], Path | None]:
    """Turn command-line folders into models to study.

    A folder may be a run (holds checkpoint_<checkpoint>.pt; `checkpoint` None: the one the run's
    `eval.checkpoint` names), a folder of fold runs (fold<k>/…,
    pooled), or a comparison made by `brainseg compare` (protocol.json and runs/<model>/: every
    trained model in it). Returns the targets and the comparison folder when exactly one folder
    was given and it is a comparison (None otherwise).

    Raises:
        BrainsegError: a folder that is none of these.
    """
    from brainseg.fileio import read_json

    file = f"checkpoint_{checkpoint}.pt" if checkpoint else "checkpoint (best or last, as its eval.checkpoint says)"

    def folds_of(d: Path) -> list[Path]:
        fs = _fold_dirs(d)
        kept = [f for f in fs if _has_checkpoint(f, checkpoint)]
        if kept and len(kept) < len(fs):  # pooled over fewer folds: fewer patients, said aloud
            missing = ", ".join(f.name for f in fs if f not in kept)
            print(f"note: {d}: {missing} left out (no {file}); pooled over {len(kept)} of {len(fs)} folds", file=sys.stderr)
        return kept

    targets: list[Target] = []
    comparison = None
    for raw in paths:
        d = Path(raw)
        if not d.is_dir():
            raise BrainsegError(f"{d} is not a folder (expected a run folder or a comparison folder)")
        if (d / "protocol.json").is_file() and (d / "runs").is_dir():
            models = read_json(d / "protocol.json").get("models") or sorted(p.name for p in (d / "runs").iterdir())
            found = 0
            for m in models:
                md = d / "runs" / str(m)
                if _has_checkpoint(md, checkpoint):
                    targets.append(Target(str(m), [md]))
                elif folds := folds_of(md):
                    targets.append(Target(str(m), folds))
                else:
                    if _trained(md):  # trained (here or on another machine), but not the checkpoint asked for here
                        print(f"note: {d}: {m} left out (its runs hold no {file} here)", file=sys.stderr)
                    continue
                found += 1
            if not found:
                raise BrainsegError(f"comparison {d} has no trained model yet (no runs/<model>/{file})")
            if len(paths) == 1:
                comparison = d
        elif _has_checkpoint(d, checkpoint):
            targets.append(Target(None, [d]))
        elif folds := folds_of(d):
            targets.append(Target(d.name, folds))
        else:
            raise BrainsegError(
                f"{d} holds no {file}, no fold<k>/ runs and no comparison (protocol.json, runs/)"
            )
    if not targets:
        raise BrainsegError("no run folder given")
    return targets, comparison


@dataclass
class _Loaded:
    name: str
    run_dirs: list[Path]
    predictors: list[Any]
    patients: list[list[str]]
    eval_cfg: Any
    root: Path


def _tasks(perturbations: Sequence[str], severities: Sequence[int] | None) -> tuple[list[tuple[str, int]], list[str]]:
    tasks, skipped = [], []
    for p in perturbations:
        spec = perturbation_spec(p)
        for s in severities if severities is not None else range(1, spec.max_severity + 1):
            if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
                raise BrainsegError(f"severities must be non-negative integers, got {s!r}")
            if s > spec.max_severity:
                skipped.append(f"{p} has no severity {s} (at most {spec.max_severity})")
                continue
            tasks.append((p, int(s)))
    return tasks, skipped


def _previous(out: Path, now: set[str], split: str, seed: int, checkpoint: str,
              tasks: Sequence[tuple[str, int]], threshold: float | None = None) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]] | None:
    """The earlier results in out of the models not in `now`, checked to be alike: (their summary
    entries, robustness rows, strata rows); None when out holds no earlier results."""
    from brainseg.fileio import read_csv, read_json

    path = out / "robustness.json"
    if not path.is_file():
        return None
    keys = ("models", "mean_dice_drop", "mean_dice_retained", "clean_dice_patient")
    try:
        old = read_json(path)
        if not isinstance(old, dict) or not all(isinstance(old.get(k), dict) for k in keys):
            raise ValueError(f"{', '.join(keys)} must each map model names to values")
        kept = [k for k in old["models"] if k not in now]
        if not kept:
            return {}, [], []  # every earlier model is evaluated again: nothing to keep or to match
        summary = {k: {**old["models"][k], **{key: float(old[key][k]) for key in keys[1:]},
                       "strata": (old.get("strata") or {}).get(k)} for k in kept}
        rows, srows = read_csv(out / "robustness.csv"), read_csv(out / "strata.csv")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BrainsegError(f"{out}: earlier robustness results cannot be read to keep them ({exc!r}); "
                            "move the folder away or give --out") from None
    text = {"model", "perturbation", "parameter"}
    try:
        rows = [{k: (v if k in text else int(v) if k in ("severity", "n_patients", "n_slices") else float(v or "nan"))
                 for k, v in r.items()} for r in rows if r.get("model") in kept]
    except (ValueError, TypeError) as exc:
        raise BrainsegError(f"{out / 'robustness.csv'}: a value is not a number ({exc}); "
                            "move the folder away or give --out") from None
    had = sorted({(r["perturbation"], r["severity"]) for r in rows if r["perturbation"] != CLEAN})
    differ = [f"{k} {old.get(k)!r} (now {v!r})" for k, v in (("split", split), ("seed", seed), ("checkpoint", checkpoint),
                                                               ("threshold", threshold))
              if old.get(k) != v]
    if had != sorted(set(tasks)):
        differ.append(f"perturbations and severities {', '.join(f'{p} {s}' for p, s in had)} "
                      f"(now {', '.join(f'{p} {s}' for p, s in sorted(set(tasks)))})")
    if differ:
        raise BrainsegError(f"{path} holds results of {', '.join(kept)}, not evaluated now, made with other settings: "
                            f"{'; '.join(differ)}. Run with those settings to add models to it, or give --out")
    return summary, rows, [r for r in srows if r.get("model") in kept]


def run_robustness(
    targets: Sequence[Target],
    out_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    split: str = "test",
    perturbations: Sequence[str] | None = None,
    severities: Sequence[int] | None = None,
    seed: int = 0,
    checkpoint: str | None = None,
    device: str = "auto",
    batch_size: int = 16,
    threshold: float | None = None,
    progress: bool = True,
    announce: Callable[[str], None] | None = None,
    merge: bool = False,
) -> dict[str, Any]:
    """Evaluate every target under every perturbation and severity; write the result files.

    Each model is scored with its own run's evaluation settings (threshold unless `threshold` is
    given, post-processing, empty policy) on its own split, exactly as `brainseg evaluate` does; fold runs are pooled.
    Each patient's TIFs are decoded once, and each perturbed patient is computed once per
    (perturbation, severity) and shared by all models. Severity 0 is the identity, so its rows
    reuse the unperturbed evaluation.

    Args:
        targets: from `resolve_targets`.
        out_dir: where robustness.csv, strata.csv and robustness.json go.
        data_root: dataset folder (default: the one each run was trained on).
        split: which patients of each run ("test" by default).
        perturbations: names from `PERTURBATIONS` (default: all, in that order).
        severities: severities to run (default: 1 … each perturbation's maximum); those above a
            perturbation's maximum are skipped with a note.
        seed: seed of every perturbation (and of the bootstrap intervals).
        checkpoint: "best", "last" or None (each run's `eval.checkpoint`); robustness.json records
            the kind used ("best,last" where the runs differ).
        threshold: probability threshold for every run (None: each run's `eval.threshold`);
            robustness.json records each model's.
        merge: keep the rows of models that out_dir already holds and this call does not evaluate
            (a comparison's robustness is built model by model, on whichever machine has each
            model's checkpoints); the results kept must come from the same split, seed,
            checkpoint, threshold, perturbations and severities, else a BrainsegError says what differs
            (checked after loading the models, before evaluating). Where every earlier model is
            evaluated again, nothing is kept and the settings may differ.

    Returns:
        The contents of robustness.json, plus "files" (name → path), "rows" (robustness.csv's
        rows) and "strata_rows" (strata.csv's).
    """
    from brainseg.evaluation.evaluate import evaluate_patients
    from brainseg.evaluation.session import EvalRun
    from brainseg.fileio import write_csv_atomic, write_json_atomic

    say = announce or (lambda m: print(m, file=sys.stderr, flush=True))
    perts = list(perturbations) if perturbations is not None else list(PERTURBATIONS)
    for p in perts:
        perturbation_spec(p)
    if len(set(perts)) != len(perts):
        raise BrainsegError(f"a perturbation is listed twice: {','.join(perts)}")
    tasks, skipped = _tasks(perts, severities)
    for note in skipped:
        say(f"robustness: {note}; skipped")
    out = Path(out_dir)
    t_start = time.perf_counter()

    # ---- load every model once; one dataset index and one decoded-slice cache per data root
    indexes: dict[Path, Any] = {}
    caches: dict[Path, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    loaded: list[_Loaded] = []
    used: set[str] = set()  # the checkpoint kinds loaded
    for t in targets:
        preds, pats, eval_cfg, root, name = [], [], None, None, t.name
        for rd in t.run_dirs:
            run = EvalRun.load(rd, checkpoint, data_root, split=split, announce=say,
                               eval_overrides={"threshold": threshold})
            used.add(run.cfg.eval.checkpoint)
            name = name or run.cfg.model.name
            if root is not None and run.root != root:
                raise BrainsegError(
                    f"the folds of {t.run_dirs[0].parent} were trained on different data ({root}, {run.root})")
            root = run.root
            if root not in indexes:
                indexes[root], caches[root] = run.index, {}
            preds.append(run.predictor(device=device, batch_size=batch_size))
            pats.append(run.patients)
            eval_cfg = eval_cfg or run.cfg.eval
        loaded.append(_Loaded(str(name), list(t.run_dirs), preds, pats, eval_cfg, root))  # type: ignore[arg-type]
    checkpoint = checkpoint or ",".join(sorted(used))
    names = [m.name for m in loaded]
    for m in loaded:  # two runs of one architecture: tell them apart by folder
        if names.count(m.name) > 1:
            m.name = f"{m.name} ({m.run_dirs[0].name})"
    if len({m.name for m in loaded}) != len(loaded):
        raise BrainsegError(f"two of the runs have the same model and folder name: {', '.join(names)}")
    # before the long evaluation: out's earlier results of the models not evaluated now
    previous = _previous(out, {m.name for m in loaded}, split, seed, checkpoint, tasks, threshold) if merge else None

    # ---- evaluate: tasks outermost, so each perturbed patient is made once and shared by all models
    all_tasks = [(CLEAN, 0)] + tasks
    bar = None
    if progress:
        from tqdm.auto import tqdm

        n_eval = sum(1 for p, s in all_tasks if p == CLEAN or s > 0)
        bar = tqdm(total=n_eval * len(loaded), desc="robustness", mininterval=1.0, file=sys.stderr)
    clean: dict[str, Any] = {}
    clean_acc: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for pname, sev in all_tasks:
        if pname != CLEAN and sev == 0:
            results = clean  # severity 0 is the identity (tested): no need to evaluate again
        else:
            memo: dict[int, tuple[np.ndarray, np.ndarray]] = {}
            base = None if pname == CLEAN else make_perturbation(pname, sev, seed=seed)

            def shared(images: np.ndarray, masks: np.ndarray, base=base, memo=memo) -> tuple[np.ndarray, np.ndarray]:
                key = id(images)  # the cache hands out the same array object for a patient every time
                if key not in memo:
                    memo[key] = base(images, masks)
                return memo[key]

            results = {}
            for m in loaded:
                if bar is not None:
                    bar.set_postfix_str(f"{m.name}: {pname}" + (f" {sev}" if pname != CLEAN else ""))
                acc = None
                for pred, pats in zip(m.predictors, m.patients):
                    a, _ = evaluate_patients(
                        pred, indexes[m.root], pats, m.eval_cfg, perturb=None if base is None else shared,
                        cache=caches[m.root], progress=False,
                    )
                    acc = a if acc is None else acc.merge(a)
                results[m.name] = acc.summary(m.eval_cfg.empty_policy, seed=seed)  # type: ignore[union-attr]
                if pname == CLEAN:
                    clean[m.name], clean_acc[m.name] = results[m.name], acc
                if bar is not None:
                    bar.update(1)
            memo.clear()
        for m in loaded:
            s = results[m.name]
            base_dice = clean[m.name]["dice"]["per_patient"]["mean"]
            d = s["dice"]
            rows.append({
                "model": m.name, "perturbation": pname, "severity": sev,
                "parameter": "" if pname == CLEAN else PERTURBATIONS[pname].describe(sev),
                "dice_patient": d["per_patient"]["mean"], "dice_patient_ci_low": d["per_patient"]["ci_low"],
                "dice_patient_ci_high": d["per_patient"]["ci_high"], "dice_drop": base_dice - d["per_patient"]["mean"],
                "dice_retained": d["per_patient"]["mean"] / base_dice if base_dice > 0 else float("nan"),
                "iou_patient": s["iou"]["per_patient"]["mean"], "precision_patient": s["precision"]["per_patient"]["mean"],
                "recall_patient": s["recall"]["per_patient"]["mean"], "dice_slice": d["per_slice"]["mean"],
                "dice_micro": d["micro"], "n_patients": s["n_patients"], "n_slices": s["n_slices"],
            })  # fmt: skip
    if bar is not None:
        bar.close()

    # ---- strata of the clean evaluation
    srows: list[dict[str, Any]] = []
    strata_info: dict[str, Any] = {}
    from brainseg.data.sequences import patient_copied_sequences

    for m in loaded:  # the clean pass decoded every patient into the cache: which are FLAIR copies
        copied = {p: patient_copied_sequences(caches[m.root][p][0]) for p in clean_acc[m.name].patients}
        r, info = strata_rows(
            clean_acc[m.name], indexes[m.root].institutions, empty_policy=m.eval_cfg.empty_policy,
            model=m.name, seed=seed, copied=copied,
        )
        srows += r
        strata_info[m.name] = info

    # ---- which model degrades least: mean Dice drop over every perturbed row (a model that finds
    # nothing cannot drop much either, so the clean Dice and the retained fraction are reported too)
    degradation, retained = {}, {}
    kept_models: dict[str, Any] = {}
    if previous is not None:  # earlier models of out_dir that this call did not evaluate
        earlier, old_rows, old_srows = previous
        rows, srows = old_rows + rows, old_srows + srows
        for k, v in earlier.items():
            strata_info[k] = v.pop("strata")
            degradation[k], retained[k] = v.pop("mean_dice_drop"), v.pop("mean_dice_retained")
            clean[k] = {"dice": {"per_patient": {"mean": v.pop("clean_dice_patient")}}}
            kept_models[k] = v
        if kept_models:
            say(f"robustness: kept the earlier results of {', '.join(kept_models)} in {out}")
    for m in loaded:
        mine = [r for r in rows if r["model"] == m.name and r["perturbation"] != CLEAN and r["severity"] > 0]
        drops = [r["dice_drop"] for r in mine if not math.isnan(r["dice_drop"])]
        kept = [r["dice_retained"] for r in mine if not math.isnan(r["dice_retained"])]
        degradation[m.name] = float(np.mean(drops)) if drops else float("nan")
        retained[m.name] = float(np.mean(kept)) if kept else float("nan")
    ranking = sorted(degradation, key=lambda k: (math.isnan(degradation[k]), degradation[k]))

    out.mkdir(parents=True, exist_ok=True)
    files = {
        "robustness_csv": write_csv_atomic(out / "robustness.csv", rows, ROBUSTNESS_COLUMNS),
        "strata_csv": write_csv_atomic(out / "strata.csv", srows, STRATA_COLUMNS),
    }
    summary = {
        "split": split,
        "seed": seed,
        "checkpoint": checkpoint,
        "threshold": threshold,  # None: each run's own eval.threshold (per model under "models")
        "models": {**kept_models,
                   **{m.name: {"run_dirs": [str(d) for d in m.run_dirs], "data_root": str(m.root),
                               "n_patients": clean[m.name]["n_patients"], "n_slices": clean[m.name]["n_slices"],
                               "empty_policy": m.eval_cfg.empty_policy, "threshold": m.eval_cfg.threshold}
                      for m in loaded}},
        "perturbations": {
            p: {"description": PERTURBATIONS[p].description, "parameter": PERTURBATIONS[p].parameter,
                "levels": {str(s): PERTURBATIONS[p].describe(s) for s in range(PERTURBATIONS[p].max_severity + 1)}}
            for p in perts
        },
        "severities_run": sorted({s for _, s in tasks}),
        "skipped": skipped,
        "seeding": "numpy default_rng([seed, crc32(perturbation name), crc32(patient's slices)])",
        "strata": strata_info,
        "clean_dice_patient": {k: clean[k]["dice"]["per_patient"]["mean"] for k in [*kept_models, *(m.name for m in loaded)]},
        "mean_dice_drop": degradation,
        "mean_dice_retained": retained,
        "degrades_least": ranking[0] if ranking and not math.isnan(degradation[ranking[0]]) else None,
        "seconds": round(time.perf_counter() - t_start, 1),
        "merged_from_earlier": sorted(kept_models),
    }  # fmt: skip
    files["robustness_json"] = write_json_atomic(out / "robustness.json", summary)
    summary["files"] = {k: str(v) for k, v in files.items()}
    summary["rows"], summary["strata_rows"] = rows, srows
    return summary

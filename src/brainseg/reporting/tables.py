"""Read a finished comparison folder and turn its files into tables: leaderboard, significance, splits.

Everything here works from the files the comparison wrote (CSV, JSON); no model is loaded. The
numbers are recomputed from the per-patient and per-slice CSVs rather than copied from each
summary.json, so that k-fold runs can be pooled patient by patient (in k-fold cross-validation
each patient is tested exactly once, by the model of the fold that held it out).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainseg.errors import BrainsegError
from brainseg.fileio import read_csv, read_json

__all__ = [
    "BOARD_METRICS",
    "Comparison",
    "RunFiles",
    "check_split",
    "display_name",
    "leaderboard",
    "leaderboard_columns",
    "load_comparison",
    "markdown_table",
    "per_patient_values",
    "roc_curve",
    "significance",
    "significance_sentence",
    "verdict",
]

#: Metrics of the leaderboard with a bootstrap interval over patients, in display order.
BOARD_METRICS: tuple[str, ...] = ("dice", "iou", "recall", "precision")
_ALL_METRICS: tuple[str, ...] = ("dice", "iou", "precision", "recall", "specificity")
_TEXT_COLUMNS = {
    "patient", "institution", "level", "model", "label", "loss_name", "perturbation", "stratum_type", "stratum",
    "parameter", "model_a", "model_b", "label_a", "label_b", "better", "statement", "significant",
}

_DISPLAY = {
    "unet": "UNet",
    "attention_unet": "Attention UNet",
    "segnet": "SegNet",
    "deeplabv3plus": "DeepLabV3+",
    "pspnet": "PSPNet",
}


def display_name(model: str) -> str:
    """Human name of a registered architecture ("attention_unet" → "Attention UNet")."""
    return _DISPLAY.get(model, model)


@dataclass
class RunFiles:
    """The result files of one trained and evaluated run (one model, one fold)."""

    model: str
    fold: int | None
    dir: Path
    summary: dict[str, Any]
    per_patient: list[dict[str, Any]]
    per_slice: list[dict[str, Any]] | None = None
    detection: dict[str, dict[str, Any]] | None = None
    train_summary: dict[str, Any] | None = None
    history: list[dict[str, Any]] | None = None
    config: dict[str, Any] | None = None


@dataclass
class Comparison:
    """A comparison folder, read: protocol, the runs of every model and notes on what was missing."""

    dir: Path
    protocol: dict[str, Any]
    models: list[str]
    n_folds: int  # 0: a single split
    runs: dict[str, list[RunFiles]]
    splits: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def empty_policy(self) -> str:
        for runs in self.runs.values():
            for r in runs:
                if r.summary.get("empty_policy"):
                    return str(r.summary["empty_policy"])
        return "one"


# --------------------------------------------------------------------------------------------------
# Reading


def _number(v: Any) -> float:
    if v is None or v == "":
        return float("nan")
    if isinstance(v, (int, float)):
        return float(v)
    s = str(v).strip()
    if s.lower() in ("true", "false"):
        return 1.0 if s.lower() == "true" else 0.0
    try:
        return float(s)
    except ValueError:
        return float("nan")


def _typed_rows(rows: Iterable[Mapping[str, str]]) -> list[dict[str, Any]]:
    """CSV rows with numbers as floats (empty cells → NaN) and identifiers left as text."""
    out = []
    for row in rows:
        out.append({k: (v if k in _TEXT_COLUMNS else _number(v)) for k, v in row.items() if k is not None})
    return out


def read_table(path: Path, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """A result CSV as typed rows; a missing required column raises a BrainsegError naming the file."""
    try:
        raw = read_csv(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise BrainsegError(f"{path} cannot be read: {exc}") from None
    if raw:
        missing = [c for c in required if c not in raw[0]]
        if missing:
            raise BrainsegError(f"{path} lacks the column(s) {', '.join(missing)}")
    return _typed_rows(raw)


def _json(path: Path) -> dict[str, Any]:
    try:
        obj = read_json(path)
    except (OSError, ValueError) as exc:
        raise BrainsegError(f"{path} cannot be read as JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise BrainsegError(f"{path} must hold a JSON object, got {type(obj).__name__}")
    return obj


def _load_run(model: str, fold: int | None, run_dir: Path, notes: list[str]) -> RunFiles | None:
    ev = run_dir / "eval_test"
    where = f"{model}" + (f" fold {fold}" if fold is not None else "")
    need = [ev / "summary.json", ev / "per_patient.csv"]
    missing = [p for p in need if not p.is_file()]
    if missing:
        notes.append(f"{where}: not evaluated yet ({', '.join(str(p) for p in missing)} missing); left out.")
        return None
    per_patient = read_table(ev / "per_patient.csv", ("patient", "tp", "fp", "fn", "tn", "dice"))
    if not per_patient:
        notes.append(f"{where}: {ev / 'per_patient.csv'} has no rows; left out.")
        return None
    run = RunFiles(model=model, fold=fold, dir=run_dir, summary=_json(ev / "summary.json"), per_patient=per_patient)
    if (ev / "per_slice.csv").is_file():
        run.per_slice = read_table(ev / "per_slice.csv", ("patient", "slice", "dice"))
    else:
        notes.append(f"{where}: {ev / 'per_slice.csv'} missing; per-slice means and its ROC curve left out.")
    if (ev / "detection.csv").is_file():
        run.detection = {str(r.get("level")): r for r in read_table(ev / "detection.csv", ("level",))}
    elif isinstance(run.summary.get("detection"), dict):
        run.detection = {k: v for k, v in run.summary["detection"].items() if isinstance(v, dict)}
    if (run_dir / "train_summary.json").is_file():
        run.train_summary = _json(run_dir / "train_summary.json")
    if (run_dir / "history.csv").is_file():
        run.history = read_table(run_dir / "history.csv", ("epoch",))
    if (run_dir / "config.json").is_file():
        run.config = _json(run_dir / "config.json")
    return run


def _split_list(obj: Any) -> list[dict[str, Any]]:
    """Split dicts from the shapes a splits file may take: a list, {"splits": [...]}, {"folds": [...]}, one split."""
    if isinstance(obj, list):
        return [s for s in obj if isinstance(s, dict)]
    if isinstance(obj, dict):
        for key in ("splits", "folds"):
            if isinstance(obj.get(key), list):
                return [s for s in obj[key] if isinstance(s, dict)]
        if any(k in obj for k in ("train", "test")):
            return [obj]
    return []


def load_comparison(cmp_dir: str | Path) -> Comparison:
    """Read `<cmp_dir>/protocol.json` and the result files of every model (and fold).

    Runs that are missing or not evaluated are left out with a note; a folder without a
    protocol.json, or where no model has results, raises a BrainsegError saying what is missing.
    """
    d = Path(cmp_dir)
    if not d.is_dir():
        raise BrainsegError(f"{d} is not a folder (expected a comparison made by `brainseg compare`)")
    if not (d / "protocol.json").is_file():
        raise BrainsegError(
            f"{d} is not a comparison folder: protocol.json is missing (expected protocol.json and "
            f"runs/<model>/eval_test/, as written by `brainseg compare`)"
        )
    protocol = _json(d / "protocol.json")
    models = protocol.get("models")
    if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
        raise BrainsegError(f"{d / 'protocol.json'}: 'models' must be a non-empty list of model names")
    if not (d / "runs").is_dir():
        raise BrainsegError(f"{d} is not a comparison folder: runs/ is missing")
    folds = protocol.get("folds")
    n_folds = int(folds) if isinstance(folds, (int, float)) and folds and folds > 1 else 0
    if not n_folds and (d / "runs" / models[0] / "fold0").is_dir():
        n_folds = len([p for p in (d / "runs" / models[0]).glob("fold*") if p.is_dir()])
    notes: list[str] = []
    runs: dict[str, list[RunFiles]] = {}
    for m in models:
        dirs = [(k, d / "runs" / m / f"fold{k}") for k in range(n_folds)] if n_folds else [(None, d / "runs" / m)]
        loaded = [r for k, rd in dirs if (r := _load_run(m, k, rd, notes)) is not None]
        if loaded:
            runs[m] = loaded
            if n_folds and len(loaded) < n_folds:
                notes.append(f"{m}: only {len(loaded)} of {n_folds} folds evaluated; pooled over those.")
    if not runs:
        raise BrainsegError(
            f"{d}: no model has evaluation results yet (expected runs/<model>/"
            f"{'fold<k>/' if n_folds else ''}eval_test/summary.json and per_patient.csv for "
            f"{', '.join(models)})"
        )
    splits = _split_list(protocol.get("splits"))
    if not splits and isinstance(protocol.get("split"), dict):
        splits = [protocol["split"]]
    if not splits and (d / "splits.json").is_file():
        try:
            splits = _split_list(read_json(d / "splits.json"))
        except (OSError, ValueError):
            notes.append(f"{d / 'splits.json'} cannot be read; the split check is left out.")
    return Comparison(
        dir=d, protocol=protocol, models=[m for m in models if m in runs], n_folds=n_folds, runs=runs,
        splits=splits, notes=notes,
    )


# --------------------------------------------------------------------------------------------------
# Numbers


def pooled_patients(runs: Sequence[RunFiles]) -> tuple[list[dict[str, Any]], int]:
    """Per-patient rows of all folds, one per patient; returns (rows, number of duplicates averaged).

    In k-fold each patient is tested once; should one appear in several folds its metrics are
    averaged (and counted, so the report can say so) rather than counted twice in the CI.
    """
    by: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        for row in r.per_patient:
            by.setdefault(str(row["patient"]), []).append(row)
    rows, dup = [], 0
    for group in by.values():
        if len(group) == 1:
            rows.append(group[0])
            continue
        dup += 1
        merged = dict(group[0])
        for k, v in group[0].items():
            if isinstance(v, float):
                merged[k] = float(np.nanmean([g[k] for g in group])) if any(not math.isnan(g[k]) for g in group) else v
        rows.append(merged)
    return rows, dup


def per_patient_values(cmp: Comparison, metric: str = "dice") -> dict[str, dict[str, float]]:
    """model → {patient: per-patient metric}, pooled over folds (the pairing for the tests)."""
    return {m: {str(r["patient"]): float(r[metric]) for r in pooled_patients(cmp.runs[m])[0]} for m in cmp.models}


def _nanmean(values: Iterable[float]) -> float:
    v = np.asarray(list(values), dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


def _get(d: Mapping[str, Any] | None, *keys: str) -> Any:
    for k in keys:
        if d is not None and d.get(k) is not None:
            return d[k]
    return None


def _detection(runs: Sequence[RunFiles], level: str) -> dict[str, float]:
    """Detection metrics of one run as written; over folds, recomputed from the pooled test slices.

    Pooling uses `slice_and_patient_detection` (the evaluation's own definition) on every fold's
    per_slice.csv; when a fold lacks that file, counts are summed and AUROC averaged over folds.
    """
    rows = [r.detection[level] for r in runs if r.detection and level in r.detection]
    if len(runs) == 1:
        return {k: _number(rows[0].get(k)) for k in ("sensitivity", "specificity", "accuracy", "auroc")} if rows else {}
    if all(r.per_slice for r in runs):
        from brainseg.metrics.detection import slice_and_patient_detection

        min_area = _number(_get(runs[0].summary, "detection_min_area"))
        det = slice_and_patient_detection(
            [s for r in runs for s in (r.per_slice or [])], min_area=1 if math.isnan(min_area) else min_area
        )[level]
        return {k: float(det[k]) for k in ("sensitivity", "specificity", "accuracy", "auroc")}
    if not rows:
        return {}
    tp, fp, fn, tn = (sum(_number(r.get(k)) for r in rows) for k in ("tp", "fp", "fn", "tn"))

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else float("nan")

    return {
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "accuracy": ratio(tp + tn, tp + fp + fn + tn),
        "auroc": _nanmean(_number(r.get("auroc")) for r in rows),
    }


def leaderboard_columns(n_folds: int = 0) -> list[str]:
    cols = ["rank", "model", "label", "n_patients"]
    for m in BOARD_METRICS:
        cols += [f"{m}_patient", f"{m}_patient_ci_low", f"{m}_patient_ci_high"]
    cols += ["specificity_patient", "dice_patient_sd", "loss", "loss_name"]
    cols += [f"{m}_slice" for m in BOARD_METRICS] + [f"{m}_micro" for m in BOARD_METRICS]
    cols += [f"{lvl}_{k}" for lvl in ("slice", "patient") for k in ("sensitivity", "specificity", "auroc")]
    cols += ["params", "flops", "train_seconds", "epochs", "best_epoch", "inference_ms_per_slice"]
    if n_folds:
        cols += ["n_folds", "dice_fold_mean", "dice_fold_sd"]
    return cols


def leaderboard(cmp: Comparison, *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> list[dict[str, Any]]:
    """One row per model, ranked by mean per-patient Dice (highest first; ties keep protocol order).

    Per-patient means carry a percentile-bootstrap interval over patients (`bootstrap_ci`);
    per-slice means are over the rows of per_slice.csv (NaN left out, i.e. the "skip" policy's
    undefined slices); micro metrics come from the confusion counts summed over every patient.
    With folds, patients are pooled over folds, training time is summed and inference time,
    epochs and AUROC are averaged over folds; `dice_fold_mean`/`_sd` describe the fold means.
    """
    from brainseg.metrics.confusion import metrics_from_counts
    from brainseg.metrics.stats import bootstrap_ci

    rows = []
    for m in cmp.models:
        runs = cmp.runs[m]
        pp, _ = pooled_patients(runs)
        row: dict[str, Any] = {"model": m, "label": display_name(m), "n_patients": len(pp)}
        for metric in _ALL_METRICS:
            vals = [float(r.get(metric, float("nan"))) for r in pp]
            mean, low, high = bootstrap_ci(vals, n_boot=n_boot, confidence=confidence, seed=seed)
            row[f"{metric}_patient"] = mean
            if metric in BOARD_METRICS:
                row[f"{metric}_patient_ci_low"], row[f"{metric}_patient_ci_high"] = low, high
        dice = np.array([float(r["dice"]) for r in pp])
        dice = dice[~np.isnan(dice)]
        row["dice_patient_sd"] = float(dice.std(ddof=1)) if dice.size > 1 else float("nan")
        slices = [s for r in runs for s in (r.per_slice or [])]
        for metric in BOARD_METRICS:
            row[f"{metric}_slice"] = _nanmean(s.get(metric, float("nan")) for s in slices) if slices else float("nan")
        counts = np.array([[float(r[k]) for k in ("tp", "fp", "fn", "tn")] for r in pp]).sum(axis=0)
        micro = metrics_from_counts(counts, empty_policy=cmp.empty_policy)
        for metric in BOARD_METRICS:
            row[f"{metric}_micro"] = float(micro[metric])
        # Loss on the test split: a mean over slices, so folds are weighted by their slice counts.
        losses = [(_number(r.summary.get("loss")), _number(r.summary.get("n_slices"))) for r in runs]
        if len(losses) == 1 or any(math.isnan(w) for _, w in losses):
            row["loss"] = _nanmean(v for v, _ in losses)
        else:
            w = sum(n for v, n in losses if not math.isnan(v))
            row["loss"] = sum(v * n for v, n in losses if not math.isnan(v)) / w if w else float("nan")
        row["loss_name"] = runs[0].summary.get("loss_name", "")
        for lvl in ("slice", "patient"):
            det = _detection(runs, lvl)
            for k in ("sensitivity", "specificity", "auroc"):
                row[f"{lvl}_{k}"] = det.get(k, float("nan"))
        row["params"] = _get(runs[0].summary, "params") or _get(runs[0].train_summary, "params")
        row["flops"] = _get(runs[0].summary, "flops")
        secs = [_number(_get(r.train_summary, "train_seconds")) for r in runs]
        row["train_seconds"] = float(np.nansum(secs)) if not all(math.isnan(s) for s in secs) else float("nan")
        epochs = [_number(_get(r.train_summary, "epochs_run")) for r in runs]
        row["epochs"] = _nanmean(epochs)
        row["best_epoch"] = _number(_get(runs[0].train_summary, "best_epoch")) if len(runs) == 1 else float("nan")
        row["inference_ms_per_slice"] = _nanmean(_number(r.summary.get("inference_ms_per_slice")) for r in runs)
        if cmp.n_folds:
            fold_means = [_nanmean(float(p["dice"]) for p in r.per_patient) for r in runs]
            row["n_folds"] = len(runs)
            row["dice_fold_mean"] = _nanmean(fold_means)
            fm = np.array([v for v in fold_means if not math.isnan(v)])
            row["dice_fold_sd"] = float(fm.std(ddof=1)) if fm.size > 1 else float("nan")
        rows.append(row)
    order = sorted(
        range(len(rows)),
        key=lambda i: (math.isnan(rows[i]["dice_patient"]), -np.nan_to_num(rows[i]["dice_patient"], nan=0.0), i),
    )
    ranked = [rows[i] for i in order]
    for rank, row in enumerate(ranked, 1):
        row["rank"] = rank
    return ranked


# --------------------------------------------------------------------------------------------------
# Significance


def significance(
    cmp: Comparison,
    board: Sequence[Mapping[str, Any]],
    *,
    alpha: float = 0.05,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Pairwise Wilcoxon signed-rank tests on per-patient Dice with Holm's correction.

    Pairs are formed in leaderboard order, so model_a is the higher-ranked model and a positive
    mean_diff favours it. Each row also carries `statement`, one plain-English sentence.
    """
    from brainseg.metrics.stats import pairwise_comparisons

    values = per_patient_values(cmp, "dice")
    ordered = {str(r["model"]): values[str(r["model"])] for r in board}
    if len(ordered) < 2:
        return []
    rows = pairwise_comparisons(ordered, alpha=alpha, n_boot=n_boot, confidence=confidence, seed=seed)
    for r in rows:
        r["label_a"], r["label_b"] = display_name(r["model_a"]), display_name(r["model_b"])
        r["statement"] = significance_sentence(r, confidence=confidence)
    return rows


SIGNIFICANCE_COLUMNS = (
    "model_a", "model_b", "n", "mean_a", "mean_b", "mean_diff", "median_diff", "ci_low", "ci_high",
    "statistic", "p", "p_holm", "significant", "better", "statement",
)


def _fmt_p(p: float) -> str:
    if p is None or math.isnan(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def significance_sentence(row: Mapping[str, Any], *, confidence: float = 0.95) -> str:
    """E.g. "Attention UNet vs SegNet: +0.031 Dice (95% CI +0.010 to +0.052), p_holm = 0.004 — a real difference"."""
    a, b = display_name(row["model_a"]), display_name(row["model_b"])
    diff, lo, hi = row["mean_diff"], row.get("ci_low", float("nan")), row.get("ci_high", float("nan"))
    p = row["p_holm"]
    head = f"{a} vs {b}: {diff:+.3f} Dice"
    if lo is not None and not math.isnan(lo):
        head += f" ({confidence:.0%} CI {lo:+.3f} to {hi:+.3f})"
    head += f", p_holm {'<' if p < 0.001 else '='} {_fmt_p(p).lstrip('< ')} over {row['n']} patients"
    if row["significant"]:
        better = display_name(row["better"]) if row["better"] not in ("none", None) else a
        return f"{head} — a real difference: {better} is better."
    return f"{head} — {a} and {b} are not distinguishable."


def _min_wilcoxon_p(n: int) -> float:
    """Smallest two-sided p an exact signed-rank test can give with n pairs (all differences one sign)."""
    return min(1.0, 2.0 / 2.0**n) if n > 0 else 1.0


def verdict(board: Sequence[Mapping[str, Any]], sig: Sequence[Mapping[str, Any]], *, alpha: float = 0.05) -> str:
    """One paragraph: which model is best, by how much, and which differences are real."""
    if not board:
        return "No model has results."
    best = board[0]
    b = best["label"]
    text = (
        f"{b} has the highest mean per-patient Dice, {best['dice_patient']:.3f} "
        f"(95% CI {best['dice_patient_ci_low']:.3f}–{best['dice_patient_ci_high']:.3f}) over "
        f"{best['n_patients']} test patients"
    )
    if len(board) == 1:
        return text + "; it is the only model in this comparison, so nothing is compared."
    second = board[1]
    gap = best["dice_patient"] - second["dice_patient"]
    if gap < 0.0005:  # would print as +0.000: say it in words
        text += f", level with {second['label']} ({second['dice_patient']:.4f} vs {best['dice_patient']:.4f})"
    else:
        text += f", {gap:+.3f} ahead of {second['label']} ({second['dice_patient']:.3f})"
    worst = board[-1]
    if len(board) > 2:
        text += f" and {best['dice_patient'] - worst['dice_patient']:+.3f} ahead of the last, {worst['label']} ({worst['dice_patient']:.3f})"
    text += ". "
    real = [r for r in sig if r["significant"]]
    vs_best = [r for r in sig if best["model"] in (r["model_a"], r["model_b"])]
    beaten = [r for r in vs_best if r["significant"] and r["better"] == best["model"]]
    tied = [r for r in vs_best if not r["significant"]]
    if vs_best and len(beaten) == len(vs_best):
        text += f"{b} is significantly better than every other model (Wilcoxon signed-rank, Holm-corrected, α = {alpha}). "
    elif tied:
        others = [display_name(r["model_b"] if r["model_a"] == best["model"] else r["model_a"]) for r in tied]
        text += (
            f"{b} cannot be told apart from {_join(others)} on these patients "
            f"(Holm-corrected Wilcoxon, α = {alpha}), so the data do not single out one best model. "
        )
    if real:
        pairs = [f"{display_name(r['better'])} > {display_name(r['model_b'] if r['better'] == r['model_a'] else r['model_a'])}" for r in real]
        text += f"Real differences: {_join(pairs)}. "
    else:
        text += "No difference between models is significant. "
    n = max((int(r["n"]) for r in sig), default=0)
    # Holm multiplies the smallest p by the number of pairs: below this many patients nothing can pass.
    if 0 < n and not real and _min_wilcoxon_p(n) * len(sig) >= alpha:
        text += (
            f"With only {n} paired patients and {len(sig)} comparisons, even a model better on every "
            f"patient gets p_holm ≥ {min(1.0, _min_wilcoxon_p(n) * len(sig)):.3f}, so no difference can reach "
            f"α = {alpha}: more test patients (or --folds) are needed. "
        )
    return text.strip()


def _join(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


# --------------------------------------------------------------------------------------------------
# Split summary and leakage check


def check_split(cmp: Comparison) -> tuple[bool | None, list[str]]:
    """Check that no tested patient was trained or validated on, and that models share test patients.

    Returns (ok, lines): ok is None when the split lists are not available to check against.
    """
    lines: list[str] = []
    ok: bool | None = True
    tested: dict[str, set[str]] = {}
    for m in cmp.models:
        for run in cmp.runs[m]:
            k = run.fold if run.fold is not None else 0
            pats = {str(r["patient"]) for r in run.per_patient}
            tested.setdefault(m, set()).update(pats)
            if k >= len(cmp.splits):
                ok = None
                continue
            s = cmp.splits[k]
            train, val, test = (set(map(str, s.get(p) or [])) for p in ("train", "val", "test"))
            where = f"{display_name(m)}" + (f" fold {k}" if run.fold is not None else "")
            if pats & train:
                ok = False
                lines.append(f"FAILED: {where} was tested on {len(pats & train)} training patient(s): {', '.join(sorted(pats & train)[:5])}")
            if pats & val:
                ok = False
                lines.append(f"FAILED: {where} was tested on {len(pats & val)} validation patient(s): {', '.join(sorted(pats & val)[:5])}")
            if test and pats - test:
                ok = False
                lines.append(f"FAILED: {where} was tested on {len(pats - test)} patient(s) outside the split's test list")
    for k, s in enumerate(cmp.splits):
        train, val, test = (set(map(str, s.get(p) or [])) for p in ("train", "val", "test"))
        tag = f"fold {k}: " if len(cmp.splits) > 1 else ""
        if train & test or val & test or train & val:
            ok = False
            lines.append(f"FAILED: {tag}the split's train/val/test lists overlap")
    sets = list(tested.values())
    if sets and any(s != sets[0] for s in sets):
        lines.append("Models were not all tested on the same patients; paired tests use the patients they share.")
    if cmp.n_folds and len(cmp.splits) > 1:
        all_test = [p for s in cmp.splits for p in map(str, s.get("test") or [])]
        if len(all_test) != len(set(all_test)):
            ok = False
            lines.append("FAILED: a patient is in the test part of more than one fold")
    if ok is None:
        lines.insert(0, "Not checked: the split's patient lists are not in protocol.json or splits.json.")
    elif ok:
        n = len(set().union(*sets)) if sets else 0
        lines.insert(
            0,
            f"Passed: none of the {n} tested patients appears in the training or validation part of "
            f"{'its fold' if cmp.n_folds else 'the split'}"
            + ("; every model was tested on the same patients." if sets and all(s == sets[0] for s in sets) else "."),
        )
    return ok, lines


# --------------------------------------------------------------------------------------------------
# ROC


def roc_curve(scores: Sequence[float], labels: Sequence[bool]) -> tuple[np.ndarray, np.ndarray, float]:
    """ROC points (fpr, tpr) over every distinct score threshold, and the area under them.

    Tied scores form one step, so the area equals the Mann–Whitney probability that a positive
    outscores a negative, ties counting one half. Returns NaN area when a class is absent.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    keep = ~np.isnan(s)
    s, y = s[keep], y[keep]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return np.array([0.0, 1.0]), np.array([0.0, 1.0]), float("nan")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tps = np.cumsum(y)[last_of_tie]
    fps = np.cumsum(~y)[last_of_tie]
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
    return fpr, tpr, area


# --------------------------------------------------------------------------------------------------
# Formatting


def fmt(v: Any, digits: int = 3) -> str:
    """A number for a table: NaN/None → "–", integers without decimals."""
    if v is None or v == "":
        return "–"
    if isinstance(v, str):
        return v
    if isinstance(v, float) and math.isnan(v):
        return "–"
    if float(v).is_integer() and abs(v) >= 1 and digits == 0:
        return f"{int(v)}"
    return f"{v:.{digits}f}"


def fmt_count(v: Any) -> str:
    """1 234 567 → "1.23 M"; for parameters and FLOPs."""
    x = _number(v)
    if math.isnan(x):
        return "–"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.0f}"


def fmt_seconds(v: Any) -> str:
    x = _number(v)
    if math.isnan(x):
        return "–"
    if x >= 3600:
        return f"{x / 3600:.1f} h"
    if x >= 60:
        return f"{x / 60:.1f} min"
    return f"{x:.0f} s"


def fmt_ci(row: Mapping[str, Any], key: str) -> str:
    mean, lo, hi = row.get(key), row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if lo is None or (isinstance(lo, float) and math.isnan(lo)):
        return f"{mean:.3f}"
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A GitHub-flavoured Markdown table; `align` is one of l/r/c per column (default: first l, rest r)."""
    align = align or ("l" + "r" * (len(headers) - 1))
    marks = {"l": ":---", "r": "---:", "c": ":---:"}

    def cell(x: str) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(cell(h) for h in headers) + " |", "| " + " | ".join(marks[a] for a in align) + " |"]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(out)

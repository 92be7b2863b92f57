"""Read a finished comparison folder: its protocol, and every model's (and fold's) result files.

Everything here works from the files the comparison wrote (CSV, JSON); no model is loaded. The
numbers are recomputed from the per-patient and per-slice CSVs rather than copied from each
summary.json (`brainseg.reporting.leaderboard`), so that k-fold runs can be pooled patient by
patient (in k-fold cross-validation each patient is tested exactly once, by the model of the fold
that held it out).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brainseg.errors import BrainsegError
from brainseg.fileio import read_csv, read_json
from brainseg.reporting.formatting import to_number

__all__ = ["Comparison", "RunFiles", "first_of", "load_comparison", "read_table"]

_TEXT_COLUMNS = {
    "patient", "institution", "level", "model", "label", "loss_name", "perturbation", "stratum_type", "stratum",
    "parameter", "model_a", "model_b", "label_a", "label_b", "better", "statement", "significant",
}


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


def _typed_rows(rows: Iterable[Mapping[str, str]]) -> list[dict[str, Any]]:
    """CSV rows with numbers as floats (empty cells → NaN) and identifiers left as text."""
    out = []
    for row in rows:
        out.append({k: (v if k in _TEXT_COLUMNS else to_number(v)) for k, v in row.items() if k is not None})
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


def _split_dicts(obj: Any, source: str, notes: list[str]) -> list[dict[str, Any]]:
    """The splits of a splits.json-shaped object, as dicts (parsed by `brainseg.data.splits`).

    Kept as written, not validated: the leakage check reports overlapping lists rather than
    refusing them. An unreadable shape leaves a note and no splits.
    """
    from brainseg.data.splits import split_items

    if obj is None:
        return []
    try:
        return [dict(s) for s in split_items(obj, source) if isinstance(s, dict)]
    except BrainsegError as exc:
        notes.append(f"{exc}; the split check is left out.")
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
        mine: list[str] = []
        loaded = [r for k, rd in dirs if (r := _load_run(m, k, rd, mine)) is not None]
        # a model with no run folder at all is not run yet: one note, not one per fold
        if not loaded and not any(rd.exists() for _, rd in dirs):
            mine = [f"{m}: not run yet (no {d / 'runs' / m}); left out."]
        notes += mine
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
    splits = _split_dicts(protocol.get("splits") or None, f"{d / 'protocol.json'} (splits)", notes)
    if not splits and isinstance(protocol.get("split"), dict):
        splits = [protocol["split"]]
    if not splits and (d / "splits.json").is_file():
        try:
            splits = _split_dicts(read_json(d / "splits.json"), f"split file {d / 'splits.json'}", notes)
        except (OSError, ValueError):
            notes.append(f"{d / 'splits.json'} cannot be read; the split check is left out.")
    return Comparison(
        dir=d, protocol=protocol, models=[m for m in models if m in runs], n_folds=n_folds, runs=runs,
        splits=splits, notes=notes,
    )


def first_of(d: Mapping[str, Any] | None, *keys: str) -> Any:
    """The value of the first of `keys` that `d` holds (not None); None when none does."""
    for k in keys:
        if d is not None and d.get(k) is not None:
            return d[k]
    return None

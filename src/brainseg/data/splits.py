"""Patient-level splits: hold-out, k-fold and leave-one-institution-out, stratified by institution.

Slices of one patient are strongly correlated, so every split is made over patients, never over
slices: no slice of a test patient can reach training. Splits are seeded, written once to
`splits.json` (atomically), checked for overlap when read back, and a user's own file in the same
format (or a bare {"train": [...], "val": [...], "test": [...]}) can replace them.

Fractions are of all patients, in every method: `val_fraction=0.15` puts round(0.15·N) patients
in validation whether the test part is a hold-out, a fold or an institution.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainseg.errors import BrainsegError
from brainseg.fileio import write_json_atomic

SPLITS_FORMAT = "brainseg-splits"
SPLITS_VERSION = 1
PARTS = ("train", "val", "test")


def split_id(train: Iterable[str], val: Iterable[str], test: Iterable[str]) -> str:
    """Short stable hash of the three patient lists (order inside a list does not matter)."""
    payload = json.dumps({"train": sorted(train), "val": sorted(val), "test": sorted(test)}, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


@dataclass
class Split:
    """One patient-level split. The lists are kept sorted; `id` is derived from their contents.

    Attributes:
        train, val, test: patient folder names.
        method: "holdout", "kfold", "leave-institution-out" or "user".
        seed: the seed it was drawn with.
        fold: fold number for k-fold splits, else None.
        institution: the held-out institution for leave-institution-out, else None.
        id: short hash of the three lists (see `split_id`).
    """

    train: list[str]
    val: list[str]
    test: list[str]
    method: str = "user"
    seed: int = 0
    fold: int | None = None
    institution: str | None = None
    id: str = field(init=False)

    def __post_init__(self) -> None:
        self.train, self.val, self.test = sorted(self.train), sorted(self.val), sorted(self.test)
        self.id = split_id(self.train, self.val, self.test)

    @property
    def patients(self) -> list[str]:
        return sorted(self.train + self.val + self.test)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "method": self.method,
            "seed": self.seed,
            "fold": self.fold,
            "institution": self.institution,
            "train": list(self.train),
            "val": list(self.val),
            "test": list(self.test),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "split") -> Split:
        """Build and check a split from a mapping (a stored `id` is recomputed, not trusted)."""
        if not isinstance(d, Mapping):
            raise BrainsegError(f"{source}: a split must be a mapping with train/val/test lists, got {type(d).__name__}")
        lists = {}
        for part in PARTS:
            value = d.get(part, [])
            if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
                raise BrainsegError(f"{source}: '{part}' must be a list of patient names, got {value!r:.80}")
            lists[part] = value
        fold = d.get("fold")
        if fold is not None and (not isinstance(fold, int) or isinstance(fold, bool)):
            raise BrainsegError(f"{source}: 'fold' must be an integer or null, got {fold!r}")
        seed = d.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise BrainsegError(f"{source}: 'seed' must be an integer, got {seed!r}")
        check_disjoint(lists, source)
        return cls(
            lists["train"],
            lists["val"],
            lists["test"],
            method=str(d.get("method", "user")),
            seed=seed,
            fold=fold,
            institution=d.get("institution"),
        )


def check_disjoint(parts: Mapping[str, Sequence[str]], source: str = "split") -> None:
    """Raise BrainsegError naming the patient if one appears twice (within or across parts)."""
    seen: dict[str, str] = {}
    for part in PARTS:
        for patient in parts.get(part, []):
            if patient in seen:
                where = f"twice in {part}" if seen[patient] == part else f"in both {seen[patient]} and {part}"
                raise BrainsegError(f"{source}: patient {patient} appears {where}")
            seen[patient] = part


def check_split(split: Split, source: str = "split", patients: Iterable[str] | None = None) -> None:
    """Check a split: no patient twice, a non-empty training part, and (given `patients`) no unknowns."""
    check_disjoint({"train": split.train, "val": split.val, "test": split.test}, source)
    if not split.train:
        raise BrainsegError(f"{source}: the training part is empty")
    if patients is not None:
        known = set(patients)
        for part in PARTS:
            for p in getattr(split, part):
                if p not in known:
                    raise BrainsegError(f"{source}: {part} patient {p} is not in the dataset")


# --------------------------------------------------------------------------------------------
# Drawing splits


def _round(x: float) -> int:
    return math.floor(x + 0.5)  # half up, not banker's rounding


def _count(fraction: float, n: int) -> int:
    """Patients for a fraction of n: at least one when the fraction is positive."""
    return max(1, _round(fraction * n)) if fraction > 0 else 0


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise BrainsegError(f"{name} must be in [0, 1), got {value}")


def _groups(patients: Iterable[str], institutions: Mapping[str, str]) -> dict[str, list[str]]:
    """Institution → sorted patients (patients without an institution form the group '?')."""
    out: dict[str, list[str]] = {}
    for p in sorted(set(patients)):
        out.setdefault(institutions.get(p, "?"), []).append(p)
    return dict(sorted(out.items()))


def _allocate(sizes: Mapping[str, int], total: int) -> dict[str, int]:
    """Split `total` over groups in proportion to `sizes` (largest remainder), never above a size."""
    n = sum(sizes.values())
    if total > n:
        raise BrainsegError(f"cannot take {total} patients from {n}")
    if n == 0:
        return dict.fromkeys(sizes, 0)
    quota = {g: total * s / n for g, s in sizes.items()}
    out = {g: min(sizes[g], math.floor(q)) for g, q in quota.items()}
    # hand out the rest by largest fractional part (ties: larger group, then name)
    order = sorted(sizes, key=lambda g: (-(quota[g] - math.floor(quota[g])), -sizes[g], g))
    left = total - sum(out.values())
    while left > 0:
        for g in order:
            if left and out[g] < sizes[g]:
                out[g] += 1
                left -= 1
    return out


def _draw(groups: Mapping[str, list[str]], count: int, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Take `count` patients stratified by group; returns (taken, rest)."""
    per_group = _allocate({g: len(ps) for g, ps in groups.items()}, count)
    taken: list[str] = []
    rest: list[str] = []
    for g, ps in groups.items():
        order = [ps[i] for i in rng.permutation(len(ps))]
        taken += order[: per_group[g]]
        rest += order[per_group[g] :]
    return sorted(taken), sorted(rest)


def _too_few(n: int, what: str) -> BrainsegError:
    return BrainsegError(f"{n} patients are too few for {what}: the training part would be empty")


def holdout_split(
    patients: Sequence[str],
    institutions: Mapping[str, str],
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Split:
    """Hold-out train/val/test split of patients, stratified by institution.

    round(test_fraction·N) test and round(val_fraction·N) validation patients (at least one each
    when the fraction is positive), allocated to institutions in proportion to their size.
    """
    _check_fraction("test_fraction", test_fraction)
    _check_fraction("val_fraction", val_fraction)
    groups = _groups(patients, institutions)
    n = sum(len(g) for g in groups.values())
    n_test, n_val = _count(test_fraction, n), _count(val_fraction, n)
    if n - n_test - n_val < 1:
        raise _too_few(n, f"val_fraction {val_fraction} and test_fraction {test_fraction}")
    rng = np.random.default_rng(seed)
    test, rest = _draw(groups, n_test, rng)
    val, train = _draw(_groups(rest, institutions), n_val, rng)
    split = Split(train, val, test, method="holdout", seed=seed)
    check_split(split, "holdout split", patients)
    return split


def kfold_splits(
    patients: Sequence[str], institutions: Mapping[str, str], *, k: int, seed: int = 0, val_fraction: float = 0.15
) -> list[Split]:
    """k splits whose test parts partition the patients, stratified by institution.

    Patients are shuffled within each institution, the institutions laid end to end and dealt to
    the folds in turn, so fold sizes differ by at most one and every institution is spread evenly.
    Validation patients (round(val_fraction·N)) are drawn, stratified, from the other folds.
    """
    _check_fraction("val_fraction", val_fraction)
    groups = _groups(patients, institutions)
    n = sum(len(g) for g in groups.values())
    if not isinstance(k, int) or not 2 <= k <= n:
        raise BrainsegError(f"k-fold needs 2 ≤ k ≤ {n} (the number of patients), got k={k}")
    rng = np.random.default_rng(seed)
    dealt = [p for g in groups.values() for p in (g[i] for i in rng.permutation(len(g)))]
    folds = [sorted(dealt[f::k]) for f in range(k)]
    n_val = _count(val_fraction, n)
    out = []
    for f, test in enumerate(folds):
        rest = [p for p in dealt if p not in set(test)]
        if len(rest) - n_val < 1:
            raise _too_few(n, f"{k} folds with val_fraction {val_fraction}")
        val, train = _draw(_groups(rest, institutions), n_val, np.random.default_rng([seed, f]))
        split = Split(train, val, test, method="kfold", seed=seed, fold=f)
        check_split(split, f"fold {f}", patients)
        out.append(split)
    return out


def leave_institution_out(
    patients: Sequence[str],
    institutions: Mapping[str, str],
    *,
    institution: str,
    val_fraction: float = 0.15,
    seed: int = 0,
) -> Split:
    """Test on every patient of one institution; train and validate on the others (stratified)."""
    _check_fraction("val_fraction", val_fraction)
    groups = _groups(patients, institutions)
    if institution not in groups:
        raise BrainsegError(f"institution {institution!r} is not in the dataset; known: {', '.join(groups)}")
    test = groups.pop(institution)
    rest = [p for g in groups.values() for p in g]
    n = len(test) + len(rest)
    n_val = min(_count(val_fraction, n), max(len(rest) - 1, 0))
    if len(rest) - n_val < 1:
        raise BrainsegError(f"holding out institution {institution} leaves no patients to train on")
    val, train = _draw(groups, n_val, np.random.default_rng(seed))
    split = Split(train, val, test, method="leave-institution-out", seed=seed, institution=institution)
    check_split(split, f"leave-out {institution}", patients)
    return split


# --------------------------------------------------------------------------------------------
# splits.json


def save_splits(path: str | Path, splits: Sequence[Split]) -> None:
    """Write splits to a JSON file atomically (a kill leaves the old file or the new one)."""
    for i, s in enumerate(splits):
        check_split(s, f"split {i}")
    write_json_atomic(
        path,
        {"format": SPLITS_FORMAT, "version": SPLITS_VERSION, "splits": [s.to_dict() for s in splits]},
    )


def split_items(data: Any, source: str) -> list[dict[str, Any]]:
    """The split mappings of a parsed splits file, not yet checked (see `load_splits` for the shapes).

    Raises:
        BrainsegError: naming `source`, for another format version or when it holds no splits.
    """
    if isinstance(data, dict) and "splits" in data:
        version = data.get("version", SPLITS_VERSION)
        if version != SPLITS_VERSION:
            raise BrainsegError(f"{source} has format version {version}; this brainseg reads {SPLITS_VERSION}")
        items = data["splits"]
    elif isinstance(data, dict):
        items = [data]
    else:
        items = data
    if not isinstance(items, list) or not items:
        raise BrainsegError(f"{source} holds no splits")
    return items


def load_splits(path: str | Path, patients: Iterable[str] | None = None) -> list[Split]:
    """Read and check a splits file: ours, a bare list of splits, or one {"train", "val", "test"} mapping.

    Raises:
        BrainsegError: unreadable JSON, a malformed split, a patient in two parts, an empty
            training part, or (given `patients`) a patient that is not in the dataset — naming
            the file and the patient.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BrainsegError(f"split file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BrainsegError(f"split file {path} cannot be read as JSON: {exc}") from None
    items = split_items(data, f"split file {path}")
    known = list(patients) if patients is not None else None
    out = []
    for i, item in enumerate(items):
        source = f"split file {path}" + (f" (split {i})" if len(items) > 1 else "")
        split = Split.from_dict(item, source)
        check_split(split, source, known)
        out.append(split)
    return out

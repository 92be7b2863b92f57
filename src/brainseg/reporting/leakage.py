"""The leakage check of a comparison: no tested patient was trained or validated on.

(The split files themselves are parsed and validated by `brainseg.data.splits`; this checks what
the runs were actually tested on against them.)
"""

from __future__ import annotations

from brainseg.reporting.comparison import Comparison
from brainseg.reporting.formatting import display_name

__all__ = ["check_leakage"]


def check_leakage(cmp: Comparison) -> tuple[bool | None, list[str]]:
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

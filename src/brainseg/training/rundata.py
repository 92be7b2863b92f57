"""The data side of a run: its indexed dataset and its frozen patient-level split.

`load_run_data` resolves the dataset folder (or the phantom fallback), indexes it once (through
the index cache) and returns the split the settings ask for, drawn from the seed and frozen in
`<run>/splits.json` (never re-drawn silently), or read from a user's file.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brainseg.config import RunConfig
from brainseg.errors import BrainsegError
from brainseg.training import distributed as dist_utils


@dataclass
class RunData:
    """The indexed dataset and the split a run uses."""

    root: Path
    index: Any  # brainseg.data.lgg.DatasetIndex
    split: Any  # brainseg.data.splits.Split


def resolve_split(cfg: RunConfig, index: Any, run_dir: Path | None) -> Any:
    """The run's patient-level split: a user's file, or drawn from the seed and frozen on disk.

    A split drawn here is written to `<run_dir>/splits.json`; a later call finds that file and
    refuses to continue if today's settings would draw a different split (never re-drawn silently).
    """
    from brainseg.data import splits as S

    d = cfg.data
    inst = index.institutions
    if d.split_file:
        splits = S.load_splits(d.split_file, patients=index.patients)
        if not 0 <= d.fold < len(splits):
            raise BrainsegError(f"{d.split_file} holds {len(splits)} split(s); fold {d.fold} does not exist")
        return splits[d.fold]
    if d.holdout_institution:
        # "all": one split per institution (leave-one-institution-out over every site), run as folds.
        codes = sorted(set(inst.values())) if d.holdout_institution == "all" else [d.holdout_institution]
        drawn = [
            S.leave_institution_out(index.patients, inst, institution=c, val_fraction=d.val_fraction, seed=d.seed)
            for c in codes
        ]
    elif d.folds and d.folds > 1:
        drawn = S.kfold_splits(index.patients, inst, k=d.folds, seed=d.seed, val_fraction=d.val_fraction)
    else:
        drawn = [
            S.holdout_split(
                index.patients, inst, val_fraction=d.val_fraction, test_fraction=d.test_fraction, seed=d.seed
            )
        ]
    if not 0 <= d.fold < len(drawn):
        raise BrainsegError(f"fold {d.fold} asked for, but only {len(drawn)} split(s) were drawn")
    if run_dir is not None:
        path = run_dir / "splits.json"
        if path.is_file():
            frozen = S.load_splits(path, patients=index.patients)
            if [s.id for s in frozen] != [s.id for s in drawn]:
                raise BrainsegError(
                    f"{path} holds a different split than these settings draw now (data or seed changed?); "
                    f"splits are never re-drawn silently: delete it or pass data.split_file"
                )
        elif dist_utils.is_main():
            S.save_splits(path, drawn)
        dist_utils.barrier()  # under torchrun, the other ranks may read splits.json next
    return drawn[d.fold]


def load_run_data(cfg: RunConfig, run_dir: Path | None, announce: Callable[[str], None] | None = None) -> RunData:
    from brainseg.data.index_cache import index_dataset_cached
    from brainseg.data.roots import resolve_data_root

    say = announce or (lambda m: print(m, file=sys.stderr))
    root = resolve_data_root(cfg.data.root, announce=say)
    index = index_dataset_cached(root, skip_bad=cfg.data.skip_bad, announce=say)
    split = resolve_split(cfg, index, run_dir)
    return RunData(root=Path(root), index=index, split=split)


def records_for(index: Any, patients: list[str]) -> list[Any]:
    by = index.by_patient()
    return [r for p in patients for r in by[p]]

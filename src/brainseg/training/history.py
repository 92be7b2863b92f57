"""Per-epoch training history, kept in the checkpoint and mirrored to history.csv."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from brainseg.fileio import read_csv, write_csv_atomic

COLUMNS = (
    "epoch",
    "lr",
    "train_loss",
    "val_loss",
    "val_dice",
    "val_dice_slice",
    "epoch_seconds",
    "train_slices_per_s",
    "best",
)


def write_history(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Rewrite the whole file atomically; rows come from the checkpoint, so they never disagree."""
    return write_csv_atomic(path, rows, COLUMNS)


def read_history(path: str | Path) -> list[dict[str, float]]:
    """history.csv as a list of numeric rows (empty cells → NaN)."""
    out = []
    for row in read_csv(path):
        out.append({k: (float(v) if v not in ("", None) else float("nan")) for k, v in row.items()})
    return out

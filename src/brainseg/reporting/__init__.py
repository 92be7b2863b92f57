"""Reporting: turn the files of a finished comparison into tables, figures and a report.

Only files are read (CSV, JSON, NPZ); no model is loaded. Entry point: `build_report(cmp_dir)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["build_report"]


def build_report(cmp_dir: str | Path, **kwargs: Any) -> dict[str, Path]:
    """See `brainseg.reporting.report.build_report` (imported lazily: it pulls in matplotlib)."""
    from brainseg.reporting.report import build_report as _build

    return _build(cmp_dir, **kwargs)

"""The model bundled with brainseg, if any (placeholder: the lead replaces this module at merge)."""

from __future__ import annotations

from pathlib import Path


def default_bundle() -> Path | None:
    """Path of the bundled default checkpoint, or None when brainseg ships none."""
    return None

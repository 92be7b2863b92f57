"""Which dataset folder a command uses: the one given, or the built-in phantom set when none is."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from brainseg.errors import DataError


def resolve_data_root(root: str | Path | None, *, announce: Callable[[str], None] | None = print) -> Path:
    """The dataset folder a command should use: `root`, or the default phantom set when None.

    Args:
        root: a dataset folder (kaggle_3m or its parent), or None.
        announce: called with a one-line notice when the phantom default is used (None: silent).

    Raises:
        DataError: `root` does not exist.
    """
    if root is None or str(root) == "":
        from brainseg.data.phantom import default_phantom_root

        path = default_phantom_root()
        if announce is not None:
            announce(f"no --data given: using the built-in phantom set at {path}")
        return path
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"dataset folder {path} does not exist")
    return path

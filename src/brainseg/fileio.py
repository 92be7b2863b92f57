"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

A process killed at any moment leaves either the old file or the new one, never half of one.
What a killed writer does leave is its temporary file (``.<name>.<random>.tmp``); the next write
into that folder removes such leftovers. A writer holds an advisory lock (`fcntl.flock`) on its
temporary file while it writes, and the operating system drops that lock when the process dies,
so a temporary file whose lock can be taken is one nobody is writing any more.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no leftover cleaning
    fcntl = None  # type: ignore[assignment]

#: A temporary file younger than this is never removed (its writer may not hold its lock yet).
_LEFTOVER_MIN_AGE_S = 5.0


def clean_leftovers(folder: str | Path) -> list[Path]:
    """Remove the temporary files of killed atomic writes in `folder`; returns those removed."""
    if fcntl is None:
        return []
    removed = []
    now = time.time()
    try:
        candidates = [p for p in Path(folder).glob(".*.tmp") if p.is_file()]
    except OSError:
        return []
    for tmp in candidates:
        try:
            if now - tmp.stat().st_mtime < _LEFTOVER_MIN_AGE_S:
                continue
            fd = os.open(tmp, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # taken: its writer is gone
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass  # a live writer holds it, or it vanished meanwhile
        finally:
            os.close(fd)
    return removed


def ensure_writable_folder(folder: str | Path) -> Path:
    """Create `folder` if needed and prove a file can be made in it, before any long work.

    Raises:
        OSError: naming `folder` (not a temporary name) and the operating system's reason.
    """
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".brainseg-write-check.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(folder)) from None
    return folder


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call `write(fileobj)` on a temporary file, then atomically rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results should be as readable as any file
        with os.fdopen(fd, "wb") as f:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # "being written"; the OS drops it if we die
            write(f)
            f.flush()
            os.fsync(f.fileno())
            if fcntl is not None:  # renamed while still locked, so no cleaner can take it first
                os.replace(tmp, path)
        if fcntl is None:
            os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_csv_atomic(path: str | Path, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Write dict rows with a fixed column order (missing keys → empty cells)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: _csv_value(row.get(k)) for k in columns})
    return write_text_atomic(path, buf.getvalue())


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return "" if v != v else f"{v:.6g}"  # NaN → empty cell
    return "" if v is None else v


def _json_default(o: Any) -> Any:
    # NumPy scalars and arrays, Paths: the usual suspects in summaries.
    if hasattr(o, "item") and getattr(o, "ndim", 1) == 0:
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot write {type(o).__name__} to JSON")

"""A folder lock: one process at a time writes a run (or comparison) folder.

The lock is an OS advisory lock (`fcntl.flock`) on ``<folder>/.brainseg.lock``. The operating
system releases it when the process ends, however it ends (kill -9 included), so a lock left by a
dead process never blocks anyone; the file itself stays, holding the last owner's pid. On systems
without `fcntl` (Windows) the lock does nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from brainseg.errors import BrainsegError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".brainseg.lock"


class FolderBusy(BrainsegError):
    """Another live process holds the folder's lock."""


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str = "folder") -> Iterator[Path]:
    """Hold `folder`'s lock for the duration of the block (the folder is created).

    Raises:
        FolderBusy: another process holds it; the message names the folder and that pid.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    if fcntl is None:
        yield path
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            raise FolderBusy(
                f"{what} {folder} is being written by another brainseg process (pid {holder}); wait for it "
                "to finish or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock

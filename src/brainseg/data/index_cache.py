"""Remember what indexing learnt from each slice file, so a dataset is decoded once, not per command.

`index_dataset` decodes every image and mask to validate them and to record each slice's tumour
flag and size. `SliceMemo` stores those results per dataset in the user cache folder
(`cache_dir`: `$BRAINSEG_CACHE`, else ``$XDG_CACHE_HOME/brainseg``, else ``~/.cache/brainseg``; never inside the dataset, which may be
read-only), keyed on each file's size and modification time: an unchanged file is answered from
the cache, a changed or new one is decoded again. Only files that decoded cleanly are stored, so
a broken file is reported every time. A cache that cannot be read or written is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from brainseg.errors import DataError
from brainseg.fileio import write_json_atomic

CACHE_FORMAT = "brainseg-index-cache"
CACHE_VERSION = 1


def cache_dir() -> Path:
    """The user cache folder of brainseg: `$BRAINSEG_CACHE`, else ``$XDG_CACHE_HOME/brainseg``,
    else ``~/.cache/brainseg`` (the one folder of every cache: indexes, phantoms, ONNX exports)."""
    env = os.environ.get("BRAINSEG_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "brainseg"


def _stamp(path: Path | None) -> list[int] | None:
    if path is None:
        return None
    st = path.stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


class SliceMemo:
    """Decoding results of one dataset folder, keyed on file names, sizes and modification times."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        digest = hashlib.sha1(str(self.root).encode()).hexdigest()[:16]
        self.path = cache_dir() / "index" / f"{digest}.json"
        self.entries: dict[str, list[Any]] = {}
        self._seen: dict[str, list[Any]] = {}
        self._lock = threading.Lock()
        self.decoded = 0  # files decoded (not answered from the cache) since creation
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("format") == CACHE_FORMAT and data.get("version") == CACHE_VERSION and data.get(
                "root"
            ) == str(self.root):
                self.entries = dict(data.get("slices") or {})
        except (OSError, ValueError, AttributeError):
            self.entries = {}

    def _key(self, record: Any) -> str:
        try:
            return str(Path(record.image).resolve().relative_to(self.root))
        except ValueError:
            return str(Path(record.image).resolve())

    def wrap(self, check: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """`check(record)` answered from the cache when the record's files are unchanged."""

        def cached(record: Any) -> Any:
            try:
                stamp = [_stamp(Path(record.image)), _stamp(record.mask and Path(record.mask))]
            except OSError:
                return check(record)  # let the decoder name the missing file
            key = self._key(record)
            hit = self.entries.get(key)
            if hit is not None and hit[0] == stamp:
                with self._lock:
                    self._seen[key] = hit
                tumour, h, w = hit[1]
                return (None if tumour is None else bool(tumour)), (int(h), int(w))
            result = check(record)
            with self._lock:
                self.decoded += 1
                if not isinstance(result, DataError):
                    tumour, (h, w) = result
                    self._seen[key] = [stamp, [tumour, h, w]]
            return result

        return cached

    def save(self) -> None:
        """Write the entries of this indexing (files since removed are dropped) when they changed."""
        if self._seen == self.entries:
            return
        try:
            write_json_atomic(self.path, {"format": CACHE_FORMAT, "version": CACHE_VERSION, "root": str(self.root),
                                          "slices": self._seen})
            self.entries = dict(self._seen)
        except OSError:
            pass  # the cache only saves time; a read-only home must not stop a run


def index_dataset_cached(
    root: str | Path, *, skip_bad: bool = False, announce: Callable[[str], None] | None = None
) -> Any:
    """`brainseg.data.lgg.index_dataset` with a `SliceMemo` of `root`: unchanged files are not decoded.

    Each patient left out by `skip_bad` is reported once, through `announce` (instead of a
    `SkippedPatientWarning`); without `announce` the warnings are issued as usual.
    """
    from brainseg.data.lgg import SkippedPatientWarning, find_layout_root, index_dataset

    memo = SliceMemo(find_layout_root(root))
    if announce is None:
        return index_dataset(root, skip_bad=skip_bad, memo=memo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedPatientWarning)
        index = index_dataset(root, skip_bad=skip_bad, memo=memo)
    for patient, reason in index.skipped.items():
        announce(f"skipped patient {patient}: {reason}")
    return index

"""The index cache: a dataset is decoded once; changed files are decoded again; nothing lands in it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from brainseg.data.index_cache import SliceMemo, cache_dir, index_dataset_cached
from brainseg.data.lgg import find_layout_root, index_dataset
from brainseg.errors import DataError


@pytest.fixture()
def data(tiny_phantoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BRAINSEG_CACHE", str(tmp_path / "cache"))
    return Path(shutil.copytree(tiny_phantoms, tmp_path / "data"))


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def test_second_indexing_decodes_nothing_and_agrees(data: Path) -> None:
    before = _files(data)
    first = SliceMemo(find_layout_root(data))
    a = index_dataset(data, memo=first)
    n = len(a.records)
    assert first.decoded == n  # every slice decoded once (image and mask together)
    second = SliceMemo(find_layout_root(data))
    b = index_dataset(data, memo=second)
    assert second.decoded == 0
    plain = index_dataset(data)
    assert (b.tumour, b.shapes, b.records) == (plain.tumour, plain.shapes, plain.records)
    assert _files(data) == before  # the cache lives in the user cache folder, not in the dataset
    assert first.path.is_file() and first.path.is_relative_to(cache_dir())


def test_a_changed_mask_is_decoded_again(data: Path) -> None:
    index_dataset_cached(data)
    plain = index_dataset(data)
    key = next(k for k, v in plain.tumour.items() if v)  # a slice with tumour …
    rec = next(r for r in plain.records if (r.patient, r.slice) == key)
    tifffile.imwrite(rec.mask, np.zeros(plain.shapes[key], np.uint8))  # … loses it
    st = rec.mask.stat()
    os.utime(rec.mask, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    memo = SliceMemo(find_layout_root(data))
    again = index_dataset(data, memo=memo)
    assert memo.decoded == 1 and again.tumour[key] is False


def test_a_broken_file_is_reported_every_time(data: Path) -> None:
    index_dataset_cached(data)
    rec = index_dataset(data).records[0]
    rec.image.write_bytes(rec.image.read_bytes()[:100])  # truncated
    for _ in range(2):
        with pytest.raises(DataError, match=rec.image.name):
            index_dataset_cached(data)


def test_skipped_patients_are_announced_once(data: Path) -> None:
    rec = index_dataset(data).records[0]
    rec.image.write_bytes(b"not a tif")
    said: list[str] = []
    index = index_dataset_cached(data, skip_bad=True, announce=said.append)
    assert rec.patient in index.skipped
    assert said == [f"skipped patient {rec.patient}: {index.skipped[rec.patient]}"]

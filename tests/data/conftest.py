"""Fixtures for the data-layer tests: tiny exact datasets, a small phantom set, one real-data index."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from helpers_data import make_dataset

REAL_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "lgg" / "kaggle_3m"


@pytest.fixture()
def tiny_dataset(tmp_path: Path) -> Path:
    """Three patients (CS, CS, DU) of 3–4 slices at 32×32 with known tumour slices (kaggle_3m folder)."""
    return make_dataset(tmp_path)


@pytest.fixture(scope="session")
def phantom_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 phantom patients at 128×128 (default slice counts), shared by the phantom tests."""
    from brainseg.data.phantom import write_phantoms

    return write_phantoms(tmp_path_factory.mktemp("phantom_set"), patients=10, seed=0, size=128)


@dataclass
class RealIndexRun:
    """`brainseg index <parent of kaggle_3m> --json` run once on the real data."""

    root: Path  # the kaggle_3m folder
    exit_code: int
    stdout: str
    stderr: str
    summary: dict[str, Any]  # the printed JSON
    index: Any  # the DatasetIndex the command built (captured from index_dataset)


@pytest.fixture(scope="session")
def real_index_run() -> RealIndexRun:
    """Decoding all 1909 real slices takes ~10 s on a busy 2-core machine, so it is done once:
    through the CLI (given the *parent* folder), keeping the DatasetIndex the command built."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real LGG development data not found at {REAL_DATA}")
    import brainseg.data.lgg as lgg
    from brainseg import cli

    captured: list[Any] = []
    real = lgg.index_dataset

    def spy(*args: Any, **kwargs: Any) -> Any:
        captured.append(real(*args, **kwargs))
        return captured[-1]

    out, err = io.StringIO(), io.StringIO()
    lgg.index_dataset = spy  # the command imports index_dataset inside run(), so it sees the spy
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["index", str(REAL_DATA.parent), "--json"])
    finally:
        lgg.index_dataset = real
    assert len(captured) == 1
    return RealIndexRun(REAL_DATA, code, out.getvalue(), err.getvalue(), json.loads(out.getvalue()), captured[0])

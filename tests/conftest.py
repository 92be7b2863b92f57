"""Shared fixtures: tiny phantom datasets written once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "lgg" / "kaggle_3m"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Never write the default phantom cache into the user's home from tests.
    os.environ.setdefault("BRAINSEG_CACHE", str(tmp_path_factory.mktemp("brainseg_cache")))


@pytest.fixture(scope="session", autouse=True)
def _torch_globals_at_start() -> tuple[int, bool, bool]:
    # Taken before any session fixture trains (autouse session fixtures are set up first).
    import torch

    return (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled())


@pytest.fixture(autouse=True)
def _restore_torch_globals(_torch_globals_at_start: tuple[int, bool, bool]) -> Iterator[None]:
    # train_run sets the thread count and deterministic mode of its process (train.threads,
    # train.deterministic); one test's run must not change the next test's process.
    import torch

    yield
    threads, det, warn = _torch_globals_at_start
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det, warn_only=warn)


@pytest.fixture(scope="session")
def tiny_phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 phantom patients of 8–10 slices at 64×64: enough for a split and a 2-epoch run."""
    from brainseg.data.phantom import write_phantoms

    out = tmp_path_factory.mktemp("tiny_phantoms")
    return write_phantoms(out, patients=8, seed=3, slices=(8, 10), size=64)


@pytest.fixture(scope="session")
def tiny_run(tiny_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-epoch width-4 UNet run on the tiny phantoms (see helpers_runs.tiny_cfg), trained once."""
    from brainseg.training.run import train_run
    from helpers_runs import tiny_cfg

    run = tmp_path_factory.mktemp("tiny_run") / "run"
    train_run(tiny_cfg(tiny_phantoms), run, progress=False)
    return run


@pytest.fixture()
def real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip(f"real LGG development data not found at {REAL_DATA}")
    return REAL_DATA

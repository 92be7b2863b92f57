"""Fixtures for the data-layer tests: tiny exact datasets and a small phantom set."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers_data import make_dataset


@pytest.fixture()
def tiny_dataset(tmp_path: Path) -> Path:
    """Three patients (CS, CS, DU) of 3–4 slices at 32×32 with known tumour slices (kaggle_3m folder)."""
    return make_dataset(tmp_path)


@pytest.fixture(scope="session")
def phantom_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 phantom patients at 128×128 (default slice counts), shared by the phantom tests."""
    from brainseg.data.phantom import write_phantoms

    return write_phantoms(tmp_path_factory.mktemp("phantom_set"), patients=10, seed=0, size=128)

"""Fixtures of the server tests: the tiny trained run served, a fresh app per test, patient zips."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def segmenter(tiny_run: Path):
    from brainseg.serve.segment import Segmenter

    return Segmenter([tiny_run], device="cpu")


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    return tmp_path / "work"


@pytest.fixture()
def client(segmenter, work: Path):
    from fastapi.testclient import TestClient

    from brainseg.serve.app import create_app
    from brainseg.serve.jobs import JobStore

    store = JobStore(work, segmenter, workers=1, max_pending=4, keep=4)
    with TestClient(create_app(store, max_upload_mb=2)) as c:
        yield c
    store.shutdown()

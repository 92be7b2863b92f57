"""Helpers of the server tests: patient folders, zips of them, waiting for a job."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from helpers_runs import load_benchmark


def patient_folders(data: Path) -> list[Path]:
    return sorted(p for p in data.iterdir() if p.is_dir())


def zip_folder(folder: Path, prefix: str | None = None, images_only: bool = False) -> bytes:
    """A zip of a patient folder, its files under `prefix/` (default: the folder's name)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.iterdir()):
            if images_only and f.stem.endswith("_mask"):
                continue
            zf.write(f, f"{prefix if prefix is not None else folder.name}/{f.name}")
    return buf.getvalue()


def wait_done(client, job_id: str, timeout: float = 60.0) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        s = client.get(f"/api/jobs/{job_id}").json()
        if s["status"] in ("done", "failed"):
            return s
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {s}")


def slice_stack(folder: Path, suffix: str = "") -> np.ndarray:
    """The patient's image slices (suffix "") or its ``_mask`` files, in slice-number order."""
    files = sorted((p for p in folder.glob(f"*{suffix}.tif") if suffix or not p.stem.endswith("_mask")),
                   key=lambda p: int(p.stem.split("_")[-2 if suffix else -1]))
    return np.stack([tifffile.imread(p) for p in files])


def serve_browser() -> Any:
    """benchmarks/serve_browser.py as a module: the CDP driver and the server thread."""
    return load_benchmark("serve_browser")

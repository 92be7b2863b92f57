"""The comparison report shows what the runs ran on (train_summary.json's environment)."""

from __future__ import annotations

import json
from pathlib import Path

from fake_comparison import make_comparison

from brainseg.reporting import build_report


def test_report_shows_the_training_environment(tmp_path: Path) -> None:
    d = make_comparison(tmp_path / "cmp", models=("unet", "segnet"), examples=False)
    env = {"brainseg": "0.1.0", "torch": "2.13.0", "numpy": "2.1.0", "python": "3.11.9", "threads": 3,
           "cpus_available": 8, "cpu_model": "AMD EPYC 7B13", "cpu_capability": "AVX2", "cpu_flags": "avx2 fma",
           "device": "cpu", "device_name": "AMD EPYC 7B13", "deterministic_algorithms": True, "platform": "Linux"}
    for m in ("unet", "segnet"):
        p = d / "runs" / m / "train_summary.json"
        p.write_text(json.dumps({**json.loads(p.read_text()), "environment": env}))
    md = build_report(d, n_boot=50)["report_md"].read_text()
    section = md[md.index("Environment"):]
    assert "3 intra-op of 8 CPUs available" in section
    assert "AMD EPYC 7B13 (AVX2 kernels; avx2 fma)" in section and "0.1.0 / 2.13.0 / 2.1.0 / 3.11.9" in section


def test_report_without_recorded_environment_has_no_table(tmp_path: Path) -> None:
    d = make_comparison(tmp_path / "cmp", models=("unet", "segnet"), examples=False)
    assert "Environment" not in build_report(d, n_boot=50)["report_md"].read_text()

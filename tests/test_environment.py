"""environment(): what a run ran on, read from torch, NumPy, /proc/cpuinfo and the process."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from brainseg import __version__
from brainseg.environment import cpu_info, environment, environment_rows, numeric_differences

INTEL = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 avx512f avx512bw avx512vl amx_tile hypervisor

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu
"""
ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics sve
CPU implementer\t: 0x41
"""


def test_cpu_info_reads_model_and_simd_flags(tmp_path: Path) -> None:
    f = tmp_path / "cpuinfo"
    f.write_text(INTEL)
    model, flags = cpu_info(f)
    # the first processor's entry; only SIMD flags, in SIMD_FLAGS order
    assert model == "Intel(R) Xeon(R) Platinum 8480+"
    assert flags == ["sse4_2", "avx", "f16c", "fma", "avx2", "avx512f", "avx512bw", "avx512vl", "amx_tile"]
    f.write_text(ARM)
    model, flags = cpu_info(f)
    assert flags == ["asimd", "sve"] and model  # no model name line on ARM: platform's name instead
    model, flags = cpu_info(tmp_path / "missing")
    assert flags == [] and model


def test_environment_reports_this_process() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        env = environment("cpu")
    finally:
        torch.set_num_threads(before)
    assert env["brainseg"] == __version__ and env["torch"] == torch.__version__ and env["numpy"] == np.__version__
    assert env["threads"] == 1 and env["device"] == "cpu"
    assert env["cpus_available"] == len(os.sched_getaffinity(0))
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    if Path("/proc/cpuinfo").is_file():
        flags = set(next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith(("flags", "Features"))).split(":")[1].split())
        assert set(env["cpu_flags"].split()) <= flags
    json.dumps(env)  # JSON-ready, for summary files


def test_numeric_differences_and_report_rows() -> None:
    a = environment("cpu")
    other = "AVX512" if a["cpu_capability"] == "AVX2" else "AVX2"  # a capability this machine's is not
    b = {**a, "threads": a["threads"] + 1, "python": "0.0", "cpu_capability": other}
    diffs = numeric_differences(a, b)
    assert diffs == [f"threads: {a['threads']} → {a['threads'] + 1}", f"cpu_capability: {a['cpu_capability']} → {other}"]
    assert numeric_differences(a, dict(a)) == []
    rows = dict(environment_rows(a))
    assert rows["threads"].startswith(f"{a['threads']} intra-op")
    assert torch.__version__ in rows["brainseg / torch / NumPy / Python"]
    assert environment_rows({}) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_environment_names_the_gpu() -> None:
    env = environment("cuda")
    assert env["device_name"] == torch.cuda.get_device_name(0) and env["cuda"] == torch.version.cuda


def test_environment_survives_the_weights_only_checkpoint_loader(tmp_path: Path) -> None:
    # train and resume put environment() into checkpoints, which load_checkpoint reads with
    # weights_only=True; torch.__version__ (a TorchVersion) once slipped in and was refused
    from brainseg.training.checkpoint import load_checkpoint, save_checkpoint

    env = environment("cpu")
    save_checkpoint(tmp_path / "c.pt", {"model": {}, "state_dict": {}, "preprocessing": {}, "config": {},
                                        "environment": env})
    loaded = load_checkpoint(tmp_path / "c.pt")["environment"]
    assert loaded == env and type(loaded["torch"]) is str

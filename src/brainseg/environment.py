"""What a run ran on — versions, threads, CPU model and instruction set, device — as one dict.

Training figures depend on more than the settings. PyTorch's CPU kernels split sums (BatchNorm's
batch statistics, a convolution's weight gradient) between the intra-op threads, and float
addition is not associative, so another thread count gives other rounding, which training then
amplifies into other weights; another instruction set (AVX2, AVX-512, AMX) makes oneDNN choose
other kernels; other library versions other code. `environment()` records all of these next to
every result (config.json, train_summary.json, evaluate's summary.json, protocol.json), so that
two runs that disagree can be told apart by what they ran on.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# The CPU flags that change which SIMD kernels oneDNN, MKL and ATen dispatch to; the full
# /proc/cpuinfo list (~150 flags: virtualisation, security mitigations, …) would bury them.
SIMD_FLAGS = (
    "sse4_2", "avx", "f16c", "fma", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2",
)  # fmt: skip

#: Environment variables that change thread counts or kernel choice.
ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUBLAS_WORKSPACE_CONFIG", "ONEDNN_MAX_CPU_ISA", "PYTHONHASHSEED")

#: Keys whose difference between two runs changes float rounding (see `numeric_differences`).
NUMERIC_KEYS = ("torch", "numpy", "threads", "cpu_model", "cpu_capability", "cpu_flags", "device_name")


def cpu_info(path: str | Path = "/proc/cpuinfo") -> tuple[str, list[str]]:
    """The CPU's model name and its SIMD flags (of `SIMD_FLAGS`, in that order) from /proc/cpuinfo.

    Falls back to `platform.processor()` and no flags where the file does not exist (macOS,
    Windows). The first processor's entry stands for all (machines do not mix CPU models).
    """
    model, flags = "", set()
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:  # "Features" on ARM
            flags = set(value.split())
    if not model:
        model = platform.processor() or platform.machine()
    return model, [f for f in SIMD_FLAGS if f in flags]


def environment(device: Any = None) -> dict[str, Any]:
    """Versions, thread counts, CPU and device of this process, as JSON-ready values.

    Args:
        device: the torch device the run uses (a `torch.device` or its string); None → "cpu".

    Returns:
        {"brainseg", "python", "platform", "torch", "numpy", "threads", "interop_threads",
        "cpus_available", "cpu_count", "cpu_model", "cpu_flags", "cpu_capability",
        "deterministic_algorithms", "device", "device_name", …, "env": {VAR: value}} — CUDA
        and cuDNN versions are added on a CUDA device.
    """
    import numpy as np
    import torch

    from brainseg import __version__

    dev = torch.device(device) if device is not None else torch.device("cpu")
    model, flags = cpu_info()
    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        available = os.cpu_count() or 1
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch: the dispatch level is not exposed
        capability = ""
    env: dict[str, Any] = {
        "brainseg": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": str(torch.__version__),  # a TorchVersion object would not load with weights_only=True
        "numpy": np.__version__,
        # intra-op threads: the number the CPU kernels split their sums between
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpus_available": available,
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "cpu_flags": " ".join(flags),
        "cpu_capability": capability,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "device": str(dev),
        "device_name": model,
        "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
    }
    if dev.type == "cuda" and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(dev)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    elif dev.type == "mps":
        env["device_name"] = "Apple MPS"
    if sys.platform == "darwin":
        env["platform"] = f"macOS {platform.mac_ver()[0]} {platform.machine()}"
    # plain JSON types only: the dict goes into checkpoints, which load with weights_only=True
    return json.loads(json.dumps(env, default=str))


def numeric_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """The `NUMERIC_KEYS` on which two environments differ, as 'key: a → b' lines."""
    return [f"{k}: {a.get(k)} → {b.get(k)}" for k in NUMERIC_KEYS if k in a and k in b and a.get(k) != b.get(k)]


def environment_rows(env: Mapping[str, Any]) -> list[list[str]]:
    """Two-column rows (what, value) of an `environment()` dict for a report table."""
    if not env:
        return []
    cpu = env.get("cpu_model", "")
    if env.get("cpu_capability") or env.get("cpu_flags"):
        cpu += f" ({env.get('cpu_capability') or '?'} kernels; {env.get('cpu_flags') or 'no SIMD flags read'})"
    threads = f"{env.get('threads')} intra-op of {env.get('cpus_available')} CPUs available"
    rows = [
        ["brainseg / torch / NumPy / Python", " / ".join(str(env.get(k, "?")) for k in ("brainseg", "torch", "numpy", "python"))],
        ["device", f"{env.get('device', '?')} ({env.get('device_name', '')})"],
        ["CPU", cpu],
        ["threads", threads],
        ["deterministic algorithms", str(env.get("deterministic_algorithms"))],
        ["platform", str(env.get("platform", ""))],
    ]
    if env.get("cuda"):
        rows.insert(2, ["CUDA / cuDNN", f"{env.get('cuda')} / {env.get('cudnn')}"])
    if env.get("env"):
        rows.append(["environment variables", ", ".join(f"{k}={v}" for k, v in env["env"].items())])
    return rows

"""Make a training run repeatable: seeds, a fixed intra-op thread count, deterministic kernels.

Measured on CPU (issue 19): with the same settings, code and thread count, two runs in separate
processes end in bit-identical weights; with another thread count they do not, because PyTorch's
CPU kernels split sums (BatchNorm's batch statistics, convolution weight gradients) between the
threads and float addition is not associative — the first training-mode BatchNorm of a UNet
already differs by ~1e-5 relative between 1 and 2 threads, and training amplifies that into
another model (configs/compare_cpu.yaml: UNet test Dice 0.578 with 1 thread, 0.707 with 2).
Another CPU instruction set (oneDNN's AVX2 vs AVX-512 kernels) changes the weights the same way;
that cannot be fixed here, only recorded (brainseg.environment). PyTorch's default thread
count is the number of CPUs the process may use, so it changes with the machine, with
`taskset`/cgroup limits and with OMP_NUM_THREADS; `train.threads` fixes it instead, and the run
records it (config.json, every checkpoint), so `--resume` and a rerun from config.json use it.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from brainseg.errors import BrainsegError

# SegNet unpools with the indices of a non-overlapping 2×2/stride-2 max-pool: each output
# position is written at most once, so max_unpool2d cannot depend on write order, although
# PyTorch flags the op as lacking a deterministic implementation (tests/training/
# test_determinism.py trains SegNet twice and gets equal weights).
_PROVEN_DETERMINISTIC = r"max_unpooling2d_forward_out does not have a deterministic implementation"


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (torch's covers every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def configure_run(seed: int, threads: int, device: torch.device, deterministic: bool = True) -> None:
    """Seed everything, fix the intra-op thread count and select deterministic kernels.

    Args:
        seed: `train.seed`.
        threads: `train.threads`; 0 leaves torch's default (the CPUs this process may use).
        device: the training device; on CUDA, cuDNN autotuning is turned off and cuBLAS gets the
            workspace setting its deterministic mode needs (read when CUDA first initialises).
        deterministic: `train.deterministic`: `torch.use_deterministic_algorithms(True)`, in
            warn-only mode: an op without a deterministic implementation warns instead of
            stopping the run (on CUDA, bilinear upsampling's backward is one such op).
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise BrainsegError(f"train.threads must be a whole number ≥ 0 (0: torch's default), got {threads!r}")
    seed_everything(seed)
    if threads:
        torch.set_num_threads(threads)
    if not deterministic:
        return
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    warnings.filterwarnings("ignore", message=_PROVEN_DETERMINISTIC)
    torch.use_deterministic_algorithms(True, warn_only=True)


def warn_environment_change(recorded: Mapping[str, Any] | None, now: Mapping[str, Any], say: Callable[[str], None]) -> None:
    """On `--resume`, say which rounding-relevant parts of the environment changed since the checkpoint."""
    from brainseg.environment import numeric_differences

    if not recorded:
        return
    diffs = numeric_differences(recorded, now)
    if diffs:
        say(
            "resuming on another environment than the checkpoint's (" + "; ".join(diffs) + "): the rest of the "
            "run will not be bit-identical to an uninterrupted one"
        )

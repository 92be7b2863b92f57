"""Where and in which precision tensors run: device selection and mixed-precision (AMP) choice.

Training and inference both import this module, so neither depends on the other for it.
"""

from __future__ import annotations

import torch

from brainseg.errors import BrainsegError


def select_device(spec: str = "auto") -> torch.device:
    """"auto" → CUDA, then Apple MPS, then CPU; otherwise the named device (checked)."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise BrainsegError(f"unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BrainsegError(f"device {spec!r} asked for, but CUDA is not available on this machine")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise BrainsegError(f"device {spec!r} asked for, but Apple MPS is not available on this machine")
    return dev


def resolve_amp(spec: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for full fp32.

    "auto" uses bf16 on CUDA GPUs that support it (fp16 otherwise) and nothing elsewhere: CPUs
    without bf16 units run bf16 autocast far slower than fp32 (measured ~85× on AVX2).
    """
    if spec == "off":
        return None
    if spec == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if spec in ("bf16", "fp16"):
        return torch.bfloat16 if spec == "bf16" else torch.float16
    raise BrainsegError(f"amp must be auto, off, bf16 or fp16, got {spec!r}")

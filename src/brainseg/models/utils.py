"""Model bookkeeping: parameter and FLOP counts, and loading encoder weights from a local file."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from brainseg.errors import BrainsegError


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all of them, or only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, size: int, in_channels: int = 3) -> int:
    """Forward FLOPs of `model` for one size×size slice, in inference (eval) mode.

    Counted by `torch.utils.flop_counter.FlopCounterMode`, which counts convolutions
    (transposed ones included) and matrix products, a multiply-add being 2 FLOPs; batch norm,
    activations, pooling and interpolation are not counted (they are a few percent at most).
    PSPNet's auxiliary head is not run in eval mode and so not counted.

    Works on a model built on the ``meta`` device (no memory, no compute), which is how
    `brainseg models` counts full-size models instantly.
    """
    from torch.utils.flop_counter import FlopCounterMode

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    x = torch.zeros(1, in_channels, size, size, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def load_encoder_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a local state-dict file into ``model.encoder`` (nothing is ever downloaded).

    Accepted files (read with ``torch.load(weights_only=True)``):

    * the encoder's own state dict (``torch.save(model.encoder.state_dict(), path)``), or a whole
      brainseg model state dict (keys starting with ``encoder.``; the rest is ignored);
    * a dict holding one of those under ``state_dict`` or ``model``;
    * torchvision's layout for the backbone an encoder follows (ResNet-18/34/50/101 for
      DeepLabV3+ and PSPNet, VGG16-BN for SegNet), e.g. ImageNet weights saved earlier.

    A 3-channel first convolution loaded into a 1-channel model is summed over its input
    channels, so a grey image gives the response the RGB filters give to that image repeated.

    Raises:
        BrainsegError: missing or unreadable file, or keys/shapes that do not match; the
            message names the file and the first mismatching keys.
    """
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise BrainsegError(f"{type(model).__name__} has no encoder to load weights into")
    p = Path(path)
    if not p.is_file():
        raise BrainsegError(f"encoder weights file {p} does not exist")
    try:
        raw = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors: say which file, keep the reason
        raise BrainsegError(
            f"encoder weights file {p} cannot be read as a PyTorch state dict: {exc}"
        ) from None
    state = _unwrap(raw, p)
    translate = getattr(encoder, "translate_state_dict", None)
    if translate is not None:
        state = translate(state)
    target = encoder.state_dict()
    first_conv = getattr(encoder, "first_conv_key", None)
    if first_conv in state and first_conv in target:
        state[first_conv] = _adapt_first_conv(state[first_conv], target[first_conv])

    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}"
        for k in target
        if k in state and tuple(state[k].shape) != tuple(target[k].shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), first: {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), first: {', '.join(unexpected[:3])}")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatch(es) (file vs model), first: {'; '.join(wrong[:3])}")
        name = getattr(model, "name", type(model).__name__)
        raise BrainsegError(
            f"encoder weights file {p} does not match the {name} encoder: " + "; ".join(parts)
        )
    encoder.load_state_dict({k: v.to(target[k].dtype) for k, v in state.items()}, strict=True)


def _unwrap(raw: object, path: Path) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a loaded file, with a whole-model ``encoder.`` prefix removed."""
    if isinstance(raw, dict):
        for key in ("state_dict", "model"):
            if key in raw and isinstance(raw[key], dict):
                raw = raw[key]
                break
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise BrainsegError(f"encoder weights file {path} does not hold a state dict (a mapping of tensors)")
    state = {str(k): v for k, v in raw.items()}
    if state and any(k.startswith("encoder.") for k in state):
        state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    return state


def _adapt_first_conv(weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum RGB filters into one grey filter when the file has 3 input channels and we have 1."""
    if weight.ndim == 4 and target.ndim == 4 and weight.shape[1] == 3 and target.shape[1] == 1:
        if weight.shape[0] == target.shape[0] and weight.shape[2:] == target.shape[2:]:
            return weight.sum(dim=1, keepdim=True)
    return weight

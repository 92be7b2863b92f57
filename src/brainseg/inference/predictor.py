"""`Predictor`: one checkpoint or an ensemble turns native-size uint8 slices into probabilities.

The checkpoint alone defines preprocessing (size, channels, normalisation): slices of any size are
resized in, and probabilities resized back to the input's own size, so masks are always compared
and written at the resolution the user gave.

Channel rule (see `CHANNEL_RULES`): a 3-channel slice given to a 1-channel model keeps its FLAIR
channel (`brainseg.data.preprocess.select_channels`); a 1-channel slice given to a 3-channel model
is an error unless ``channels="replicate"`` is asked for, which copies the one channel into all
three slots. That is an explicit opt-in because the model never saw such inputs in training.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainseg.config import RunConfig
from brainseg.errors import BrainsegError
from brainseg.runtime import resolve_amp, select_device
from brainseg.training.checkpoint import load_checkpoint, model_from_checkpoint

CHANNEL_RULES = {
    "strict": "a 1-channel slice given to a 3-channel model is an error",
    "replicate": "a 1-channel slice given to a 3-channel model is copied into all three channels "
    "(inputs the model never saw in training: expect lower accuracy)",
}


def checkpoint_config(ckpt: dict[str, Any]) -> RunConfig:
    """The settings of the run that wrote `ckpt` (its `eval` section decides TTA and binarisation)."""
    return RunConfig.from_dict(ckpt["config"], str(ckpt.get("path", "checkpoint")))


def match_channels(images: np.ndarray, in_channels: int, rule: str, source: str) -> np.ndarray:
    """Apply the channel rule to uint8 slices (N, H, W, C) for a model with `in_channels` inputs.

    Returns the slices unchanged, or (rule "replicate", C = 1, model 3) with the one channel
    copied three times. A 3-channel input to a 1-channel model is left for preprocessing to take
    its FLAIR channel.

    Raises:
        BrainsegError: naming `source`, for a channel count other than 1 or 3, or a 1-channel
            input to a 3-channel model under rule "strict".
    """
    if rule not in CHANNEL_RULES:
        raise BrainsegError(f"channel rule must be one of {', '.join(CHANNEL_RULES)}, got {rule!r}")
    c = images.shape[-1]
    if c not in (1, 3):
        raise BrainsegError(f"{source}: slices have {c} channels; expected 1 (FLAIR) or 3 (pre-contrast, FLAIR, "
                            "post-contrast)")
    if c == 1 and in_channels == 3:
        if rule == "strict":
            raise BrainsegError(
                f"{source} has 1 channel but the model expects 3 (pre-contrast, FLAIR, post-contrast); "
                "use a model trained with in_channels=1, or pass --channels replicate to copy the channel "
                "into all three (the model never saw such inputs)"
            )
        return np.repeat(images, 3, axis=-1)
    return images


def single_slice_note(context: int, name: str) -> str:
    """What a 2.5-D model's user is told when a case is one slice (it stands in for its neighbours)."""
    return (f"the model is 2.5-D (it reads {context} neighbouring slice(s) on each side); {name} is a single slice, "
            "so it stands in for its own neighbours: give whole volumes for the input the model was trained on")


class Predictor:
    """Mean sigmoid probability of one or more checkpoints, optionally with flip TTA.

    Args:
        checkpoints: checkpoint paths (or run folders, or already-loaded checkpoint dicts).
        device: "auto" (CUDA, then MPS, then CPU) or a torch device name.
        tta: average over the identity and horizontal/vertical flips.
        batch_size: slices per forward pass.
        amp: mixed precision ("auto": bf16/fp16 on CUDA only, "off", "bf16", "fp16").
        channels: channel rule, "strict" or "replicate" (see `CHANNEL_RULES`).
    """

    def __init__(
        self,
        checkpoints: Sequence[str | Path | dict[str, Any]],
        *,
        device: str = "auto",
        tta: bool = False,
        batch_size: int = 16,
        amp: str = "auto",
        channels: str = "strict",
    ) -> None:
        if not checkpoints:
            raise BrainsegError("no checkpoint given")
        if batch_size < 1:
            raise BrainsegError(f"batch size must be at least 1, got {batch_size}")
        if channels not in CHANNEL_RULES:
            raise BrainsegError(f"channel rule must be one of {', '.join(CHANNEL_RULES)}, got {channels!r}")
        self.device = select_device(device)
        self.amp_dtype = resolve_amp(amp, self.device)
        self.tta, self.batch_size, self.channels = tta, batch_size, channels
        self.checkpoints = [c if isinstance(c, dict) else load_checkpoint(c) for c in checkpoints]
        self.models = [model_from_checkpoint(c, self.device) for c in self.checkpoints]
        self.preprocessing = [c["preprocessing"] for c in self.checkpoints]
        channel_counts = {p["in_channels"] for p in self.preprocessing}
        if len(channel_counts) > 1:
            raise BrainsegError(f"the ensemble mixes models with {sorted(channel_counts)} input channels")
        self.in_channels = channel_counts.pop()
        # 2.5-D members read neighbouring slices: `predict` must then be given whole volumes in order
        self.context = max(int(p.get("context", 0)) for p in self.preprocessing)
        self.forward_seconds = 0.0
        self.slices_seen = 0

    @property
    def ms_per_slice(self) -> float:
        return 1000.0 * self.forward_seconds / max(self.slices_seen, 1)

    def describe(self) -> list[dict[str, Any]]:
        """What each ensemble member is (for result files): path, model, epoch, split, preprocessing."""
        return [
            {
                "checkpoint": c.get("path"),
                "model": c["model"].get("name"),
                "model_config": c["model"],
                "epoch": c.get("epoch"),
                "split_id": (c.get("split") or {}).get("id"),
                "preprocessing": c["preprocessing"],
            }
            for c in self.checkpoints
        ]

    def _prepare(self, images: np.ndarray, prep: dict[str, Any], source: str) -> torch.Tensor:
        from brainseg.data.preprocess import volume_inputs

        try:
            return torch.from_numpy(volume_inputs(images, prep))
        except BrainsegError as exc:
            raise BrainsegError(f"{source}: {exc}") from None

    @torch.no_grad()
    def _forward(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch at model size (CPU float32)."""
        out = []
        for i in range(0, len(x), self.batch_size):
            xb = x[i : i + self.batch_size].to(self.device)
            with torch.autocast(
                self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
            ):
                out.append(model(xb).float().cpu())
        return torch.cat(out)

    def _probabilities(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        if not self.tta:
            return torch.sigmoid(self._forward(model, x))
        views = [(), (-1,), (-2,)]
        acc = torch.zeros(x.shape[0], 1, *x.shape[-2:])
        for dims in views:
            xv = torch.flip(x, dims) if dims else x
            p = torch.sigmoid(self._forward(model, xv))
            acc += torch.flip(p, dims) if dims else p
        return acc / len(views)

    def predict(
        self, images: np.ndarray, *, source: str = "input", return_logits: bool = False
    ) -> np.ndarray | tuple[np.ndarray, torch.Tensor]:
        """Probabilities (N, H, W) float32 at the input's size for uint8 slices (N, H, W, C).

        For a model with 2.5-D context (`self.context` > 0) the slices must be one volume in
        slice order: each slice's input includes its neighbours in `images`.

        With `return_logits`, also the first model's logits at its own size (no TTA), which is
        what the training loss is computed on. `source` names the input in error messages.
        """
        from brainseg.data.preprocess import resize_probability

        images = np.asarray(images)
        if images.ndim == 3:  # (N, H, W): single-channel slices
            images = images[..., None]
        if images.ndim != 4:
            raise BrainsegError(f"{source}: expected slices (N, H, W, C), got shape {images.shape}")
        images = match_channels(images, self.in_channels, self.channels, source)
        n, h, w = images.shape[:3]
        total = np.zeros((n, h, w), dtype=np.float32)
        if n == 0:
            return (total, torch.zeros(0, 1, 1, 1)) if return_logits else total
        first_logits = None
        t0 = time.perf_counter()
        for k, (model, prep) in enumerate(zip(self.models, self.preprocessing)):
            x = self._prepare(images, prep, source)
            if return_logits and k == 0:
                first_logits = self._forward(model, x)
                probs = torch.sigmoid(first_logits) if not self.tta else self._probabilities(model, x)
            else:
                probs = self._probabilities(model, x)
            probs_np = probs[:, 0].numpy()
            if probs_np.shape[1:] != (h, w):
                probs_np = np.stack([resize_probability(p, (h, w)) for p in probs_np])
            total += probs_np
        self.forward_seconds += time.perf_counter() - t0
        self.slices_seen += n
        total /= len(self.models)
        if return_logits:
            return total, first_logits
        return total

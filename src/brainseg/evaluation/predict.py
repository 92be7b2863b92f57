"""Inference with one checkpoint or an ensemble: native-size uint8 slices in, probabilities out.

The checkpoint alone defines preprocessing (size, channels, normalisation): slices of any size are
resized in, and probabilities resized back to the input's own size, so masks are always compared
and written at the resolution the user gave.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainseg.errors import BrainsegError
from brainseg.training.checkpoint import load_checkpoint, model_from_checkpoint
from brainseg.training.trainer import resolve_amp, select_device


class Predictor:
    """Mean sigmoid probability of one or more checkpoints, optionally with flip TTA.

    Args:
        checkpoints: checkpoint paths (or run folders, or already-loaded checkpoint dicts).
        tta: average over the identity and horizontal/vertical flips.
        batch_size: slices per forward pass.
    """

    def __init__(
        self,
        checkpoints: Sequence[str | Path | dict[str, Any]],
        *,
        device: str = "auto",
        tta: bool = False,
        batch_size: int = 16,
        amp: str = "auto",
    ) -> None:
        if not checkpoints:
            raise BrainsegError("no checkpoint given")
        self.device = select_device(device)
        self.amp_dtype = resolve_amp(amp, self.device)
        self.tta, self.batch_size = tta, batch_size
        self.checkpoints = [c if isinstance(c, dict) else load_checkpoint(c) for c in checkpoints]
        self.models = [model_from_checkpoint(c, self.device) for c in self.checkpoints]
        self.preprocessing = [c["preprocessing"] for c in self.checkpoints]
        channels = {p["in_channels"] for p in self.preprocessing}
        if len(channels) > 1:
            raise BrainsegError(f"the ensemble mixes models with {sorted(channels)} input channels")
        self.in_channels = channels.pop()
        self.forward_seconds = 0.0
        self.slices_seen = 0

    @property
    def ms_per_slice(self) -> float:
        return 1000.0 * self.forward_seconds / max(self.slices_seen, 1)

    def _prepare(self, images: np.ndarray, prep: dict[str, Any], source: str) -> torch.Tensor:
        from brainseg.data.preprocess import preprocess_image

        arr = [
            preprocess_image(
                img, size=prep["size"], in_channels=prep["in_channels"], normalization=prep["normalization"]
            )
            for img in images
        ]
        return torch.from_numpy(np.stack(arr))

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

        With `return_logits`, also the first model's logits at its own size (no TTA), which is
        what the training loss is computed on.
        """
        from brainseg.data.preprocess import resize_probability

        images = np.asarray(images)
        if images.ndim == 3:  # (N, H, W): single-channel slices
            images = images[..., None]
        if images.ndim != 4:
            raise BrainsegError(f"{source}: expected slices (N, H, W, C), got shape {images.shape}")
        n, h, w = images.shape[:3]
        total = np.zeros((n, h, w), dtype=np.float32)
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

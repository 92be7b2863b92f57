"""Attention U-Net (Oktay et al. 2018): U-Net whose skip connections pass through attention gates.

Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas", MIDL 2018. Each skip
connection is multiplied by attention coefficients α ∈ [0, 1] computed by an additive gate
(`brainseg.models.blocks.AttentionGate`) from the skip features and the gating signal of the next
coarser decoder level, so irrelevant regions are suppressed before concatenation. The rest is the
U-Net of `brainseg.models.unet` (same levels, widths and upsampling), which keeps the comparison
between the two about the gates alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from brainseg.models.base import _is_tracing
from brainseg.models.blocks import AttentionGate, DoubleConv
from brainseg.models.registry import register_model
from brainseg.models.unet import UNet


class AttentionUpBlock(nn.Module):
    """Gate the skip with the coarse features, upsample them (2×2 transposed conv), concat, double conv."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.gate = AttentionGate(skip_channels, in_channels, max(1, skip_channels // 2))
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.block = DoubleConv(in_channels // 2 + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gated, alpha = self.gate(skip, x)
        return self.block(torch.cat([self.up(x), gated], dim=1)), alpha


class AttentionUNetDecoder(nn.Module):
    """``blocks[0]`` is the deepest gated up-block, ``blocks[-1]`` the finest."""

    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            AttentionUpBlock(widths[i + 1], widths[i], widths[i]) for i in reversed(range(len(widths) - 1))
        )

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = features[-1]
        maps = []
        for block, skip in zip(self.blocks, reversed(features[:-1])):
            x, alpha = block(x, skip)
            maps.append(alpha)
        return x, maps


@register_model("attention_unet")
class AttentionUNet(UNet):
    """Attention U-Net of Oktay et al. 2018 on the Buda et al. U-Net (see module docstring).

    Args (besides in_channels, out_channels and encoder_weights, see `SegmentationModel`):
        width: base features (32, as the U-Net); level i has width·2^i.

    After a forward pass, `attention_maps()` returns the gates' coefficients.
    """

    default_width = 32
    paper = "Oktay et al. 2018"
    cpu_channels_last = True  # CPU train step ×0.75 vs NCHW at batch 16 (models_speed.py --layouts)
    decoder_class = AttentionUNetDecoder  # the U-Net's encoder, levels and head; gated skips

    def __init__(
        self, in_channels: int = 3, out_channels: int = 1, width: int | None = None,
        encoder_weights: str | None = None,
    ) -> None:  # the U-Net's deep supervision is not offered: the gated decoder has no levels hook
        super().__init__(in_channels, out_channels, width, encoder_weights)

    def build(self, in_channels: int, out_channels: int, width: int) -> dict[str, Any]:
        self._attention: list[torch.Tensor] = []
        return super().build(in_channels, out_channels, width)

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        y, maps = self.decoder(features)
        if not _is_tracing():
            # Detached copies for figures: keeping the graph alive would hold a batch's activations.
            self._attention = [m.detach() for m in maps]
        return y

    def attention_maps(self) -> list[torch.Tensor]:
        """The attention coefficients (N, 1, h, w) of the last forward, deepest gate first.

        Each map has its skip connection's resolution (input size / 8, / 4, / 2, / 1).
        """
        return list(self._attention)

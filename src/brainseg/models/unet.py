"""U-Net (Ronneberger et al. 2015) in the configuration Buda et al. 2019 used on LGG slices.

Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation",
MICCAI 2015. Buda, Saha & Mazurowski, "Association of genomic subtypes of lower-grade gliomas
with shape features automatically extracted by a deep learning algorithm", Computers in Biology
and Medicine 2019 (reference code: mateuszbuda/brain-segmentation-pytorch): four 2×2 max-pool
levels, 32 base features doubling per level, two 3×3 conv + batch norm + ReLU per level, 2×2
transposed-convolution upsampling, concatenated skips, 1×1 output convolution — 7,763,041
parameters for 3 input channels and 1 output. Unlike the reference code the model ends in
logits (no sigmoid): the losses and `Predictor` apply it, so training can use the numerically
stable BCE-with-logits.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from brainseg.models.base import SegmentationModel
from brainseg.models.blocks import DoubleConv, stage_outputs
from brainseg.models.registry import register_model


class UNetEncoder(nn.Module):
    """``stages[0]``: double conv at full resolution; ``stages[i]``: 2×2 max-pool + double conv."""

    def __init__(self, in_channels: int, widths: list[int]) -> None:
        super().__init__()
        stages: list[nn.Module] = [DoubleConv(in_channels, widths[0])]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            stages.append(nn.Sequential(OrderedDict(pool=nn.MaxPool2d(2, 2), block=DoubleConv(c_in, c_out))))
        self.stages = nn.ModuleList(stages)
        self.out_channels = list(widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return stage_outputs(self.stages, x)


class UpBlock(nn.Module):
    """2×2 transposed conv (stride 2, halves channels) → concat skip → double conv."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.block = DoubleConv(in_channels // 2 + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.up(x), skip], dim=1))


class UNetDecoder(nn.Module):
    """``blocks[0]`` is the deepest up-block (bottleneck → level 3), ``blocks[-1]`` the finest."""

    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            UpBlock(widths[i + 1], widths[i], widths[i]) for i in reversed(range(len(widths) - 1))
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for block, skip in zip(self.blocks, reversed(features[:-1])):
            x = block(x, skip)
        return x


@register_model("unet")
class UNet(SegmentationModel):
    """U-Net of Ronneberger et al. 2015 as configured by Buda et al. 2019 (see module docstring).

    Args (besides in_channels, out_channels and encoder_weights, see `SegmentationModel`):
        width: base features (32 in Buda et al.; 64 in Ronneberger et al.); level i has width·2^i.
    """

    default_width = 32
    paper = "Ronneberger et al. 2015; configuration of Buda et al. 2019"
    cpu_channels_last = True  # CPU train step ×0.70 vs NCHW at batch 16 (models_speed.py --layouts)
    levels = 4  # 2×2 max-pools
    decoder_class: type[nn.Module] = UNetDecoder

    def build(self, in_channels: int, out_channels: int, width: int) -> dict[str, Any]:
        widths = [width * 2**i for i in range(self.levels + 1)]
        self.encoder = UNetEncoder(in_channels, widths)
        self.decoder = self.decoder_class(widths)
        self.head = nn.Conv2d(width, out_channels, kernel_size=1)
        return {}

    @property
    def size_divisor(self) -> int:
        return 2**self.levels

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
from torch.nn import functional as F

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

    def forward(self, features: list[torch.Tensor], levels: list[torch.Tensor] | None = None) -> torch.Tensor:
        """The finest block's output; `levels`, when given, receives every block's (deepest first)."""
        x = features[-1]
        for block, skip in zip(self.blocks, reversed(features[:-1])):
            x = block(x, skip)
            if levels is not None:
                levels.append(x)
        return x


@register_model("unet")
class UNet(SegmentationModel):
    """U-Net of Ronneberger et al. 2015 as configured by Buda et al. 2019 (see module docstring).

    Args (besides in_channels, out_channels and encoder_weights, see `SegmentationModel`):
        width: base features (32 in Buda et al.; 64 in Ronneberger et al.); level i has width·2^i.
        deep_supervision: add a 1×1 head on the decoder's outputs at 1/2 and 1/4 of the input
            size (deep supervision, Lee et al. 2015, as nnU-Net trains its U-Nets). In training
            mode the forward then returns ``{"out": logits, "aux": [half, quarter]}``, the
            auxiliary logits upsampled bilinearly to the input size (the trainer weighs the k-th
            by 0.4 / 2^k); in eval mode the logits alone: the heads are unused at inference.
    """

    default_width = 32
    paper = "Ronneberger et al. 2015; configuration of Buda et al. 2019"
    cpu_channels_last = True  # CPU train step ×0.70 vs NCHW at batch 16 (models_speed.py --layouts)
    levels = 4  # 2×2 max-pools
    decoder_class: type[nn.Module] = UNetDecoder
    #: the decoder levels (as a power of 1/2 of the input size) that deep supervision watches
    supervised_levels = (1, 2)

    def __init__(
        self, in_channels: int = 3, out_channels: int = 1, width: int | None = None,
        encoder_weights: str | None = None, deep_supervision: bool = False,
    ) -> None:
        # recorded only when on, so the configs of models without it stay as they were
        options = {"deep_supervision": True} if deep_supervision else {}
        super().__init__(in_channels, out_channels, width, encoder_weights, **options)

    def build(
        self, in_channels: int, out_channels: int, width: int, deep_supervision: bool = False
    ) -> dict[str, Any]:
        widths = [width * 2**i for i in range(self.levels + 1)]
        self.encoder = UNetEncoder(in_channels, widths)
        self.decoder = self.decoder_class(widths)
        self.head = nn.Conv2d(width, out_channels, kernel_size=1)
        self.ds_heads = (
            nn.ModuleList(nn.Conv2d(widths[k], out_channels, kernel_size=1) for k in self.supervised_levels)
            if deep_supervision
            else None
        )
        return {"deep_supervision": True} if deep_supervision else {}

    def forward(self, x: torch.Tensor) -> Any:
        if self.ds_heads is None or not self.training:
            return super().forward(x)
        x = self._prepare_input(x)
        levels: list[torch.Tensor] = []  # deepest (1/8) first, the finest (1/1) last
        logits = self.head(self.decoder(self.encoder(x), levels))
        aux = [
            F.interpolate(head(levels[-1 - k]), size=x.shape[2:], mode="bilinear", align_corners=False)
            for k, head in zip(self.supervised_levels, self.ds_heads)
        ]
        return {"out": self._output(logits), "aux": [self._output(a) for a in aux]}

    @property
    def size_divisor(self) -> int:
        return 2**self.levels

"""DeepLabV3+ (Chen et al. 2018): atrous ResNet encoder, ASPP, and a decoder fusing low-level features.

Chen, Zhu, Papandreou, Schroff & Adam, "Encoder-Decoder with Atrous Separable Convolution for
Semantic Image Segmentation", ECCV 2018. The encoder is a ResNet whose last stage(s) use atrous
convolution so that features keep 1/16 (or 1/8) of the input resolution; ASPP (DeepLabV3, Chen
et al. 2017) with rates (6, 12, 18) at output stride 16 — doubled at output stride 8, as the
paper prescribes — and image pooling captures context at several scales. The decoder upsamples
the ASPP output ×4, concatenates the stride-4 encoder features reduced to 48 channels by a 1×1
convolution, refines with two 3×3 convolutions (256 channels) and upsamples ×4 to the input
(paper §3.2, Table 1–2). Plain (not depthwise-separable) convolutions are used, as in the paper's
ResNet-101 experiments; the separable variant belongs to its Xception backbone.

Encoder depth: ResNet-34 by default rather than the paper's ResNet-101. Nothing is downloaded, so
the encoder normally trains from scratch on ~1.3k 256×256 slices of one kind of image; ResNet-34
keeps the deepest features at 512 channels, so the whole network stays near 27M parameters — the
size of SegNet — whereas ResNet-50/101 (2048 channels, ASPP alone ≈15M) would mostly add capacity
this data cannot fill. ``encoder_depth`` selects 18, 34, 50 or 101. At 256×256 and output stride
16 the deepest map is 16×16, so the rate-18 branch sees mostly padding; ``atrous_rates`` can be
set, and the image-pooling branch still carries global context.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from brainseg.errors import BrainsegError
from brainseg.models.base import SegmentationModel, scaled
from brainseg.models.blocks import ASPP, ConvBNReLU
from brainseg.models.registry import register_model
from brainseg.models.resnet import ResNetEncoder


class DeepLabV3PlusDecoder(nn.Module):
    """ASPP on the deepest features, then fusion with the stride-4 features.

    Stages: ``aspp``; ``low_level`` (1×1 projection to 48 channels at full width);
    ``blocks[0]``, ``blocks[1]`` (the two 3×3 refinement convolutions).
    """

    def __init__(
        self,
        high_channels: int,
        low_channels: int,
        aspp_channels: int,
        low_level_channels: int,
        rates: Sequence[int],
    ) -> None:
        super().__init__()
        self.aspp = ASPP(high_channels, aspp_channels, rates)
        self.low_level = ConvBNReLU(low_channels, low_level_channels, kernel_size=1)
        self.blocks = nn.ModuleList(
            [
                ConvBNReLU(aspp_channels + low_level_channels, aspp_channels),
                ConvBNReLU(aspp_channels, aspp_channels),
            ]
        )
        self.out_channels = aspp_channels

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        x = self.aspp(high)
        x = F.interpolate(x, size=low.shape[2:], mode="bilinear", align_corners=False)
        x = torch.cat([x, self.low_level(low)], dim=1)
        for block in self.blocks:
            x = block(x)
        return x


@register_model("deeplabv3plus")
class DeepLabV3Plus(SegmentationModel):
    """DeepLabV3+ of Chen et al. 2018 with a ResNet encoder (see module docstring).

    Args (besides in_channels, out_channels and encoder_weights, see `SegmentationModel`):
        width: ResNet stem width (64 at full size); every channel count, ASPP (256) and the
            low-level projection (48) included, scales by width/64.
        encoder_depth: ResNet depth, 18, 34 (default), 50 or 101.
        output_stride: 16 (default) or 8.
        atrous_rates: ASPP rates; None → (6, 12, 18) at output stride 16, (12, 24, 36) at 8.
        encoder_weights: optional local state-dict file for the ResNet encoder (our layout or
            torchvision's; see `brainseg.models.load_encoder_weights`).
    """

    default_width = 64
    paper = "Chen et al. 2018"
    cpu_channels_last = True  # CPU train step ×0.95 vs NCHW at batch 16 (models_speed.py --layouts)
    upsample_logits = True  # the decoder ends at stride 4

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        width: int | None = None,
        encoder_depth: int = 34,
        output_stride: int = 16,
        atrous_rates: Sequence[int] | None = None,
        encoder_weights: str | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, width, encoder_weights,
                         encoder_depth=encoder_depth, output_stride=output_stride, atrous_rates=atrous_rates)

    def build(
        self, in_channels: int, out_channels: int, width: int, *, encoder_depth: int, output_stride: int,
        atrous_rates: Sequence[int] | None,
    ) -> dict[str, Any]:
        if output_stride not in (8, 16):
            raise BrainsegError(f"{self.name}: output_stride must be 8 or 16, got {output_stride!r}")
        if atrous_rates is None:
            atrous_rates = tuple(r * 16 // output_stride for r in (6, 12, 18))
        rates = tuple(int(r) for r in atrous_rates)
        if not rates or any(r < 1 for r in rates):
            raise BrainsegError(f"{self.name}: atrous_rates must be positive integers, got {atrous_rates!r}")
        self.encoder = ResNetEncoder(encoder_depth, in_channels, width, output_stride)
        self.decoder = DeepLabV3PlusDecoder(
            high_channels=self.encoder.out_channels[-1],
            low_channels=self.encoder.out_channels[1],
            aspp_channels=scaled(256, width, 64),
            low_level_channels=scaled(48, width, 64),
            rates=rates,
        )
        self.head = nn.Conv2d(self.decoder.out_channels, out_channels, kernel_size=1)
        return {"encoder_depth": encoder_depth, "output_stride": output_stride, "atrous_rates": list(rates)}

    @property
    def size_divisor(self) -> int:
        return self.encoder.output_stride

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.decoder(features[1], features[-1])  # low-level (stride 4) and deepest features

"""PSPNet (Zhao et al. 2017): dilated ResNet encoder and the pyramid pooling module.

Zhao, Shi, Qi, Wang & Jia, "Pyramid Scene Parsing Network", CVPR 2017. A ResNet with dilated
stages 3 and 4 (output stride 8) gives the feature map; the pyramid pooling module pools it to
1×1, 2×2, 3×3 and 6×6 grids, reduces each to 1/4 of the channels, upsamples and concatenates them
with the map; a 3×3 convolution (512 channels at full width), dropout 0.1 and a 1×1 classifier
give logits at 1/8 resolution, upsampled bilinearly to the input (§3.2–3.3). For training, an
optional auxiliary head on stage 3 (the paper's res4b22) adds deep supervision (§4, weight 0.4
in the paper; the trainer applies the weight).

Encoder depth: ResNet-34 by default, for the reasons given in `brainseg.models.deeplabv3plus`
(training from scratch on ~1.3k slices; a network near 27M parameters like the others); the
paper's ResNet-50/101 are available through ``encoder_depth``. The stem is the standard 7×7
convolution (the paper's code uses three 3×3 convolutions), so torchvision ResNet weights load.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from brainseg.models.base import SegmentationModel, scaled
from brainseg.models.blocks import ConvBNReLU, PyramidPooling
from brainseg.models.registry import register_model
from brainseg.models.resnet import ResNetEncoder


def _head(in_channels: int, mid_channels: int, out_channels: int, dropout: float = 0.1) -> nn.Sequential:
    """3×3 conv-BN-ReLU → dropout → 1×1 classifier (the PSPNet and auxiliary heads)."""
    return nn.Sequential(
        OrderedDict(
            block=ConvBNReLU(in_channels, mid_channels),
            dropout=nn.Dropout2d(dropout),
            classifier=nn.Conv2d(mid_channels, out_channels, kernel_size=1),
        )
    )


class PSPDecoder(nn.Module):
    """``ppm`` (pyramid pooling) then ``blocks[0]`` (3×3 conv-BN-ReLU fusing the pyramid)."""

    def __init__(self, in_channels: int, mid_channels: int, bins: Sequence[int]) -> None:
        super().__init__()
        self.ppm = PyramidPooling(in_channels, bins)
        self.blocks = nn.ModuleList([ConvBNReLU(self.ppm.out_channels, mid_channels)])
        self.out_channels = mid_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[0](self.ppm(x))


@register_model("pspnet")
class PSPNet(SegmentationModel):
    """PSPNet of Zhao et al. 2017 with a dilated ResNet encoder (see module docstring).

    Args (besides in_channels, out_channels and encoder_weights, see `SegmentationModel`):
        width: ResNet stem width (64 at full size); the head (512) and auxiliary head (256)
            scale by width/64.
        encoder_depth: ResNet depth, 18, 34 (default), 50 or 101.
        bins: pyramid pooling grid sizes, (1, 2, 3, 6) in the paper.
        aux: add the auxiliary head on encoder stage 3; in training mode the forward then
            returns ``{"out": logits, "aux": aux_logits}`` (both at input size), in eval mode
            the logits tensor alone.
    """

    default_width = 64
    paper = "Zhao et al. 2017"
    cpu_channels_last = True  # CPU train step ×0.97 vs NCHW at batch 16 (models_speed.py --layouts)
    upsample_logits = True  # the decoder ends at stride 8
    # Trained with its auxiliary head (deep supervision, Zhao et al. 2017 §4) unless model.kwargs
    # say otherwise; in eval mode the head is unused, and `aux=False` stays the constructor's default.
    training_defaults = {"aux": True}

    def __init__(
        self, in_channels: int = 3, out_channels: int = 1, width: int | None = None, encoder_depth: int = 34,
        bins: Sequence[int] = (1, 2, 3, 6), aux: bool = False, encoder_weights: str | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, width, encoder_weights,
                         encoder_depth=encoder_depth, bins=bins, aux=aux)

    def build(
        self, in_channels: int, out_channels: int, width: int, *, encoder_depth: int, bins: Sequence[int], aux: bool
    ) -> dict[str, Any]:
        bins = tuple(int(b) for b in bins)
        self.encoder = ResNetEncoder(encoder_depth, in_channels, width, output_stride=8)
        self.decoder = PSPDecoder(self.encoder.out_channels[-1], scaled(512, width, 64), bins)
        self.head = nn.Sequential(
            OrderedDict(
                dropout=nn.Dropout2d(0.1), classifier=nn.Conv2d(self.decoder.out_channels, out_channels, 1)
            )
        )
        self.aux_head = (
            _head(self.encoder.out_channels[3], scaled(256, width, 64), out_channels) if aux else None
        )
        return {"encoder_depth": encoder_depth, "bins": list(bins), "aux": bool(aux)}

    @property
    def size_divisor(self) -> int:
        return self.encoder.output_stride

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.decoder(features[-1])

    def outputs(self, logits: torch.Tensor, features: list[torch.Tensor], x: torch.Tensor) -> Any:
        if self.aux_head is not None and self.training:
            size = x.shape[2:]
            aux = F.interpolate(self.aux_head(features[3]), size=size, mode="bilinear", align_corners=False)
            return {"out": self._output(logits), "aux": self._output(aux)}
        return self._output(logits)

"""SegNet (Badrinarayanan et al. 2017): VGG16-BN encoder, decoder upsampling with pooling indices.

Badrinarayanan, Kendall & Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder Architecture for
Image Segmentation", IEEE TPAMI 2017. The encoder is the 13 convolutional layers of VGG16 with
batch norm, in five stages each ending in a 2×2 max-pool that records the argmax positions. The
decoder mirrors it: each stage first max-unpools with the indices of the matching encoder pool
(values go back exactly where the maxima were, zeros elsewhere), then densifies the sparse map
with 3×3 convolutions. No feature maps are copied from encoder to decoder — only the indices;
that is what distinguishes SegNet from U-Net. The last decoder convolution gives the logits.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from brainseg.models.base import SegmentationModel
from brainseg.models.blocks import ConvBNReLU
from brainseg.models.registry import register_model

CONVS_PER_STAGE = (2, 2, 3, 3, 3)  # VGG16 (Simonyan & Zisserman 2015, configuration D)
STAGE_WIDTHS = (1, 2, 4, 8, 8)  # × width (64 in VGG16)


class SegNetEncoderStage(nn.Module):
    """3×3 conv-BN-ReLU layers, then a 2×2 max-pool returning its argmax indices."""

    def __init__(self, in_channels: int, out_channels: int, n_convs: int) -> None:
        super().__init__()
        chans = [in_channels] + [out_channels] * n_convs
        self.convs = nn.Sequential(*(ConvBNReLU(a, b) for a, b in zip(chans[:-1], chans[1:])))
        self.pool = nn.MaxPool2d(2, stride=2, return_indices=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pool(self.convs(x))


class SegNetDecoderStage(nn.Module):
    """2×2 max-unpool with the encoder's indices, then 3×3 conv-BN-ReLU layers."""

    def __init__(self, in_channels: int, out_channels: int, n_convs: int) -> None:
        super().__init__()
        self.unpool = nn.MaxUnpool2d(2, stride=2)
        chans = [in_channels] * n_convs + [out_channels]
        self.convs = nn.Sequential(*(ConvBNReLU(a, b) for a, b in zip(chans[:-1], chans[1:])))

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        size = (x.shape[2] * 2, x.shape[3] * 2)
        return self.convs(self.unpool(x, indices, output_size=size))


class VGGEncoder(nn.Module):
    """VGG16-BN convolutional trunk in five pooled stages (``stages[0]`` … ``stages[4]``)."""

    first_conv_key = "stages.0.convs.0.conv.weight"

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        widths = [width * m for m in STAGE_WIDTHS]
        ins = [in_channels] + widths[:-1]
        self.stages = nn.ModuleList(
            SegNetEncoderStage(a, b, n) for a, b, n in zip(ins, widths, CONVS_PER_STAGE)
        )
        self.out_channels = widths

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return the deepest pooled features and the pooling indices of every stage."""
        indices = []
        for stage in self.stages:
            x, idx = stage(x)
            indices.append(idx)
        return x, indices

    @staticmethod
    def translate_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Accept torchvision's VGG16-BN layout (``features.<i>.*``; ``classifier.*`` dropped).

        torchvision's convolutions carry a bias that our bias-free ones (followed by batch norm)
        do not; it is folded exactly into the batch-norm running mean (BN(Wx + b) with mean μ
        equals BN(Wx) with mean μ − b; in training mode the batch mean absorbs b either way).
        """
        if "features.0.weight" not in state:
            return state
        out: dict[str, torch.Tensor] = {}
        index = 0  # position in torchvision's `features` Sequential: conv, bn, relu, …, pool
        for s, n in enumerate(CONVS_PER_STAGE):
            for j in range(n):
                src_conv, src_bn = f"features.{index}.", f"features.{index + 1}."
                dst = f"stages.{s}.convs.{j}."
                for key, value in state.items():
                    if key.startswith(src_conv) and key != src_conv + "bias":
                        out[dst + "conv." + key[len(src_conv) :]] = value
                    elif key.startswith(src_bn):
                        out[dst + "bn." + key[len(src_bn) :]] = value
                bias = state.get(src_conv + "bias")
                mean_key = dst + "bn.running_mean"
                if bias is not None and mean_key in out and out[mean_key].shape == bias.shape:
                    out[mean_key] = out[mean_key] - bias
                index += 3
            index += 1  # the max-pool
        known = {f"features.{i}." for i in range(index)}
        for key, value in state.items():
            # Keys we did not map are passed on so the loader reports them as unexpected.
            if not key.startswith("classifier.") and not any(key.startswith(k) for k in known):
                out[key] = value
        return out


class SegNetDecoder(nn.Module):
    """Mirror of the encoder: ``blocks[0]`` unpools with the deepest indices, ``blocks[4]`` the finest."""

    def __init__(self, width: int) -> None:
        super().__init__()
        widths = [width * m for m in STAGE_WIDTHS]
        blocks = []
        for s in reversed(range(len(widths))):
            out = widths[s - 1] if s > 0 else widths[0]
            # The finest stage's last convolution is the classifier (`head`), so it has one fewer.
            n = CONVS_PER_STAGE[s] if s > 0 else CONVS_PER_STAGE[s] - 1
            blocks.append(SegNetDecoderStage(widths[s], out, n))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, indices: list[torch.Tensor]) -> torch.Tensor:
        for block, idx in zip(self.blocks, reversed(indices)):
            x = block(x, idx)
        return x


@register_model("segnet")
class SegNet(SegmentationModel):
    """SegNet of Badrinarayanan et al. 2017 (see module docstring).

    Args (besides in_channels, out_channels and encoder_weights, see `SegmentationModel`):
        width: channels of the first stage (64 in VGG16); stages have width × (1, 2, 4, 8, 8).
        encoder_weights: optional local state-dict file for the VGG16-BN encoder (our layout or
            torchvision's ``vgg16_bn``; see `brainseg.models.load_encoder_weights`).
    """

    default_width = 64
    paper = "Badrinarayanan et al. 2017"
    cpu_channels_last = True  # CPU train step ×0.80 vs NCHW at batch 16 (models_speed.py --layouts)

    def build(self, in_channels: int, out_channels: int, width: int) -> dict[str, Any]:
        self.encoder = VGGEncoder(in_channels, width)
        self.decoder = SegNetDecoder(width)
        self.head = nn.Conv2d(width, out_channels, kernel_size=3, padding=1)
        return {}

    @property
    def size_divisor(self) -> int:
        return 2 ** len(CONVS_PER_STAGE)

    def decode(self, features: tuple[torch.Tensor, list[torch.Tensor]]) -> torch.Tensor:
        x, indices = features  # the deepest features and every stage's pooling indices
        return self.decoder(x, indices)

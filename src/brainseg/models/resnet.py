"""ResNet encoder with optional atrous (dilated) last stages, shared by DeepLabV3+ and PSPNet.

He et al. 2016, "Deep Residual Learning for Image Recognition". To keep resolution for dense
prediction, the last stage(s) replace their stride by dilation (Chen et al. 2017/2018; Zhao et al.
2017): output stride 16 dilates stage 4 by 2, output stride 8 dilates stage 3 by 2 and stage 4
by 4. The first block of a dilated stage keeps the previous dilation (torchvision's convention).

Stages: ``stages[0]`` stem (7×7/2 conv, stride 2), ``stages[1]`` max-pool + conv2_x (stride 4),
``stages[2]`` conv3_x (stride 8), ``stages[3]`` conv4_x, ``stages[4]`` conv5_x.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from brainseg.errors import BrainsegError
from brainseg.models.blocks import BasicBlock, Bottleneck, ConvBNReLU, stage_outputs

# depth → (block, blocks per stage), Table 1 of He et al. 2016.
RESNET_SPECS: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}

# output stride → dilation of stages 3 and 4 (stride 1 where dilated)
_DILATIONS = {32: (1, 1), 16: (1, 2), 8: (2, 4)}


class ResStage(nn.Module):
    """One ResNet stage: an optional 3×3/2 max-pool (conv2_x only) and its residual blocks."""

    def __init__(self, blocks: list[nn.Module], pool: bool = False) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(3, stride=2, padding=1) if pool else None
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = self.pool(x)
        return self.blocks(x)


class ResNetEncoder(nn.Module):
    """ResNet-18/34/50/101 trunk returning the features of every stage.

    Args:
        depth: 18, 34, 50 or 101.
        in_channels: input image channels.
        width: stem width (64 in the paper); every stage scales with it.
        output_stride: 32 (plain ResNet), 16 or 8 (atrous stages).

    Attributes:
        stages: the five stages (see the module docstring).
        out_channels: channels of each stage's output.
        reductions: spatial stride of each stage's output relative to the input.
    """

    first_conv_key = "stages.0.conv.weight"

    def __init__(
        self, depth: int = 34, in_channels: int = 3, width: int = 64, output_stride: int = 32
    ) -> None:
        super().__init__()
        if depth not in RESNET_SPECS:
            raise BrainsegError(f"ResNet depth must be one of {sorted(RESNET_SPECS)}, got {depth!r}")
        if output_stride not in _DILATIONS:
            raise BrainsegError(f"output_stride must be one of {sorted(_DILATIONS)}, got {output_stride!r}")
        block, counts = RESNET_SPECS[depth]
        self.depth = depth
        self.output_stride = output_stride
        d3, d4 = _DILATIONS[output_stride]

        stages: list[nn.Module] = [ConvBNReLU(in_channels, width, kernel_size=7, stride=2)]
        channels = width
        dilation = 1
        out_channels = [width]
        reductions = [2]
        stride_so_far = 4  # after the stem and the max-pool
        plan = [(width, 1, 1), (2 * width, 2, 1), (4 * width, 2, d3), (8 * width, 2, d4)]
        for i, (planes, stride, stage_dilation) in enumerate(plan):
            if stage_dilation > 1:
                stride = 1
            blocks: list[nn.Module] = []
            for j in range(counts[i]):
                # First block keeps the previous dilation, later blocks take the stage's.
                blocks.append(
                    block(
                        channels,
                        planes,
                        stride=stride if j == 0 else 1,
                        dilation=dilation if j == 0 else stage_dilation,
                    )
                )
                channels = planes * block.expansion
            dilation = stage_dilation
            stride_so_far *= stride
            stages.append(ResStage(blocks, pool=(i == 0)))
            out_channels.append(channels)
            reductions.append(stride_so_far)
        self.stages = nn.ModuleList(stages)
        self.out_channels = out_channels
        self.reductions = reductions

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return stage_outputs(self.stages, x)

    @staticmethod
    def translate_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Accept a torchvision ResNet state dict (``conv1.*``, ``layer3.1.conv2.*``, ``fc.*``).

        torchvision's key names map one to one onto ours (its ``fc`` classifier is dropped);
        a state dict already in our layout passes through unchanged.
        """
        if "conv1.weight" not in state:
            return state
        out: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            if key.startswith("fc."):
                continue
            new = re.sub(r"^conv1\.", "stages.0.conv.", key)
            new = re.sub(r"^bn1\.", "stages.0.bn.", new)
            new = re.sub(r"^layer([1-4])\.", r"stages.\1.blocks.", new)
            out[new] = value
        return out

"""Reusable building blocks shared by the architectures.

Convolutions followed by batch norm carry no bias (batch norm subtracts the batch mean, so a bias
there is dead weight and costs a kernel launch), and ReLUs run in place. Modules are
`nn.Sequential` subclasses with named children where that is enough, so state-dict keys read
like the papers' figures (`stages.1.conv1.weight`, `aspp.branches.4.conv.weight`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNReLU(nn.Sequential):
    """k×k convolution (no bias) → batch norm → ReLU; "same" padding for odd k."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            OrderedDict(
                conv=nn.Conv2d(
                    in_channels,
                    out_channels,
                    kernel_size,
                    stride=stride,
                    padding=padding,
                    dilation=dilation,
                    bias=False,
                ),
                bn=nn.BatchNorm2d(out_channels),
                relu=nn.ReLU(inplace=True),
            )
        )


class DoubleConv(nn.Sequential):
    """Two (3×3 conv → BN → ReLU), the unit of every UNet level (Ronneberger et al. 2015)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            OrderedDict(
                conv1=nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                bn1=nn.BatchNorm2d(out_channels),
                relu1=nn.ReLU(inplace=True),
                conv2=nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                bn2=nn.BatchNorm2d(out_channels),
                relu2=nn.ReLU(inplace=True),
            )
        )


class AttentionGate(nn.Module):
    """Additive attention gate of Oktay et al. 2018, "Attention U-Net" (eq. 1–2, Fig. 2).

    The skip features x (resolution 2h×2w) are weighted by coefficients α ∈ [0, 1] computed from
    x and the gating signal g taken from the next coarser level (h×w):
    ``α = σ(ψ(ReLU(W_x x + W_g g + b_g)) + b_ψ)``. The paper's Fig. 2 forms the sum at the
    gating signal's (coarser) resolution; its authors' code does so with W_x as a 2×2 convolution
    of stride 2, as here (cheaper than upsampling g), and α is resampled bilinearly back to the
    skip resolution (the paper's "grid resampling").

    Args:
        x_channels: channels of the skip features.
        g_channels: channels of the gating signal.
        inter_channels: channels of the intermediate space (F_int in the paper).
    """

    def __init__(self, x_channels: int, g_channels: int, inter_channels: int) -> None:
        super().__init__()
        self.theta_x = nn.Conv2d(x_channels, inter_channels, kernel_size=2, stride=2, bias=False)
        self.phi_g = nn.Conv2d(g_channels, inter_channels, kernel_size=1, bias=True)
        self.psi = nn.Conv2d(inter_channels, 1, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (gated skip features α·x, attention map α of shape (N, 1, H_x, W_x))."""
        theta = self.theta_x(x)
        phi = self.phi_g(g)
        if phi.shape[2:] != theta.shape[2:]:
            phi = F.interpolate(phi, size=theta.shape[2:], mode="bilinear", align_corners=False)
        alpha = torch.sigmoid(self.psi(F.relu(theta + phi, inplace=True)))
        alpha = F.interpolate(alpha, size=x.shape[2:], mode="bilinear", align_corners=False)
        return x * alpha, alpha


class PooledConvBNReLU(nn.Module):
    """Adaptive average pooling to `bins`×`bins` → 1×1 conv → BN → ReLU → bilinear upsampling.

    The image-pooling branch of ASPP (bins=1) and each level of the pyramid pooling module. When
    training on a batch of one image with bins=1 there is a single value per channel and batch
    statistics do not exist; that case (a last, short batch) uses the running statistics instead
    of failing, as `F.batch_norm` would otherwise raise.
    """

    def __init__(self, in_channels: int, out_channels: int, bins: int) -> None:
        super().__init__()
        self.bins = bins
        self.pool = nn.AdaptiveAvgPool2d(bins)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(self.pool(x))
        if self.training and y.shape[0] * y.shape[2] * y.shape[3] == 1:
            bn = self.bn
            y = F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        else:
            y = self.bn(y)
        y = self.relu(y)
        return F.interpolate(y, size=x.shape[2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling with image pooling (Chen et al. 2017, DeepLabV3, §3.3).

    Five parallel branches — a 1×1 convolution, three 3×3 atrous convolutions at `rates` and
    global image pooling — each with `out_channels` filters and batch norm, concatenated and
    projected by a 1×1 convolution (+ BN, ReLU, dropout 0.1 as in the reference implementation).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        rates: Sequence[int] = (6, 12, 18),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.rates = tuple(int(r) for r in rates)
        branches: list[nn.Module] = [ConvBNReLU(in_channels, out_channels, 1)]
        branches += [ConvBNReLU(in_channels, out_channels, 3, dilation=r) for r in self.rates]
        branches.append(PooledConvBNReLU(in_channels, out_channels, bins=1))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(out_channels * len(branches), out_channels, 1, bias=False),
                bn=nn.BatchNorm2d(out_channels),
                relu=nn.ReLU(inplace=True),
                dropout=nn.Dropout2d(dropout),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class PyramidPooling(nn.Module):
    """Pyramid pooling module of Zhao et al. 2017, "Pyramid Scene Parsing Network" (§3.2, Fig. 3).

    The feature map is average-pooled to each of `bins`×`bins` grids, reduced to
    in_channels/len(bins) channels by a 1×1 conv (+BN, ReLU), upsampled back and concatenated with
    the input, so the output has 2·in_channels channels (for four levels).
    """

    def __init__(self, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.bins = tuple(int(b) for b in bins)
        branch_channels = max(1, in_channels // len(self.bins))
        self.stages = nn.ModuleList(PooledConvBNReLU(in_channels, branch_channels, b) for b in self.bins)
        self.out_channels = in_channels + branch_channels * len(self.bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x] + [stage(x) for stage in self.stages], dim=1)


class BasicBlock(nn.Module):
    """Residual block of two 3×3 convolutions (He et al. 2016, ResNet-18/34).

    Child names match torchvision's ResNet so its state dicts map onto ours key by key.
    `dilation` (of both 3×3 convolutions) replaces striding in the atrous stages of DeepLab and
    PSPNet; see `brainseg.models.resnet` for how a stage sets it.
    """

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(
            in_channels, planes, 3, stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, out, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + identity)


class Bottleneck(nn.Module):
    """Residual bottleneck 1×1 → 3×3 → 1×1 (×4 channels) (He et al. 2016, ResNet-50/101).

    The stride sits on the 3×3 convolution ("ResNet v1.5", as torchvision and most segmentation
    code); child names match torchvision's.
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """1×1 projection (+BN) when the residual branch changes shape, else identity (None)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


def stage_outputs(stages: nn.ModuleList, x: torch.Tensor) -> list[torch.Tensor]:
    """Run `stages` in turn on `x` and return every stage's output (an encoder's features)."""
    features = []
    for stage in stages:
        x = stage(x)
        features.append(x)
    return features


def init_weights(module: nn.Module) -> None:
    """He (Kaiming) normal init for convolutions, unit/zero batch norm (He et al. 2015).

    The same scheme for every architecture so that comparisons do not hinge on init defaults.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

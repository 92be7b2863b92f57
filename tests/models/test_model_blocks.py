"""Tests of the shared building blocks against hand computations and independent references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from brainseg.models.blocks import (
    ASPP,
    AttentionGate,
    BasicBlock,
    Bottleneck,
    ConvBNReLU,
    DoubleConv,
    PooledConvBNReLU,
    PyramidPooling,
)
from brainseg.models.segnet import SegNetDecoderStage, SegNetEncoderStage


def randomize_bn(module: torch.nn.Module) -> None:
    """Give every batch norm non-trivial affine parameters and running statistics."""
    g = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=g)
            m.running_mean = torch.randn(m.num_features, generator=g)
            m.running_var = torch.rand(m.num_features, generator=g) + 0.5


def test_conv_bn_relu_keeps_size_with_dilation_and_has_no_bias():
    block = ConvBNReLU(4, 6, kernel_size=3, dilation=5).eval()
    assert block.conv.bias is None  # batch norm follows: a bias would be redundant
    y = block(torch.randn(1, 4, 20, 20))
    assert y.shape == (1, 6, 20, 20) and (y >= 0).all()
    assert block.conv.dilation == (5, 5)


def test_double_conv_is_two_conv_bn_relu():
    block = DoubleConv(3, 5).eval()
    randomize_bn(block)
    x = torch.randn(2, 3, 8, 8)

    def cbr(x, conv, bn):
        return F.relu(
            F.batch_norm(
                F.conv2d(x, conv.weight, padding=1), bn.running_mean, bn.running_var, bn.weight, bn.bias
            )
        )

    expected = cbr(cbr(x, block.conv1, block.bn1), block.conv2, block.bn2)
    torch.testing.assert_close(block(x), expected)


# --- attention gate ---------------------------------------------------------------------------


def test_attention_gate_matches_the_paper_equations():
    torch.manual_seed(0)
    gate = AttentionGate(x_channels=6, g_channels=10, inter_channels=4)
    x = torch.randn(2, 6, 16, 16)  # skip features
    g = torch.randn(2, 10, 8, 8)  # gating signal from the coarser level
    gated, alpha = gate(x, g)

    assert alpha.shape == (2, 1, 16, 16)
    # Oktay et al. 2018 eq. 1-2, written out: W_x is a 2×2 stride-2 conv on x, W_g a 1×1 conv on g.
    q = F.conv2d(
        F.relu(F.conv2d(x, gate.theta_x.weight, stride=2) + F.conv2d(g, gate.phi_g.weight, gate.phi_g.bias)),
        gate.psi.weight,
        gate.psi.bias,
    )
    expected_alpha = F.interpolate(torch.sigmoid(q), size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(alpha, expected_alpha)
    torch.testing.assert_close(gated, x * expected_alpha)


def test_attention_gate_can_close_and_open():
    gate = AttentionGate(3, 3, 2)
    x, g = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        gate.psi.weight.zero_()
        gate.psi.bias.fill_(-30.0)
        closed, _ = gate(x, g)
        gate.psi.bias.fill_(30.0)
        opened, _ = gate(x, g)
    assert closed.abs().max() < 1e-10
    torch.testing.assert_close(opened, x)


# --- ASPP -------------------------------------------------------------------------------------


def test_aspp_branches_shape_and_image_pooling():
    torch.manual_seed(0)
    aspp = ASPP(8, 5, rates=(6, 12, 18)).eval()
    randomize_bn(aspp)
    x = torch.randn(2, 8, 16, 16)
    y = aspp(x)
    assert y.shape == (2, 5, 16, 16)
    assert len(aspp.branches) == 5
    assert aspp.branches[0].conv.kernel_size == (1, 1)
    assert [b.conv.dilation[0] for b in aspp.branches[1:4]] == [6, 12, 18]
    assert [b.conv.kernel_size for b in aspp.branches[1:4]] == [(3, 3)] * 3

    pool = aspp.branches[4]
    assert isinstance(pool, PooledConvBNReLU)
    # Image pooling: global mean → 1×1 conv → BN → ReLU, broadcast over the map.
    mean = x.mean(dim=(2, 3), keepdim=True)
    bn = pool.bn
    expected = F.relu(
        F.batch_norm(F.conv2d(mean, pool.conv.weight), bn.running_mean, bn.running_var, bn.weight, bn.bias)
    )
    torch.testing.assert_close(pool(x), expected.expand(-1, -1, 16, 16))
    assert aspp.project.conv.in_channels == 5 * 5


def test_image_pooling_trains_on_a_batch_of_one():
    # One image, one pooled value per channel: batch statistics do not exist; use running ones.
    block = PooledConvBNReLU(4, 3, bins=1).train()
    randomize_bn(block)
    x = torch.randn(1, 4, 8, 8)
    y = block(x)
    bn = block.bn
    expected = F.relu(
        F.batch_norm(
            F.conv2d(x.mean((2, 3), keepdim=True), block.conv.weight),
            bn.running_mean,
            bn.running_var,
            bn.weight,
            bn.bias,
        )
    )
    torch.testing.assert_close(y, expected.expand(-1, -1, 8, 8))
    y.sum().backward()
    assert block.conv.weight.grad is not None


# --- pyramid pooling ----------------------------------------------------------------------------


def test_pyramid_pooling_bins_are_block_means():
    torch.manual_seed(0)
    ppm = PyramidPooling(8, bins=(1, 2, 3, 6)).eval()
    x = torch.randn(2, 8, 12, 12)  # 12 is divisible by every bin count: exact block means
    pooled = {}
    for b, stage in zip(ppm.bins, ppm.stages):
        stage.pool.register_forward_hook(lambda m, i, o, b=b: pooled.__setitem__(b, o))
    y = ppm(x)

    assert y.shape == (2, 16, 12, 12)  # input + 4 levels of 8/4 channels
    assert ppm.out_channels == 16
    torch.testing.assert_close(y[:, :8], x)  # the map itself is passed through
    xn = x.numpy()
    for b in (1, 2, 3, 6):
        k = 12 // b
        expected = xn.reshape(2, 8, b, k, b, k).mean(axis=(3, 5))
        assert pooled[b].shape == (2, 8, b, b)
        np.testing.assert_allclose(pooled[b].numpy(), expected, rtol=1e-5, atol=1e-6)
    # Each level is upsampled back: the 1×1 level is constant over the map.
    level1 = y[:, 8:10]
    torch.testing.assert_close(level1, level1[:, :, :1, :1].expand_as(level1))


# --- index unpooling (SegNet) -------------------------------------------------------------------


def test_index_unpooling_puts_values_back_at_the_argmax_positions():
    enc = SegNetEncoderStage(1, 1, n_convs=1)
    dec = SegNetDecoderStage(1, 1, n_convs=1)
    x = torch.tensor(
        [
            [1.0, 5.0, 0.0, 2.0],
            [3.0, 2.0, 7.0, 1.0],
            [9.0, 0.0, 4.0, 4.5],
            [1.0, 8.0, 6.0, 3.0],
        ]
    ).reshape(1, 1, 4, 4)
    pooled, indices = enc.pool(x)
    assert pooled.flatten().tolist() == [5.0, 7.0, 9.0, 6.0]
    # Decoder input: new values per pooled cell; unpooling must place them where the maxima were.
    values = torch.tensor([[10.0, 20.0], [30.0, 40.0]]).reshape(1, 1, 2, 2)
    unpooled = dec.unpool(values, indices, output_size=(4, 4))
    expected = torch.tensor(
        [
            [0.0, 10.0, 0.0, 0.0],
            [0.0, 0.0, 20.0, 0.0],
            [30.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 40.0, 0.0],
        ]
    ).reshape(1, 1, 4, 4)
    assert torch.equal(unpooled, expected)


# --- residual blocks ----------------------------------------------------------------------------


@pytest.mark.parametrize(("block", "expansion"), [(BasicBlock, 1), (Bottleneck, 4)])
def test_residual_blocks_shapes_and_shortcut(block, expansion):
    same = block(4 * expansion, 4).eval()
    assert same.downsample is None  # identity shortcut when the shape is unchanged
    x = torch.randn(2, 4 * expansion, 8, 8)
    assert same(x).shape == x.shape

    down = block(4 * expansion, 8, stride=2).eval()
    assert down(x).shape == (2, 8 * expansion, 4, 4)
    assert down.downsample[0].stride == (2, 2)

    dilated = block(4 * expansion, 4, dilation=2).eval()
    assert dilated(x).shape == x.shape
    assert dilated.conv2.dilation == (2, 2)


def test_basic_block_is_residual():
    block = BasicBlock(3, 3).eval()
    randomize_bn(block)
    x = torch.randn(1, 3, 6, 6)
    bn1, bn2 = block.bn1, block.bn2
    y = F.relu(
        F.batch_norm(
            F.conv2d(x, block.conv1.weight, padding=1),
            bn1.running_mean,
            bn1.running_var,
            bn1.weight,
            bn1.bias,
        )
    )
    y = F.batch_norm(
        F.conv2d(y, block.conv2.weight, padding=1), bn2.running_mean, bn2.running_var, bn2.weight, bn2.bias
    )
    torch.testing.assert_close(block(x), F.relu(y + x))

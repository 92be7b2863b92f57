"""Architecture-specific checks: each model is the network its paper describes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from brainseg.models import count_parameters, create_model
from brainseg.models.blocks import AttentionGate
from brainseg.models.resnet import ResNetEncoder


def meta(name: str, **kwargs):
    with torch.device("meta"):
        return create_model(name, **kwargs)


# --- UNet / Attention UNet ------------------------------------------------------------------------


def test_unet_levels_widths_and_upsampling():
    model = create_model("unet", width=4).eval()
    x = torch.randn(1, 3, 32, 32)
    feats = model.encoder(x)
    assert [f.shape[1] for f in feats] == [4, 8, 16, 32, 64]
    assert [f.shape[2] for f in feats] == [32, 16, 8, 4, 2]
    assert len(model.decoder.blocks) == 4
    for block in model.decoder.blocks:
        assert isinstance(block.up, nn.ConvTranspose2d)
        assert block.up.kernel_size == (2, 2) and block.up.stride == (2, 2)
    assert not any(isinstance(m, (nn.Sigmoid, nn.Softmax)) for m in model.modules())


def test_unet_deep_supervision_heads_watch_the_half_and_quarter_decoder_levels():
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = create_model("unet", width=4, deep_supervision=True)
    plain = create_model("unet", width=4)
    # two 1×1 heads on the decoder levels of width 8 (1/2) and 16 (1/4): 8+1 and 16+1 parameters
    assert count_parameters(model) - count_parameters(plain) == (8 + 1) + (16 + 1)
    assert model.config["deep_supervision"] is True and "deep_supervision" not in plain.config
    x = torch.randn(2, 3, 32, 32)
    model.train()
    y = model(x)
    # recompute by hand from the model's own blocks: the decoder's 1/2 and 1/4 outputs, each
    # through its head and upsampled bilinearly to 32×32
    feats = model.encoder(x)
    h, levels = feats[-1], []
    for block, skip in zip(model.decoder.blocks, reversed(feats[:-1])):
        h = block(h, skip)
        levels.append(h)
    assert [lv.shape[-1] for lv in levels] == [4, 8, 16, 32]
    want_half = F.interpolate(model.ds_heads[0](levels[2]), size=(32, 32), mode="bilinear", align_corners=False)
    want_quarter = F.interpolate(model.ds_heads[1](levels[1]), size=(32, 32), mode="bilinear", align_corners=False)
    # batch norm in training mode normalises by the batch: the same batch gives the same values
    torch.testing.assert_close(y["out"], model.head(levels[3]))
    torch.testing.assert_close(y["aux"][0], want_half)
    torch.testing.assert_close(y["aux"][1], want_quarter)
    # at inference only the main logits, and they are the plain U-Net's path
    model.eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("ds_heads")})
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x))


def test_attention_unet_does_not_offer_deep_supervision():
    from brainseg.errors import BrainsegError

    with pytest.raises(BrainsegError, match="deep_supervision"):
        create_model("attention_unet", width=4, deep_supervision=True)


def test_attention_unet_gates_every_skip_and_exposes_its_maps():
    model = create_model("attention_unet", width=4).eval()
    assert model.attention_maps() == []
    gates = [m for m in model.modules() if isinstance(m, AttentionGate)]
    assert len(gates) == 4
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    maps = model.attention_maps()
    assert [tuple(m.shape) for m in maps] == [(2, 1, 4, 4), (2, 1, 8, 8), (2, 1, 16, 16), (2, 1, 32, 32)]
    for m in maps:
        assert not m.requires_grad


def test_attention_unet_differs_from_unet_only_by_its_gates():
    unet, att = meta("unet"), meta("attention_unet")
    gate_params = sum(count_parameters(m) for m in att.modules() if isinstance(m, AttentionGate))
    assert count_parameters(att) - count_parameters(unet) == gate_params


# --- SegNet ----------------------------------------------------------------------------------------


def test_segnet_is_vgg16_bn_with_mirrored_unpooling_decoder():
    model = meta("segnet")
    enc_convs = [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    assert len(enc_convs) == 13  # VGG16's convolutional layers
    assert [c.out_channels for c in enc_convs] == [64] * 2 + [128] * 2 + [256] * 3 + [512] * 6
    assert all(c.kernel_size == (3, 3) for c in enc_convs)
    pools = [m for m in model.encoder.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 5 and all(p.return_indices for p in pools)
    unpools = [m for m in model.decoder.modules() if isinstance(m, nn.MaxUnpool2d)]
    assert len(unpools) == 5
    dec_convs = [m for m in model.decoder.modules() if isinstance(m, nn.Conv2d)] + [model.head]
    assert len(dec_convs) == 13
    # No skip concatenation: each decoder stage sees exactly the channels of the stage below it.
    for block, c in zip(model.decoder.blocks, reversed(model.encoder.out_channels)):
        assert block.convs[0].conv.in_channels == c


def test_segnet_decoder_unpools_with_the_matching_encoder_indices():
    torch.manual_seed(0)
    model = create_model("segnet", width=4).eval()
    pre_pool, unpool_in, unpool_out = {}, {}, {}
    for i, stage in enumerate(model.encoder.stages):
        stage.pool.register_forward_hook(lambda m, inp, out, i=i: pre_pool.__setitem__(i, inp[0]))

    def record(i: int):
        def hook(module, inp, out) -> None:
            unpool_in[i], unpool_out[i] = inp[0], out

        return hook

    for i, block in enumerate(model.decoder.blocks):
        block.unpool.register_forward_hook(record(i))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))

    for i in range(5):
        enc = pre_pool[4 - i].numpy()  # decoder block i pairs with encoder stage 4 − i
        values, out = unpool_in[i].numpy(), unpool_out[i].numpy()
        n, c, h, w = enc.shape
        windows = (
            enc.reshape(n, c, h // 2, 2, w // 2, 2)
            .transpose(0, 1, 2, 4, 3, 5)
            .reshape(n, c, h // 2, w // 2, 4)
        )
        placed = (
            out.reshape(n, c, h // 2, 2, w // 2, 2)
            .transpose(0, 1, 2, 4, 3, 5)
            .reshape(n, c, h // 2, w // 2, 4)
        )
        unique = (windows == windows.max(-1, keepdims=True)).sum(-1) == 1
        assert unique.mean() > 0.5  # enough windows with one clear maximum to test
        argmax = windows.argmax(-1)
        got = np.take_along_axis(placed, argmax[..., None], -1)[..., 0]
        np.testing.assert_array_equal(got[unique], values[unique])
        others = placed.copy()
        np.put_along_axis(others, argmax[..., None], 0.0, -1)
        assert not others[unique].any()


# --- DeepLabV3+ ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("output_stride", "rates"), [(16, [6, 12, 18]), (8, [12, 24, 36])])
def test_deeplab_output_stride_atrous_rates_and_low_level_fusion(output_stride, rates):
    model = create_model("deeplabv3plus", width=8, encoder_depth=18, output_stride=output_stride).eval()
    assert model.size_divisor == output_stride
    assert [b.conv.dilation[0] for b in model.decoder.aspp.branches[1:4]] == rates
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = model.encoder(x)
    assert feats[-1].shape[2] == 64 // output_stride  # atrous: the deepest map keeps this resolution
    assert feats[1].shape[2] == 64 // 4  # the low-level (stride-4) features the decoder fuses
    assert model.decoder.low_level.conv.in_channels == model.encoder.out_channels[1]


def test_deeplab_full_size_channels():
    model = meta("deeplabv3plus")
    assert model.decoder.low_level.conv.out_channels == 48
    assert model.decoder.aspp.branches[0].conv.out_channels == 256
    assert model.decoder.blocks[0].conv.in_channels == 256 + 48
    assert len(model.decoder.blocks) == 2 and all(b.conv.kernel_size == (3, 3) for b in model.decoder.blocks)


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_deeplab_encoder_depths(depth):
    model = meta("deeplabv3plus", encoder_depth=depth)
    assert model.encoder.depth == depth
    assert model.decoder.aspp.branches[0].conv.in_channels == (512 if depth < 50 else 2048)


# --- PSPNet ----------------------------------------------------------------------------------------


def test_pspnet_dilated_encoder_pyramid_and_aux_head():
    model = create_model("pspnet", width=8, encoder_depth=18, aux=True)
    assert model.size_divisor == 8
    assert model.decoder.ppm.bins == (1, 2, 3, 6)
    assert model.aux_head.block.conv.in_channels == model.encoder.out_channels[3]
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        feats = model.encoder(x)
        y = model(x)
    assert [f.shape[2] for f in feats] == [32, 16, 8, 8, 8]  # stages 3 and 4 dilated, not strided
    assert isinstance(y, torch.Tensor) and y.shape == (2, 1, 64, 64)
    without = create_model("pspnet", width=8, encoder_depth=18)
    assert without.aux_head is None
    assert count_parameters(model) - count_parameters(without) == count_parameters(model.aux_head)


def test_resnet_dilation_follows_the_output_stride():
    enc = ResNetEncoder(50, width=8, output_stride=8)
    s3, s4 = enc.stages[3].blocks, enc.stages[4].blocks
    # First block of a dilated stage keeps the previous dilation, later blocks take the new one.
    assert [b.conv2.dilation[0] for b in s3] == [1] + [2] * (len(s3) - 1)
    assert [b.conv2.dilation[0] for b in s4] == [2] + [4] * (len(s4) - 1)
    assert all(b.conv2.stride == (1, 1) for b in list(s3) + list(s4))


# --- sizes against the published backbones ---------------------------------------------------------


@pytest.mark.parametrize(
    ("depth", "torchvision_total"),
    # torchvision.models.resnetXX() parameter counts (ImageNet, 1000 classes)
    [(18, 11_689_512), (34, 21_797_672), (50, 25_557_032), (101, 44_549_160)],
)
def test_resnet_encoder_matches_torchvision_resnet_without_classifier(depth, torchvision_total):
    with torch.device("meta"):
        enc = ResNetEncoder(depth, in_channels=3, width=64, output_stride=16)
    fc = (512 if depth < 50 else 2048) * 1000 + 1000
    assert count_parameters(enc) == torchvision_total - fc


def test_segnet_encoder_matches_torchvision_vgg16_bn_features():
    # torchvision.models.vgg16_bn().features has 14,723,136 parameters; its 13 convolutions carry
    # biases (4,224 in all) that ours drop because batch norm follows each of them.
    enc = meta("segnet").encoder
    conv_biases = sum(m.out_channels for m in enc.modules() if isinstance(m, nn.Conv2d))
    assert conv_biases == 4_224
    assert count_parameters(enc) + conv_biases == 14_723_136

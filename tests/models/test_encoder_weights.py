"""Loading encoder weights from a local file: our layout, torchvision's layout, clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from brainseg.errors import BrainsegError
from brainseg.models import create_model, load_encoder_weights


def assert_encoders_equal(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.encoder.state_dict(), b.encoder.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("segnet", {"width": 4}),
        ("deeplabv3plus", {"width": 8, "encoder_depth": 18}),
        ("pspnet", {"width": 8, "encoder_depth": 18}),
        ("unet", {"width": 4}),
    ],
)
def test_own_layout_round_trip(tmp_path, name, kwargs):
    torch.manual_seed(0)
    src = create_model(name, **kwargs)
    path = tmp_path / "encoder.pt"
    torch.save(src.encoder.state_dict(), path)
    torch.manual_seed(1)
    dst = create_model(name, encoder_weights=str(path), **kwargs)
    assert_encoders_equal(src, dst)
    assert "encoder_weights" not in dst.config  # rebuilding a checkpoint must not need the file

    # A whole-model state dict, wrapped as checkpoints often are, works too.
    torch.save({"state_dict": src.state_dict()}, path)
    torch.manual_seed(2)
    other = create_model(name, **kwargs)
    load_encoder_weights(other, path)
    assert_encoders_equal(src, other)


def test_mismatch_names_the_file_and_the_keys(tmp_path):
    path = tmp_path / "wide.pt"
    torch.save(create_model("deeplabv3plus", width=16, encoder_depth=18).encoder.state_dict(), path)
    with pytest.raises(BrainsegError) as err:
        create_model("deeplabv3plus", width=8, encoder_depth=18, encoder_weights=str(path))
    msg = str(err.value)
    assert str(path) in msg and "stages.0.conv.weight" in msg and "shape" in msg

    torch.save(create_model("deeplabv3plus", width=8, encoder_depth=34).encoder.state_dict(), path)
    with pytest.raises(BrainsegError, match=r"unexpected key\(s\), first: stages\.1\.blocks\.2\."):
        create_model("deeplabv3plus", width=8, encoder_depth=18, encoder_weights=str(path))


def test_missing_or_unreadable_file(tmp_path):
    with pytest.raises(BrainsegError, match="does not exist"):
        create_model("segnet", width=4, encoder_weights=str(tmp_path / "nope.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(BrainsegError, match=str(bad)):
        create_model("segnet", width=4, encoder_weights=str(bad))
    torch.save([1, 2, 3], bad)
    with pytest.raises(BrainsegError, match="state dict"):
        create_model("segnet", width=4, encoder_weights=str(bad))


# --- torchvision layouts, written out here from torchvision's published architectures ----------


def torchvision_resnet18_state_dict(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Keys and shapes of torchvision.models.resnet18().state_dict(), with random values."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix: str, c: int) -> None:
        for k in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{k}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    bn("bn1", 64)
    cin = 64
    for layer, c in enumerate((64, 128, 256, 512), start=1):
        for b in range(2):
            p = f"layer{layer}.{b}"
            shapes[f"{p}.conv1.weight"] = (c, cin if b == 0 else c, 3, 3)
            bn(f"{p}.bn1", c)
            shapes[f"{p}.conv2.weight"] = (c, c, 3, 3)
            bn(f"{p}.bn2", c)
            if b == 0 and layer > 1:
                shapes[f"{p}.downsample.0.weight"] = (c, cin, 1, 1)
                bn(f"{p}.downsample.1", c)
        cin = c
    shapes["fc.weight"], shapes["fc.bias"] = (1000, 512), (1000,)
    out = {}
    for k, s in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            out[k] = torch.rand(s, generator=generator) + 0.5
        else:
            out[k] = torch.randn(s, generator=generator)
    return out


@pytest.mark.parametrize("in_channels", [3, 1])
def test_torchvision_resnet_layout_loads(tmp_path, in_channels):
    sd = torchvision_resnet18_state_dict(torch.Generator().manual_seed(0))
    path = tmp_path / "resnet18.pth"
    torch.save(sd, path)
    model = create_model("pspnet", in_channels=in_channels, encoder_depth=18, encoder_weights=str(path))
    enc = model.encoder
    stem = sd["conv1.weight"] if in_channels == 3 else sd["conv1.weight"].sum(1, keepdim=True)
    assert torch.equal(enc.stages[0].conv.weight, stem)
    assert torch.equal(enc.stages[0].bn.running_var, sd["bn1.running_var"])
    assert torch.equal(enc.stages[3].blocks[0].downsample[0].weight, sd["layer3.0.downsample.0.weight"])
    assert torch.equal(enc.stages[4].blocks[1].bn2.bias, sd["layer4.1.bn2.bias"])
    assert torch.equal(enc.stages[1].blocks[1].conv1.weight, sd["layer1.1.conv1.weight"])


def test_grey_stem_sees_a_grey_image_as_the_rgb_stem_sees_it_repeated(tmp_path):
    sd = torchvision_resnet18_state_dict(torch.Generator().manual_seed(0))
    path = tmp_path / "resnet18.pth"
    torch.save(sd, path)
    model = create_model("deeplabv3plus", in_channels=1, encoder_depth=18, encoder_weights=str(path))
    x = torch.randn(1, 1, 32, 32)
    ours = model.encoder.stages[0].conv(x)
    rgb = F.conv2d(x.repeat(1, 3, 1, 1), sd["conv1.weight"], stride=2, padding=3)
    torch.testing.assert_close(ours, rgb, rtol=1e-4, atol=1e-4)


def torchvision_vgg16_bn_features() -> nn.Sequential:
    """torchvision's `vgg16_bn().features`: configuration D, conv (with bias) → BN → ReLU, max-pools."""
    layers: list[nn.Module] = []
    cin = 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            cin = v
    return nn.Sequential(*layers)


def test_torchvision_vgg16_bn_layout_loads_with_conv_biases_folded(tmp_path):
    torch.manual_seed(0)
    features = torchvision_vgg16_bn_features()
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.bias, std=0.5)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            nn.init.normal_(m.bias)
    sd = {f"features.{k}": v for k, v in features.state_dict().items()}
    sd["classifier.0.weight"] = torch.zeros(4, 4)  # ignored, as the classifier is not used
    path = tmp_path / "vgg16_bn.pth"
    torch.save(sd, path)
    model = create_model("segnet", encoder_weights=str(path)).eval()
    features.eval()

    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = features(x)
        y, indices = model.encoder(x)
    assert len(indices) == 5
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4)
    assert model.encoder.stages[4].convs[2].conv.bias is None

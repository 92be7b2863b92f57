"""Reference figures shared by the model tests."""

from __future__ import annotations

# The architectures issue 3 asks for; the registry may hold more.
FIVE = ("unet", "attention_unet", "segnet", "deeplabv3plus", "pspnet")

# Parameters at the default (full) width, 3 input channels, 1 output channel.
PINNED_PARAMS = {
    # Buda et al.'s reference UNet (mateuszbuda/brain-segmentation-pytorch, init_features=32)
    # has 7,763,041 parameters; ours is layer for layer the same network.
    "unet": 7_763_041,
    # The UNet plus four additive gates (their parameters are checked separately).
    "attention_unet": 8_024_645,
    # VGG16-BN encoder (torchvision's vgg16_bn features less their 4,224 conv biases) and the
    # mirrored decoder; Badrinarayanan et al. report 29.5M.
    "segnet": 29_435_649,
    # ResNet-34 encoder (torchvision's resnet34 less its classifier) + ASPP + decoder.
    "deeplabv3plus": 26_711_201,
    # ResNet-34 encoder + pyramid pooling + head (no auxiliary head).
    "pspnet": 26_267_969,
}

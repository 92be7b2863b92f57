"""Tests generated from the model registry: every registered architecture gets all of them.

A newly registered model is covered without new test code; it only needs a parameter pin in
`helpers_models.PINNED_PARAMS` (the failure message prints the number to pin once it has been
checked).
Models run at tiny widths on 64×64 inputs to keep the file fast.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers_models import FIVE, PINNED_PARAMS
from torch import nn

from brainseg.errors import BrainsegError
from brainseg.models import (
    SegmentationModel,
    count_parameters,
    create_model,
    get_model_class,
    list_models,
    model_arguments,
    register_model,
    registry,
)

SIZE = 64

# Extra configurations that change the forward path (tested like separate models).
VARIANTS = {
    "deeplabv3plus": [{"output_stride": 8}],
    "pspnet": [{"aux": True}],
    "unet": [{"deep_supervision": True}],
}


def tiny_kwargs(name: str) -> dict:
    """A small width (1/8 of the default) and the shallowest encoder, for quick CPU tests."""
    kwargs: dict = {"width": max(2, get_model_class(name).default_width // 8)}
    if "encoder_depth" in model_arguments(name):
        kwargs["encoder_depth"] = 18
    return kwargs


CASES = [(name, {}) for name in list_models()] + [
    (name, extra) for name, extras in VARIANTS.items() if name in list_models() for extra in extras
]
CASE_IDS = [name + "".join(f"-{k}={v}" for k, v in extra.items()) for name, extra in CASES]


def build(name: str, extra: dict, **kwargs) -> SegmentationModel:
    torch.manual_seed(0)
    return create_model(name, **{**tiny_kwargs(name), **extra, **kwargs})


def logits_of(y: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
    return y["out"] if isinstance(y, dict) else y


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------


def test_registry_holds_the_five_architectures():
    assert set(FIVE) <= set(list_models())


def test_decorator_registers_a_new_model_for_create_model():
    @register_model("tiny_identity")
    class TinyIdentity(SegmentationModel):
        default_width = 4

        def __init__(self, in_channels=3, out_channels=1, width=None, scale: float = 1.0):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, out_channels, 1)
            self._set_config(in_channels=in_channels, out_channels=out_channels, width=width, scale=scale)

        @property
        def size_divisor(self) -> int:
            return 1

    try:
        assert TinyIdentity.name == "tiny_identity"
        assert list_models()[-1] == "tiny_identity"
        model = create_model("tiny_identity", in_channels=1, scale=2.0)
        assert isinstance(model, TinyIdentity)
        expected = {"name": "tiny_identity", "in_channels": 1, "out_channels": 1, "width": None}
        assert model.config == {**expected, "scale": 2.0}
        with pytest.raises(BrainsegError, match="scale"):
            create_model("tiny_identity", shift=1)
    finally:
        registry._REGISTRY.pop("tiny_identity", None)
    assert "tiny_identity" not in list_models()


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(BrainsegError) as err:
        create_model("vnet")
    assert "vnet" in str(err.value)
    for name in list_models():
        assert name in str(err.value)


def test_duplicate_registration_raises():
    class Another(SegmentationModel):
        pass

    with pytest.raises(BrainsegError, match="already registered") as err:
        register_model("unet")(Another)
    for name in list_models():
        assert name in str(err.value)
    assert get_model_class("unet").__name__ == "UNet"


@pytest.mark.parametrize("bad", ["UNet", "u net", ""])
def test_badly_formed_names_are_refused(bad):
    class Another(SegmentationModel):
        pass

    with pytest.raises(BrainsegError, match="lower-case"):
        register_model(bad)(Another)
    assert bad not in list_models()


def test_unknown_option_raises_with_the_known_options():
    with pytest.raises(BrainsegError, match="encoder_depth"):
        create_model("unet", encoder_depth=50)


@pytest.mark.parametrize("name", list_models())
def test_bad_width_and_channels_raise(name):
    with pytest.raises(BrainsegError, match="width"):
        create_model(name, width=0)
    with pytest.raises(BrainsegError, match="in_channels"):
        create_model(name, in_channels=0)


# --------------------------------------------------------------------------------------------
# behaviour of every model
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize(("name", "extra"), CASES, ids=CASE_IDS)
def test_output_shape_dtype_and_logits(name, extra, in_channels):
    model = build(name, extra, in_channels=in_channels, out_channels=2).eval()
    x = torch.randn(2, in_channels, SIZE, SIZE)
    with torch.no_grad():
        y = model(x)
    assert isinstance(y, torch.Tensor), "eval mode returns a plain tensor"
    assert y.shape == (2, 2, SIZE, SIZE)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()
    # Logits, not probabilities: a sigmoid or softmax output could not be negative.
    assert (y < 0).any() and (y > 0).any()


@pytest.mark.parametrize(("name", "extra"), CASES, ids=CASE_IDS)
def test_gradients_reach_every_parameter(name, extra):
    model = build(name, extra).train()
    x = torch.randn(2, 3, SIZE, SIZE)
    target = (torch.rand(2, 1, SIZE, SIZE) > 0.7).float()
    y = model(x)
    if isinstance(y, dict):  # PSPNet with aux=True, U-Net with deep supervision: the trainer's weighting
        assert set(y) == {"out", "aux"}
        aux = y["aux"] if isinstance(y["aux"], list) else [y["aux"]]
        assert all(a.shape == y["out"].shape for a in aux)
        loss = F.binary_cross_entropy_with_logits(y["out"], target) + sum(
            0.4 / 2**k * F.binary_cross_entropy_with_logits(a, target) for k, a in enumerate(aux)
        )
    else:
        loss = F.binary_cross_entropy_with_logits(y, target)
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"no gradient reaches {dead[:5]}"


@pytest.mark.parametrize(("name", "extra"), CASES, ids=CASE_IDS)
def test_eval_mode_is_deterministic(name, extra):
    model = build(name, extra)
    model.train()
    model(torch.randn(2, 3, SIZE, SIZE))  # move batch-norm running statistics off their init
    model.eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a, b)


@pytest.mark.parametrize(("name", "extra"), CASES, ids=CASE_IDS)
def test_state_dict_round_trip_through_config(name, extra):
    model = build(name, extra)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, SIZE, SIZE))  # non-trivial running statistics
    config = json.loads(json.dumps(model.config))  # a checkpoint stores it as JSON
    assert config["name"] == name
    torch.manual_seed(123)  # different init: equality below must come from the state dict
    rebuilt = create_model(**config)
    assert rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 3, SIZE, SIZE)
    model.eval()
    rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


@pytest.mark.parametrize(("name", "extra"), CASES, ids=CASE_IDS)
def test_cpu_layout_changes_speed_only(name, extra):
    """NCHW and channels-last runs of one model: same logits and gradients, standard-layout output,
    and weights that load across layouts."""
    model = build(name, extra)
    assert all(p.is_contiguous(memory_format=torch.channels_last if model.cpu_channels_last
                                else torch.contiguous_format) for p in model.parameters() if p.ndim == 4)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, SIZE, SIZE))  # non-trivial running statistics
    nchw = create_model(**model.config).set_cpu_layout(False)
    cl = create_model(**model.config).set_cpu_layout(True)
    nchw.load_state_dict(model.state_dict())
    cl.load_state_dict(model.state_dict())
    assert any(p.ndim == 4 and not p.is_contiguous() for p in cl.parameters())  # the layout survives loading
    x = torch.randn(2, 3, SIZE, SIZE)
    outs, grads = [], []
    for m in (nchw, cl):
        m.eval()
        y = logits_of(m(x.clone().requires_grad_()))
        assert y.is_contiguous()
        y.square().mean().backward()
        outs.append(y.detach())
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]))
    # the same sums in another order: float32 rounding, relative to each tensor's scale
    assert (outs[0] - outs[1]).abs().max() <= 1e-5 * outs[0].abs().max()
    assert (grads[0] - grads[1]).abs().max() <= 1e-3 * grads[0].abs().max()
    assert torch.equal(cl.state_dict()[next(iter(cl.state_dict()))],
                       nchw.state_dict()[next(iter(nchw.state_dict()))])


@pytest.mark.parametrize("name", list_models())
def test_weight_layout_follows_the_device(name):
    """The CPU layout choice applies on a CPU only; another device ("meta" here, no GPU needed)
    gets NCHW weights unless channels-last is asked for everywhere; moving back restores it."""
    def layout(m):
        w = [p for p in m.parameters() if p.ndim == 4]
        if all(p.is_contiguous() for p in w):
            return "nchw"
        assert all(p.is_contiguous(memory_format=torch.channels_last) for p in w)
        return "cl"

    model = build(name, {})
    cpu = "cl" if type(model).cpu_channels_last else "nchw"
    assert layout(model) == cpu
    assert layout(model.to("meta")) == "nchw"
    assert layout(model.to_empty(device="cpu")) == cpu  # (meta holds no values to copy back)
    model.channels_last_everywhere = True
    assert layout(model.to("meta")) == "cl"
    assert layout(model.set_cpu_layout(False).to_empty(device="cpu")) == "cl"  # forced wins on CPU too


@pytest.mark.parametrize(("name", "extra"), CASES, ids=CASE_IDS)
def test_bad_input_size_names_the_nearest_valid_size(name, extra):
    model = build(name, extra).eval()
    d = model.size_divisor
    h, w = 2 * d + 3, 3 * d - 2  # nearest multiples: 2d and 3d
    with pytest.raises(BrainsegError) as err:
        model(torch.randn(1, 3, h, w))
    assert f"{2 * d}×{3 * d}" in str(err.value)
    assert f"{h}×{w}" in str(err.value)
    with pytest.raises(BrainsegError, match="nearest valid size"):
        model.check_input_size(d // 2, d)
    model.check_input_size(d, 2 * d)  # valid sizes pass


@pytest.mark.parametrize("name", list_models())
def test_wrong_channel_count_or_rank_raises(name):
    model = build(name, {}).eval()
    with pytest.raises(BrainsegError, match="input channel"):
        model(torch.randn(1, 1, SIZE, SIZE))
    with pytest.raises(BrainsegError, match=r"\(N, C, H, W\)"):
        model(torch.randn(3, SIZE, SIZE))


# --------------------------------------------------------------------------------------------
# sizes: pinned parameter counts, width scaling (models built on the meta device: no memory)
# --------------------------------------------------------------------------------------------


def meta_params(name: str, **kwargs) -> int:
    with torch.device("meta"):
        return count_parameters(create_model(name, **kwargs))


@pytest.mark.parametrize("name", list_models())
def test_parameter_count_is_pinned(name):
    n = meta_params(name)
    assert name in PINNED_PARAMS, f"pin the parameter count of {name!r} in PINNED_PARAMS: {n:_}"
    assert n == PINNED_PARAMS[name]


@pytest.mark.parametrize("name", list_models())
def test_one_channel_input_changes_only_the_first_convolution(name):
    with torch.device("meta"):
        model = create_model(name)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    per_input_channel = first.weight.numel() // first.in_channels
    assert meta_params(name) - meta_params(name, in_channels=1) == 2 * per_input_channel


@pytest.mark.parametrize("name", list_models())
def test_width_scales_parameters_quadratically(name):
    default = get_model_class(name).default_width
    full, half = meta_params(name), meta_params(name, width=default // 2)
    # Convolution weights scale with width² (c_in·c_out), so halving the width leaves ~1/4.
    assert 0.2 < half / full < 0.3
    assert meta_params(name, width=default // 4) < half

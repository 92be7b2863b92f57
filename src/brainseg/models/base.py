"""What every brainseg architecture shares: the encoder → decoder → head skeleton and its checks.

A model is a small composition (`encoder`, `decoder`, `head`) that returns logits. This base
class holds the constructor and forward pass every architecture repeats (check the channels,
resolve the width, build the parts, initialise the weights, record the config, load encoder
weights; check the input, encode, decode, classify, upsample, hand back logits), the way
segmentation_models_pytorch's ``SegmentationModel`` does, so an architecture file holds only its
parts and its paper. It adds what the rest of the program relies on without knowing the
architecture:

* `size_divisor` and `check_input_size`, so a wrong slice size fails with the nearest valid
  size instead of a shape error deep inside torch;
* `config`, the exact keyword arguments that rebuild the model with `create_model(**config)`
  (a checkpoint stores it next to the state dict);
* the memory layout its convolutions run in on a CPU (`cpu_channels_last`), chosen per
  architecture from measurements (`benchmarks/models_speed.py`), invisible to callers.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from brainseg.errors import BrainsegError


def _nearest_multiple(n: int, d: int) -> int:
    """The multiple of `d` closest to `n` (ties go up), never below `d`."""
    return max(d, ((n + d // 2) // d) * d)


def _is_tracing() -> bool:
    """True while torch.compile, torch.export/ONNX or the JIT tracer records the forward.

    The input checks below use Python `if`s on the input shape; under tracing they would
    specialise the graph to one size, so they are left out there (the eager model has run
    them before anyone exports it).
    """
    return bool(torch.jit.is_tracing() or torch.compiler.is_compiling())


class SegmentationModel(nn.Module):
    """Base class of the registered architectures (see `brainseg.models.registry`).

    Subclasses set the class attributes below and implement `build` (create `encoder`,
    `decoder`, `head`); the constructor's arguments are in_channels, out_channels, width and
    encoder_weights, and a subclass with options of its own declares them in an ``__init__``
    that passes them on as ``super().__init__(in_channels, out_channels, width,
    encoder_weights, **options)``. They override `decode` when the decoder does not take the
    encoder's output as it is, and `outputs` for extra outputs. A subclass without `build`
    constructs itself after a bare ``super().__init__()`` and calls `_set_config`.

    Args (every architecture's first four):
        in_channels: input channels (1: FLAIR, or 3: pre-contrast, FLAIR, post-contrast).
        out_channels: output channels (logits).
        width: base feature width; None → the architecture's `default_width` (full size).
        encoder_weights: optional local state-dict file for the encoder (see
            `brainseg.models.load_encoder_weights`; our layout or torchvision's where noted).

    Attributes:
        name: registry name (set by `register_model`).
        default_width: the base feature width used when `width=None` (full size).
        paper: short citation of the paper the architecture follows.
        cpu_channels_last: on a CPU, run the forward pass in channels-last (NHWC) layout: oneDNN's
            NHWC convolutions and pooling are faster for some architectures and slower for others,
            so each sets this from `benchmarks/models_speed.py --layouts`. Inputs and logits keep
            the caller's layout; on other devices (not measured) weights are kept NCHW unless
            `channels_last_everywhere` is set (`train.channels_last`). Moving the model (`.to`)
            re-applies the rule, so the weights' layout always matches their device.
        upsample_logits: resize the head's logits bilinearly to the input size (models whose
            decoder ends at a fraction of it).
        training_defaults: constructor options `brainseg train` uses for this architecture unless
            the run's `model.kwargs` say otherwise (its paper's training protocol).
        config: the exact keyword arguments that rebuild this model (`name` included). An
            ``encoder_weights`` file is not recorded: the model's state dict already holds those
            weights, and rebuilding a checkpoint must not depend on a file on the training machine.
    """

    name: ClassVar[str] = ""
    default_width: ClassVar[int] = 0
    paper: ClassVar[str] = ""
    cpu_channels_last: ClassVar[bool] = False
    upsample_logits: ClassVar[bool] = False
    training_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        width: int | None = None,
        encoder_weights: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        self.config: dict[str, Any] = {}
        self.channels_last_everywhere = False
        self.in_channels = 0
        self.out_channels = 0
        if type(self).build is SegmentationModel.build:
            return  # a subclass that builds itself (and calls `_set_config`)
        from brainseg.models.blocks import init_weights
        from brainseg.models.utils import load_encoder_weights

        check_channels(self.name, in_channels, out_channels)
        width = self._resolve_width(width, self.default_width, self.name)
        recorded = self.build(in_channels, out_channels, width, **options)
        init_weights(self)
        self._set_config(in_channels=in_channels, out_channels=out_channels, width=width, **recorded)
        if encoder_weights:
            load_encoder_weights(self, encoder_weights)

    # -- the skeleton ----------------------------------------------------------------------
    def build(self, in_channels: int, out_channels: int, width: int, **options: Any) -> dict[str, Any]:
        """Create `encoder`, `decoder` and `head`; return the options to record in `config`."""
        raise NotImplementedError

    def decode(self, features: Any) -> torch.Tensor:
        """The decoder's output from the encoder's (default: the decoder applied to it as it is)."""
        return self.decoder(features)

    def outputs(self, logits: torch.Tensor, features: Any, x: torch.Tensor) -> Any:
        """What `forward` returns, given the logits at input size (default: the logits alone)."""
        return self._output(logits)

    def forward(self, x: torch.Tensor) -> Any:
        x = self._prepare_input(x)
        features = self.encoder(x)
        logits = self.head(self.decode(features))
        if self.upsample_logits:
            logits = F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)
        return self.outputs(logits, features, x)

    # -- construction record -------------------------------------------------------------
    def _set_config(self, **kwargs: Any) -> None:
        """Record the constructor arguments (resolved, e.g. width=None → the default width).

        Called once every layer exists: it also puts the weights in the model's CPU layout.
        """
        self.config = {"name": type(self).name, **kwargs}
        self.in_channels = int(kwargs["in_channels"])
        self.out_channels = int(kwargs["out_channels"])
        self.set_cpu_layout(type(self).cpu_channels_last)

    def set_cpu_layout(self, channels_last: bool) -> SegmentationModel:
        """Run this model's CPU forward in channels-last (True) or NCHW layout, weights included.

        Weights keep their layout through `load_state_dict`; state dicts and checkpoints hold the
        same values either way.
        """
        self.cpu_channels_last = bool(channels_last)
        self._match_layout()
        return self

    def _channels_last_on(self, device: torch.device) -> bool:
        return self.channels_last_everywhere or (device.type == "cpu" and self.cpu_channels_last)

    def _match_layout(self) -> None:
        """Put the 4-D weights in the layout this model runs in on their current device."""
        first = next(self.parameters(), None)
        if first is None:
            return
        fmt = torch.channels_last if self._channels_last_on(first.device) else torch.contiguous_format
        if any(p.ndim == 4 and not p.is_contiguous(memory_format=fmt) for p in self.parameters()):
            super()._apply(lambda t: t.contiguous(memory_format=fmt) if t.ndim == 4 else t)

    def _apply(self, fn: Any, recurse: bool = True) -> SegmentationModel:
        """`.to()`, `.cuda()`, … and then the layout rule for the device the weights are now on."""
        super()._apply(fn, recurse)
        self._match_layout()
        return self

    # -- input checks --------------------------------------------------------------------
    @property
    def size_divisor(self) -> int:
        """Height and width of the input must be multiples of this."""
        raise NotImplementedError

    def check_input_size(self, h: int, w: int) -> None:
        """Raise `BrainsegError` naming the nearest valid size when h×w cannot be taken."""
        d = self.size_divisor
        if h >= d and w >= d and h % d == 0 and w % d == 0:
            return
        raise BrainsegError(
            f"{self.name}: input size {h}×{w} cannot be used; height and width must be "
            f"positive multiples of {d} (nearest valid size: "
            f"{_nearest_multiple(h, d)}×{_nearest_multiple(w, d)})"
        )

    def _check_input(self, x: torch.Tensor) -> None:
        if _is_tracing():
            return
        if x.ndim != 4:
            raise BrainsegError(f"{self.name}: expected an input of shape (N, C, H, W), got {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise BrainsegError(
                f"{self.name}: built for {self.in_channels} input channel(s), got an input with "
                f"{x.shape[1]} (shape {tuple(x.shape)})"
            )
        self.check_input_size(int(x.shape[2]), int(x.shape[3]))

    def _prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """Check `x` (see `_check_input`) and return it in the layout this model runs in."""
        self._check_input(x)
        if self._channels_last_on(x.device) and not _is_tracing():
            return x.contiguous(memory_format=torch.channels_last)
        return x

    @staticmethod
    def _output(y: torch.Tensor) -> torch.Tensor:
        """Logits in the standard (NCHW-contiguous) layout, whatever layout the model ran in."""
        return y if _is_tracing() else y.contiguous()

    # -- helpers for subclasses ----------------------------------------------------------
    @staticmethod
    def _resolve_width(width: int | None, default: int, name: str) -> int:
        if width is None:
            return default
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise BrainsegError(f"{name}: width must be a positive integer, got {width!r}")
        return width


def check_channels(name: str, in_channels: int, out_channels: int) -> None:
    """Fail fast on channel counts that are not positive integers."""
    for label, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BrainsegError(f"{name}: {label} must be a positive integer, got {value!r}")


def scaled(channels: int, width: int, base: int) -> int:
    """`channels` of the full-size design scaled by width/base (at least 1)."""
    return max(1, (channels * width) // base)

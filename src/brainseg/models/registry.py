"""The model registry: one decorator next to each definition, one factory for everyone else.

As in timm, an architecture registers itself with ``@register_model`` where it is defined, and the
rest of the program (trainer, checkpoint loader, CLI, tests) only ever calls
``create_model(name, **kwargs)``. Tests are generated from ``list_models()``, so a newly
registered model is tested without new test code.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar, overload

from brainseg.errors import BrainsegError
from brainseg.models.base import SegmentationModel, check_channels

_REGISTRY: dict[str, type[SegmentationModel]] = {}

M = TypeVar("M", bound=type[SegmentationModel])


@overload
def register_model(arg: M) -> M: ...
@overload
def register_model(arg: str) -> Callable[[M], M]: ...


def register_model(arg: M | str) -> M | Callable[[M], M]:
    """Class decorator adding a `SegmentationModel` subclass to the registry.

    Use ``@register_model("unet")`` (sets the class's `name`) or plain ``@register_model`` on a
    class that already defines `name`. A name registered twice raises `BrainsegError`.
    """

    def _register(cls: M, name: str) -> M:
        if not (isinstance(cls, type) and issubclass(cls, SegmentationModel)):
            raise BrainsegError(f"register_model: {cls!r} is not a SegmentationModel subclass")
        if not name or name != name.lower() or " " in name:
            raise BrainsegError(f"register_model: model names are lower-case words, got {name!r}")
        if name in _REGISTRY:
            raise BrainsegError(
                f"register_model: a model named {name!r} is already registered "
                f"({_REGISTRY[name].__module__}.{_REGISTRY[name].__qualname__}); known: {list_models()}"
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    if isinstance(arg, str):
        return lambda cls: _register(cls, arg)
    return _register(arg, arg.name)


def list_models() -> list[str]:
    """Names of the registered architectures, in registration order."""
    return list(_REGISTRY)


def get_model_class(name: str) -> type[SegmentationModel]:
    """The registered class for `name`; unknown names raise with the list of known ones."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise BrainsegError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def model_arguments(name: str) -> dict[str, Any]:
    """Constructor arguments of model `name` with their defaults (for help texts and checks)."""
    sig = inspect.signature(get_model_class(name).__init__)
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def create_model(
    name: str,
    *,
    in_channels: int = 3,
    out_channels: int = 1,
    width: int | None = None,
    **kwargs: Any,
) -> SegmentationModel:
    """Build a registered architecture; it returns logits of shape (N, out_channels, H, W).

    Args:
        name: one of `list_models()`.
        in_channels: input channels (3 for the LGG pre-contrast/FLAIR/post-contrast stack, 1 for
            FLAIR only).
        out_channels: output channels (1 for binary tumour segmentation).
        width: base feature width; None → the architecture's full-size default.
        **kwargs: architecture-specific options (see each class, or `brainseg models`).

    Returns:
        The model; ``model.config`` rebuilds it: ``create_model(**model.config)``.

    Raises:
        BrainsegError: unknown name, unknown option or bad value.
    """
    cls = get_model_class(name)
    check_channels(name, in_channels, out_channels)
    known = model_arguments(name)
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise BrainsegError(
            f"model {name!r} has no option(s) {', '.join(map(repr, unknown))}; its options: "
            f"{', '.join(f'{k}={v!r}' for k, v in known.items())}"
        )
    return cls(in_channels=in_channels, out_channels=out_channels, width=width, **kwargs)

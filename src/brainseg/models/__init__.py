"""The five segmentation architectures behind one registry.

>>> from brainseg.models import create_model, list_models
>>> model = create_model("unet", in_channels=3, out_channels=1, width=32)

Every model returns logits of shape (N, out_channels, H, W) (PSPNet with ``aux=True`` returns
``{"out", "aux"}`` in training mode), exposes ``size_divisor``/``check_input_size`` and records
its constructor arguments in ``model.config`` so that ``create_model(**model.config)`` rebuilds it.
"""

from __future__ import annotations

import importlib

from brainseg.models.base import SegmentationModel
from brainseg.models.registry import (
    create_model,
    get_model_class,
    list_models,
    model_arguments,
    register_model,
)
from brainseg.models.utils import count_flops, count_parameters, load_encoder_weights

# Importing an architecture module registers it; this order is the order `list_models()` reports
# (the papers' chronology within each family).
ARCHITECTURE_MODULES = ("unet", "attention_unet", "segnet", "deeplabv3plus", "pspnet")
for _module in ARCHITECTURE_MODULES:
    importlib.import_module(f"brainseg.models.{_module}")

__all__ = [
    "SegmentationModel",
    "count_flops",
    "count_parameters",
    "create_model",
    "get_model_class",
    "list_models",
    "load_encoder_weights",
    "model_arguments",
    "register_model",
]

"""brainseg: train, compare and use brain-tumour segmentation models on MRI slices."""

from __future__ import annotations

__version__ = "0.1.0"

"""Use trained models on new scans: find inputs, read them, predict, write results in their own form."""

from __future__ import annotations

from brainseg.inference.inputs import Case, InputSet, discover_inputs
from brainseg.inference.pipeline import VOLUME_COLUMNS, predict_path
from brainseg.inference.postprocess import binarize
from brainseg.inference.readers import read_case, read_nifti, read_slice_file

__all__ = [
    "VOLUME_COLUMNS",
    "Case",
    "InputSet",
    "binarize",
    "discover_inputs",
    "predict_path",
    "read_case",
    "read_nifti",
    "read_slice_file",
]

"""Write a predicted mask as a DICOM Segmentation (SEG) object over the series it was predicted on.

The SEG (highdicom) references every source image of the FLAIR series, one binary frame per
source slice in the same order, so a PACS or viewer (3D Slicer, OHIF) lays it over the scan.
It is written only where highdicom is installed and the source files carry what a SEG must
copy (patient and study attributes, frame of reference); otherwise `seg_unavailable` says why
and the NIfTI mask remains the result.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from brainseg import __version__
from brainseg.errors import BrainsegError
from brainseg.fileio import write_bytes_atomic


def write_dicom_seg(path: str | Path, mask: np.ndarray, source_files: list[Path]) -> Path:
    """Write `mask` (rows, cols, slices) bool, slices in `source_files`' order, as a binary SEG.

    Raises:
        BrainsegError: highdicom missing, or sources that a SEG cannot be built on (says which).
    """
    try:
        import highdicom as hd
        from pydicom.sr.codedict import codes
    except ImportError:
        raise BrainsegError("DICOM SEG output needs highdicom (pip install highdicom)") from None
    import pydicom

    sources = [pydicom.dcmread(f) for f in source_files]
    if mask.shape[2] != len(sources):
        raise BrainsegError(f"mask has {mask.shape[2]} slices for {len(sources)} source images")
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="tumour (brainseg)",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="brainseg", version=__version__, family=codes.cid7162.ArtificialIntelligence
        ),
    )
    try:
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=np.ascontiguousarray(np.asarray(mask, dtype=bool).transpose(2, 0, 1)),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[description],
            series_instance_uid=hd.UID(),
            series_number=9900,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="brainseg",
            manufacturer_model_name="brainseg",
            software_versions=__version__,
            device_serial_number="none",
            omit_empty_frames=False,  # one frame per source slice: simplest for every reader
        )
    except (AttributeError, KeyError, ValueError, TypeError) as exc:
        raise BrainsegError(f"cannot build a DICOM SEG on {source_files[0].parent}: {exc}") from None
    buf = io.BytesIO()
    seg.save_as(buf)
    return write_bytes_atomic(path, buf.getvalue())


def write_case_seg(path: Path, pred: np.ndarray, data: object) -> int:
    """The SEG of a DICOM case's prediction (slices, rows, cols in the model's order); files written.

    A SEG that cannot be made (no highdicom, sources lacking attributes) is not an error of the
    prediction: the reason goes into the case's notes, and the NIfTI mask stands.
    """
    from brainseg.inference.orientation import to_file_order

    try:
        mask = to_file_order(np.asarray(pred, dtype=bool).transpose(1, 2, 0), data.orientation)  # type: ignore[attr-defined]
        write_dicom_seg(path, mask, data.nifti.extra["dicom_files"])  # type: ignore[attr-defined]
    except BrainsegError as exc:
        data.notes = (*data.notes, f"no DICOM SEG written: {exc}")  # type: ignore[attr-defined]
        return 0
    return 1

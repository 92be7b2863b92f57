"""Tiny synthetic DICOM series written with pydicom (no downloads): one file per slice, names shuffled."""

from __future__ import annotations

from pathlib import Path

import numpy as np

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # rows along +x (patient left), columns along +y (posterior)


def write_series(
    folder: Path,
    volume: np.ndarray,
    description: str,
    *,
    study_uid: str,
    spacing: tuple[float, float] = (0.9, 0.8),
    dz: float = 3.0,
    slope: float = 1.0,
    intercept: float = 0.0,
    bits: int = 8,
    signed: bool = False,
    origin: tuple[float, float, float] = (-100.0, -120.0, -30.0),
    iop: tuple[float, ...] = AXIAL,
    seed: int = 0,
) -> list[Path]:
    """Write `volume` (rows, cols, slices) as one series; slice s lies at origin + s·dz·normal.

    Files are written in a shuffled order with shuffled names and InstanceNumbers, so only the
    positions tell the slice order.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    series_uid, frame_uid = generate_uid(), generate_uid()
    row_dir, col_dir = np.array(iop[:3]), np.array(iop[3:])
    normal = np.cross(row_dir, col_dir)
    n = volume.shape[2]
    order = rng.permutation(n)
    numbers = rng.permutation(n) + 1
    dtype = {(8, False): np.uint8, (16, False): np.uint16, (16, True): np.int16}[(bits, signed)]
    paths = []
    for i, s in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"IM{rng.integers(1e9):09d}"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.Modality, ds.SeriesDescription, ds.InstanceNumber = "MR", description, int(numbers[i])
        # what a scanner writes and a DICOM SEG copies: patient, study, frame of reference
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "PHANTOM1", "Phantom^One", "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", ""
        ds.ReferringPhysicianName, ds.SeriesNumber, ds.FrameOfReferenceUID = "", 1 + seed, frame_uid
        ds.Rows, ds.Columns = volume.shape[0], volume.shape[1]
        ds.PixelSpacing = [float(spacing[0]), float(spacing[1])]
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin) + int(s) * dz * normal]
        ds.SliceThickness = dz
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, int(signed)
        if slope != 1.0 or intercept != 0.0:
            ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        ds.PixelData = np.ascontiguousarray(volume[:, :, s].astype(dtype)).tobytes()
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_study(folder: Path, channels: np.ndarray, descriptions=("AX T1 PRE", "AX T2 FLAIR", "AX T1 POST GD"),
                **kw) -> Path:
    """Slices (N, H, W, 3) uint8 in the LGG order → three 8-bit series of one study under `folder`."""
    from pydicom.uid import generate_uid

    study = generate_uid()
    for c, desc in enumerate(descriptions):
        write_series(folder / f"series{c}", channels[..., c].transpose(1, 2, 0), desc, study_uid=study, seed=c, **kw)
    return folder

"""Find what to segment: a slice file, a patient folder, a kaggle_3m dataset root or NIfTI volumes.

What `discover_inputs` accepts (checked in this order):

- a file ending in ``.nii`` or ``.nii.gz``: one NIfTI volume;
- a ``.tif``/``.tiff``/``.png`` file: one slice (a ``…_mask.tif`` is refused: it is a mask);
- a folder holding slice files named ``<stem>_<n>.tif`` (or ``.png``): one patient, slices in
  numeric order (``_10`` after ``_9``); ``…_mask.tif`` files beside them (ground truth) are ignored;
- a folder holding such patient folders, or a ``kaggle_3m`` sub-folder that does: a dataset root;
- a folder holding NIfTI files: one volume per file;
- a DICOM file, or a folder whose files (in any sub-folder) are DICOM: one study, its series the
  channels (`brainseg.inference.dicom`).

A *case* is what is post-processed together and gets one row of totals in volumes.csv: a slice,
a patient, or a volume.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from brainseg.errors import DataError
from brainseg.inference.dicom import find_dicom_files, is_dicom_file

SLICE_SUFFIXES = (".tif", ".tiff", ".png")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: Case kinds segmented as one volume with one NIfTI mask (not slice files).
VOLUME_KINDS = ("nifti", "dicom")
#: <stem>_<n>.tif / .png, and the ground-truth masks <stem>_<n>_mask.tif beside them.
SLICE_FILE_RE = re.compile(r"^(?P<stem>.+)_(?P<n>\d+)(?P<mask>_mask)?\.(?:tiff?|png)$", re.IGNORECASE)
MASK_FILE_RE = re.compile(r"_mask\.(?:tiff?|png)$", re.IGNORECASE)


@dataclass(frozen=True)
class Case:
    """One slice, patient or volume to segment.

    Attributes:
        name: patient folder name, slice file stem, or NIfTI file name without its suffix.
        kind: "slice", "patient", "nifti" or "dicom".
        source: the file or folder it was read from.
        images: the slice files in slice order ("slice" and "patient" cases; empty for volumes).
        numbers: the slice number of each file (from `<stem>_<n>`), None where the name has none.
    """

    name: str
    kind: str
    source: Path
    images: tuple[Path, ...] = ()
    numbers: tuple[int | None, ...] = ()


@dataclass
class InputSet:
    """What an input path holds: its kind ("slice", "patient", "dataset", "nifti", "dicom") and its cases.

    ``ignored`` names the visible entries of a dataset root that are not patient folders (a
    README, data.csv, a link that cannot be followed), so that nothing is left out unseen.
    """

    kind: str
    root: Path
    cases: list[Case] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def nifti_name(path: Path) -> str | None:
    """'scan.nii.gz' → 'scan'; None for a file that is not NIfTI by its suffix."""
    lower = path.name.lower()
    for suffix in NIFTI_SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return path.name[: -len(suffix)]
    return None


def _visible(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.iterdir()) if not p.name.startswith(".")]


def _slice_case(path: Path) -> Case:
    if MASK_FILE_RE.search(path.name):
        raise DataError(f"{path} is a mask (…_mask.tif/png), not an image to segment; give the image itself")
    m = SLICE_FILE_RE.match(path.name)
    return Case(path.stem, "slice", path, (path,), (int(m["n"]) if m else None,))


def _patient_case(folder: Path) -> Case | None:
    """The patient in `folder`, or None when it holds no slice files."""
    files = [p for p in _visible(folder) if p.is_file() and p.suffix.lower() in SLICE_SUFFIXES]
    images: dict[str, dict[int, Path]] = {}
    loose: list[Path] = []
    for f in files:
        m = SLICE_FILE_RE.match(f.name)
        if m is None:
            loose.append(f)
        elif not m["mask"]:
            by_n = images.setdefault(m["stem"], {})
            n = int(m["n"])
            if n in by_n:
                raise DataError(f"{f} repeats slice {n} of {by_n[n].name} in {folder}")
            by_n[n] = f
    if not images:
        if loose:
            raise DataError(
                f"{loose[0]} is not named <patient>_<n>.tif (or .png): slices of a patient folder need "
                "their number in the name, so they can be put in order"
            )
        return None
    if len(images) > 1:
        raise DataError(
            f"{folder} holds slices of several series ({', '.join(sorted(images))}); give one patient folder each"
        )
    if loose:
        # A silently skipped image would be a silently missing slice of the volume.
        raise DataError(f"{loose[0]} in patient folder {folder} is not named <patient>_<n>.tif (or .png)")
    (stem, by_n), = images.items()
    numbers = sorted(by_n)
    name = folder.name if stem == folder.name else stem
    return Case(name, "patient", folder, tuple(by_n[n] for n in numbers), tuple(numbers))


def _nifti_cases(folder: Path) -> list[Case]:
    return [
        Case(name, "nifti", p)
        for p in _visible(folder)
        if p.is_file() and (name := nifti_name(p)) is not None
    ]


def discover_inputs(path: str | Path) -> InputSet:
    """Work out what `path` is and list its cases (see the module docstring).

    Raises:
        DataError: naming the path, when it does not exist or holds nothing to segment, or a
            file has a suffix brainseg cannot read.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"input {p} does not exist")
    if p.is_file():
        if nifti_name(p) is not None:
            return InputSet("nifti", p, [Case(nifti_name(p) or p.stem, "nifti", p)])
        if p.suffix.lower() in SLICE_SUFFIXES:
            return InputSet("slice", p, [_slice_case(p)])
        if is_dicom_file(p):
            return InputSet("dicom", p, [Case(p.stem, "dicom", p)])
        raise DataError(
            f"input {p} is neither a slice image (.tif, .tiff, .png), a NIfTI volume (.nii, .nii.gz) nor DICOM"
        )
    if not p.is_dir():
        raise DataError(f"input {p} is neither a file nor a folder")
    patient = _patient_case(p)
    if patient is not None:
        return InputSet("patient", p, [patient])
    root = p / "kaggle_3m" if (p / "kaggle_3m").is_dir() else p
    for candidate in dict.fromkeys((p, root)):
        found = {d.name: c for d in _visible(candidate) if d.is_dir() and (c := _patient_case(d)) is not None}
        cases = list(found.values())
        if cases:
            names = [c.name for c in cases]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise DataError(f"dataset {candidate} holds patient {dup[0]} twice")
            ignored = [d.name for d in _visible(candidate) if d.name not in found]
            return InputSet("dataset", candidate, cases, ignored)
    volumes = _nifti_cases(p)
    if volumes:
        return InputSet("nifti", p, volumes)
    if find_dicom_files(p):
        return InputSet("dicom", p, [Case(p.name, "dicom", p)])
    raise DataError(
        f"input folder {p} holds nothing to segment: no slices <name>_<n>.tif/.png, no patient folders of "
        "them (kaggle_3m layout), no NIfTI volumes and no DICOM files"
    )

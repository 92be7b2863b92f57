"""Index, read and validate a dataset in the LGG MRI Segmentation (`kaggle_3m`) layout.

The layout (Buda et al. 2019, "Association of genomic subtypes of lower-grade gliomas with shape
features automatically extracted by a deep learning algorithm", Comput. Biol. Med. 109)::

    kaggle_3m/
      data.csv                                  (optional; comma or semicolon separated)
      TCGA_<inst>_<id>_<date>/
        TCGA_<inst>_<id>_<date>_<n>.tif         H×W×3 uint8: pre-contrast, FLAIR, post-contrast
        TCGA_<inst>_<id>_<date>_<n>_mask.tif    H×W uint8, values {0, 255} (or {0, 1})

Slice numbers sort numerically (`_10` after `_9`). Entries that are not part of the layout (a
README, a folder without slice files, a symbolic link that cannot be followed) are ignored and
listed in `DatasetIndex.ignored`; hidden files are skipped. A folder holding slice files is
always a patient, whatever its name, so a renamed copy is reported, never dropped. Every slice is
decoded once while indexing, so a broken or unreadable file is reported by name before any
training starts; `brainseg.data.index_cache` keeps what decoding learnt so that later indexings
of unchanged files skip it.
"""

from __future__ import annotations

import csv
import io
import os
import re
import statistics
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainseg.data.tif import binarize_mask, read_image, read_mask
from brainseg.errors import DataError

__all__ = [
    "CHANNELS",
    "DatasetIndex",
    "SkippedPatientWarning",
    "SliceRecord",
    "binarize_mask",
    "case_id_of",
    "find_layout_root",
    "index_dataset",
    "read_clinical",
    "read_image",
    "read_mask",
    "read_slice",
]

#: Folder names of the real set: TCGA_<institution>_<patient id>_<acquisition date>.
PATIENT_RE = re.compile(r"^TCGA_(?P<inst>[A-Za-z0-9]+)_(?P<id>[A-Za-z0-9]+)_(?P<date>\d+)$")
#: Slice files inside a patient folder: <folder>_<n>.tif and <folder>_<n>_mask.tif.
SLICE_RE = re.compile(r"^(?P<stem>.+)_(?P<n>\d+)(?P<mask>_mask)?\.tiff?$", re.IGNORECASE)
#: Institution code used for patient folders whose names do not follow the TCGA pattern.
UNKNOWN_INSTITUTION = "NA"
CHANNELS = ("pre-contrast", "FLAIR", "post-contrast")


class SkippedPatientWarning(UserWarning):
    """Issued when `index_dataset(skip_bad=True)` leaves out a patient with a data problem."""


@dataclass(frozen=True)
class SliceRecord:
    """One axial slice: where its image and mask live and whom it belongs to.

    Attributes:
        patient: patient folder name, e.g. "TCGA_CS_4942_19970222".
        case_id: the `data.csv` key, e.g. "TCGA_CS_4942".
        institution: institution code, e.g. "CS".
        slice: slice number as written in the file name (1-based in the real set).
        image: path of the H×W×3 image TIF.
        mask: path of the mask TIF, or None for unlabelled data (`require_masks=False`).
    """

    patient: str
    case_id: str
    institution: str
    slice: int
    image: Path
    mask: Path | None


@dataclass
class DatasetIndex:
    """Every usable slice of a dataset folder, plus what was learnt while validating it.

    Attributes:
        root: the folder that holds the patient folders (the `kaggle_3m` folder).
        records: one record per slice, sorted by patient, then numeric slice number.
        patients: patient folder names, sorted.
        institutions: patient → institution code.
        clinical: case id → the row of `data.csv` (column → text); {} without a `data.csv`.
        skipped: patient → reason, for patients left out by `skip_bad=True`.
        tumour: (patient, slice) → whether the mask has any foreground (labelled slices only).
        shapes: (patient, slice) → (height, width) of the slice.
        ignored: entry name → why, for what the dataset folder holds besides patients and data.csv.
    """

    root: Path
    records: list[SliceRecord]
    patients: list[str]
    institutions: dict[str, str]
    clinical: dict[str, dict[str, str]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    tumour: dict[tuple[str, int], bool] = field(default_factory=dict)
    shapes: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    ignored: dict[str, str] = field(default_factory=dict)

    def by_patient(self) -> dict[str, list[SliceRecord]]:
        """Patient → that patient's records in slice order."""
        out: dict[str, list[SliceRecord]] = {p: [] for p in self.patients}
        for r in self.records:
            out[r.patient].append(r)
        return out

    def select(self, patients: Iterable[str]) -> list[SliceRecord]:
        """The records of the given patients (in index order); unknown names raise DataError."""
        wanted = set(patients)
        unknown = sorted(wanted - set(self.patients))
        if unknown:
            raise DataError(
                f"patient {unknown[0]} is not in the dataset at {self.root}"
                + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""),
                patient=unknown[0],
            )
        return [r for r in self.records if r.patient in wanted]

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description: counts of patients, slices, tumour slices, institutions."""
        per_patient = Counter(r.patient for r in self.records)
        counts = sorted(per_patient.values())
        labelled = sum(1 for r in self.records if r.mask is not None)
        tumour_slices = sum(1 for v in self.tumour.values() if v)
        sizes = Counter(f"{h}x{w}" for h, w in self.shapes.values())
        return {
            "root": str(self.root),
            "patients": len(self.patients),
            "slices": len(self.records),
            "tumour_slices": tumour_slices,
            "empty_slices": labelled - tumour_slices,
            "unlabelled_slices": len(self.records) - labelled,
            "institutions": dict(sorted(Counter(self.institutions[p] for p in self.patients).items())),
            "slices_per_patient": {
                "min": counts[0] if counts else 0,
                "median": statistics.median(counts) if counts else 0,
                "max": counts[-1] if counts else 0,
            },
            "image_sizes": dict(sorted(sizes.items())),
            "clinical_patients": sum(1 for p in self.patients if case_id_of(p) in self.clinical),
            "skipped": dict(self.skipped),
            "ignored": dict(self.ignored),
        }


# --------------------------------------------------------------------------------------------
# Reading one slice (the files themselves: brainseg.data.tif)


def read_slice(record: SliceRecord) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a record's image and mask and check they have the same height and width.

    Returns:
        (image uint8 (H, W, 3), mask uint8 (H, W) in {0, 1}, or None for an unlabelled record).
    """
    try:
        image = read_image(record.image)
        if record.mask is None:
            return image, None
        mask = read_mask(record.mask)
        if mask.shape != image.shape[:2]:
            raise DataError(
                f"mask {record.mask} has size {mask.shape[1]}×{mask.shape[0]} but its image "
                f"{record.image.name} has {image.shape[1]}×{image.shape[0]}"
            )
    except DataError as exc:
        if exc.patient is None:
            exc.patient = record.patient
        raise
    return image, mask


# --------------------------------------------------------------------------------------------
# data.csv


def case_id_of(patient: str) -> str:
    """'TCGA_CS_4942_19970222' → 'TCGA_CS_4942' (the data.csv key); other names are kept whole."""
    m = PATIENT_RE.match(patient)
    return f"TCGA_{m['inst']}_{m['id']}" if m else patient


def read_clinical(path: str | Path) -> dict[str, dict[str, str]]:
    """Read `data.csv` into case id → {column: text}.

    Both separators found in copies of the dataset (',' and ';') and both line endings
    (LF, CRLF) are accepted; a UTF-8 byte-order mark is ignored.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise DataError(f"{path} cannot be read: {exc}") from None
    header = next((line for line in text.splitlines() if line.strip()), "")
    if not header:
        return {}
    delimiter = ";" if header.count(";") > header.count(",") else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = [row for row in reader if any(cell.strip() for cell in row)]
    columns = [c.strip() for c in rows[0]]
    key = next((i for i, c in enumerate(columns) if c.lower() == "patient"), None)
    if key is None:
        raise DataError(f"{path} has no 'Patient' column (columns: {', '.join(columns)})")
    out: dict[str, dict[str, str]] = {}
    for line_no, row in enumerate(rows[1:], start=2):
        if len(row) > len(columns):
            raise DataError(f"{path} row {line_no} has {len(row)} fields; the header has {len(columns)}")
        values = {c: (row[i].strip() if i < len(row) else "") for i, c in enumerate(columns)}
        case = values[columns[key]]
        if case in out:
            raise DataError(f"{path} lists patient {case} twice")
        out[case] = values
    return out


# --------------------------------------------------------------------------------------------
# Indexing


def find_layout_root(root: str | Path) -> Path:
    """The folder that holds the patient folders: `root` itself or its `kaggle_3m` sub-folder."""
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"dataset folder {path} does not exist")
    if not path.is_dir():
        raise DataError(f"dataset path {path} is not a folder")
    inner = path / "kaggle_3m"
    try:
        nested = inner.is_dir()
    except OSError as exc:  # a folder we may not list: its entries cannot even be looked at
        raise DataError(f"dataset folder {path} cannot be read: {exc.strerror or exc}") from None
    if nested and not scan_root(path)[0]:
        return inner
    return path


def _entries(folder: Path, what: str) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError as exc:
        raise DataError(f"{what} {folder} cannot be read: {exc.strerror or exc}", patient=None) from None


def scan_root(root: Path) -> tuple[list[Path], dict[str, str]]:
    """The patient folders of a dataset folder, and every other visible entry with why it is ignored.

    A patient is a TCGA-named folder, or any folder holding slice files (`<name>_<n>.tif`): a
    renamed copy is then reported by `_list_patient` (its files do not carry its name). A folder
    that cannot be listed counts as a patient too, so that it is reported as unreadable.
    """
    folders: list[Path] = []
    ignored: dict[str, str] = {}
    for entry in _entries(root, "dataset folder"):
        name = entry.name
        if name.startswith("."):
            continue
        if not entry.is_dir():
            if entry.is_symlink():
                try:
                    entry.stat()
                    ignored[name] = "a symbolic link to something that is not a folder"
                except OSError as exc:
                    ignored[name] = f"a symbolic link that cannot be followed ({exc.strerror or exc})"
            elif name.lower() != "data.csv":
                ignored[name] = "not a patient folder"
            continue
        if PATIENT_RE.match(name):
            folders.append(entry)
            continue
        try:
            holds_slices = any(SLICE_RE.match(f.name) for f in entry.iterdir() if not f.name.startswith("."))
        except OSError:
            holds_slices = True  # unreadable: reported by _list_patient, never dropped unseen
        if holds_slices:
            folders.append(entry)
        else:
            ignored[name] = "a folder without slice files (<name>_<n>.tif)"
    return folders, ignored


def _list_patient(folder: Path, require_masks: bool) -> list[SliceRecord]:
    """The records of one patient folder, checking that images and masks pair up."""
    patient = folder.name
    m = PATIENT_RE.match(patient)
    institution = m["inst"] if m else UNKNOWN_INSTITUTION
    images: dict[int, Path] = {}
    masks: dict[int, Path] = {}
    try:
        listing = sorted(folder.iterdir())
    except OSError as exc:
        raise DataError(f"patient folder {folder} cannot be read: {exc.strerror or exc}", patient=patient) from None
    for f in listing:
        if f.name.startswith("."):
            continue
        sm = SLICE_RE.match(f.name)
        if sm is None:
            continue  # not part of the layout (README, thumbnails, …)
        if sm["stem"] != patient:
            raise DataError(
                f"{f} does not belong to patient folder {patient} (expected names {patient}_<n>.tif)",
                patient=patient,
            )
        n = int(sm["n"])
        target = masks if sm["mask"] else images
        if n in target:
            raise DataError(f"{f} repeats slice {n} of {target[n].name}", patient=patient)
        target[n] = f
    if not images and not masks:
        raise DataError(f"patient folder {folder} holds no slices ({patient}_<n>.tif)", patient=patient)
    for n in sorted(masks.keys() - images.keys()):
        raise DataError(f"mask {masks[n]} has no image (expected {folder / f'{patient}_{n}.tif'})", patient=patient)
    if require_masks:
        for n in sorted(images.keys() - masks.keys()):
            raise DataError(
                f"image {images[n]} has no mask (expected {folder / f'{patient}_{n}_mask.tif'})", patient=patient
            )
    case_id = case_id_of(patient)
    return [
        SliceRecord(patient, case_id, institution, n, images[n], masks.get(n)) for n in sorted(images)
    ]


def _check_record(record: SliceRecord) -> tuple[bool | None, tuple[int, int]] | DataError:
    """Decode one slice; return (has tumour, (H, W)) or the DataError (raised later, in order)."""
    try:
        image, mask = read_slice(record)
    except DataError as exc:
        return exc
    tumour = None if mask is None else bool(mask.any())
    return tumour, (int(image.shape[0]), int(image.shape[1]))


def index_dataset(
    root: str | Path,
    *,
    skip_bad: bool = False,
    require_masks: bool = True,
    workers: int | None = None,
    memo: Any = None,
) -> DatasetIndex:
    """Index and validate a dataset folder in the kaggle_3m layout.

    Every image and mask is decoded once (in a thread pool): masks to count tumour slices and to
    check they are binary, images to check they are readable H×W×3 uint8 of the mask's size.

    Args:
        root: the `kaggle_3m` folder or its parent.
        skip_bad: leave out a patient with a data problem (recorded in `skipped`, with a
            `SkippedPatientWarning`) instead of raising.
        require_masks: when False, images without a mask are indexed with `mask=None`
            (unlabelled data for prediction).
        workers: decoding threads; default min(8, CPU count).
        memo: remembers decoded slices across calls (`brainseg.data.index_cache.SliceMemo`):
            `memo.wrap(check)` answers unchanged files without decoding them; `memo.save()`
            is called at the end. None: decode every file.

    Raises:
        DataError: the folder does not exist or holds no patients, or (without `skip_bad`) the
            first problem found, naming the file, with `.patient` set.
    """
    layout_root = find_layout_root(root)
    folders, ignored = scan_root(layout_root)
    if not folders:
        if not any(not e.name.startswith(".") for e in layout_root.iterdir()):
            raise DataError(f"dataset folder {layout_root} is empty")
        raise DataError(
            f"no patient folders (TCGA_<inst>_<id>_<date>/…_<n>.tif) found in {layout_root}"
        )

    skipped: dict[str, str] = {}

    def problem(exc: DataError, patient: str) -> None:
        if not skip_bad:
            raise exc
        skipped.setdefault(patient, str(exc))

    records: list[SliceRecord] = []
    for folder in folders:
        try:
            records.extend(_list_patient(folder, require_masks))
        except DataError as exc:
            problem(exc, folder.name)

    workers = workers or min(8, os.cpu_count() or 1)
    check: Callable[[SliceRecord], Any] = _check_record if memo is None else memo.wrap(_check_record)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(check, records))
    if memo is not None:
        memo.save()

    tumour: dict[tuple[str, int], bool] = {}
    shapes: dict[tuple[str, int], tuple[int, int]] = {}
    for record, result in zip(records, results):
        if isinstance(result, DataError):
            problem(result, record.patient)
            continue
        has_tumour, shape = result
        if has_tumour is not None:
            tumour[(record.patient, record.slice)] = has_tumour
        shapes[(record.patient, record.slice)] = shape

    if skipped:
        for patient, reason in skipped.items():
            warnings.warn(f"skipping patient {patient}: {reason}", SkippedPatientWarning, stacklevel=2)
        records = [r for r in records if r.patient not in skipped]
        tumour = {k: v for k, v in tumour.items() if k[0] not in skipped}
        shapes = {k: v for k, v in shapes.items() if k[0] not in skipped}
    if not records:
        raise DataError(f"no usable patients left in {layout_root} (all {len(folders)} had problems)")

    patients = sorted({r.patient for r in records})
    institutions = {r.patient: r.institution for r in records}
    csv_path = next((p for p in (layout_root / "data.csv", Path(root).expanduser() / "data.csv") if p.is_file()), None)
    clinical = read_clinical(csv_path) if csv_path else {}
    return DatasetIndex(
        root=layout_root,
        records=records,
        patients=patients,
        institutions=institutions,
        clinical=clinical,
        skipped=skipped,
        tumour=tumour,
        shapes=shapes,
        ignored=ignored,
    )

"""Turn one uploaded file into one readable case, inside the job's own folder and nowhere else.

Accepted: a zip of one patient (kaggle_3m TIFs or PNGs ``<name>_<n>.tif``, or a DICOM series),
a NIfTI volume (.nii, .nii.gz), one slice (.tif, .png) or one DICOM file. A zip entry whose path
is absolute or climbs out with ``..``, a link, too many entries or more unpacked bytes than
allowed is refused before anything of it is written. Every refusal is an `UploadError` carrying
the HTTP status to answer with (4xx) and one line that names what is wrong.
"""

from __future__ import annotations

import re
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from brainseg.errors import BrainsegError
from brainseg.inference.inputs import Case, discover_inputs, nifti_name

#: Most entries a zip may hold (a 155-slice patient with masks has about 310).
MAX_ZIP_ENTRIES = 5000
#: Unpacked bytes allowed per byte of the upload limit (TIFs compress little; a zip bomb a lot).
UNPACK_FACTOR = 8
SINGLE_SUFFIXES = (".nii", ".nii.gz", ".tif", ".tiff", ".png", ".dcm")
_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


class UploadError(BrainsegError):
    """An upload the server refuses; `status` is the HTTP status (413 too large, 415 wrong type, else 400)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def safe_name(filename: str | None) -> str:
    """The upload's file name without any folder part and with only safe characters."""
    base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = _SAFE_CHARS.sub("_", base).lstrip(".")
    return base[:120] or "upload"


def _is_dicom(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def _entry_parts(info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The entry's path parts, refusing any that could land outside the destination."""
    name = info.filename.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or not parts or ".." in parts or re.match(r"^[A-Za-z]:", parts[0]):
        raise UploadError(
            f"zip entry {info.filename!r} points outside the upload (absolute path or '..'); refused"
        )
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UploadError(f"zip entry {info.filename!r} is a symbolic link; refused")
    return parts


def extract_zip(upload: Path, dest: Path, max_bytes: int) -> None:
    """Unpack `upload` into `dest`, checking every entry first (see the module docstring).

    Raises:
        UploadError: a climbing path or link (400), too many entries or bytes (413), a broken zip (400).
    """
    try:
        with zipfile.ZipFile(upload) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_ZIP_ENTRIES:
                raise UploadError(f"the zip holds {len(infos)} entries; at most {MAX_ZIP_ENTRIES} are accepted", 413)
            planned = [(info, _entry_parts(info)) for info in infos]  # refuse before writing anything
            total = 0
            root = dest.resolve()
            for info, parts in planned:
                if info.is_dir() or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
                    continue
                target = dest.joinpath(*parts)
                if not target.resolve().is_relative_to(root):
                    raise UploadError(f"zip entry {info.filename!r} points outside the upload; refused")
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    # count what is really unpacked: the sizes in the zip's directory can lie
                    while chunk := src.read(1 << 20):
                        total += len(chunk)
                        if total > max_bytes:
                            raise UploadError(
                                f"the zip unpacks to more than {max_bytes // 2**20} MiB; refused", 413
                            )
                        out.write(chunk)
    except UploadError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError) as exc:
        raise UploadError(f"the zip cannot be unpacked (truncated or corrupt?): {exc}") from None


def _descend(folder: Path) -> Path:
    """Step into a lone top folder (zips often wrap everything in one), as deep as it goes."""
    while True:
        entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
        if len(entries) == 1 and entries[0].is_dir():
            folder = entries[0]
        else:
            return folder


def unpack_upload(upload: Path, original_name: str, dest: Path, max_bytes: int) -> Path:
    """Place the uploaded file (saved at `upload`) under `dest` as something `discover_inputs` reads.

    Returns the file or folder to discover.

    Raises:
        UploadError: naming the upload, when it is none of the accepted kinds or cannot be unpacked.
    """
    dest.mkdir(parents=True, exist_ok=True)
    name = safe_name(original_name)
    lower = name.lower()
    if zipfile.is_zipfile(upload):
        extract_zip(upload, dest, max_bytes)
        if not any(p.is_file() for p in dest.rglob("*")):
            raise UploadError(f"{name}: the zip holds no files")
        return _descend(dest)
    if lower.endswith(".zip"):
        raise UploadError(f"{name} is not a readable zip file (truncated or corrupt?)")
    if nifti_name(Path(lower)) is not None or lower.endswith(SINGLE_SUFFIXES[2:]):
        target = dest / name
    elif _is_dicom(upload):
        target = dest / f"{name}.dcm"
    else:
        raise UploadError(
            f"{name} is not an accepted upload: give a zip of one patient's slices (TIF/PNG) or DICOM "
            "series, a NIfTI volume (.nii/.nii.gz), or one slice (.tif/.png)", 415
        )
    shutil.move(str(upload), target)
    return target


def single_case(path: Path, label: str) -> Case:
    """The one case an upload holds.

    Raises:
        UploadError: when it holds nothing to segment or more than one patient/volume.
    """
    base = path if path.is_dir() else path.parent
    try:
        found = discover_inputs(path)
    except BrainsegError as exc:
        raise UploadError(f"{label}: {strip_paths(str(exc), base)}") from None
    if len(found.cases) != 1:
        names = ", ".join(c.name for c in found.cases[:4])
        raise UploadError(f"{label} holds {len(found.cases)} cases ({names}…); upload one patient or volume at a time")
    return found.cases[0]


def strip_paths(message: str, base: Path) -> str:
    """`message` without the server's own folders (the user knows the upload, not our paths)."""
    return message.replace(f"{base}/", "").replace(str(base), "the upload")

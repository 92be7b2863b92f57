"""Every kind of bad input gets one clear error line naming the file, a non-zero exit, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile

from brainseg import cli
from brainseg.data.lgg import SkippedPatientWarning, index_dataset
from brainseg.errors import DataError
from helpers_data import make_dataset, patient_name, write_tif

BAD = patient_name("CS", 2)  # the patient every per-file case damages (slices 1–4, 32×32)


def _img(root: Path, n: int = 2) -> Path:
    return root / BAD / f"{BAD}_{n}.tif"


def _mask(root: Path, n: int = 2) -> Path:
    return root / BAD / f"{BAD}_{n}_mask.tif"


def _truncate(path: Path, keep: int | None = None) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if keep is None else keep])
    return path


def _two_pages(path: Path) -> Path:
    tifffile.imwrite(path, np.zeros((2, 32, 32, 3), np.uint8), photometric="rgb")  # a stack of two RGB slices
    return path


def _nonbinary(values: tuple[int, ...]) -> Callable[[Path], Path]:
    def damage(root: Path) -> Path:
        m = np.zeros((32, 32), np.uint8)
        for k, v in enumerate(values):
            m[k, :] = v
        return write_tif(_mask(root), m)

    return damage


# (id, damage(root) -> offending file, words the message must hold)
FILE_CASES: list[tuple[str, Callable[[Path], Path], tuple[str, ...]]] = [
    ("truncated-image", lambda r: _truncate(_img(r)), ("truncated",)),
    ("truncated-header", lambda r: _truncate(_img(r), 200), ("truncated",)),
    ("truncated-deflate-mask", lambda r: _truncate(write_tif(_mask(r), np.full((32, 32), 255, np.uint8),
                                                             compression="zlib")), ("truncated",)),  # fmt: skip
    ("empty-file", lambda r: _truncate(_img(r), 0), ("cannot be read",)),
    ("not-a-tiff", lambda r: (_img(r).write_bytes(b"\x89PNG\r\n\x1a\n not a tiff"), _img(r))[1], ("cannot be read",)),
    ("image-without-mask", lambda r: (_mask(r).unlink(), _img(r))[1], ("has no mask",)),
    ("mask-without-image", lambda r: (_img(r).unlink(), _mask(r))[1], ("has no image",)),
    ("size-mismatch", lambda r: write_tif(_mask(r), np.zeros((16, 32), np.uint8)), ("size", "32×16", "32×32")),
    ("mask-0-128", _nonbinary((0, 128)), ("not binary", "128")),
    ("mask-0-1-255", _nonbinary((0, 1, 255)), ("not binary", "255")),
    ("image-1-channel", lambda r: write_tif(_img(r), np.zeros((32, 32), np.uint8)), ("1 channel",)),
    ("image-2-channels", lambda r: write_tif(_img(r), np.zeros((32, 32, 2), np.uint8)), ("2 channels",)),
    ("image-4-channels", lambda r: write_tif(_img(r), np.zeros((32, 32, 4), np.uint8)), ("4 channels",)),
    ("mask-3-channels", lambda r: write_tif(_mask(r), np.zeros((32, 32, 3), np.uint8)), ("one channel",)),
    ("image-uint16", lambda r: write_tif(_img(r), np.zeros((32, 32, 3), np.uint16)), ("dtype uint16",)),
    ("image-float32", lambda r: write_tif(_img(r), np.zeros((32, 32, 3), np.float32)), ("dtype float32",)),
    ("mask-uint16", lambda r: write_tif(_mask(r), np.zeros((32, 32), np.uint16)), ("dtype uint16",)),
    ("image-two-pages", lambda r: _two_pages(_img(r)), ("2 images",)),
    ("duplicate-slice", lambda r: write_tif(r / BAD / f"{BAD}_02.tif", np.zeros((32, 32, 3), np.uint8)),
     ("repeats slice 2",)),  # fmt: skip
    ("foreign-file", lambda r: write_tif(r / BAD / "TCGA_CS_0099_20000101_1.tif", np.zeros((32, 32, 3), np.uint8)),
     ("does not belong",)),  # fmt: skip
]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))  # an exception other than BrainsegError would fail the test here
    out = capsys.readouterr()
    return code, out.out, out.err


def _assert_one_error_line(code: int, out: str, err: str, *words: str) -> str:
    assert code != 0
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("brainseg index: error: ")
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert out == ""
    return lines[0]


@pytest.mark.parametrize(("damage", "words"), [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_bad_file_gets_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: Callable[[Path], Path], words: tuple[str, ...]
) -> None:
    root = make_dataset(tmp_path)
    bad_file = damage(root)
    code, out, err = _run(capsys, "index", str(root), "--json")
    # the line names the offending file and its patient
    _assert_one_error_line(code, out, err, bad_file.name, BAD, *words)
    assert code == 2
    # the library raises the same problem as a DataError that knows the patient
    with pytest.raises(DataError) as info:
        index_dataset(root)
    assert info.value.patient == BAD


def _parent_with_empty_kaggle_3m(tmp: Path) -> Path:
    (tmp / "kaggle_3m").mkdir()
    return tmp


def _only_readme(tmp: Path) -> Path:
    (tmp / "README.md").write_text("no data here")
    (tmp / "data.csv").write_text("Patient,age\n")
    return tmp


def _a_file(tmp: Path) -> Path:
    f = tmp / "data.tif"
    f.write_bytes(b"II*\x00")
    return f


def _empty_patient(tmp: Path) -> Path:
    root = make_dataset(tmp)
    (root / patient_name("HT", 9)).mkdir()
    return root


FOLDER_CASES = [
    ("empty-folder", lambda t: t, "is empty"),
    ("empty-kaggle_3m", _parent_with_empty_kaggle_3m, "is empty"),
    ("missing-folder", lambda t: t / "nope", "does not exist"),
    ("no-patient-folders", _only_readme, "no patient folders"),
    ("file-not-folder", _a_file, "is not a folder"),
    ("patient-without-slices", _empty_patient, "holds no slices"),
]


@pytest.mark.parametrize(("make", "words"), [c[1:] for c in FOLDER_CASES], ids=[c[0] for c in FOLDER_CASES])
def test_bad_folder_gets_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Callable[[Path], Path], words: str
) -> None:
    target = make(tmp_path)
    code, out, err = _run(capsys, "index", str(target), "--json")
    line = _assert_one_error_line(code, out, err, words)
    assert tmp_path.name in line  # names the folder


def test_errors_through_a_real_subprocess(tmp_path: Path) -> None:
    """The installed entry point, in its own process: exit code and stderr as a user sees them."""
    root = make_dataset(tmp_path / "d")
    # cut inside the tag table: tifffile logs a warning per broken tag, which must not reach the user
    _truncate(_img(root, 3), 200)
    cases = [(root, f"{BAD}_3.tif", "truncated"), (tmp_path / "missing", "missing", "does not exist")]
    for target, name, words in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "brainseg.cli", "index", str(target)], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 2
        assert proc.stdout == ""
        assert "Traceback" not in proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("brainseg index: error: ")
        assert name in lines[0] and words in lines[0]


def test_skip_bad_goes_on_without_the_patient_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_dataset(tmp_path)
    bad = _truncate(_img(root, 3))
    code, out, err = _run(capsys, "index", str(root), "--json", "--skip-bad")
    assert code == 0 and "Traceback" not in err
    summary = json.loads(out)  # stdout stays pure JSON
    assert summary["patients"] == 2 and summary["slices"] == 6  # CS_0001 (3) + DU_0003 (3)
    assert summary["tumour_slices"] == 3
    assert list(summary["skipped"]) == [BAD]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"skipped patient {BAD}: ") and str(bad) in lines[0]
    # the human summary says it too
    code, out, err = _run(capsys, "index", str(root), "--skip-bad")
    assert code == 0 and "skipped      1 patient(s)" in out and BAD in err


def test_skip_bad_in_the_library_warns_and_records(tmp_path: Path) -> None:
    root = make_dataset(tmp_path)
    _nonbinary((0, 7))(root)
    with pytest.warns(SkippedPatientWarning, match=BAD):
        index = index_dataset(root, skip_bad=True)
    assert BAD not in index.patients and all(r.patient != BAD for r in index.records)
    assert all(k[0] != BAD for k in index.tumour) and "not binary" in index.skipped[BAD]


def test_skip_bad_with_every_patient_bad_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_dataset(tmp_path, {patient_name("CS", 1): [True, False]})
    _truncate(root / patient_name("CS", 1) / f"{patient_name('CS', 1)}_1.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedPatientWarning)
        code, out, err = _run(capsys, "index", str(root), "--skip-bad")
    assert code == 2 and "no usable patients" in err and "Traceback" not in err


def test_split_command_reports_bad_data_the_same_way(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_dataset(tmp_path / "d")
    _mask(root).unlink()
    code, out, err = _run(capsys, "split", str(root), "--out", str(tmp_path / "s.json"))
    assert code == 2 and "Traceback" not in err
    assert err.startswith("brainseg split: error: ") and "has no mask" in err and BAD in err
    assert not (tmp_path / "s.json").exists()

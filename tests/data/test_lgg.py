"""Indexing and reading the kaggle_3m layout: real development data and tiny hand-made sets."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from brainseg import cli
from brainseg.data.lgg import index_dataset, read_clinical, read_image, read_mask, read_slice
from helpers_data import CSV_HEADER, make_dataset, patient_name, synthetic_image, write_slice

# --------------------------------------------------------------------------------------------
# The real development data (54 of the 110 LGG patients). Expected figures: the issue and
# ../shared/data/lgg/ABOUT.md (54 patients, 1909 slices, 642 with tumour; CS 8, DU 22, FG 7, HT 17).


def test_real_index_cli_reports_the_known_figures(real_index_run) -> None:
    run = real_index_run
    assert run.exit_code == 0
    # stdout holds nothing but the JSON object; stderr says what was ignored (the folder's README)
    assert run.stderr == f"ignored in {run.root}: 1 entry: README.md (not a patient folder)\n"
    s = run.summary
    assert s["root"] == str(run.root)  # given the parent folder, it found kaggle_3m
    assert (s["patients"], s["slices"], s["tumour_slices"]) == (54, 1909, 642)
    assert s["empty_slices"] == 1909 - 642 and s["unlabelled_slices"] == 0
    assert s["institutions"] == {"CS": 8, "DU": 22, "FG": 7, "HT": 17}
    assert s["image_sizes"] == {"256x256": 1909}
    assert s["clinical_patients"] == 54  # every patient has its data.csv row
    assert s["skipped"] == {} and s["ignored"] == {"README.md": "not a patient folder"}


def test_real_index_matches_a_plain_folder_listing(real_index_run) -> None:
    """Patients, institutions and per-patient slices agree with os.scandir and str.split."""
    index, root = real_index_run.index, real_index_run.root
    folders = sorted(e.name for e in os.scandir(root) if e.is_dir())
    assert index.patients == folders
    assert index.institutions == {p: p.split("_")[1] for p in folders}
    by_patient = index.by_patient()
    for p in folders:
        names = os.listdir(root / p)
        images = {n for n in names if n.endswith(".tif") and not n.endswith("_mask.tif")}
        masks = {n for n in names if n.endswith("_mask.tif")}
        recs = by_patient[p]
        assert {r.image.name for r in recs} == images
        assert {r.mask.name for r in recs} == masks
        # numeric order: slice numbers are 1..n ascending, and each record's files carry its number
        assert [r.slice for r in recs] == list(range(1, len(images) + 1))
        assert all(r.image.name == f"{p}_{r.slice}.tif" and r.mask.name == f"{p}_{r.slice}_mask.tif" for r in recs)
    assert index.clinical.keys() == {"_".join(p.split("_")[:3]) for p in folders}


def test_real_tumour_flags_and_pixels_agree_with_pillow(real_index_run) -> None:
    """Pillow (libtiff) is an independent decoder of the deflate-compressed real TIFs."""
    index = real_index_run.index
    rng = np.random.default_rng(0)
    tumour = [r for r in index.records if index.tumour[(r.patient, r.slice)]]
    empty = [r for r in index.records if not index.tumour[(r.patient, r.slice)]]
    sample = [tumour[i] for i in rng.choice(len(tumour), 8, replace=False)]
    sample += [empty[i] for i in rng.choice(len(empty), 8, replace=False)]
    for r in sample:
        ref_img = np.asarray(Image.open(r.image))
        ref_mask = np.asarray(Image.open(r.mask))
        assert set(np.unique(ref_mask)) <= {0, 255}
        img, mask = read_slice(r)
        np.testing.assert_array_equal(img, ref_img)
        np.testing.assert_array_equal(mask, (ref_mask == 255).astype(np.uint8))
        assert index.tumour[(r.patient, r.slice)] == bool(ref_mask.any())


# --------------------------------------------------------------------------------------------
# Tiny sets with known content


def _summary(root: Path) -> dict:
    s = index_dataset(root).summary()
    s.pop("root")
    return s


def test_tiny_dataset_index_counts(tiny_dataset: Path) -> None:
    index = index_dataset(tiny_dataset)
    # make_dataset's default: CS_0001 [F, T, T], CS_0002 [F, F, T, F], DU_0003 [T, F, F]
    cs1, cs2, du3 = patient_name("CS", 1), patient_name("CS", 2), patient_name("DU", 3)
    assert index.patients == [cs1, cs2, du3]
    assert index.institutions == {cs1: "CS", cs2: "CS", du3: "DU"}
    assert [(r.patient, r.slice) for r in index.records] == [
        (cs1, 1), (cs1, 2), (cs1, 3), (cs2, 1), (cs2, 2), (cs2, 3), (cs2, 4), (du3, 1), (du3, 2), (du3, 3)
    ]  # fmt: skip
    assert sorted(k for k, v in index.tumour.items() if v) == [(cs1, 2), (cs1, 3), (cs2, 3), (du3, 1)]
    assert all(r.case_id == r.patient.rsplit("_", 1)[0] for r in index.records)
    s = index.summary()
    assert (s["patients"], s["slices"], s["tumour_slices"], s["empty_slices"]) == (3, 10, 4, 6)
    assert s["institutions"] == {"CS": 2, "DU": 1}


def test_index_cli_json_on_tiny_dataset(tiny_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["index", str(tiny_dataset), "--json"]) == 0
    out = capsys.readouterr()
    s = json.loads(out.out)
    assert (s["patients"], s["slices"], s["tumour_slices"]) == (3, 10, 4)
    assert s["institutions"] == {"CS": 2, "DU": 1}
    assert out.err == ""
    # the human summary says the same in words
    assert cli.main(["index", str(tiny_dataset)]) == 0
    human = capsys.readouterr().out
    assert "patients     3" in human and "slices       10  (4 with tumour" in human


def test_root_may_be_kaggle_3m_or_its_parent(tiny_dataset: Path) -> None:
    assert tiny_dataset.name == "kaggle_3m"
    a, b = index_dataset(tiny_dataset), index_dataset(tiny_dataset.parent)
    assert a.root == b.root == tiny_dataset
    assert a.records == b.records and a.clinical == b.clinical and a.clinical


def test_files_outside_the_layout_are_ignored(tmp_path: Path) -> None:
    clean = _summary(make_dataset(tmp_path / "clean"))
    root = make_dataset(tmp_path / "junk")
    patient = patient_name("CS", 1)
    for folder in (root, root.parent, root / patient):
        (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
        (folder / "README.md").write_text("# notes\n")
        (folder / "Thumbs.db").write_bytes(bytes(16))
    (root / "README").write_text("plain readme")
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "._TCGA_CS_0001_20000101_1.tif").write_bytes(b"AppleDouble")
    (root / ".ipynb_checkpoints").mkdir()
    (root / patient / f".{patient}_1.tif").write_bytes(b"hidden")  # a hidden file, not a slice
    (root / patient / "preview.png").write_bytes(b"\x89PNG")
    ignored = {"README": "not a patient folder", "README.md": "not a patient folder",
               "Thumbs.db": "not a patient folder", "__MACOSX": "a folder without slice files (<name>_<n>.tif)"}
    for target in (root, root.parent):
        summary = _summary(target)
        assert summary.pop("ignored") == ignored  # ignored, and said so
        assert clean["ignored"] == {} and {**summary, "ignored": {}} == clean


def test_slice_numbers_sort_numerically(tmp_path: Path) -> None:
    patient = patient_name("HT", 7)
    tumours = [n in (2, 9, 10, 11) for n in range(1, 13)]  # slices 1..12
    root = make_dataset(tmp_path, {patient: tumours})
    index = index_dataset(root)
    numbers = [r.slice for r in index.records]
    assert numbers == list(range(1, 13))
    text_order = sorted(f.name for f in (root / patient).glob("*_[0-9]*.tif") if not f.name.endswith("_mask.tif"))
    assert [r.image.name for r in index.records] != text_order  # text order would put _10 before _2
    assert [r.image.name for r in index.records] == [f"{patient}_{n}.tif" for n in range(1, 13)]
    assert [index.tumour[(patient, n)] for n in numbers] == tumours
    # and each record's mask is the file with its own number, tumour exactly where written
    for r, has in zip(index.records, tumours):
        assert r.mask.name == f"{patient}_{r.slice}_mask.tif"
        assert bool(read_mask(r.mask).any()) == has


def _expected_clinical(patients: list[str]) -> dict[str, dict[str, str]]:
    # the values make_dataset writes for the i-th patient (see tests/helpers_data.py)
    out = {}
    for i, p in enumerate(patients):
        case = p.rsplit("_", 1)[0]
        out[case] = dict(zip(CSV_HEADER, [case, str(i % 3 + 1), str(i % 2 + 1), str(40 + i), str(i % 2)]))
    return out


@pytest.mark.parametrize("delimiter", [",", ";"])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_data_csv_is_joined_for_both_separators_and_line_ends(tmp_path: Path, delimiter: str, newline: str) -> None:
    root = make_dataset(tmp_path, delimiter=delimiter, newline=newline)
    raw = (root / "data.csv").read_bytes()
    assert (b"\r\n" in raw) == (newline == "\r\n") and delimiter.encode() in raw.splitlines()[0]
    index = index_dataset(root)
    assert index.clinical == _expected_clinical(index.patients)
    assert index.summary()["clinical_patients"] == 3


def test_data_csv_with_bom_and_without_file(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "bom", delimiter=";", newline="\r\n")
    csv_path = root / "data.csv"
    csv_path.write_bytes(b"\xef\xbb\xbf" + csv_path.read_bytes())
    assert read_clinical(csv_path) == _expected_clinical(index_dataset(root).patients)
    no_csv = index_dataset(make_dataset(tmp_path / "none", csv=False))
    assert no_csv.clinical == {} and no_csv.summary()["clinical_patients"] == 0
    assert len(no_csv.records) == 10  # the slices do not depend on data.csv


def _tif_writer(compression: str | None, predictor: int | None = None, planar: bool = False):
    def write(path: Path, array: np.ndarray) -> None:
        photometric = "rgb" if array.ndim == 3 else "minisblack"
        if planar and array.ndim == 3:  # channels stored one plane after the other
            array = np.ascontiguousarray(array.transpose(2, 0, 1))
        tifffile.imwrite(path, array, photometric=photometric, compression=compression, predictor=predictor,
                         planarconfig="separate" if planar else None, metadata=None)  # fmt: skip

    return write


def _pillow_lzw(path: Path, array: np.ndarray) -> None:
    # tifffile needs imagecodecs to write LZW; Pillow's libtiff does it
    Image.fromarray(array).save(path, compression="tiff_lzw")


@pytest.mark.parametrize(
    ("write", "compression"),
    [
        (_tif_writer(None), 1),
        (_tif_writer("zlib"), 8),
        (_tif_writer("zlib", 2), 8),
        (_tif_writer("zlib", planar=True), 8),
        (_pillow_lzw, 5),
    ],
    ids=["uncompressed", "deflate", "deflate+predictor", "deflate-planar", "lzw"],
)
def test_tifs_read_identically_whatever_the_compression(tmp_path: Path, write, compression: int) -> None:
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    mask = np.zeros((40, 48), np.uint8)
    mask[10:20, 5:30] = 255
    write(tmp_path / "i.tif", img)
    write(tmp_path / "m.tif", mask)
    with tifffile.TiffFile(tmp_path / "i.tif") as t:  # stored the way the case says
        assert t.pages[0].compression == compression
    np.testing.assert_array_equal(read_image(tmp_path / "i.tif"), img)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.tif"), mask // 255)


def test_uncompressed_and_deflate_datasets_index_identically(tmp_path: Path) -> None:
    plain = make_dataset(tmp_path / "plain", compression=None)
    deflate = make_dataset(tmp_path / "deflate", compression="zlib")
    assert _summary(plain) == _summary(deflate)
    a, b = index_dataset(plain), index_dataset(deflate)
    for ra, rb in zip(a.records, b.records):
        assert ra.image.stat().st_size != rb.image.stat().st_size  # really stored differently
        ia, ma = read_slice(ra)
        ib, mb = read_slice(rb)
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ma, mb)


def test_masks_in_0_1_and_0_255_read_alike(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    img = synthetic_image(24, rng)
    mask = np.zeros((24, 24), np.uint8)
    mask[3:9, 4:11] = 1
    _, m255 = write_slice(tmp_path / "a", "P", 1, img, mask, mask_scale=255)
    _, m1 = write_slice(tmp_path / "b", "P", 1, img, mask, mask_scale=1)
    assert tifffile.imread(m255).max() == 255 and tifffile.imread(m1).max() == 1
    np.testing.assert_array_equal(read_mask(m255), mask)
    np.testing.assert_array_equal(read_mask(m1), mask)


def test_select_rejects_unknown_patients_and_keeps_order(tiny_dataset: Path) -> None:
    from brainseg.errors import DataError

    index = index_dataset(tiny_dataset)
    du3, cs1 = patient_name("DU", 3), patient_name("CS", 1)
    assert [r.patient for r in index.select([du3, cs1])] == [cs1] * 3 + [du3] * 3
    with pytest.raises(DataError, match="TCGA_XX_0009"):
        index.select([cs1, "TCGA_XX_0009_20000101"])


def test_copy_of_folder_without_data_csv_keeps_patients(tmp_path: Path, tiny_dataset: Path) -> None:
    """A patient folder copied elsewhere on its own is still a dataset (root = that parent)."""
    single = tmp_path / "single"
    shutil.copytree(tiny_dataset / patient_name("DU", 3), single / patient_name("DU", 3))
    index = index_dataset(single)
    assert index.patients == [patient_name("DU", 3)] and len(index.records) == 3

"""Synthetic phantoms: deterministic, in the kaggle_3m layout, mostly empty slices, not thresholdable."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile

from brainseg import cli
from brainseg.data import phantom
from brainseg.data.lgg import index_dataset, read_clinical, read_slice

SMALL = {"slices": (4, 6), "size": 48}


def _files(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    a = _files(phantom.write_phantoms(tmp_path / "a", patients=3, seed=7, **SMALL))
    b = _files(phantom.write_phantoms(tmp_path / "b", patients=3, seed=7, **SMALL))
    assert a.keys() == b.keys() and len(a) > 3 * 2 * 4
    assert all(a[k] == b[k] for k in a)


def test_different_seed_gives_different_patients(tmp_path: Path) -> None:
    a = phantom.write_phantoms(tmp_path / "a", patients=3, seed=7, **SMALL)
    b = phantom.write_phantoms(tmp_path / "b", patients=3, seed=8, **SMALL)
    def images(root: Path) -> set[bytes]:
        return {tifffile.imread(f).tobytes() for f in root.glob("*/*.tif") if not f.name.endswith("_mask.tif")}

    assert not images(a) & images(b)  # not one image in common (empty masks are alike, of course)


def test_a_patient_does_not_change_when_more_are_asked_for(tmp_path: Path) -> None:
    two = _files(phantom.write_phantoms(tmp_path / "two", patients=2, seed=1, **SMALL))
    three = _files(phantom.write_phantoms(tmp_path / "three", patients=3, seed=1, **SMALL))
    slices = {k for k in two if k.endswith(".tif")}
    assert slices < three.keys() and all(two[k] == three[k] for k in slices)


def test_phantoms_use_the_kaggle_3m_layout(phantom_set: Path) -> None:
    assert phantom_set.name == "kaggle_3m"
    index = index_dataset(phantom_set.parent)
    folders = sorted(p.name for p in phantom_set.iterdir() if p.is_dir())
    assert index.patients == folders and len(folders) == 10
    for name in folders:
        assert re.fullmatch(r"TCGA_(CS|DU|FG|HT)_\d{4}_\d{8}", name)
        files = sorted(f.name for f in (phantom_set / name).iterdir())
        n = len(files) // 2
        assert n >= phantom.DEFAULT_SLICES[0] and len(files) == 2 * n
        assert set(files) == {f"{name}_{k}.tif" for k in range(1, n + 1)} | {f"{name}_{k}_mask.tif" for k in range(1, n + 1)}
    r = index.records[0]
    img, mask = tifffile.imread(r.image), tifffile.imread(r.mask)
    assert img.shape == (128, 128, 3) and img.dtype == np.uint8
    assert mask.shape == (128, 128) and mask.dtype == np.uint8
    assert set(np.unique(np.concatenate([tifffile.imread(x.mask).ravel() for x in index.records]))) == {0, 255}
    # data.csv: the real header, one row per patient, CRLF line ends like the real file
    raw = (phantom_set / "data.csv").read_bytes()
    assert raw.startswith(",".join(phantom.CSV_COLUMNS).encode() + b"\r\n")
    clinical = read_clinical(phantom_set / "data.csv")
    assert clinical.keys() == {p.rsplit("_", 1)[0] for p in folders} and index.clinical == clinical
    assert index.summary()["institutions"] == {"CS": 2, "DU": 3, "FG": 2, "HT": 3}


def _load(root: Path) -> tuple[np.ndarray, np.ndarray]:
    pairs = [read_slice(r) for r in index_dataset(root).records]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]).astype(bool)


@pytest.fixture(scope="module")
def phantom_arrays(phantom_set: Path) -> tuple[np.ndarray, np.ndarray]:
    return _load(phantom_set)


def test_about_two_thirds_of_slices_are_empty(phantom_arrays) -> None:
    _, masks = phantom_arrays
    has = masks.any(axis=(1, 2))
    assert 0.55 <= 1 - has.mean() <= 0.8  # the LGG set: 1267 of 1909 = 0.66
    # and the lesions vary in size and place
    areas = masks[has].sum(axis=(1, 2))
    assert areas.std() / areas.mean() > 0.5 and areas.min() < 0.25 * areas.max()
    rows = [np.nonzero(m)[0].mean() for m in masks[has]]
    cols = [np.nonzero(m)[1].mean() for m in masks[has]]
    # pixels, in 128×128 slices (the real set at that size: std ≈ 15; phantoms sit more centrally)
    assert np.std(rows) > 5 and np.std(cols) > 5 and np.ptp(rows) > 25 and np.ptp(cols) > 25


def _best_threshold_dice(channel: np.ndarray, truth: np.ndarray) -> tuple[float, int, bool]:
    """Highest dataset Dice of `channel >= t` or `channel <= t` over every t in 0..255."""
    pos = np.bincount(channel[truth], minlength=256).astype(np.int64)
    neg = np.bincount(channel[~truth], minlength=256).astype(np.int64)
    best = (0.0, 0, True)
    for above in (True, False):
        # pixels called tumour by threshold t: values >= t (above) or <= t (below)
        tp = pos[::-1].cumsum()[::-1] if above else pos.cumsum()
        fp = neg[::-1].cumsum()[::-1] if above else neg.cumsum()
        dice = 2 * tp / np.maximum(2 * tp + fp + (pos.sum() - tp), 1)
        t = int(dice.argmax())
        if dice[t] > best[0]:
            best = (float(dice[t]), t, above)
    return best


def test_no_global_threshold_recovers_the_lesions(phantom_arrays) -> None:
    images, masks = phantom_arrays
    assert masks.sum() > 1000
    for c in range(3):
        dice, t, above = _best_threshold_dice(images[..., c], masks)
        # recompute that one threshold directly, as a check on the histogram arithmetic
        pred = images[..., c] >= t if above else images[..., c] <= t
        tp = np.logical_and(pred, masks).sum()
        assert dice == pytest.approx(2 * tp / (pred.sum() + masks.sum()))
        assert dice < 0.5, (c, dice, t, above)  # a perfect segmentation scores 1
    # FLAIR is the channel that carries the lesion (as in the real set): its best threshold finds
    # something, well above chance (the lesion share of pixels), while still far from the truth
    assert _best_threshold_dice(images[..., 1], masks)[0] > 5 * masks.mean()


def test_phantoms_command_and_existing_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["phantoms", str(tmp_path), "--patients", "2", "--seed", "4", "--size", "32", "--slices", "3", "4"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("wrote 2 phantom patients") and str(tmp_path / "kaggle_3m") in out
    assert len(index_dataset(tmp_path).patients) == 2
    assert cli.main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".kaggle_3m")]  # no partial folder left


def test_commands_fall_back_to_the_cached_phantom_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # a small default keeps the test fast; the mechanism is the one the full default uses
    monkeypatch.setenv("BRAINSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(phantom, "DEFAULT_PATIENTS", 2)
    monkeypatch.setattr(phantom, "DEFAULT_SIZE", 32)
    monkeypatch.setattr(phantom, "DEFAULT_SLICES", (3, 3))
    assert cli.main(["index", "--json"]) == 0
    out = capsys.readouterr()
    assert "no --data given: using the built-in phantom set" in out.err
    s = json.loads(out.out)
    assert s["patients"] == 2 and s["slices"] == 6 and s["root"].startswith(str(tmp_path / "cache"))
    first = _files(Path(s["root"]))
    assert cli.main(["index", "--json"]) == 0  # the second time it is reused, not rewritten
    assert json.loads(capsys.readouterr().out)["root"] == s["root"] and _files(Path(s["root"])) == first

"""Patient-level splits: stratified, seeded, disjoint, replaceable, and no test slice in training."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tifffile

from brainseg import cli
from brainseg.data import splits as S
from brainseg.data.lgg import index_dataset
from brainseg.errors import BrainsegError
from helpers_data import make_dataset, patient_name

# The development set's make-up: CS 8, DU 22, FG 7, HT 17 patients.
SIZES = {"CS": 8, "DU": 22, "FG": 7, "HT": 17}
PATIENTS = [patient_name(inst, 100 * k + i) for k, (inst, n) in enumerate(SIZES.items()) for i in range(n)]
INST = {p: p.split("_")[1] for p in PATIENTS}


def _assert_partition(split: S.Split, patients: list[str]) -> None:
    parts = [split.train, split.val, split.test]
    assert sum(len(p) for p in parts) == len(patients)  # nobody twice …
    assert sorted(split.train + split.val + split.test) == sorted(patients)  # … and everybody once
    assert not set(split.train) & set(split.test) and not set(split.train) & set(split.val)
    assert not set(split.val) & set(split.test)


def _within_one_of_share(part: list[str], share: float) -> None:
    """Stratified: each institution's count in `part` is floor or ceil of its proportional share."""
    got = Counter(INST[p] for p in part)
    for inst, n in SIZES.items():
        assert math.floor(share * n) <= got[inst] <= math.ceil(share * n), (inst, got[inst], share * n)


def test_holdout_sizes_stratification_and_partition() -> None:
    split = S.holdout_split(PATIENTS, INST, val_fraction=0.15, test_fraction=0.2, seed=3)
    _assert_partition(split, PATIENTS)
    n = len(PATIENTS)
    assert len(split.test) == round(0.2 * n) == 11 and len(split.val) == round(0.15 * n) == 8
    _within_one_of_share(split.test, len(split.test) / n)
    # validation is drawn, stratified, from the patients left after the test draw
    assert split.method == "holdout" and split.seed == 3


def test_holdout_is_seeded() -> None:
    a = S.holdout_split(PATIENTS, INST, seed=1)
    b = S.holdout_split(list(reversed(PATIENTS)), INST, seed=1)  # input order does not matter
    c = S.holdout_split(PATIENTS, INST, seed=2)
    assert (a.train, a.val, a.test) == (b.train, b.val, b.test) and a.id == b.id
    assert a.test != c.test and a.id != c.id


@pytest.mark.parametrize("k", [2, 5, 7])
def test_kfold_test_parts_partition_the_patients(k: int) -> None:
    folds = S.kfold_splits(PATIENTS, INST, k=k, seed=4, val_fraction=0.15)
    assert len(folds) == k and [f.fold for f in folds] == list(range(k))
    tests = [f.test for f in folds]
    assert sorted(p for t in tests for p in t) == sorted(PATIENTS)  # each patient in exactly one test part
    assert max(map(len, tests)) - min(map(len, tests)) <= 1
    for f in folds:
        _assert_partition(f, PATIENTS)
        assert len(f.val) == round(0.15 * len(PATIENTS))
    # stratified: an institution's patients spread over the folds as evenly as possible
    for inst, n in SIZES.items():
        per_fold = [sum(INST[p] == inst for p in t) for t in tests]
        assert max(per_fold) - min(per_fold) <= 1 and sum(per_fold) == n


def test_kfold_is_seeded() -> None:
    a = S.kfold_splits(PATIENTS, INST, k=5, seed=0)
    b = S.kfold_splits(PATIENTS, INST, k=5, seed=0)
    c = S.kfold_splits(PATIENTS, INST, k=5, seed=1)
    assert [s.id for s in a] == [s.id for s in b]
    assert [s.test for s in a] != [s.test for s in c]


def test_leave_one_institution_out() -> None:
    split = S.leave_institution_out(PATIENTS, INST, institution="HT", seed=0)
    assert split.test == sorted(p for p in PATIENTS if INST[p] == "HT")
    _assert_partition(split, PATIENTS)
    assert "HT" not in {INST[p] for p in split.train + split.val}
    with pytest.raises(BrainsegError, match="'XX' is not in the dataset"):
        S.leave_institution_out(PATIENTS, INST, institution="XX")


def test_bad_settings_are_refused() -> None:
    with pytest.raises(BrainsegError, match="k-fold needs"):
        S.kfold_splits(PATIENTS, INST, k=1)
    with pytest.raises(BrainsegError, match="test_fraction"):
        S.holdout_split(PATIENTS, INST, test_fraction=1.2)
    with pytest.raises(BrainsegError, match="too few"):
        S.holdout_split(PATIENTS[:2], INST, val_fraction=0.3, test_fraction=0.3)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    folds = S.kfold_splits(PATIENTS, INST, k=3, seed=9)
    path = tmp_path / "splits.json"
    S.save_splits(path, folds)
    data = json.loads(path.read_text())
    assert data["format"] == S.SPLITS_FORMAT and len(data["splits"]) == 3
    back = S.load_splits(path, patients=PATIENTS)
    assert [(s.train, s.val, s.test, s.fold, s.id) for s in back] == [(s.train, s.val, s.test, s.fold, s.id) for s in folds]


def test_user_split_file_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    mine = {"train": PATIENTS[:40], "val": PATIENTS[40:45], "test": PATIENTS[45:]}
    path.write_text(json.dumps(mine))
    (split,) = S.load_splits(path, patients=PATIENTS)
    assert (split.train, split.val, split.test) == (sorted(mine["train"]), sorted(mine["val"]), sorted(mine["test"]))
    assert split.method == "user"


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ({"train": PATIENTS[:40], "val": PATIENTS[39:45], "test": PATIENTS[45:]}, "in both train and val"),
        ({"train": PATIENTS[:40], "val": PATIENTS[40:45], "test": PATIENTS[45:] + PATIENTS[:1]}, "in both train and test"),
        ({"train": PATIENTS[:40] + PATIENTS[:1], "val": [], "test": PATIENTS[40:]}, "twice in train"),
        ({"train": PATIENTS[:40], "test": ["TCGA_ZZ_0001_20000101"]}, "not in the dataset"),
        ({"train": [], "val": PATIENTS[:5], "test": PATIENTS[5:]}, "training part is empty"),
        ({"train": "TCGA_CS_0000_20000101"}, "must be a list"),
    ],
    ids=["train-val", "train-test", "twice", "unknown", "empty-train", "not-a-list"],
)
def test_bad_user_split_file_is_rejected(tmp_path: Path, parts: dict, message: str) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(parts))
    with pytest.raises(BrainsegError, match=message) as info:
        S.load_splits(path, patients=PATIENTS)
    assert str(path) in str(info.value)


def test_overlapping_split_file_stops_training_before_it_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_dataset(tmp_path / "d")
    index = index_dataset(root)
    p = index.patients
    bad = tmp_path / "overlap.json"
    bad.write_text(json.dumps({"train": p[:2], "val": [], "test": p[1:]}))
    code = cli.main(["train", "--data", str(root), "--split-file", str(bad), "--out", str(tmp_path / "run"),
                     "--epochs", "1", "--size", "32"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"patient {p[1]} appears in both train and test" in err
    assert not (tmp_path / "run" / "checkpoint_last.pt").exists()


def _dataset_with(n_patients: int, tmp: Path) -> Path:
    insts = ["CS", "DU", "HT"]
    spec = {patient_name(insts[i % 3], i + 1): [j % 3 == 0 for j in range(4)] for i in range(n_patients)}
    return make_dataset(tmp, spec, size=32, seed=11)


def test_no_test_patient_slice_reaches_the_training_dataset(tmp_path: Path) -> None:
    """Through the path training takes (split resolution → records → SliceDataset → DataLoader),
    checked on pixel content, not just on the patient tags the dataset reports."""
    from torch.utils.data import DataLoader

    from brainseg.config import build_config
    from brainseg.data.dataset import SliceDataset
    from brainseg.training.rundata import load_run_data, records_for

    root = _dataset_with(9, tmp_path / "d")
    # every slice's raw pixels, read with tifffile straight from its patient's folder
    raw = {
        f.name: tifffile.imread(f).tobytes()
        for f in root.glob("TCGA_*/*.tif")
        if not f.name.endswith("_mask.tif")
    }
    owner = {pixels: name.rsplit("_", 1)[0] for name, pixels in raw.items()}
    assert len(owner) == len(raw)  # the random slices are all different

    for overrides in ({"data.folds": 3, "data.fold": f} for f in range(3)):
        cfg = build_config(None, {"data.root": str(root), "data.size": 32, **overrides})
        data = load_run_data(cfg, None, announce=lambda m: None)
        split = data.split
        ds = SliceDataset(records_for(data.index, split.train), size=32, augment=False)
        seen_patients, seen_owners = set(), set()
        for batch in DataLoader(ds, batch_size=4, shuffle=True):
            seen_patients.update(batch["patient"])
            for x in batch["image"]:
                pixels = np.rint(x.numpy().transpose(1, 2, 0) * 255).astype(np.uint8).tobytes()
                seen_owners.add(owner[pixels])  # KeyError: a slice that is in no patient folder
        assert seen_patients == set(split.train) == seen_owners
        assert not seen_owners & set(split.test) and not seen_owners & set(split.val)


def test_split_command_writes_and_never_redraws_silently(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _dataset_with(9, tmp_path / "d")
    out = tmp_path / "splits.json"
    assert cli.main(["split", str(root), "--out", str(out), "--seed", "1"]) == 0
    (first,) = S.load_splits(out)
    index = index_dataset(root)
    assert first.id == S.holdout_split(index.patients, index.institutions, seed=1).id
    capsys.readouterr()
    assert cli.main(["split", str(root), "--out", str(out), "--seed", "1"]) == 0  # same split: fine
    assert "unchanged" in capsys.readouterr().out
    assert cli.main(["split", str(root), "--out", str(out), "--seed", "2"]) == 2
    assert "never re-drawn silently" in capsys.readouterr().err
    assert S.load_splits(out)[0].id == first.id  # the file was left alone
    assert cli.main(["split", str(root), "--out", str(out), "--folds", "3", "--force"]) == 0
    folds = S.load_splits(out)
    assert sorted(p for f in folds for p in f.test) == index.patients

"""Which sequences of a slice are FLAIR copies: synthetic slices and the real development patients."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brainseg.data.sequences import copied_sequences, patient_copied_sequences

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "lgg" / "kaggle_3m"


def _slice(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(1, 255, (16, 16, 3), dtype=np.uint8)


def test_copies_are_named_by_sequence() -> None:
    img = _slice(0)
    assert copied_sequences(img) == ()
    post = img.copy()
    post[:, :, 2] = post[:, :, 1]
    assert copied_sequences(post) == ("post-contrast",)
    both = img.copy()
    both[:, :, 0] = both[:, :, 1]
    both[:, :, 2] = both[:, :, 1]
    assert copied_sequences(both) == ("pre-contrast", "post-contrast")
    assert copied_sequences(np.zeros((16, 16, 3), np.uint8)) == ()  # an empty slice says nothing
    assert copied_sequences(img[:, :, :1]) == ()


def test_a_patient_needs_the_copy_on_every_informative_slice() -> None:
    a, b = _slice(1), _slice(2)
    a[:, :, 2] = a[:, :, 1]
    b[:, :, 2] = b[:, :, 1]
    empty = np.zeros_like(a)  # slices outside the brain are left out of the decision
    assert patient_copied_sequences([a, empty, b]) == ("post-contrast",)
    assert patient_copied_sequences([a, _slice(3)]) == ()
    assert patient_copied_sequences([empty]) == ()


@pytest.mark.skipif(not REAL.is_dir(), reason=f"real development data not found at {REAL}")
@pytest.mark.parametrize(
    ("patient", "expected"),
    [
        ("TCGA_HT_7877_19980917", ("pre-contrast", "post-contrast")),
        ("TCGA_DU_6407_19860514", ("post-contrast",)),
        ("TCGA_CS_4942_19970222", ()),
    ],
)
def test_real_patients_match_the_dataset_notes(patient: str, expected: tuple[str, ...]) -> None:
    """../shared/data/lgg/ABOUT.md lists which development patients carry FLAIR copies."""
    import tifffile

    folder = REAL / patient
    files = sorted(p for p in folder.glob("*.tif") if not p.name.endswith("_mask.tif"))
    assert files
    assert patient_copied_sequences(tifffile.imread(p) for p in files) == expected

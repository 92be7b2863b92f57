"""Which MRI sequences of a kaggle_3m slice are real and which are copies of FLAIR.

Where a patient of the LGG set lacked the pre- or post-contrast sequence, the dataset's authors
copied FLAIR into that channel (channel order: pre-contrast, FLAIR, post-contrast). Such a slice is
valid 3-channel data; these helpers only name what was copied, so that results can be reported
for these patients separately and the rest of the program never mistakes them for grey images.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

SEQUENCES = ("pre-contrast", "FLAIR", "post-contrast")
FLAIR = 1


def copied_sequences(image: np.ndarray) -> tuple[str, ...]:
    """The sequences of one H×W×3 slice that are exact copies of its FLAIR channel.

    A slice whose FLAIR channel is all zero (outside the brain) tells nothing and gives ().
    """
    if image.ndim != 3 or image.shape[2] != 3:
        return ()
    flair = image[:, :, FLAIR]
    if not flair.any():
        return ()
    return tuple(SEQUENCES[k] for k in (0, 2) if np.array_equal(image[:, :, k], flair))


def patient_copied_sequences(images: Iterable[np.ndarray]) -> tuple[str, ...]:
    """Sequences that are FLAIR copies on every informative slice of one patient (in order)."""
    found: set[str] | None = None
    for img in images:
        if img.ndim != 3 or img.shape[2] != 3 or not img[:, :, FLAIR].any():
            continue
        c = set(copied_sequences(img))
        found = c if found is None else found & c
        if not found:
            return ()
    return tuple(s for s in SEQUENCES if found and s in found)


def flair_copy_patients(index: Any, patients: Iterable[str] | None = None) -> set[str]:
    """The patients of a `DatasetIndex` (or of `patients` among them) whose sequences hold FLAIR copies."""
    from brainseg.data.lgg import read_slice

    by = index.by_patient()
    wanted = index.patients if patients is None else [p for p in patients if p in by]
    return {p for p in wanted if patient_copied_sequences(read_slice(r)[0] for r in by[p])}

"""The in-memory slice cache and the torch Dataset that training and validation read from.

`load_arrays` decodes every TIF once and resizes it once to the training size; an epoch then only
indexes uint8 arrays, augments and normalises (about 0.1 ms per 128×128 slice without
augmentation, a few ms with it), so the data pipeline never waits on the disk or on TIFF decoding
and stays a few per cent of a CPU training step (`benchmarks/data_pipeline.py` measures both).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from brainseg.data.lgg import SliceRecord, read_slice
from brainseg.data.preprocess import (
    NORMALIZATIONS,
    add_sequence_flags,
    flag_copied_sequences,
    normalize,
    resize_image,
    resize_mask,
    select_channels,
)
from brainseg.data.transforms import Augment
from brainseg.errors import BrainsegError, DataError


def soft_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """An H×W mask at size×size as the tumour fraction of each pixel, ×255 (uint8 0–255).

    The mask is resized exactly as the image is (`resize_image`: bilinear, antialiased when
    shrinking), so the target is centred on the image's pixels; `resize_mask`'s nearest neighbour
    at an even factor samples half a native pixel off centre and keeps no partial pixels (a
    perfect 128-pixel binary target scores 0.964 per-patient Dice at native size on the LGG
    development patients, the fractions 0.993: `benchmarks/resolution_ceiling.py`)."""
    return resize_image((np.asarray(mask) > 0).astype(np.uint8) * 255, size)


def _load_one(record: SliceRecord, size: int, soft: bool = False) -> tuple[np.ndarray, np.ndarray]:
    image, mask = read_slice(record)
    if mask is None:
        raise DataError(f"image {record.image} has no mask; training and evaluation need one", record.patient)
    return resize_image(image, size), (soft_mask(mask, size) if soft else resize_mask(mask, size))


def load_arrays(
    records: Sequence[SliceRecord], size: int, *, workers: int | None = None, soft_masks: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Decode and resize every slice once: the in-memory uint8 cache.

    Args:
        records: slices to load (order is kept).
        size: output height and width (bilinear for images, nearest for masks).
        workers: decoding threads; default min(8, CPU count).
        soft_masks: masks as tumour fractions ×255 (`soft_mask`) instead of nearest-neighbour {0, 1}.

    Returns:
        images uint8 (N, size, size, 3) and masks uint8 (N, size, size) with values {0, 1}
        (or 0–255 with `soft_masks`).
    """
    n = len(records)
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.empty((n, size, size), np.uint8)
    if n == 0:
        return images, masks
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, (img, mask) in enumerate(pool.map(lambda r: _load_one(r, size, soft_masks), records)):
            images[i] = img
            masks[i] = mask
    return images, masks


class SliceDataset(Dataset):
    """Training/validation samples from cached slices, each tagged with its patient and slice.

    `__getitem__(i)` returns a dict:
        image: float32 tensor (in_channels × (2·context + 1), size, size; crop, crop with `crop`), normalised (see
            `brainseg.data.preprocess`);
        mask: float32 tensor (1, size, size) with values {0, 1} (tumour fractions in [0, 1] with
            `soft_masks`);
        patient: patient folder name; slice: slice number; index: i.

    Augmentation of item i in epoch e is drawn from `numpy.random.default_rng([seed, e, i])`, so it
    is the same whatever the loader order, batch size or number of worker processes. Call
    `set_epoch(e)` before each epoch; the epoch lives in shared memory, so persistent DataLoader
    workers see it too.

    Args:
        records: the slices, e.g. `index.select(split.train)`.
        size: slice height and width for the model.
        in_channels: 3 (pre-contrast, FLAIR, post-contrast) or 1 (FLAIR).
        normalization: one of `NORMALIZATIONS`.
        augment: False, True (default `Augment()`), or an `Augment` instance.
        seed: augmentation seed.
        arrays: a ready cache `(images, masks)` from `load_arrays(records, size)`.
        context: 2.5-D (see `brainseg.data.preprocess`): the image of item i is its slice's
            k neighbours on each side within the same patient (the nearest existing slice
            repeated at the ends of the volume), each augmented with the draws of item i — so the
            same flip, rotation, zoom, intensity change and sequence dropout — and normalised,
            stacked along the channels; the mask is item i's own.
        soft_masks: the cached masks are tumour fractions ×255 (`load_arrays(..., soft_masks=True)`);
            items then carry them divided by 255.
        sequence_flags: two constant planes after the other channels (`brainseg.data.preprocess`,
            step 5) mark item i's pre- and post-contrast channels that are FLAIR copies — in the
            stored slice (a patient who lacked the sequence; per-channel intensity augmentation
            may since have made the copy inexact) or made by sequence dropout.
        crop: > 0: image and mask are a crop×crop window of the prepared item (after
            augmentation and normalisation, so the intensities are those of the whole slice), at a
            position drawn uniformly from `numpy.random.default_rng([seed, e, i, 1])` (a stream of
            its own: the augmentation draws do not change with it).
    """

    def __init__(
        self,
        records: Sequence[SliceRecord],
        *,
        size: int,
        in_channels: int = 3,
        normalization: str = "unit",
        augment: bool | Augment = False,
        seed: int = 0,
        arrays: tuple[np.ndarray, np.ndarray] | None = None,
        context: int = 0,
        soft_masks: bool = False,
        sequence_flags: bool = False,
        crop: int = 0,
    ) -> None:
        if normalization not in NORMALIZATIONS:
            raise BrainsegError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
        if in_channels not in (1, 3):
            raise BrainsegError(f"in_channels must be 1 or 3, got {in_channels!r}")
        if sequence_flags and in_channels != 3:
            raise BrainsegError("sequence_flags need the 3-channel input (pre-contrast, FLAIR, post-contrast)")
        self.sequence_flags = bool(sequence_flags)
        if not 0 <= int(crop) <= int(size):
            raise BrainsegError(f"crop must be from 0 (whole slices) to size={size}, got {crop!r}")
        self.crop = int(crop) if int(crop) != int(size) else 0
        self.records = list(records)
        self.size = int(size)
        self.in_channels = in_channels
        self.normalization = normalization
        self.augment: Augment | None = Augment() if augment is True else (augment or None)
        self.seed = int(seed)
        images, masks = arrays if arrays is not None else load_arrays(self.records, self.size)
        n = len(self.records)
        if images.shape != (n, self.size, self.size, 3) or masks.shape != (n, self.size, self.size):
            raise BrainsegError(
                f"cached arrays have shapes {images.shape} and {masks.shape}; expected "
                f"({n}, {self.size}, {self.size}, 3) and ({n}, {self.size}, {self.size}) for these records"
            )
        if images.dtype != np.uint8 or masks.dtype != np.uint8:
            raise BrainsegError(f"cached arrays must be uint8, got {images.dtype} and {masks.dtype}")
        self.images = images
        self.masks = masks
        self.soft_masks = bool(soft_masks)
        self.has_tumour: np.ndarray = masks.reshape(n, -1).any(axis=1)
        self.patients = [r.patient for r in self.records]
        self.slices = [r.slice for r in self.records]
        self.context = int(context)
        self.neighbours = neighbour_table(self.patients, self.slices, self.context)
        # shared across DataLoader worker processes, so set_epoch reaches persistent workers
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.records)

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw for this epoch (see the class docstring)."""
        self._epoch.fill_(int(epoch))

    def sample_arrays(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Item i as uint8 arrays after augmentation (before channel selection and normalisation)."""
        image, mask = self.images[i], self.masks[i]
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            image, mask = self.augment(image, mask, rng)
        return image, mask

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        if not 0 <= i < len(self.records):
            raise IndexError(f"index {i} out of range for {len(self.records)} slices")
        image, mask = self.sample_arrays(i)
        x = normalize(select_channels(image, self.in_channels), self.normalization)
        if self.context:
            parts = []
            for j in self.neighbours[i]:
                if j == i:
                    parts.append(x)
                    continue
                img = self.images[j]
                if self.augment is not None:  # the same draws as item i: the same transform
                    img, _ = self.augment(img, self.masks[j], np.random.default_rng([self.seed, self.epoch, i]))
                parts.append(normalize(select_channels(img, self.in_channels), self.normalization))
            x = np.concatenate(parts)
        if self.sequence_flags:
            flags = np.maximum(flag_copied_sequences(self.images[i]), flag_copied_sequences(image))
            x = add_sequence_flags(x[None], flags[None])[0]
        y = np.ascontiguousarray(mask, dtype=np.float32)[None]
        if self.soft_masks:
            y *= 1.0 / 255.0
        if self.crop:
            top, left = np.random.default_rng([self.seed, self.epoch, i, 1]).integers(0, self.size - self.crop + 1, 2)
            window = (slice(None), slice(top, top + self.crop), slice(left, left + self.crop))
            x, y = np.ascontiguousarray(x[window]), np.ascontiguousarray(y[window])
        return {
            "image": torch.from_numpy(x),
            "mask": torch.from_numpy(y),
            "patient": self.patients[i],
            "slice": self.slices[i],
            "index": i,
        }


def neighbour_table(patients: Sequence[str], slices: Sequence[int], context: int) -> np.ndarray:
    """(N, 2·context + 1) item positions of each item's neighbours −context … +context among the
    items of the same patient, ordered by slice number (the nearest existing one at the ends)."""
    from brainseg.data.preprocess import context_indices

    n = len(patients)
    table = np.repeat(np.arange(n)[:, None], 2 * context + 1, axis=1)
    if not context or n == 0:
        return table
    by: dict[str, list[int]] = {}
    for i, p in enumerate(patients):
        by.setdefault(p, []).append(i)
    for items in by.values():
        items.sort(key=lambda i: slices[i])
        order = np.asarray(items)
        table[order] = order[context_indices(len(order), context)]
    return table

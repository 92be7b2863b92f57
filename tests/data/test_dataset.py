"""The cached SliceDataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from brainseg.data.dataset import SliceDataset, load_arrays
from brainseg.data.lgg import index_dataset, read_image, read_mask
from brainseg.data.preprocess import preprocess_image, resize_mask
from brainseg.errors import BrainsegError


def test_items_match_the_prediction_path_and_carry_their_ids(tiny_dataset: Path) -> None:
    index = index_dataset(tiny_dataset)
    ds = SliceDataset(index.records, size=16, normalization="zscore", augment=False)
    assert len(ds) == len(index.records) == 10
    for i, r in enumerate(index.records):
        item = ds[i]
        assert (item["patient"], item["slice"], item["index"]) == (r.patient, r.slice, i)
        # the training input is what preprocess_image (prediction) makes of the native file
        ref = preprocess_image(read_image(r.image), size=16, normalization="zscore")
        np.testing.assert_allclose(item["image"].numpy(), ref, atol=1e-5)
        np.testing.assert_array_equal(item["mask"].numpy()[0], resize_mask(read_mask(r.mask), 16))
        assert item["mask"].dtype == torch.float32 and item["image"].shape == (3, 16, 16)
        assert bool(ds.has_tumour[i]) == index.tumour[(r.patient, r.slice)]


def test_augmentation_depends_on_seed_epoch_and_index_only(tiny_dataset: Path) -> None:
    records = index_dataset(tiny_dataset).records
    arrays = load_arrays(records, 32)
    ds = SliceDataset(records, size=32, augment=True, seed=5, arrays=arrays)
    forward = [ds[i]["image"] for i in range(len(ds))]
    backward = [ds[i]["image"] for i in reversed(range(len(ds)))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward))  # loader order does not matter
    batches = list(DataLoader(ds, batch_size=3, shuffle=True))
    for b in batches:
        for x, i in zip(b["image"], b["index"].tolist()):
            assert torch.equal(x, forward[i])
    ds.set_epoch(1)
    assert any(not torch.equal(ds[i]["image"], forward[i]) for i in range(len(ds)))
    other = SliceDataset(records, size=32, augment=True, seed=6, arrays=arrays)
    assert any(not torch.equal(other[i]["image"], forward[i]) for i in range(len(ds)))
    for i in range(len(ds)):  # masks stay {0, 1} after augmentation
        assert set(ds[i]["mask"].unique().tolist()) <= {0.0, 1.0}


def test_cache_is_uint8_and_checked(tiny_dataset: Path) -> None:
    records = index_dataset(tiny_dataset).records
    images, masks = load_arrays(records, 24)
    assert images.dtype == masks.dtype == np.uint8
    assert images.shape == (10, 24, 24, 3) and masks.shape == (10, 24, 24)
    with pytest.raises(BrainsegError, match="cached arrays have shapes"):
        SliceDataset(records[:5], size=24, arrays=(images, masks))
    with pytest.raises(BrainsegError, match="normalization"):
        SliceDataset(records, size=24, normalization="minmax", arrays=(images, masks))

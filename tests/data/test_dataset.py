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


def test_soft_mask_is_centred_and_keeps_the_tumour_area() -> None:
    """Soft targets (data.mask_targets=soft) against properties the nearest-neighbour target lacks."""
    from brainseg.data.dataset import soft_mask

    yy, xx = np.mgrid[:256, :256]
    disc = ((yy - 127.5) ** 2 + (xx - 127.5) ** 2 <= 40.0**2).astype(np.uint8)  # centred on the image
    soft = soft_mask(disc, 128).astype(np.float64) / 255.0
    # the image's centre is the target's centre: a disc symmetric under both flips stays symmetric
    np.testing.assert_allclose(soft, soft[::-1, ::-1], atol=1 / 255)
    near = resize_mask(disc, 128).astype(np.float64)
    assert np.abs(near - near[::-1, ::-1]).max() == 1.0  # half a native pixel off centre
    # every native tumour pixel is kept as a fraction: area π·40² native = π·40²/4 model pixels
    assert soft.sum() == pytest.approx(np.pi * 40.0**2 / 4, rel=0.01)
    assert ((soft > 0) & (soft < 1)).any()  # partial pixels at the border
    assert soft_mask(np.ones((256, 256), np.uint8), 128).min() == 255
    assert soft_mask(np.zeros((256, 256), np.uint8), 128).max() == 0


def test_soft_mask_items_are_fractions_and_threshold_to_the_binary_target(tiny_dataset: Path) -> None:
    records = index_dataset(tiny_dataset).records
    binary = SliceDataset(records, size=16, augment=False)
    soft = SliceDataset(records, size=16, augment=False, arrays=load_arrays(records, 16, soft_masks=True),
                        soft_masks=True)
    assert (soft.has_tumour | ~binary.has_tumour).all()  # a slice with a nearest-sampled tumour pixel has a fraction
    fractions = torch.cat([soft[i]["mask"].flatten() for i in range(len(soft))])
    assert fractions.min() >= 0 and fractions.max() <= 1 and ((fractions > 0) & (fractions < 1)).any()
    for i in range(len(soft)):
        b, s = binary[i]["mask"].numpy()[0], soft[i]["mask"].numpy()[0]
        assert s.shape == b.shape and s.dtype == np.float32
        if b.sum() >= 20:  # a tumour of some size: the two targets mark nearly the same pixels
            assert 2 * ((s >= 0.5) & (b > 0)).sum() / ((s >= 0.5).sum() + b.sum()) > 0.8


def test_crop_is_a_window_of_the_whole_prepared_item_at_a_uniform_position(tiny_dataset: Path) -> None:
    """data.train_crop: each item is a crop×crop window of the item the uncropped dataset gives (the same
    augmentation, the intensities normalised over the whole slice), sliced here by hand at the position
    drawn from the window's own stream."""
    records = index_dataset(tiny_dataset).records
    arrays = load_arrays(records, 32)
    for normalization, augment in (("zscore", False), ("zscore", True), ("unit", True)):
        whole = SliceDataset(records, size=32, normalization=normalization, augment=augment, seed=3, arrays=arrays)
        cropped = SliceDataset(records, size=32, normalization=normalization, augment=augment, seed=3, arrays=arrays,
                               crop=16)
        for epoch in (0, 1):
            whole.set_epoch(epoch)
            cropped.set_epoch(epoch)
            for i in range(len(records)):
                top, left = np.random.default_rng([3, epoch, i, 1]).integers(0, 17, 2)
                a, b = whole[i], cropped[i]
                assert b["image"].shape == (3, 16, 16) and b["mask"].shape == (1, 16, 16)
                assert torch.equal(b["image"], a["image"][:, top:top + 16, left:left + 16])
                assert torch.equal(b["mask"], a["mask"][:, top:top + 16, left:left + 16])
                assert (b["patient"], b["slice"]) == (a["patient"], a["slice"])
    # the windows are where the draw says, not anywhere that happens to match: they differ from the
    # window one pixel over, and the draws move them between items and epochs
    b = cropped[0]["image"]
    whole.set_epoch(cropped.epoch)
    top, left = np.random.default_rng([3, cropped.epoch, 0, 1]).integers(0, 17, 2)
    shifted = whole[0]["image"][:, top:top + 16, left:left + 16].roll(1, dims=2)
    assert not torch.equal(b, shifted) and b.abs().sum() > 0
    positions = {tuple(np.random.default_rng([3, e, i, 1]).integers(0, 17, 2)) for e in (0, 1) for i in range(10)}
    assert len(positions) > 10
    with pytest.raises(BrainsegError, match="crop must be from 0"):
        SliceDataset(records, size=32, arrays=arrays, crop=40)

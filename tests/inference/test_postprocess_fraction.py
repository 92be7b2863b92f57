"""keep_large_components against scipy.ndimage.label on hand-made volumes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from brainseg.errors import BrainsegError
from brainseg.inference.postprocess import keep_large_components, largest_component


def _volume() -> np.ndarray:
    v = np.zeros((4, 20, 20), bool)
    v[0:3, 2:8, 2:8] = True      # 108 voxels
    v[1:3, 12:18, 12:17] = True  # 60 voxels
    v[3, 0, 19] = True           # 1 voxel
    return v


def test_fraction_keeps_components_at_least_that_share_of_the_largest() -> None:
    v = _volume()
    labels, n = ndimage.label(v, structure=np.ones((3, 3, 3)))
    sizes = {k: int((labels == k).sum()) for k in range(1, n + 1)}
    assert sorted(sizes.values()) == [1, 60, 108]
    big = [k for k, s in sizes.items() if s == 108][0]
    second = [k for k, s in sizes.items() if s == 60][0]
    np.testing.assert_array_equal(keep_large_components(v, 1.0), labels == big)
    np.testing.assert_array_equal(keep_large_components(v, 1.0), largest_component(v))
    np.testing.assert_array_equal(keep_large_components(v, 0.5), (labels == big) | (labels == second))  # 60 ≥ 54
    np.testing.assert_array_equal(keep_large_components(v, 0.6), labels == big)  # 60 < 64.8
    np.testing.assert_array_equal(keep_large_components(v, 0.005), v)  # 1 ≥ 0.54
    assert not keep_large_components(np.zeros((2, 3, 3), bool), 0.5).any()


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_fraction_outside_the_unit_interval_is_refused(bad: float) -> None:
    with pytest.raises(BrainsegError, match="component fraction must lie in"):
        keep_large_components(_volume(), bad)


def test_binarize_applies_the_fraction_only_with_the_largest_component() -> None:
    from brainseg.config import EvalConfig
    from brainseg.inference.postprocess import binarize

    v = _volume()
    probs = np.where(v, 0.9, 0.1)
    labels, _ = ndimage.label(v, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(labels.ravel())
    two = np.isin(labels, [k for k in range(1, len(sizes)) if sizes[k] >= 54])
    np.testing.assert_array_equal(binarize(probs, EvalConfig(largest_component=True, component_fraction=0.5)), two)
    np.testing.assert_array_equal(binarize(probs, EvalConfig(largest_component=True)), labels == np.argmax(sizes[1:]) + 1)
    np.testing.assert_array_equal(binarize(probs, EvalConfig(largest_component=False, component_fraction=0.5)), v)


@pytest.mark.parametrize("bad", ["0", "1.5", "-1"])
def test_component_fraction_setting_is_checked(bad: str) -> None:
    from brainseg.config import RunConfig

    with pytest.raises(BrainsegError, match=r"eval.component_fraction.*a fraction in \(0, 1\]"):
        RunConfig().set("eval.component_fraction", float(bad))

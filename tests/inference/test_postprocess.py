from __future__ import annotations

import numpy as np

from brainseg.inference.postprocess import largest_component, remove_small_components


def test_largest_component_in_3d_by_hand() -> None:
    v = np.zeros((3, 6, 6), bool)
    v[0, 0:2, 0:2] = True  # 4 voxels
    v[1, 4:6, 4:6] = True  # 4 voxels …
    v[2, 4:6, 3:6] = True  # … joined across slices with 6 more → 10
    v[2, 0, 5] = True  # 1 voxel
    out = largest_component(v)
    assert out.sum() == 10 and out[1, 4, 4] and out[2, 5, 3] and not out[0, 0, 0]
    # diagonal contact across slices counts as connected (26-neighbourhood)
    d = np.zeros((2, 4, 4), bool)
    d[0, 0, 0] = d[1, 1, 1] = True
    d[1, 3, 3] = True
    assert largest_component(d).sum() == 2
    assert largest_component(np.zeros((2, 3, 3), bool)).sum() == 0


def test_remove_small_components_by_hand() -> None:
    m = np.zeros((8, 8), bool)
    m[0:3, 0:3] = True  # 9
    m[6, 6] = m[6, 7] = True  # 2
    assert remove_small_components(m, 3).sum() == 9
    assert remove_small_components(m, 2).sum() == 11
    assert remove_small_components(m, 10).sum() == 0

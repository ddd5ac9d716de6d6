"""Patching flip rates split into the ambiguous and the clear region
(mechmod.interventions.patch_study.flip_rates_by_region) on a constructed case."""

import numpy as np

from mechmod.following import region
from mechmod.interventions.patch_study import flip_rates_by_region


def test_flip_rates_split_by_region_around_the_balance_point():
    dh = np.array([-1.0, -0.8, -0.2, 0.5, 1.5])
    regions = region(dh, balance=-0.9, radius=0.5)  # |dh + 0.9| < 0.5: the first two
    assert regions.tolist() == ["ambiguous", "ambiguous", "clear", "clear", "clear"]
    flipped = np.array([[1, 0], [1, 1], [0, 0], [0, 1], [0, 1]], dtype=bool)  # [cases, layers]
    out = flip_rates_by_region(flipped, regions)
    assert out["ambiguous"] == {"n": 2, "flip_rate": [1.0, 0.5]}
    assert out["clear"]["n"] == 3 and np.allclose(out["clear"]["flip_rate"], [0.0, 2 / 3])
    none_clear = flip_rates_by_region(flipped[:2], regions[:2])
    assert none_clear["clear"] == {"n": 0, "flip_rate": None}

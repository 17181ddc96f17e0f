"""What figures and web maps share: bands to show, the display stretch, decimated reads."""

from __future__ import annotations

import numpy as np
import pytest

from geodet.errors import GeodetError
from geodet.reports.display import decimated_shape, display_bands, stretch_to_rgba


def test_display_bands_default_to_rgb_or_grey_and_check_the_count():
    assert display_bands(5) == (1, 2, 3)
    assert display_bands(2) == (1,)
    assert display_bands(5, [4, 3, 2]) == (4, 3, 2)
    with pytest.raises(GeodetError):
        display_bands(3, [1, 2])
    with pytest.raises(GeodetError):
        display_bands(2, [3])


def test_stretch_maps_percentiles_to_black_and_white():
    band = np.arange(100, dtype=np.float32).reshape(1, 10, 10)
    rgba = stretch_to_rgba(band, np.ones((10, 10), bool), percentiles=(10, 90))
    lo, hi = np.percentile(np.arange(100), [10, 90])
    assert rgba[..., 0].flat[int(np.ceil(hi))] == 1 and rgba[..., 0].flat[int(lo)] == 0
    assert rgba[..., 0].flat[50] == pytest.approx((50 - lo) / (hi - lo))
    constant = stretch_to_rgba(np.full((3, 4, 4), 7, np.uint16), np.ones((4, 4), bool))
    assert (constant[..., :3] == 0).all() and (constant[..., 3] == 1).all()


def test_decimated_shape_keeps_aspect_and_never_upsamples():
    assert decimated_shape(100, 50, 200) == (100, 50)
    assert decimated_shape(10_000, 40_000, 2048) == (512, 2048)
    assert decimated_shape(3, 10_000, 100) == (1, 100)
    with pytest.raises(GeodetError):
        decimated_shape(10, 10, 0)

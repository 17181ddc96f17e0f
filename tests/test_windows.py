"""Chip windows: coverage, bounds, size and overlap (property-based)."""

import numpy as np
from affine import Affine
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from geodet.core.windows import chip_offsets, chip_transform, chip_windows, window_bounds_px

scene = st.integers(min_value=1, max_value=3000)


@st.composite
def size_and_overlap(draw):
    size = draw(st.integers(min_value=1, max_value=1024))
    overlap = draw(st.integers(min_value=0, max_value=size - 1))
    return size, overlap


@settings(max_examples=200, deadline=None)
@given(height=scene, width=scene, so=size_and_overlap())
def test_windows_cover_every_pixel_inside_scene(height, width, so):
    size, overlap = so
    rows = chip_offsets(height, size, overlap)
    cols = chip_offsets(width, size, overlap)
    assume(len(rows) * len(cols) <= 5000)  # keep each example cheap
    windows = chip_windows(height, width, size, overlap)
    assert len(windows) == len(rows) * len(cols)
    for w in windows:
        assert w.col_off >= 0 and w.row_off >= 0
        assert w.col_off + w.width <= width and w.row_off + w.height <= height
        assert w.width == min(size, width) and w.height == min(size, height)
    # coverage per axis implies coverage of every pixel of the grid product
    for length, offsets in ((height, rows), (width, cols)):
        covered = np.zeros(length, bool)
        for off in offsets:
            covered[off : off + min(size, length)] = True
        assert covered.all()


@settings(max_examples=200, deadline=None)
@given(length=scene, so=size_and_overlap())
def test_offsets_respect_stride_and_overlap(length, so):
    size, overlap = so
    offsets = chip_offsets(length, size, overlap)
    assert offsets[0] == 0
    assert offsets == sorted(set(offsets))
    steps = np.diff(offsets)
    # every step is the stride except the last, shifted inward (never larger)
    assert all(s == size - overlap for s in steps[:-1])
    if len(steps):
        assert 0 < steps[-1] <= size - overlap
        assert offsets[-1] == length - size  # last chip flush with the edge


def test_small_scene_single_window():
    assert chip_windows(100, 50, 512, 64) == [chip_windows(100, 50, 512, 64)[0]]
    w = chip_windows(100, 50, 512, 64)[0]
    assert (w.col_off, w.row_off, w.width, w.height) == (0, 0, 50, 100)


def test_known_grid():
    assert chip_offsets(1024, 512, 64) == [0, 448, 512]
    assert chip_offsets(960, 512, 64) == [0, 448]
    assert len(chip_windows(1024, 1024, 512, 64)) == 9


def test_chip_transform_maps_chip_origin_to_scene_pixel():
    t = Affine(0.5, 0, 1000, 0, -0.5, 2000)
    w = chip_windows(1000, 1000, 256, 32)[4]
    ct = chip_transform(w, t)
    x1, y1, _, _ = window_bounds_px(w)
    assert ct @ (0, 0) == t @ (x1, y1)
    assert ct @ (3, 7) == t @ (x1 + 3, y1 + 7)

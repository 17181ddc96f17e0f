"""Chip windows: pure arithmetic on scene and chip sizes (pixels).

The unit of work is a rasterio :class:`~rasterio.windows.Window`. Windows are
laid on a regular grid of stride ``size - overlap``; the last row and column
are shifted inward so that every window lies inside the scene (the ceiling
rule: the grid always covers the last partial row and column). A scene
smaller than a chip along an axis gets one window of the scene's extent along
that axis; the reader pads it to the chip size.
"""

from __future__ import annotations

import math
from typing import List

from affine import Affine
from rasterio.windows import Window
from rasterio.windows import transform as window_transform


def chip_offsets(length_px: int, size_px: int, overlap_px: int) -> List[int]:
    """Start offsets (pixels) of chips along one axis.

    Args:
        length_px: scene length along the axis, >= 1.
        size_px: chip length, >= 1.
        overlap_px: overlap between neighbours, 0 <= overlap_px < size_px.

    Returns:
        Increasing offsets; the first is 0 and the last is
        ``max(length_px - size_px, 0)``, so chips cover ``[0, length_px)``.
    """
    if length_px < 1 or size_px < 1:
        raise ValueError("lengths must be positive")
    if not 0 <= overlap_px < size_px:
        raise ValueError(f"overlap must be in [0, {size_px}), got {overlap_px}")
    if length_px <= size_px:
        return [0]
    stride = size_px - overlap_px
    count = math.ceil((length_px - size_px) / stride) + 1
    offsets = [i * stride for i in range(count)]
    offsets[-1] = length_px - size_px  # last chip shifted inward
    return offsets


def chip_windows(height_px: int, width_px: int, size_px: int, overlap_px: int) -> List[Window]:
    """Windows of at most ``size_px`` x ``size_px`` covering a scene, row-major.

    Every window lies inside the scene; windows are ``size_px`` wide and high
    unless the scene itself is smaller along that axis.
    """
    rows = chip_offsets(height_px, size_px, overlap_px)
    cols = chip_offsets(width_px, size_px, overlap_px)
    h = min(size_px, height_px)
    w = min(size_px, width_px)
    return [Window(col, row, w, h) for row in rows for col in cols]


def window_bounds_px(window: Window) -> tuple:
    """``(x1, y1, x2, y2)`` of a window in scene pixel-corner coordinates."""
    return (
        float(window.col_off),
        float(window.row_off),
        float(window.col_off + window.width),
        float(window.row_off + window.height),
    )


def chip_transform(window: Window, scene_transform: Affine) -> Affine:
    """Affine of a chip: maps chip pixel corners to the scene's CRS."""
    return window_transform(window, scene_transform)

"""What figures (:mod:`geodet.reports.plot`) and web maps (:mod:`geodet.reports.webmap`) share.

Which bands to show, the display stretch, the colours of truth and of each
class, whole-pixel windows read decimated, vector data in a CRS.
"""

from __future__ import annotations

import logging
import math
from typing import Optional, Sequence, Tuple

import numpy as np
from rasterio.windows import Window, from_bounds

from geodet.errors import GeodetError
from geodet.io.raster import read_window
from geodet.io.vector import read_frame

log = logging.getLogger(__name__)

#: Outline colour of ground-truth labels.
LABEL_COLOR = "#ffd60a"
#: Box colours of a quicklook, one per class in sorted class order.
CLASS_COLORS = ("#ff2d55", "#00e5ff", "#7cff00", "#ff9f0a", "#bf5af2", "#ffffff")
#: Display stretch: these percentiles of each band map to black and white.
STRETCH_PERCENTILES = (2.0, 98.0)


def display_bands(count: int, bands: Optional[Sequence[int]] = None) -> Tuple[int, ...]:
    """1-based bands shown: the given 1 or 3 bands, else bands 1-3 (RGB) or band 1 (grey).

    Raises:
        GeodetError: a band outside ``1..count``, or not 1 or 3 bands given.
    """
    if bands is None:
        return (1, 2, 3) if count >= 3 else (1,)
    bands = tuple(int(b) for b in bands)
    if len(bands) not in (1, 3):
        raise GeodetError(f"give 1 band (grey) or 3 bands (RGB) to display, got {len(bands)}: {bands}.")
    bad = [b for b in bands if not 1 <= b <= count]
    if bad:
        raise GeodetError(f"the scene has {count} band(s) but band(s) {bad} were asked for display.")
    return bands


def stretch_to_rgba(
    pixels: np.ndarray, valid: np.ndarray, percentiles: Tuple[float, float] = STRETCH_PERCENTILES
) -> np.ndarray:
    """Percentile-stretch pixels for display.

    Args:
        pixels: ``[C, H, W]`` values of any dtype, C = 1 (grey) or 3 (RGB).
        valid: bool ``[H, W]``; invalid pixels become transparent.
        percentiles: per band, these percentiles of the valid pixels map to 0 and 1.

    Returns:
        float32 ``[H, W, 4]`` RGBA in [0, 1].
    """
    data = np.asarray(pixels, dtype=np.float32)
    if data.ndim != 3 or data.shape[0] not in (1, 3):
        raise ValueError(f"pixels must be [1 or 3, H, W], got shape {data.shape}")
    valid = np.asarray(valid, dtype=bool) & np.all(np.isfinite(data), axis=0)
    out = np.zeros(data.shape[1:] + (4,), dtype=np.float32)
    for i, band in enumerate(data):
        values = band[valid]
        lo, hi = np.percentile(values, percentiles) if values.size else (0.0, 1.0)
        scale = 1.0 / (hi - lo) if hi > lo else 0.0  # a constant band shows black
        stretched = np.clip((band - lo) * scale, 0.0, 1.0)
        out[..., i] = np.where(valid, stretched, 0.0)
    if data.shape[0] == 1:
        out[..., 1] = out[..., 0]
        out[..., 2] = out[..., 0]
    out[..., 3] = valid
    return out


def decimated_shape(height_px: int, width_px: int, max_px: int) -> Tuple[int, int]:
    """``(h, w)`` of a read whose longer side is at most ``max_px`` (native size if smaller)."""
    if max_px < 1:
        raise GeodetError(f"max_px must be at least 1, got {max_px}.")
    factor = max(height_px, width_px) / max_px
    if factor <= 1:
        return int(height_px), int(width_px)
    return max(1, int(round(height_px / factor))), max(1, int(round(width_px / factor)))


def snap_window(src, window) -> "Window":
    """A whole-pixel window inside the scene from a Window or CRS bounds.

    Fractional windows (e.g. from bounds between pixel edges) grow outward to
    whole pixels, then are clipped to the scene.
    """
    if window is None:
        return Window(0, 0, src.width, src.height)
    given = window
    if not isinstance(window, Window):
        try:
            left, bottom, right, top = (float(v) for v in window)
        except (TypeError, ValueError):
            raise GeodetError(
                f"window must be a rasterio Window or bounds (left, bottom, right, top), got {window!r}."
            ) from None
        if not (right > left and top > bottom):
            raise GeodetError(f"window bounds must have right > left and top > bottom, got {tuple(window)}.")
        window = from_bounds(left, bottom, right, top, transform=src.transform)
    eps = 1e-6
    c0 = math.floor(window.col_off + eps)
    r0 = math.floor(window.row_off + eps)
    c1 = math.ceil(window.col_off + window.width - eps)
    r1 = math.ceil(window.row_off + window.height - eps)
    c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, src.width), min(r1, src.height)
    if c1 <= c0 or r1 <= r0:
        raise GeodetError(f"the window {given!r} does not overlap the scene {src.name}.")
    return Window(c0, r0, c1 - c0, r1 - r0)


def read_for_display(src, window, bands: Sequence[int], max_px: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(pixels float32 [C, h, w], valid [h, w])`` of a window, decimated to ``max_px``."""
    shape = decimated_shape(int(window.height), int(window.width), max_px)
    native = shape == (int(window.height), int(window.width))
    if not native:
        log.debug(
            "%s: reading window %s as %s px (overviews: %s)", src.name, window, shape, src.overviews(bands[0])
        )
    return read_window(src, window, bands, out_shape=None if native else shape)


def frame_in_crs(obj, crs, what: str):
    """A GeoDataFrame (from a path or a frame, read by :func:`geodet.io.vector.read_frame`) reprojected to ``crs``."""
    frame, _ = read_frame(obj, what)
    return frame.to_crs(crs) if len(frame) and frame.crs != crs else frame

"""Box geometry between world and pixel space, and clipping to chips. Pure.

Pixel space is continuous with pixel (col, row) covering
``[col, col + 1] x [row, row + 1]``; the scene's affine maps these pixel
corners to world coordinates. Boxes are ``[N, 4]`` arrays ``(x1, y1, x2, y2)``
with x = column and y = row.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import shapely
from affine import Affine
from shapely.geometry.base import BaseGeometry


def _apply(transform: Affine, xy: np.ndarray) -> np.ndarray:
    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f
    x, y = xy[..., 0], xy[..., 1]
    return np.stack([a * x + b * y + c, d * x + e * y + f], axis=-1)


def world_to_pixel_points(xy_world: np.ndarray, transform: Affine) -> np.ndarray:
    """World ``[..., 2]`` (x, y) to continuous pixel ``[..., 2]`` (col, row) through ``~transform``."""
    return _apply(~transform, np.asarray(xy_world, np.float64))


def pixel_to_world_points(xy_px: np.ndarray, transform: Affine) -> np.ndarray:
    """Continuous pixel ``[..., 2]`` (col, row) to world ``[..., 2]`` (x, y) through ``transform``."""
    return _apply(transform, np.asarray(xy_px, np.float64))


def geometries_to_pixel_boxes(geoms: Sequence[BaseGeometry], transform: Affine) -> np.ndarray:
    """Pixel bounding boxes of world geometries.

    Each geometry is mapped vertex by vertex through the inverse affine and
    its bounds taken in pixel space, so this is exact for rotated or sheared
    transforms too.

    Returns:
        float64 ``[N, 4]`` xyxy in scene pixels; NaN rows for empty geometries.
    """
    geoms = np.asarray(list(geoms), dtype=object)
    if len(geoms) == 0:
        return np.zeros((0, 4), np.float64)
    px = shapely.transform(geoms, lambda xy: world_to_pixel_points(xy, transform))
    return shapely.bounds(px).astype(np.float64)


def pixel_boxes_to_corners_world(boxes_px: np.ndarray, transform: Affine) -> np.ndarray:
    """The four corners of each pixel box in world coordinates.

    Returns:
        float64 ``[N, 4, 2]``: corners (x1, y1), (x2, y1), (x2, y2), (x1, y2)
        of each box mapped through the affine (a parallelogram in world space
        when the transform is rotated).
    """
    b = np.asarray(boxes_px, np.float64).reshape(-1, 4)
    corners = np.stack(
        [
            np.stack([b[:, 0], b[:, 1]], -1),
            np.stack([b[:, 2], b[:, 1]], -1),
            np.stack([b[:, 2], b[:, 3]], -1),
            np.stack([b[:, 0], b[:, 3]], -1),
        ],
        axis=1,
    )
    return pixel_to_world_points(corners, transform)


def pixel_geometries_to_world(geoms: Sequence[BaseGeometry], transform: Affine) -> np.ndarray:
    """Shapely geometries in pixel space mapped vertex by vertex to world space.

    Returns:
        Object array ``[N]`` of geometries in ``transform``'s world coordinates.
    """
    geoms = np.asarray(list(geoms), dtype=object)
    if len(geoms) == 0:
        return geoms
    return shapely.transform(geoms, lambda xy: pixel_to_world_points(xy, transform))


def pixel_boxes_to_polygons(boxes_px: np.ndarray, transform: Affine) -> np.ndarray:
    """Shapely polygons (object array ``[N]``) of pixel boxes in world space."""
    corners = pixel_boxes_to_corners_world(boxes_px, transform)
    if len(corners) == 0:
        return np.zeros(0, dtype=object)
    return shapely.polygons(corners)


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Areas ``[N]`` of xyxy boxes (0 for degenerate boxes)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def clip_boxes_to_window(
    boxes_px: np.ndarray,
    window_px: Tuple[float, float, float, float],
    *,
    min_visible: float = 0.5,
) -> Tuple[np.ndarray, np.ndarray]:
    """Boxes of a scene that belong to a chip, in the chip's pixel space.

    Args:
        boxes_px: ``[N, 4]`` xyxy in scene pixels.
        window_px: ``(x1, y1, x2, y2)`` of the chip in scene pixels.
        min_visible: keep a box when at least this fraction of its area lies
            inside the window.

    Returns:
        ``(boxes_chip_px [M, 4] xyxy clipped to the chip, keep_idx [M])`` where
        ``keep_idx`` indexes ``boxes_px``.
    """
    b = np.asarray(boxes_px, np.float64).reshape(-1, 4)
    x1, y1, x2, y2 = window_px
    clipped = np.stack(
        [
            np.clip(b[:, 0], x1, x2),
            np.clip(b[:, 1], y1, y2),
            np.clip(b[:, 2], x1, x2),
            np.clip(b[:, 3], y1, y2),
        ],
        axis=1,
    )
    area = box_area(b)
    inside = box_area(clipped)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(area > 0, inside / np.where(area > 0, area, 1), 0.0)
    keep = np.nonzero((frac >= min_visible - 1e-9) & (inside > 0))[0]
    out = clipped[keep] - np.array([x1, y1, x1, y1])
    return out, keep

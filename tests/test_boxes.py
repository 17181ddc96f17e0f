"""World <-> pixel boxes, north-up and rotated; clipping to chips."""

import numpy as np
import pytest
import shapely
from affine import Affine

from geodet.core.boxes import (
    clip_boxes_to_window,
    geometries_to_pixel_boxes,
    pixel_boxes_to_corners_world,
    pixel_boxes_to_polygons,
    pixel_geometries_to_world,
    pixel_to_world_points,
    world_to_pixel_points,
)

NORTH_UP = Affine(0.4, 0, 500000.0, 0, -0.4, 3760000.0)
ROTATED = NORTH_UP @ Affine.rotation(17.0)
SHEARED = Affine(0.5, 0.1, 300000.0, 0.05, -0.5, 5000000.0)


@pytest.mark.parametrize("transform", [NORTH_UP, ROTATED, SHEARED], ids=["north-up", "rotated", "sheared"])
def test_point_round_trip(transform):
    rng = np.random.default_rng(0)
    px = rng.uniform(0, 5000, size=(100, 2))
    back = world_to_pixel_points(pixel_to_world_points(px, transform), transform)
    np.testing.assert_allclose(back, px, atol=1e-6)


@pytest.mark.parametrize("transform", [NORTH_UP, ROTATED, SHEARED], ids=["north-up", "rotated", "sheared"])
def test_geometry_round_trip(transform):
    # pixel polygons -> world -> pixel boxes gives the polygons' pixel bounds back
    polys_px = [shapely.box(10, 20, 30, 28), shapely.Polygon([(5, 5), (9, 6), (7, 11)])]
    world = pixel_geometries_to_world(polys_px, transform)
    np.testing.assert_allclose(geometries_to_pixel_boxes(world, transform), shapely.bounds(polys_px), atol=1e-6)
    corners = shapely.get_coordinates(world[0])[:4]
    np.testing.assert_allclose(corners, pixel_to_world_points(shapely.get_coordinates(polys_px[0])[:4], transform))
    assert len(pixel_geometries_to_world([], transform)) == 0


@pytest.mark.parametrize("transform", [NORTH_UP, ROTATED, SHEARED], ids=["north-up", "rotated", "sheared"])
def test_box_round_trip(transform):
    boxes_px = np.array([[10, 20, 30, 28], [0, 0, 1, 1], [100.5, 7.25, 130.0, 40.0]])
    polys = pixel_boxes_to_polygons(boxes_px, transform)
    np.testing.assert_allclose(geometries_to_pixel_boxes(polys, transform), boxes_px, atol=1e-6)


def test_pixel_corners_not_centres():
    # pixel (0, 0) spans the scene's top-left corner to one pixel size away
    corners = pixel_boxes_to_corners_world(np.array([[0, 0, 1, 1]]), NORTH_UP)[0]
    np.testing.assert_allclose(corners[0], [500000.0, 3760000.0])
    np.testing.assert_allclose(corners[2], [500000.4, 3759999.6])


def test_rotated_box_is_parallelogram_of_corners():
    t = Affine.translation(100, 200) @ Affine.rotation(90) @ Affine.scale(2, -2)
    corners = pixel_boxes_to_corners_world(np.array([[0, 0, 2, 1]]), t)[0]
    for (cx, cy), (px, py) in zip(corners, [(0, 0), (2, 0), (2, 1), (0, 1)]):
        np.testing.assert_allclose((cx, cy), t @ (px, py), atol=1e-9)


def test_geometries_to_pixel_boxes_polygon_bounds():
    poly = shapely.box(500004.0, 3759992.0, 500008.0, 3759996.0)
    np.testing.assert_allclose(geometries_to_pixel_boxes([poly], NORTH_UP), [[10, 10, 20, 20]], atol=1e-6)


def test_clip_keeps_mostly_visible_boxes():
    boxes = np.array([[10, 10, 20, 20], [95, 10, 105, 20], [97, 10, 107, 20], [200, 200, 210, 210]], float)
    out, keep = clip_boxes_to_window(boxes, (0, 0, 100, 100), min_visible=0.5)
    assert keep.tolist() == [0, 1]
    np.testing.assert_allclose(out, [[10, 10, 20, 20], [95, 10, 100, 20]])


def test_clip_shifts_to_chip_space():
    out, keep = clip_boxes_to_window(np.array([[110, 120, 130, 140]], float), (100, 100, 200, 200))
    np.testing.assert_allclose(out, [[10, 20, 30, 40]])

"""Figures: scene display in the scene CRS, quicklook PNGs, object-size histograms."""

from __future__ import annotations

import os

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imread
from rasterio.windows import Window
from shapely.geometry import box

from geodet.config import COCO_ANCHORS, AnchorConfig
from geodet.errors import GeodetError
from geodet.reports.display import display_bands
from geodet.reports.display import CLASS_COLORS
from geodet.reports.plot import (
    DETECTION_COLOR,
    anchor_sizes_px,
    check_png_path,
    plot_object_sizes,
    plot_pr_curve,
    quicklook,
    quicklook_array,
    show_scene,
)

CRS = "EPSG:32611"
X0, Y0, PX = 500_000.0, 4_000_000.0, 0.5  # north-up: top-left corner and pixel size (m)


def write_scene(path, height=48, width=64, *, bands=3, dtype="uint16", nodata=None, transform=None, data=None, crs=CRS):
    """A real GeoTIFF with a gradient per band; returns its affine."""
    transform = transform or Affine(PX, 0, X0, 0, -PX, Y0)
    if data is None:
        rows, cols = np.mgrid[0:height, 0:width]
        data = np.stack([(rows * 7 + cols * 3 + 50 * b) % 250 + 1 for b in range(bands)]).astype(dtype)
    profile = dict(driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0], dtype=str(data.dtype),
                   crs=crs, transform=transform, nodata=nodata)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return transform


def new_axes():
    fig = Figure()
    FigureCanvasAgg(fig)
    return fig.add_subplot(1, 1, 1)


def pixel_box_world(transform, c0, r0, c1, r1):
    """Shapely box of scene pixels [c0, c1] x [r0, r1] in the scene CRS (north-up)."""
    x0, y0 = transform @ (c0, r0)
    x1, y1 = transform @ (c1, r1)
    return box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def collection(ax, gid):
    found = [c for c in ax.collections if c.get_gid() == gid]
    assert len(found) == 1, [c.get_gid() for c in ax.collections]
    return found[0]


def path_bounds(coll):
    return np.array([[*p.vertices.min(axis=0), *p.vertices.max(axis=0)] for p in coll.get_paths()])


# --------------------------------------------------------------------------- show_scene


def test_show_scene_window_extent_is_window_bounds_in_scene_crs(tmp_path):
    path = tmp_path / "scene.tif"
    write_scene(path)
    ax = show_scene(path, window=Window(8, 4, 20, 10), ax=new_axes())
    left, right, bottom, top = X0 + 8 * PX, X0 + 28 * PX, Y0 - 14 * PX, Y0 - 4 * PX
    assert ax.get_xlim() == pytest.approx((left, right))
    assert ax.get_ylim() == pytest.approx((bottom, top))
    (image,) = ax.images
    assert image.get_extent() == pytest.approx([left, right, bottom, top])
    assert image.get_array().shape == (10, 20, 4)  # native resolution: window rows x cols

    # the same window given as bounds in the scene CRS
    ax2 = show_scene(path, window=(left, bottom, right, top), ax=new_axes())
    assert ax2.get_xlim() == pytest.approx((left, right))
    assert ax2.get_ylim() == pytest.approx((bottom, top))


def test_show_scene_bounds_between_pixel_edges_grow_to_whole_pixels_and_clip(tmp_path):
    path = tmp_path / "scene.tif"
    write_scene(path)
    # 0.3 px inside pixel edges, and reaching past the right / top scene edges
    ax = show_scene(path, window=(X0 + 10.15, Y0 - 5.15, X0 + 40, Y0 + 3), ax=new_axes())
    assert ax.get_xlim() == pytest.approx((X0 + 10.0, X0 + 64 * PX))
    assert ax.get_ylim() == pytest.approx((Y0 - 5.5, Y0))


def test_show_scene_whole_scene_decimated_to_max_px(tmp_path):
    path = tmp_path / "scene.tif"
    write_scene(path, height=48, width=64)
    ax = show_scene(path, ax=new_axes(), max_px=16)
    assert ax.images[0].get_array().shape == (12, 16, 4)
    assert ax.get_xlim() == pytest.approx((X0, X0 + 64 * PX))
    assert ax.get_ylim() == pytest.approx((Y0 - 48 * PX, Y0))


def test_show_scene_outlines_sit_on_box_bounds(tmp_path):
    path = tmp_path / "scene.tif"
    t = write_scene(path)
    det_boxes = [pixel_box_world(t, 10, 5, 18, 13), pixel_box_world(t, 40, 30, 47, 38)]
    detections = gpd.GeoDataFrame({"class": ["pool", "pool"], "score": [0.9, 0.4]}, geometry=det_boxes, crs=CRS)
    labels_scene = gpd.GeoDataFrame(geometry=[pixel_box_world(t, 11, 5, 18, 12)], crs=CRS)
    labels_path = tmp_path / "labels.geojson"
    labels_scene.to_crs("EPSG:4326").to_file(labels_path)  # a file in another CRS

    ax = show_scene(path, labels=labels_path, detections=detections, ax=new_axes(), scores=True)
    drawn = path_bounds(collection(ax, "detections"))
    np.testing.assert_allclose(drawn, np.array([g.bounds for g in det_boxes]), atol=1e-9)
    assert collection(ax, "detections").get_edgecolor()[0] == pytest.approx(
        np.array([0xFF, 0x2D, 0x55, 0xFF]) / 255
    )
    drawn_labels = path_bounds(collection(ax, "labels"))
    np.testing.assert_allclose(drawn_labels, [labels_scene.geometry[0].bounds], atol=1e-3)  # via EPSG:4326
    assert sorted(t.get_text() for t in ax.texts) == ["0.40", "0.90"]
    assert [h.get_text() for h in ax.get_legend().get_texts()] == ["labels (1)", "detections (2)"]
    # the truth is drawn dashed above the detections, so both show where they coincide
    assert collection(ax, "labels").get_zorder() > collection(ax, "detections").get_zorder()
    assert collection(ax, "labels").get_linestyle()[0][1] is not None  # a dash pattern
    assert collection(ax, "detections").get_linestyle()[0][1] is None  # solid
    assert ax.get_legend().get_lines()[0].get_linestyle() == "--"


def test_show_scene_only_draws_what_touches_the_window(tmp_path):
    path = tmp_path / "scene.tif"
    t = write_scene(path)
    inside, outside = pixel_box_world(t, 2, 2, 6, 6), pixel_box_world(t, 50, 40, 60, 46)
    detections = gpd.GeoDataFrame({"score": [0.5, 0.5]}, geometry=[inside, outside], crs=CRS)
    ax = show_scene(path, window=Window(0, 0, 16, 16), detections=detections, ax=new_axes())
    np.testing.assert_allclose(path_bounds(collection(ax, "detections")), [inside.bounds])


def test_show_scene_grey_float_band_with_nodata_is_transparent(tmp_path):
    path = tmp_path / "grey.tif"
    data = np.linspace(-5, 5, 32 * 32, dtype=np.float32).reshape(1, 32, 32)
    data[0, :4, :] = -9999
    write_scene(path, data=data, nodata=-9999)
    ax = show_scene(path, ax=new_axes())
    rgba = np.asarray(ax.images[0].get_array())
    assert rgba.shape == (32, 32, 4)
    assert (rgba[:4, :, 3] == 0).all() and (rgba[4:, :, 3] == 1).all()
    np.testing.assert_array_equal(rgba[..., 0], rgba[..., 1])  # grey
    assert rgba[4:, :, 0].min() == 0 and rgba[4:, :, 0].max() == 1


def test_show_scene_chosen_bands_and_many_bands(tmp_path):
    path = tmp_path / "multi.tif"
    write_scene(path, bands=5, dtype="int16")
    assert display_bands(5) == (1, 2, 3)
    assert display_bands(2) == (1,)
    assert display_bands(5, [4, 3, 2]) == (4, 3, 2)
    ax = show_scene(path, bands=[5], ax=new_axes())
    assert ax.images[0].get_array().shape == (48, 64, 4)
    with pytest.raises(GeodetError, match="1 band .* or 3 bands"):
        show_scene(path, bands=[1, 2], ax=new_axes())
    with pytest.raises(GeodetError, match="band"):
        show_scene(path, bands=[1, 2, 6], ax=new_axes())


def test_show_scene_refuses_rotated_scene_window_outside_and_labels_without_crs(tmp_path):
    rotated = tmp_path / "rotated.tif"
    write_scene(rotated, transform=Affine.translation(X0, Y0) @ Affine.rotation(20) @ Affine.scale(PX, -PX))
    with pytest.raises(GeodetError, match="north-up"):
        show_scene(rotated, ax=new_axes())
    path = tmp_path / "scene.tif"
    write_scene(path)
    with pytest.raises(GeodetError, match="does not overlap"):
        show_scene(path, window=(X0 - 100, Y0 - 10, X0 - 50, Y0), ax=new_axes())
    with pytest.raises(GeodetError, match="no CRS"):
        show_scene(path, labels=gpd.GeoDataFrame(geometry=[box(0, 0, 1, 1)]), ax=new_axes())
    with pytest.raises(GeodetError, match="does not exist"):
        show_scene(tmp_path / "missing.tif", ax=new_axes())


def test_show_scene_without_axes_makes_a_figure(tmp_path):
    import matplotlib.pyplot as plt

    path = tmp_path / "scene.tif"
    write_scene(path)
    ax = show_scene(path)
    try:
        assert ax.figure is not None and ax.images
    finally:
        plt.close(ax.figure)


# --------------------------------------------------------------------------- quicklook


def test_quicklook_png_has_max_side_and_refuses_overwrite(tmp_path):
    path = tmp_path / "scene.tif"
    write_scene(path, height=200, width=300)
    t = Affine(PX, 0, X0, 0, -PX, Y0)
    dets = gpd.GeoDataFrame({"class": ["pool"], "score": [0.8]}, geometry=[pixel_box_world(t, 30, 30, 60, 60)], crs=CRS)
    out = tmp_path / "look.png"
    assert quicklook(path, dets, out, max_px=100) == str(out)
    assert imread(out).shape == (67, 100, 4)  # 200 x 300 scaled by 1/3
    with pytest.raises(GeodetError, match="already exists"):
        quicklook(path, dets, out, max_px=100)
    quicklook(path, dets, out, max_px=1000, overwrite=True)
    assert imread(out).shape == (200, 300, 4)  # never upsampled
    assert sorted(os.listdir(tmp_path)) == ["look.png", "scene.tif"]  # no temporary file left
    with pytest.raises(GeodetError, match="does not exist"):
        quicklook(path, dets, tmp_path / "missing" / "look.png")
    # the check the CLI runs before detecting
    with pytest.raises(GeodetError, match="already exists"):
        check_png_path(out)
    check_png_path(out, overwrite=True)
    check_png_path(tmp_path / "new.png")


def test_quicklook_boxes_sit_on_scaled_pixel_boxes(tmp_path):
    path = tmp_path / "dark.tif"
    write_scene(path, height=100, width=100, data=np.zeros((3, 100, 100), np.uint8))
    t = Affine(PX, 0, X0, 0, -PX, Y0)
    dets = gpd.GeoDataFrame(
        {"class": ["car", "pool"], "score": [0.9, 0.8], "scene": ["dark.tif", "dark.tif"]},
        geometry=[pixel_box_world(t, 20, 10, 40, 30), pixel_box_world(t, 60, 60, 80, 90)],
        crs=CRS,
    ).to_crs("EPSG:4326")  # reprojected back to the scene CRS when drawn
    out = tmp_path / "look.png"
    quicklook(path, dets, out, max_px=50)
    png = np.round(imread(out) * 255).astype(int)
    assert png.shape == (50, 50, 4)
    car = np.array([*bytes.fromhex(CLASS_COLORS[0][1:]), 255])
    pool = np.array([*bytes.fromhex(CLASS_COLORS[1][1:]), 255])
    # car: scene px (20, 10)-(40, 30) -> PNG px (10, 5)-(20, 15): rows 5 and 14, columns 10 and 19
    for r, c in [(5, 10), (5, 19), (14, 10), (14, 19), (5, 15), (14, 15), (10, 10), (10, 19)]:
        np.testing.assert_array_equal(png[r, c], car, err_msg=f"car pixel {(r, c)}")
    # pool: scene px (60, 60)-(80, 90) -> PNG px (30, 30)-(40, 45)
    for r, c in [(30, 30), (44, 39), (37, 30), (30, 35)]:
        np.testing.assert_array_equal(png[r, c], pool, err_msg=f"pool pixel {(r, c)}")
    for r, c in [(4, 10), (10, 15), (5, 20), (15, 10), (29, 30), (37, 35)]:
        np.testing.assert_array_equal(png[r, c], [0, 0, 0, 255], err_msg=f"background pixel {(r, c)}")


def test_quicklook_rotated_scene_boxes_follow_the_affine(tmp_path):
    path = tmp_path / "rotated.tif"
    t = write_scene(path, height=40, width=40, data=np.zeros((1, 40, 40), np.uint8),
                    transform=Affine.translation(X0, Y0) @ Affine.rotation(30) @ Affine.scale(PX, -PX))
    from shapely.geometry import Polygon

    corners = [t @ (8, 4), t @ (20, 4), t @ (20, 16), t @ (8, 16)]  # a pixel box, rotated in the world
    dets = gpd.GeoDataFrame({"score": [0.7]}, geometry=[Polygon(corners)], crs=CRS)
    rgba = quicklook_array(path, dets, max_px=40)
    color = np.array([*bytes.fromhex(DETECTION_COLOR[1:]), 255])
    drawn = np.argwhere((rgba == color).all(axis=-1))
    assert drawn[:, 0].min() == 4 and drawn[:, 0].max() == 15  # rows 4..15
    assert drawn[:, 1].min() == 8 and drawn[:, 1].max() == 19  # columns 8..19


def test_quicklook_reads_an_overview_when_the_file_has_one(tmp_path):
    from rasterio.enums import Resampling

    path = tmp_path / "ovr.tif"
    bright_left = np.zeros((1, 64, 64), np.uint8)
    bright_left[:, :, :32] = 200
    write_scene(path, data=bright_left)
    with rasterio.open(path, "r+") as dst:
        dst.build_overviews([4], Resampling.nearest)
        dst.write(200 - bright_left)  # full resolution now bright on the right; the overview is not rebuilt
    rgba = quicklook_array(path, None, max_px=16)  # 64 px / 4: exactly the overview
    assert rgba.shape == (16, 16, 4)
    assert rgba[:, :8, 0].mean() > rgba[:, 8:, 0].mean()  # the overview's picture
    full = quicklook_array(path, None, max_px=64)
    assert full[:, :32, 0].mean() < full[:, 32:, 0].mean()


def test_quicklook_with_no_detections_and_a_detections_file_without_crs(tmp_path):
    path = tmp_path / "scene.tif"
    write_scene(path)
    empty = gpd.GeoDataFrame({"score": []}, geometry=gpd.GeoSeries([], crs=CRS), crs=CRS)
    quicklook(path, empty, tmp_path / "a.png")
    assert imread(tmp_path / "a.png").shape == (48, 64, 4)
    with pytest.raises(GeodetError, match="no CRS"):
        quicklook(path, gpd.GeoDataFrame({"score": [1.0]}, geometry=[box(0, 0, 1, 1)]), tmp_path / "b.png")
    assert not (tmp_path / "b.png").exists()


# --------------------------------------------------------------------------- pixels


# --------------------------------------------------------------------------- sizes / PR


def vertical_lines(ax):
    return sorted(float(line.get_xdata()[0]) for line in ax.lines)


def test_object_sizes_histogram_with_fitted_and_coco_anchor_lines():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 200, (50, 2))
    wh = rng.uniform(8, 24, (50, 2))
    boxes = np.hstack([xy, xy + wh])
    fitted = ((2, 3), AnchorConfig(sizes=(8.0, 16.0), scales=(1.0, 1.5), ratios=(1.0,)))
    ax = plot_object_sizes(boxes, anchors=fitted, ax=new_axes())
    counts = sum(p.get_height() for p in ax.patches)
    assert counts == 50
    expected = sorted([8.0, 12.0, 16.0, 24.0] + list(anchor_sizes_px(COCO_ANCHORS)))
    assert vertical_lines(ax) == pytest.approx(expected)
    assert len(anchor_sizes_px(COCO_ANCHORS)) == 15 and anchor_sizes_px(COCO_ANCHORS)[0] == 32
    assert ax.get_xscale() == "log"
    assert vertical_lines(plot_object_sizes(boxes, coco=False, ax=new_axes())) == []


def test_object_sizes_from_a_coverage_report():
    from geodet.modeling.anchors import coverage_report

    boxes = np.array([[0, 0, 10, 10], [5, 5, 25, 25], [40, 40, 56, 52]], float)
    fitted = ((3,), AnchorConfig(sizes=(12.0,), scales=(1.0,), ratios=(1.0,)))
    report = coverage_report(boxes, fitted, chip_size=64)
    ax = plot_object_sizes(report, ax=new_axes())
    lines = vertical_lines(ax)
    assert report["size_px"]["median"] in lines and 12.0 in lines and 32.0 in lines
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(s.startswith("fitted anchors (coverage") for s in legend)
    assert any(s.startswith("COCO anchors (coverage") for s in legend)


def test_object_sizes_refuses_no_boxes():
    with pytest.raises(GeodetError, match="no boxes"):
        plot_object_sizes(np.zeros((0, 4)), ax=new_axes())


def test_pr_curve_on_a_new_figure():
    import matplotlib.pyplot as plt

    report = {"iou": 0.5, "classes": {"pool": {"ap": 0.5, "pr_curve": {"recall": [0, 0.5, 1], "precision": [1, 1, 0.5]}}}}
    ax = plot_pr_curve(report)
    try:
        assert ax.get_legend().get_texts()[0].get_text() == "pool (AP50 0.500)"
    finally:
        plt.close(ax.figure)

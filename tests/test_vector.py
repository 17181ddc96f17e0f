"""Labels: any format and CRS, reprojected, checked, turned into pixel boxes."""

import geopandas as gpd
import numpy as np
import pytest
import shapely

from geodet.errors import GeodetError
from geodet.io.raster import open_scene
from geodet.io.vector import (
    AUTO_CLASS_FIELDS,
    auto_class_field,
    check_labels_inside,
    labels_for_scene,
    read_frame,
    read_labels,
)


@pytest.mark.parametrize("label_ext", [".geojson", ".gpkg", ".shp"])
def test_wgs84_labels_land_on_known_pixel_boxes(make_scene_files, label_ext):
    s = make_scene_files(300, 300, label_ext=label_ext)
    labels = read_labels(s.labels)
    boxes = labels_for_scene(labels, open_scene(s.path)).boxes_px
    assert len(boxes) == len(s.scene.boxes_px)
    # match each generated box to the nearest read box; within 1 px
    for b in s.scene.boxes_px:
        err = np.abs(boxes - b).max(axis=1).min()
        assert err < 1.0


def test_rotated_scene_labels(make_scene_files):
    s = make_scene_files(200, 200, rotation_deg=20.0)
    boxes = labels_for_scene(read_labels(s.labels), open_scene(s.path)).boxes_px
    for b in s.scene.boxes_px:
        assert np.abs(boxes - b).max(axis=1).min() < 1.0


def test_points_become_boxes_of_given_metres(make_scene_files):
    s = make_scene_files(200, 200, kind="point")
    info = open_scene(s.path)
    boxes = labels_for_scene(read_labels(s.labels), info, point_size_m=4.0).boxes_px
    assert len(boxes) == len(s.scene.boxes_px)
    np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], 4.0 / 0.4, atol=0.05)
    np.testing.assert_allclose(boxes[:, 3] - boxes[:, 1], 4.0 / 0.4, atol=0.05)


def test_class_field(make_scene_files, tmp_path):
    s = make_scene_files(256, 256)
    assert read_labels(s.labels).class_names == ("pool",)
    with pytest.raises(GeodetError, match="no field 'kind'"):
        read_labels(s.labels, class_field="kind")
    s2 = make_scene_files(256, 256, class_field=None, name="noclass")
    assert read_labels(s2.labels).class_names == ("object",)


def test_empty_and_crsless_files(tmp_path):
    empty = tmp_path / "empty.geojson"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(GeodetError, match="holds no features"):
        read_labels(str(empty))
    nocrs = tmp_path / "nocrs.gpkg"
    gpd.GeoDataFrame({"class": ["a"]}, geometry=[shapely.box(0, 0, 1, 1)]).to_file(nocrs)
    with pytest.raises(GeodetError, match="has no CRS"):
        read_labels(str(nocrs))
    bad = tmp_path / "bad.geojson"
    bad.write_text("{ not json")
    with pytest.raises(GeodetError, match="not a readable vector file"):
        read_labels(str(bad))


def test_read_frame_takes_paths_frames_and_series_and_drops_empty_geometries(tmp_path, caplog):
    frame = gpd.GeoDataFrame(
        {"class": ["a", "b", "c"]}, geometry=[shapely.box(0, 0, 1, 1), None, shapely.Polygon()], crs="EPSG:32611"
    )
    path = tmp_path / "f.gpkg"
    frame.to_file(path)
    for obj, name in ((str(path), str(path)), (path, str(path)), (frame, "the labels GeoDataFrame")):
        got, got_name = read_frame(obj, "labels")
        assert got_name == name and got["class"].tolist() == ["a"] and got.crs == frame.crs
    assert "2 empty geometr(ies) dropped" in caplog.text
    series, _ = read_frame(frame.geometry, "labels")
    assert len(series) == 1
    with pytest.raises(GeodetError, match="the labels must be a vector file path or a GeoDataFrame, got list"):
        read_frame([shapely.box(0, 0, 1, 1)], "labels")


def test_read_frame_one_crs_rule_for_labels_truth_and_plots(tmp_path):
    """Features without a CRS are refused with one wording wherever vector data comes in."""
    from geodet.reports.evaluation import evaluate

    nocrs = gpd.GeoDataFrame({"class": ["a"], "score": [0.5]}, geometry=[shapely.box(0, 0, 1, 1)])
    with pytest.raises(GeodetError, match=r"^the truth GeoDataFrame has no CRS, so its features cannot be placed"):
        read_frame(nocrs, "truth")
    path = tmp_path / "nocrs.gpkg"
    nocrs.to_file(path)
    messages = []
    for call in (lambda: read_labels(str(path)), lambda: evaluate(str(path), nocrs.set_crs("EPSG:32611"))):
        with pytest.raises(GeodetError, match="has no CRS, so its features cannot be placed") as err:
            call()
        messages.append(str(err.value))
    assert messages[0] == messages[1]  # the same sentence for labels and predictions
    empty, _ = read_frame(nocrs.iloc[:0], "detections")  # nothing to place: no CRS needed
    assert len(empty) == 0


def test_one_default_class_field_rule():
    assert AUTO_CLASS_FIELDS[0] == "class"
    assert auto_class_field(["geometry", "category", "label"]) == "label"  # order of AUTO_CLASS_FIELDS
    assert auto_class_field(["geometry", "kind"]) is None


def test_invalid_geometries_are_repaired(tmp_path, caplog):
    bowtie = shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10), (0, 0)])
    assert not bowtie.is_valid
    path = tmp_path / "bowtie.gpkg"
    gpd.GeoDataFrame({"class": ["a", "a"]}, geometry=[bowtie, shapely.box(0, 0, 2, 2)], crs="EPSG:32611").to_file(path)
    labels = read_labels(str(path))
    assert labels.frame.geometry.is_valid.all() and len(labels.frame) == 2
    assert "repaired" in caplog.text


def test_labels_outside_the_scene_say_how_many(make_scene_files, tmp_path):
    s = make_scene_files(128, 128)
    far = gpd.read_file(s.labels).translate(xoff=1.0)  # one degree east
    path = tmp_path / "far.geojson"
    gpd.GeoDataFrame({"class": ["pool"] * len(far)}, geometry=far.values, crs="EPSG:4326").to_file(path)
    labels = read_labels(str(path))
    per = [labels_for_scene(labels, open_scene(s.path))]
    with pytest.raises(GeodetError, match=rf"0 of {len(labels.frame)} inside"):
        check_labels_inside(labels, per, [s.path])

"""Evaluation: COCO AP pinned by hand, best-F1 point, geo layer, imagery restriction, CLI."""

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from affine import Affine

from geodet_cli.evaluate_cmd import evaluate_cmd
from geodet.errors import GeodetError
from geodet.core.metrics import evaluate_boxes
from geodet.reports.evaluation import evaluate, format_report, valid_pixels
from geodet.reports.plot import plot_pr_curve
from test_metrics import PREDS, SCORES, TRUTH  # the hand-computed case

UTM = "EPSG:32633"
ORIGIN = (500000.0, 5000000.0)  # UTM 33N, upper-left corner of the test scene


def utm_boxes(boxes_m):
    """Boxes given in metres from ORIGIN (x right, y down) -> UTM xyxy."""
    b = np.asarray(boxes_m, float)
    x0, y0 = ORIGIN
    return np.c_[x0 + b[:, 0], y0 - b[:, 3], x0 + b[:, 2], y0 - b[:, 1]]


def frame(boxes, crs, **columns):
    b = np.asarray(boxes, float)
    return gpd.GeoDataFrame(columns, geometry=list(shapely.box(b[:, 0], b[:, 1], b[:, 2], b[:, 3])), crs=crs)


@pytest.fixture
def truth_gpkg(tmp_path):
    path = tmp_path / "truth.gpkg"
    frame(utm_boxes([[10, 10, 20, 20], [40, 10, 50, 20], [70, 70, 80, 80]]), UTM,
          kind=["pool", "pool", "car"]).to_file(path)
    return path


@pytest.fixture
def pred_geojson(tmp_path):
    """Predictions in EPSG:4326: both pools found (one shifted 1 m), the car missed, one false pool."""
    path = tmp_path / "pred.geojson"
    boxes = utm_boxes([[10, 10, 20, 20], [41, 10, 51, 20], [5, 60, 15, 70]])
    frame(boxes, UTM, **{"class": ["pool"] * 3, "score": [0.9, 0.8, 0.7]}).to_crs("EPSG:4326").to_file(path)
    return path


def test_geo_4326_predictions_against_utm_truth(pred_geojson, truth_gpkg):
    r = evaluate(str(pred_geojson), str(truth_gpkg), class_field="kind")
    assert r["crs"] == UTM
    pool = r["classes"]["pool"]
    assert (pool["tp"], pool["fp"], pool["fn"]) == (2, 0, 0) and pool["threshold"] == 0.8
    assert pool["ap50"] == pytest.approx(1.0)
    assert r["classes"]["car"]["ap50"] == 0.0 and r["classes"]["car"]["fn"] == 1
    assert r["class_agnostic"] is False and r["imagery"] is None
    json.dumps(r)


def test_geo_geographic_inputs_use_utm(pred_geojson, truth_gpkg):
    truth = gpd.read_file(truth_gpkg).to_crs("EPSG:4326")
    pred = gpd.read_file(pred_geojson)
    r = evaluate(pred, truth, class_field="kind")
    assert r["crs"] == UTM
    assert r["classes"]["pool"]["tp"] == 2


def test_geo_truth_without_class_is_one_class(pred_geojson, truth_gpkg):
    truth = gpd.read_file(truth_gpkg).drop(columns="kind")
    r = evaluate(str(pred_geojson), truth)
    assert r["class_agnostic"] is True and list(r["classes"]) == ["pool"]
    assert (r["overall"]["tp"], r["overall"]["fn"]) == (2, 1)


def write_scene(path, *, nodata_rows=(0, 50), nodata_cols=(0, 30)):
    """100 x 100 px, 1 m pixels at ORIGIN, 3 bands; a nodata (0) block at the given rows/cols."""
    data = np.full((3, 100, 100), 120, np.uint8)
    data[:, nodata_rows[0]:nodata_rows[1], nodata_cols[0]:nodata_cols[1]] = 0
    with rasterio.open(path, "w", driver="GTiff", height=100, width=100, count=3, dtype="uint8", crs=UTM,
                       transform=Affine(1.0, 0.0, ORIGIN[0], 0.0, -1.0, ORIGIN[1]), nodata=0) as dst:
        dst.write(data)
    return path


def test_imagery_restriction(tmp_path):
    scene = write_scene(tmp_path / "scene.tif")
    truth = frame(utm_boxes([
        [50, 10, 60, 20], [60, 60, 70, 70], [80, 80, 90, 90],  # on valid pixels
        [10, 10, 20, 20], [5, 30, 15, 40],  # centres on the nodata block
        [120, 10, 130, 20],  # outside the scene
    ]), UTM, **{"class": ["pool"] * 6}).to_crs("EPSG:4326")
    pred = frame(utm_boxes([
        [50, 10, 60, 20], [60, 60, 70, 70],  # found
        [10, 10, 20, 20],  # over nodata: kept, a false positive
        [150, 150, 160, 160],  # outside the scene: dropped
    ]), UTM, **{"class": ["pool"] * 4, "score": [0.9, 0.8, 0.7, 0.95]})
    r = evaluate(pred, truth, imagery=str(scene))
    assert r["crs"] == UTM  # the imagery's CRS
    assert r["excluded"] == {"truth_outside_imagery": 1, "truth_on_nodata": 2, "pred_outside_imagery": 1}
    pool = r["classes"]["pool"]
    assert (pool["n_true"], pool["n_pred"]) == (3, 3)
    assert (pool["tp"], pool["fp"], pool["fn"]) == (2, 0, 1) and pool["threshold"] == 0.8


def test_valid_pixels_in_small_blocks_equals_full_mask(tmp_path):
    scene = write_scene(tmp_path / "scene.tif", nodata_rows=(13, 71), nodata_cols=(27, 44))
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 100, 300), rng.integers(0, 100, 300)
    with rasterio.open(scene) as src:
        full = src.dataset_mask() > 0
        got = valid_pixels(src, rows, cols, block_px=16)
    assert np.array_equal(got, full[rows, cols]) and not got.all() and got.any()


def test_no_truth_on_imagery_is_an_error(tmp_path):
    scene = write_scene(tmp_path / "scene.tif")
    truth = frame(utm_boxes([[120, 10, 130, 20]]), UTM, **{"class": ["pool"]})
    pred = frame(utm_boxes([[50, 10, 60, 20]]), UTM, **{"class": ["pool"], "score": [0.9]})
    with pytest.raises(GeodetError, match="valid pixels"):
        evaluate(pred, truth, imagery=str(scene))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p, t: (p.drop(columns="score"), t), "no 'score' column"),
        (lambda p, t: (p.set_crs(None, allow_override=True), t), "has no CRS"),
        (lambda p, t: (p, t.set_crs(None, allow_override=True)), "has no CRS"),
        (lambda p, t: (p, t.iloc[:0]), "holds no objects"),
        (lambda p, t: (p, t.set_geometry(t.geometry.centroid)), "without area"),
        (lambda p, t: (p.drop(columns="class"), t.assign(**{"class": ["a", "b", "a"]})), "no 'class' column"),
        (lambda p, t: (p.assign(score=["high", 0.8, 0.7]), t), "numeric 'score'"),
    ],
)
def test_geo_errors(pred_geojson, truth_gpkg, change, message):
    pred, truth = change(gpd.read_file(pred_geojson), gpd.read_file(truth_gpkg))
    with pytest.raises(GeodetError, match=message):
        evaluate(pred, truth)


def test_geo_truth_class_field_found_by_the_labels_rule(pred_geojson, truth_gpkg):
    """With no class field named, truth classes come from the same column training would use."""
    truth = gpd.read_file(truth_gpkg).rename(columns={"kind": "label"})
    r = evaluate(str(pred_geojson), truth)
    assert r["class_agnostic"] is False and sorted(r["classes"]) == ["car", "pool"]
    assert r == evaluate(str(pred_geojson), str(truth_gpkg), class_field="kind")


def test_geo_errors_on_files(tmp_path, pred_geojson, truth_gpkg):
    with pytest.raises(GeodetError, match="no class field 'species'"):
        evaluate(str(pred_geojson), str(truth_gpkg), class_field="species")
    with pytest.raises(GeodetError, match="does not exist"):
        evaluate(str(tmp_path / "nope.gpkg"), str(truth_gpkg))
    bad = tmp_path / "bad.geojson"
    bad.write_text("not json")
    with pytest.raises(GeodetError, match="not a readable vector file"):
        evaluate(str(bad), str(truth_gpkg))


# --------------------------------------------------------------------------- plot and CLI


def test_plot_pr_curve_on_axes_and_to_png(tmp_path):
    from matplotlib.figure import Figure

    r = evaluate_boxes(PREDS + [[0, 50, 10, 60]], SCORES + [0.95], ["car"] * 4 + ["pool"],
                       TRUTH + [[0, 50, 10, 60]], ["car"] * 3 + ["pool"])
    ax = Figure().add_subplot()
    assert plot_pr_curve(r, ax) is ax
    assert len(ax.lines) == 2 and "AP50 0.554" in ax.get_legend_handles_labels()[1][0]
    out = tmp_path / "pr.png"
    assert plot_pr_curve(r, out) == str(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["pr.png"]  # no temp file left


def test_cli_json_table_plot(pred_geojson, truth_gpkg, tmp_path):
    runner = CliRunner()
    args = [str(pred_geojson), str(truth_gpkg), "--class-field", "kind"]
    res = runner.invoke(evaluate_cmd, args + ["--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["classes"]["pool"]["tp"] == 2 and report["crs"] == UTM

    png = tmp_path / "pr.png"
    res = runner.invoke(evaluate_cmd, args + ["--iou", "0.3", "--plot", str(png)])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].split()[:4] == ["class", "n_true", "n_pred", "AP50"]
    assert lines[1].split()[0] == "car" and lines[2].split()[0] == "pool" and lines[3].split()[0] == "overall"
    assert "IoU 0.3" in res.stdout and png.exists()


def test_format_report_is_the_library_table():
    r = evaluate_boxes(PREDS, SCORES, ["car"] * 4, TRUTH, ["car"] * 3)
    lines = format_report(r).splitlines()
    assert lines[0].split() == ["class", "n_true", "n_pred", "AP50", "AP50:95", "P", "R", "F1", "thresh", "TP", "FP",
                                "FN"]
    assert lines[1].split()[:3] == ["car", "3", "4"] and lines[2].split()[0] == "overall"
    assert lines[-1] == "IoU 0.5"  # no CRS, imagery or class-agnostic note for a pixel-box report


def test_cli_errors_and_help(pred_geojson, truth_gpkg):
    runner = CliRunner()
    res = runner.invoke(evaluate_cmd, [str(pred_geojson), str(truth_gpkg), "--class-field", "nope"])
    assert res.exit_code == 1
    assert "Error: " in res.output and "no class field 'nope'" in res.output and "Traceback" not in res.output
    res = runner.invoke(evaluate_cmd, [str(pred_geojson), str(truth_gpkg), "--iou", "1.5"])
    assert res.exit_code == 2
    res = runner.invoke(evaluate_cmd, ["--help"])
    assert res.exit_code == 0 and "Examples:" in res.output and "geodet evaluate" in res.output


def test_geo_empty_predictions_file(tmp_path, truth_gpkg):
    empty = tmp_path / "none.geojson"
    empty.write_text('{"type": "FeatureCollection", "crs": {"type": "name", "properties": '
                     '{"name": "urn:ogc:def:crs:EPSG::32633"}}, "features": []}')
    r = evaluate(str(empty), str(truth_gpkg), class_field="kind")
    assert r["overall"]["fn"] == 3 and r["overall"]["n_pred"] == 0 and r["overall"]["ap50"] == 0.0

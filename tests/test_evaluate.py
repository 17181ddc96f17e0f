"""Evaluation: COCO AP pinned by hand, best-F1 point, geo layer, imagery restriction, CLI."""

import contextlib
import io
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
from geodet.reports.evaluation import best_f1_point, evaluate, evaluate_boxes, format_report, valid_pixels
from geodet.reports.plot import plot_pr_curve

# Three objects A, B, C of one class and four predictions, by descending score:
#   p1 0.9 = A exactly (IoU 1)           TP at every IoU threshold
#   p2 0.8 far from everything           FP
#   p3 0.7 inside B, IoU(p3, B) = 0.62   TP at IoU 0.50, 0.55, 0.60; FP from 0.65 on
#   p4 0.6 inside A, IoU 0.8, A taken    FP
TRUTH = [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]]
PREDS = [[0, 0, 10, 10], [100, 100, 110, 110], [20, 0, 30, 6.2], [0, 0, 10, 8]]
SCORES = [0.9, 0.8, 0.7, 0.6]
# Hand computation, COCO's 101-point interpolation (precision at recall r = max precision at recall >= r):
#   IoU <= 0.60: cumulative (recall, precision) = (1/3, 1), (1/3, 1/2), (2/3, 2/3), (2/3, 1/2)
#     r in {0.00 .. 0.33} (34 points) -> 1; r in {0.34 .. 0.66} (33 points) -> 2/3; r >= 0.67 -> 0
#     AP = (34 * 1 + 33 * 2/3) / 101 = 56 / 101 = 0.5545
#   IoU >= 0.65: only p1 is a TP: 34 points at precision 1 -> AP = 34 / 101
#   AP50:95 = (3 * 56/101 + 7 * 34/101) / 10 = 406 / 1010 = 0.4020
#   F1 = 2TP / (2TP + FP + FN) at thresholds 0.9, 0.8, 0.7, 0.6: 2/4, 2/5, 4/6, 4/7 -> best 2/3 at 0.7
AP50 = 56 / 101
AP50_95 = 406 / 1010


def test_hand_computed_ap_and_best_f1():
    r = evaluate_boxes(PREDS, SCORES, ["car"] * 4, TRUTH, ["car"] * 3)
    car = r["classes"]["car"]
    assert car["ap50"] == pytest.approx(AP50, abs=1e-12)
    assert car["ap50_95"] == pytest.approx(AP50_95, abs=1e-12)
    assert car["ap"] == pytest.approx(AP50, abs=1e-12)
    assert car["threshold"] == 0.7
    assert (car["tp"], car["fp"], car["fn"]) == (2, 1, 1)
    assert car["precision"] == pytest.approx(2 / 3) and car["recall"] == pytest.approx(2 / 3)
    assert car["f1"] == pytest.approx(2 / 3)
    curve = car["pr_curve"]
    assert len(curve["recall"]) == len(curve["precision"]) == 101
    assert curve["precision"][:34] == pytest.approx([1.0] * 34) and curve["precision"][-1] == 0.0
    assert curve["precision"][34] == pytest.approx(2 / 3) and curve["precision"][67] == 0.0
    assert r["overall"]["ap50"] == pytest.approx(AP50)
    json.dumps(r)  # plain JSON types only


def test_per_class_map_and_pooled_counts():
    preds = PREDS + [[0, 50, 10, 60]]
    scores = SCORES + [0.95]
    truth = TRUTH + [[0, 50, 10, 60]]
    r = evaluate_boxes(preds, scores, ["car"] * 4 + ["pool"], truth, ["car"] * 3 + ["pool"])
    assert r["classes"]["pool"]["ap50"] == pytest.approx(1.0)
    assert r["classes"]["car"]["ap50"] == pytest.approx(AP50)
    assert r["overall"]["ap50"] == pytest.approx((1.0 + AP50) / 2)
    # Pooled by score: 0.95 TP, 0.9 TP, 0.8 FP, 0.7 TP, 0.6 FP; 4 objects -> best F1 6/8 at 0.7.
    o = r["overall"]
    assert (o["threshold"], o["tp"], o["fp"], o["fn"]) == (0.7, 3, 1, 1)
    assert o["f1"] == pytest.approx(0.75)
    assert (o["n_true"], o["n_pred"]) == (4, 5)


def test_classes_are_matched_only_to_their_own_class():
    # Same box, other class: a false positive and a miss, never a match.
    r = evaluate_boxes([[0, 0, 10, 10]], [0.9], ["pool"], [[0, 0, 10, 10]], ["car"])
    assert r["classes"]["car"]["ap50"] == 0.0 and r["classes"]["car"]["fn"] == 1
    pool = r["classes"]["pool"]
    assert pool["ap50"] is None and pool["recall"] is None and pool["fp"] == 1
    assert r["overall"]["ap50"] == 0.0  # mean over classes with truth only
    assert (r["overall"]["tp"], r["overall"]["fp"], r["overall"]["fn"]) == (0, 1, 1)


def test_iou_other_than_coco_thresholds():
    # IoU(pred, truth) = 0.4: a match at --iou 0.3 but not at 0.5.
    r = evaluate_boxes([[0, 0, 10, 4]], [0.9], ["car"], [[0, 0, 10, 10]], ["car"], iou=0.3)
    car = r["classes"]["car"]
    assert car["ap"] == pytest.approx(1.0) and car["ap50"] == 0.0 and car["tp"] == 1
    with pytest.raises(GeodetError):
        evaluate_boxes([], [], [], TRUTH, ["car"] * 3, iou=0.0)


def test_no_predictions():
    r = evaluate_boxes(np.zeros((0, 4)), [], [], TRUTH, ["car"] * 3)
    car = r["classes"]["car"]
    assert car["ap50"] == 0.0 and (car["tp"], car["fp"], car["fn"]) == (0, 0, 3) and car["threshold"] is None


def test_best_f1_keeps_tied_scores_together():
    # The two 0.8 detections (one TP, one FP) stand or fall together.
    p = best_f1_point(np.array([0.9, 0.8, 0.8, 0.1]), np.array([True, True, False, False]), 2)
    assert (p["threshold"], p["tp"], p["fp"]) == (0.8, 2, 1)
    none = best_f1_point(np.array([0.5, 0.4]), np.array([False, False]), 3)
    assert (none["threshold"], none["fp"], none["fn"], none["f1"]) == (0.4, 2, 3, 0.0)


def _pycocotools_one_image(pred, scores, truth):
    """AP50 and AP50:95 of plain pycocotools, the whole scene as one image, no detection cap."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def anns(boxes, s=None):
        out = []
        for k, (x1, y1, x2, y2) in enumerate(boxes):
            a = {"id": k + 1, "image_id": 1, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                 "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
            if s is not None:
                a["score"] = float(s[k])
            out.append(a)
        return out

    with contextlib.redirect_stdout(io.StringIO()):
        gt, dt = COCO(), COCO()
        base = {"images": [{"id": 1}], "categories": [{"id": 1}]}
        gt.dataset = {**base, "annotations": anns(truth.tolist())}
        dt.dataset = {**base, "annotations": anns(pred.tolist(), scores)}
        gt.createIndex()
        dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        ev.params.maxDets = [len(pred)]
        ev.params.areaRng = [[0, float("inf")]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"][:, :, 0, 0, 0]
    return prec[0].mean(), prec.mean()


def test_grouped_images_equal_one_scene_image():
    rng = np.random.default_rng(7)
    xy = rng.uniform(0, 300, (250, 2))
    truth = np.c_[xy, xy + rng.uniform(5, 20, (250, 2))]
    pred = np.r_[truth[:200] + rng.normal(0, 2.0, (200, 4)), truth[:40] + rng.normal(0, 3.0, (40, 4))]
    pred = np.r_[pred, np.c_[rng.uniform(0, 300, (60, 2)), np.zeros((60, 2))]]
    pred[-60:, 2:] = pred[-60:, :2] + 12
    scores = rng.random(len(pred))
    r = evaluate_boxes(pred, scores, ["x"] * len(pred), truth, ["x"] * len(truth))
    ap50, ap50_95 = _pycocotools_one_image(pred, scores, truth)
    assert r["classes"]["x"]["ap50"] == pytest.approx(ap50, abs=1e-12)
    assert r["classes"]["x"]["ap50_95"] == pytest.approx(ap50_95, abs=1e-12)


# --------------------------------------------------------------------------- geo layer

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


def test_coco_map_per_class_ap50_over_chips():
    from geodet.reports.evaluation import coco_map

    # chip 0: the hand-computed case as class 0, plus a class-0 prediction scored 0.95
    # lying on truth C's place in chip 1, where there is no class-0 truth: it must not
    # match across chips, so it is a false positive ranked first:
    #   cumulative (recall, precision): (0, 0), (1/3, 1/2), (1/3, 1/3), (2/3, 1/2), (2/3, 2/5)
    #   interpolated precision is 1/2 for r in {0.00 .. 0.66} (67 points), 0 above: AP50 = 33.5 / 101
    # chip 1: one class-1 object found exactly (AP50 1); a class-2 prediction without truth is
    # left out of the per-class AP and of the mean.
    preds = [
        {"boxes": np.array(PREDS, float), "scores": np.array(SCORES), "labels": np.zeros(4, int)},
        {"boxes": np.array([[40, 0, 50, 10], [5, 5, 15, 15], [60, 60, 70, 70]], float),
         "scores": np.array([0.95, 0.9, 0.5]), "labels": np.array([0, 1, 2])},
    ]
    truths = [
        {"boxes": np.array(TRUTH, float), "labels": np.zeros(3, int)},
        {"boxes": np.array([[5, 5, 15, 15]], float), "labels": np.array([1])},
    ]
    r = coco_map(preds, truths)
    assert r["ap50_per_class"] == {0: pytest.approx(33.5 / 101), 1: pytest.approx(1.0)}
    assert r["map_50"] == pytest.approx((33.5 / 101 + 1.0) / 2)
    empty = coco_map([{"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)}],
                     [{"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int)}])
    assert empty == {"map_50": 0.0, "map": 0.0, "ap50_per_class": {}}

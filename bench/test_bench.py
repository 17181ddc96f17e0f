"""Tests of the benchmark harness's own pieces (collected by `pytest -q`: pyproject lists bench/ in testpaths).

    python -m pytest -q bench/test_bench.py -p no:cacheprovider
"""

import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

sys.path.insert(0, str(Path(__file__).resolve().parent))

import accuracy  # noqa: E402
import real_data  # noqa: E402
from geodet.testing import synthetic  # noqa: E402


def test_strips_cover_the_scene_without_overlap():
    strips = real_data.strip_windows(2299, 2472, 3)
    assert [(w.col_off, w.width) for w in strips] == [(0, 766), (766, 767), (1533, 766)]
    assert all(w.row_off == 0 and w.height == 2472 for w in strips)
    with pytest.raises(ValueError):
        real_data.strip_windows(2, 10, 3)


def test_folds():
    hold = real_data.holdout_fold(2299, 2472)
    assert hold.train == (Window(0, 0, 1533, 2472),) and hold.test == Window(1533, 0, 766, 2472)
    folds = real_data.cv_folds(2299, 2472)
    assert [f.test.col_off for f in folds] == [0, 766, 1533]
    assert folds[0].train == (Window(766, 0, 1533, 2472),)  # two adjacent strips merged
    assert len(folds[1].train) == 2  # the middle strip's neighbours stay apart
    for f in folds:
        cols = sorted([(w.col_off, w.width) for w in f.train] + [(f.test.col_off, f.test.width)])
        assert sum(w for _, w in cols) == 2299
        assert all(a + w == b for (a, w), (b, _) in zip(cols, cols[1:]))


def test_centres_and_window_index():
    t = Affine(0.1, 0, 528000.0, 0, -0.1, 4979000.0)
    bounds = np.array([[528000.0, 4978999.0, 528002.0, 4979000.0], [528076.6, 4978900.0, 528076.6, 4978900.0]])
    c = real_data.box_centres_px(bounds, t)
    np.testing.assert_allclose(c, [[10.0, 5.0], [766.0, 1000.0]], atol=1e-6)
    strips = real_data.strip_windows(2299, 2472, 3)
    # a centre on a cut goes east (half-open windows); one outside every window gets -1
    np.testing.assert_array_equal(real_data.window_index(np.vstack([c, [[-1, 5]]]), strips), [0, 1, -1])


def test_write_fold_parts_and_labels(tmp_path):
    data = tmp_path / "data"
    scene = synthetic.make_scene(300, 331, seed=3, difficulty="hard")
    tf = synthetic.write_scene(data / real_data.SCENE_NAME, scene, crs="EPSG:32612", pixel_size=0.1,
                               origin=(528000.0, 4979000.0))
    synthetic.write_labels(data / real_data.LABELS_NAME, scene, tf, "EPSG:32612", class_field="kind")
    folds = real_data.write_layout(data, tmp_path / "out", "cv")
    assert sum(f["n_test"] for f in folds) == len(scene.boxes_px)  # every object tested exactly once
    width = 0
    for fold, spec in zip(folds, real_data.cv_folds(331, 300)):
        assert fold["n_train"] + fold["n_test"] == len(scene.boxes_px)
        for tif, win in zip(fold["train"] + [fold["test"]], spec.train + (spec.test,)):
            with rasterio.open(tif) as ds:
                assert ds.transform.almost_equals(window_transform(win, tf)) and ds.crs.to_epsg() == 32612
                c0, c1 = int(win.col_off), int(win.col_off + win.width)
                np.testing.assert_array_equal(ds.read(), scene.image[:, :, c0:c1])
        with rasterio.open(fold["test"]) as ds:
            width += ds.width
            test = gpd.read_file(fold["test_labels"])
            assert list(test.columns) == ["kind", "geometry"] and test.crs.to_epsg() == 4326
            b = test.to_crs(ds.crs).geometry.bounds.to_numpy()
            cx = ((b[:, 0] + b[:, 2]) / 2 - ds.bounds.left) / 0.1
            assert (cx >= 0).all() and (cx < ds.width).all()
    assert width == 331
    holdout = real_data.write_layout(data, tmp_path / "hold", "holdout")
    assert len(holdout) == 1 and len(holdout[0]["train"]) == 1


def test_arguments_and_summary():
    with pytest.raises(SystemExit):
        accuracy.parse_args(["--seed-start", "96", "--seeds", "3"])  # would reach held-out seed 100
    args = accuracy.parse_args(["--seed-start", "0", "--seeds", "3"])
    assert args.seed_start == 0 and args.settings == "easy,hard,real,real-cv"
    runs = [
        {"setting": "hard", "anchors": "auto", "id": f"seeds {s}", "overall": {"ap50": m},
         "classes": {"car": {"ap50": c}, "pool": {"ap50": p}}}
        for s, m, c, p in ((100, 0.6, 0.4, 0.8), (102, 0.8, 0.7, 0.9))
    ] + [{"setting": "hard", "anchors": "auto", "id": "seeds 104", "error": "failed"}]
    (s,) = accuracy.summarise(runs)
    assert s["runs"] == 3 and s["failed"] == 1
    assert s["classes"]["car"]["worst_ap50"] == 0.4 and s["classes"]["car"]["worst_run"] == "seeds 100"
    assert s["classes"]["pool"]["mean_ap50"] == pytest.approx(0.85) and s["map50"]["worst"] == 0.6
    assert "worst 0.400" in accuracy.format_summary(s)


def test_paired_detect_scores_the_same_model_each_way(tmp_path):
    """--paired-detect scores one model on every test scene with extra detect arguments, through the CLI."""
    from geodet.inference.detector import default_model_path

    scenes = {}
    for name, seed in (("test", 5), ("site", 6)):
        scene = synthetic.make_scene(256, 256, seed=seed)
        transform = synthetic.write_scene(tmp_path / f"{name}.tif", scene, crs="EPSG:32611", pixel_size=0.4)
        synthetic.write_labels(tmp_path / f"{name}.geojson", scene, transform, "EPSG:32611", class_field="class")
        scenes[name] = (str(tmp_path / f"{name}.tif"), str(tmp_path / f"{name}.geojson"))
    job = {"test": scenes["test"][0], "test_labels": scenes["test"][1], "class_field": "class", "test_name": "test",
           "more_tests": [{"name": "site", "tif": scenes["site"][0], "labels": scenes["site"][1]}]}
    args = accuracy.parse_args(["real", "--paired-detect=--tta", "--paired-detect", "--tta --nms-iou 0.3"])
    paired = accuracy.paired_scores(default_model_path(), job, tmp_path / "run", args)
    assert list(paired) == ["--tta", "--tta --nms-iou 0.3"]
    for tests in paired.values():
        assert set(tests) == {"test", "site"} and all(0.5 < v <= 1 for v in tests.values())
    record = {"setting": "real", "id": "x", "anchors": "auto", "classes": {"pool": {"ap50": 0.9}}, "train_s": 1,
              "detect_s": 1, "eval_s": 1, "overall": {"ap50": 0.9, "ap50_95": 0.5, "precision": 1, "recall": 1},
              "tests": {"test": 0.9}, "paired": paired}
    assert "same model, detect --tta: test " in accuracy.format_run(record)

"""geodet tile: georeferenced chips + COCO annotations."""

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from geodet.config import ChipConfig
from geodet.errors import GeodetError
from geodet.learning.tiling import tile


def _load(out):
    return json.loads((Path(out) / "annotations.json").read_text())


def test_tile_sample_data(sample_scene, sample_labels, tmp_path):
    from geodet.io.raster import open_scene
    from geodet.io.vector import labels_for_scene, read_labels

    out = tmp_path / "tiles"
    summary = tile([sample_scene], sample_labels, str(out), chip=ChipConfig(size=256, overlap=48))
    coco = _load(out)
    assert {"images", "annotations", "categories"} <= set(coco)
    assert [c["name"] for c in coco["categories"]] == ["pool"]
    assert summary.chips == len(coco["images"]) == len(list((out / "chips").glob("*.tif")))
    images = {im["id"]: im for im in coco["images"]}
    for ann in coco["annotations"]:
        im = images[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= im["width"] + 1e-6 and y + h <= im["height"] + 1e-6
        assert ann["category_id"] == 1

    info = open_scene(sample_scene)
    truth = labels_for_scene(read_labels(sample_labels), info).boxes_px
    # every object fully inside some chip appears in that chip, exactly
    found = 0
    for im in coco["images"]:
        c0, r0, cw, ch = im["window"]
        inside = (truth[:, 0] >= c0) & (truth[:, 1] >= r0) & (truth[:, 2] <= c0 + cw) & (truth[:, 3] <= r0 + ch)
        anns = np.array([a["bbox"] for a in coco["annotations"] if a["image_id"] == im["id"]]).reshape(-1, 4)
        anns[:, 2:] += anns[:, :2]
        for b in truth[inside] - [c0, r0, c0, r0]:
            assert np.abs(anns - b).max(axis=1).min() < 1e-2
            found += 1
    assert found >= len(truth)

    # chip transforms: chip pixel (0, 0) is the scene pixel at the window's offset
    with rasterio.open(sample_scene) as scene:
        for im in coco["images"][:5]:
            with rasterio.open(out / im["file_name"]) as chip:
                c0, r0, cw, ch = im["window"]
                assert chip.crs == scene.crs
                assert chip.transform.almost_equals(scene.transform @ Affine.translation(c0, r0))
                np.testing.assert_array_equal(
                    chip.read(window=((0, ch), (0, cw))),
                    scene.read(window=((r0, r0 + ch), (c0, c0 + cw))),
                )


def test_nodata_only_chips_skipped(make_scene_files, tmp_path):
    s = make_scene_files(256, 256, bands=4, dtype="uint16", nodata_region=True)
    out = tmp_path / "t"
    summary = tile([s.path], s.labels, str(out), chip=ChipConfig(size=64, overlap=0))
    assert summary.skipped_nodata > 0
    assert summary.chips + summary.skipped_nodata == 16
    for path in (out / "chips").glob("*.tif"):
        with rasterio.open(path) as chip:
            assert chip.count == 4 and chip.dtypes[0] == "uint16"
            assert chip.read_masks(1).any()


def test_band_selection_and_small_scene_padding(make_scene_files, tmp_path):
    s = make_scene_files(256, 240, bands=4)
    out = tmp_path / "t"
    tile([s.path], s.labels, str(out), chip=ChipConfig(size=300, overlap=16, bands=(3, 2, 1)))
    chips = list((out / "chips").glob("*.tif"))
    assert len(chips) == 1
    with rasterio.open(chips[0]) as chip:
        assert (chip.width, chip.height, chip.count) == (300, 300, 3)


def test_existing_output_dir_refused_unless_overwrite(make_scene_files, tmp_path):
    s = make_scene_files(256, 256)
    out = tmp_path / "t"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(GeodetError, match="not empty"):
        tile([s.path], s.labels, str(out), chip=ChipConfig(size=128, overlap=0))
    assert (out / "keep.txt").read_text() == "precious"
    tile([s.path], s.labels, str(out), chip=ChipConfig(size=128, overlap=0), overwrite=True)
    assert (out / "annotations.json").exists() and not (out / "keep.txt").exists()


def test_failure_leaves_nothing(make_scene_files, tmp_path):
    s = make_scene_files(256, 256)
    out = tmp_path / "t"
    with pytest.raises(GeodetError):
        tile([s.path], s.labels, str(out), class_field="nope")
    assert not out.exists()
    assert list(tmp_path.glob(".t.tmp-*")) == []

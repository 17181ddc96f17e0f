"""The CLI: thin commands, one clear sentence for bad input, no traceback."""

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from geodet_cli.main import cli


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


def test_help_lists_commands():
    result = run("--help")
    assert result.exit_code == 0
    for name in ("tile", "anchors", "train", "detect", "evaluate", "export", "info"):
        assert name in result.output


def test_tile_command(make_scene_files, tmp_path):
    s = make_scene_files(200, 200)
    out = tmp_path / "tiles"
    result = run("tile", s.path, "--labels", s.labels, "--chip-size", 128, "--overlap", 16, "-o", out)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    coco = json.loads((out / "annotations.json").read_text())
    assert coco["images"] and coco["annotations"]


def _assert_one_sentence(result, fragment):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert fragment in result.output, result.output


def test_tile_bad_inputs(make_scene_files, tmp_path):
    s = make_scene_files(256, 256)
    # imagery without a CRS
    nocrs = tmp_path / "nocrs.tif"
    with rasterio.open(nocrs, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8",
                       transform=rasterio.Affine(1, 0, 0, 0, -1, 8)) as dst:
        dst.write(np.zeros((1, 8, 8), np.uint8))
    _assert_one_sentence(run("tile", nocrs, "--labels", s.labels, "-o", tmp_path / "a"), "has no CRS")
    # corrupt imagery
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"garbage")
    _assert_one_sentence(run("tile", bad, "--labels", s.labels, "-o", tmp_path / "b"), "not a readable raster")
    # empty labels
    empty = tmp_path / "empty.geojson"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    _assert_one_sentence(run("tile", s.path, "--labels", empty, "-o", tmp_path / "c"), "holds no features")
    # missing class field
    _assert_one_sentence(
        run("tile", s.path, "--labels", s.labels, "--class-field", "kind", "-o", tmp_path / "d"), "no field 'kind'"
    )
    # non-empty output folder
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    _assert_one_sentence(run("tile", s.path, "--labels", s.labels, "-o", full), "not empty")
    # bad band list
    _assert_one_sentence(run("tile", s.path, "--labels", s.labels, "--bands", "1,x", "-o", tmp_path / "e"), "bands")
    _assert_one_sentence(run("tile", s.path, "--labels", s.labels, "--bands", "1,9", "-o", tmp_path / "f"), "band")
    for name in "abcdef":
        assert not (tmp_path / name).exists()


def test_labels_without_crs_and_outside(make_scene_files, tmp_path):
    import geopandas as gpd

    s = make_scene_files(256, 256)
    frame = gpd.read_file(s.labels)
    nocrs = tmp_path / "nocrs.shp"  # a shapefile without .prj has no CRS
    frame.set_crs(None, allow_override=True).to_file(nocrs)
    _assert_one_sentence(run("tile", s.path, "--labels", nocrs, "-o", tmp_path / "a"), "CRS")
    far = tmp_path / "far.geojson"
    frame.set_geometry(frame.translate(xoff=2.0)).to_file(far)
    _assert_one_sentence(run("tile", s.path, "--labels", far, "-o", tmp_path / "b"), f"0 of {len(frame)} inside")


def test_anchors_command(sample_scene, sample_labels):
    result = run("anchors", "--imagery", sample_scene, "--labels", sample_labels, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    text = json.dumps(report)
    assert "coverage" in text
    assert report["fg_iou"] in (0.5, 0.45, 0.4)  # fitted as training fits it
    result = run("anchors", "--imagery", sample_scene, "--labels", sample_labels)
    assert result.exit_code == 0 and "coverage" in result.output.lower()
    result = run("anchors", "--imagery", sample_scene, "--labels", sample_labels, "--json", "--fg-iou", "0.3")
    assert json.loads(result.output)["fg_iou"] == 0.3


def test_user_errors_keeps_bugs_visible():
    """A GeodetError (ConfigError included) becomes one line; a plain ValueError is a bug and is not hidden."""
    import click

    from geodet.config import ChipConfig
    from geodet.errors import ConfigError, GeodetError
    from geodet_cli.options import user_errors

    with pytest.raises(click.ClickException, match="cannot read"):
        with user_errors():
            raise GeodetError("cannot read x.tif.")
    with pytest.raises(click.ClickException, match="overlap"):
        with user_errors():
            ChipConfig(size=64, overlap=64)
    with pytest.raises(ValueError, match="a bug") as info:
        with user_errors():
            raise ValueError("a bug")
    assert not isinstance(info.value, click.ClickException)
    with pytest.raises(ConfigError) as info:
        ChipConfig(size=4)
    assert isinstance(info.value, ValueError) and isinstance(info.value, GeodetError)


def test_cli_defaults_read_the_config_dataclasses():
    from geodet.config import TRAIN_CHIP, ChipConfig, DetectConfig, TrainConfig
    from geodet.io.vector import AUTO_CLASS_FIELDS

    def defaults(command):
        ctx = cli.make_context("geodet", [command, "--help"], resilient_parsing=True)
        cmd = cli.get_command(ctx, command)
        return {p.name: p.default for p in cmd.params}

    train = defaults("train")
    assert train["chip_size"] == TRAIN_CHIP.size == 256 and train["overlap"] == TRAIN_CHIP.overlap
    assert train["batch_size"] == TrainConfig.batch_size and train["lr"] == TrainConfig.lr
    assert train["point_size"] == TRAIN_CHIP.point_size_m and train["seed"] == TrainConfig.seed
    tile = defaults("tile")
    assert tile["chip_size"] == ChipConfig.size and tile["min_visible"] == ChipConfig.min_visible
    assert defaults("anchors")["chip_size"] == TRAIN_CHIP.size
    detect = defaults("detect")
    assert detect["score_threshold"] == DetectConfig.score_threshold and detect["nms_iou"] == DetectConfig.nms_iou
    text = CliRunner().invoke(cli, ["tile", "--help"]).output
    assert ", ".join(AUTO_CLASS_FIELDS) in " ".join(text.split())


def test_train_api_and_cli_share_the_chip_default():
    import inspect

    from geodet.config import TRAIN_CHIP
    from geodet.learning.training import train

    assert inspect.signature(train).parameters["chip"].default == TRAIN_CHIP

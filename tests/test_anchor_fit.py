"""Anchors fitted to a training set (geodet anchors): the report the command prints."""

import json

import pytest
from click.testing import CliRunner

from geodet.errors import ConfigError
from geodet.learning.anchor_fit import anchor_report
from geodet_cli.main import cli


def test_anchor_report_is_what_the_command_prints(make_scene_files):
    scene = make_scene_files(128, 128, seed=3, difficulty="hard")
    report = anchor_report([scene.path], scene.labels, chip_size=64)
    result = CliRunner().invoke(cli, ["anchors", "--imagery", scene.path, "--labels", scene.labels,
                                      "--chip-size", "64", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["count"] == report["count"] > 0
    with pytest.raises(ConfigError, match="maxiou"):
        anchor_report([scene.path], scene.labels, assigner="atss", fg_iou=0.4)

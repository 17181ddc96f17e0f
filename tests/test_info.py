"""geodet info: a model file and an ONNX export described as text and JSON."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from geodet.errors import GeodetError
from geodet.reports.info import describe, format_info
from geodet_cli.main import cli

from onnx_cases import _two_class_model


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return _two_class_model(tmp_path_factory.mktemp("info") / "two.pt")


def test_model_file_description(model_file):
    from geodet.modeling.modelfile import model_hash

    info = describe(model_file)
    assert info["kind"] == "model"
    assert info["classes"] == ["car", "pool"]
    assert info["bands"] == [1, 2, 3]
    assert info["pixel_size_m"] == pytest.approx(0.3)
    assert info["chip_size_px"] == 80 and info["overlap_px"] == 16
    assert info["anchors"]["sizes_px"] == [16.0, 32.0] and info["anchors"]["levels"] == [3, 4]
    assert info["assigner"] == "maxiou"
    assert info["training"]["best_epoch"] == 1
    assert info["training"]["val_ap50_per_class"] == {"car": 0.3, "pool": 0.5}
    assert info["model_hash"] == model_hash(model_file)
    text = format_info(info)
    for needle in ("car", "pool", "0.300 m", "80 px", "AP50 pool: 0.500", info["model_hash"], "maxiou"):
        assert needle in text


def test_info_command_text_and_json_for_model_and_export(model_file, tmp_path):
    pytest.importorskip("onnxruntime")
    from geodet.modeling.onnx_export import export_onnx

    onnx_path = tmp_path / "two.onnx"
    export_onnx(model_file, onnx_path)
    for path in (model_file, onnx_path):
        text = run("info", path)
        assert text.exit_code == 0, text.output
        assert "AP50 car: 0.300" in text.output
        result = run("info", path, "--json")
        assert result.exit_code == 0, result.output
        data = json.loads(result.output)
        assert data["classes"] == ["car", "pool"]
    assert data["kind"] == "onnx"
    assert data["model_hash"] == describe(model_file)["model_hash"]  # the export names the model it came from
    assert data["metadata"]["det_type"] == "YOLO_v5_or_v7_default"
    assert "divided by 255" in data["input"]
    assert "YOLO_v5_or_v7_default" in run("info", onnx_path).output


def test_info_bad_files_one_sentence(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    for path in (bad, tmp_path / "missing.pt"):
        result = run("info", path)
        assert result.exit_code != 0 and result.output.startswith("Error: ") and "Traceback" not in result.output
    with pytest.raises(GeodetError):
        describe(bad)

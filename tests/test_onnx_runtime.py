"""Detection through onnxruntime: the torch detections, and every file that is not a sound geodet
export refused before onnxruntime opens it.

Tolerances: tests/onnx_cases.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geodet.config import DetectConfig
from geodet.inference.detection import detect
from geodet.inference.detector import default_model_path
from geodet.errors import GeodetError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from geodet.inference.onnx_runtime import OnnxNet, load_onnx  # noqa: E402
from geodet.modeling.onnx_export import INPUT_SCALE

from onnx_cases import _above, _frame_dets, _match, _one_sentence, run  # noqa: E402


def test_detect_onnx_equals_torch(make_scene_files, default_onnx):
    s = make_scene_files(256, 384, seed=2)
    cfg = DetectConfig(precision="float32", score_threshold=0.3)
    a = detect(s.path, default_model_path(), config=cfg)
    b = detect(s.path, default_onnx, config=cfg)
    assert len(a) > 0
    da, db = _frame_dets(a, s.transform), _frame_dets(b, s.transform)
    _match(_above(da, cfg.score_threshold), db)
    _match(_above(db, cfg.score_threshold), da)


def test_detect_onnx_with_tta_equals_torch(make_scene_files, default_onnx):
    """Test-time flips wrap the onnxruntime runner as they wrap the torch network."""
    s = make_scene_files(256, 256, seed=4)
    cfg = DetectConfig(precision="float32", score_threshold=0.3, tta=True)
    a = detect(s.path, default_model_path(), config=cfg)
    b = detect(s.path, default_onnx, config=cfg)
    assert len(a) > 0
    da, db = _frame_dets(a, s.transform), _frame_dets(b, s.transform)
    _match(_above(da, cfg.score_threshold), db)
    _match(_above(db, cfg.score_threshold), da)


def test_detect_onnx_two_classes_padded_chip(two_class, make_scene_files):
    """Class-wise selection and an 80 px chip padded to 96 px: the runner selects as torch does."""
    pt, onnx_path = two_class
    s = make_scene_files(160, 200, seed=1)
    cfg = DetectConfig(precision="float32", score_threshold=0.35)
    a = detect(s.path, pt, config=cfg)
    b = detect(s.path, onnx_path, config=cfg)
    assert len(a) > 10 and set(a["class"]) == {"car", "pool"}
    assert set(a.columns) == set(b.columns)
    da, db = _frame_dets(a, s.transform), _frame_dets(b, s.transform)
    _match(_above(da, cfg.score_threshold), db)
    _match(_above(db, cfg.score_threshold), da)


def test_onnx_detector_refuses_another_chip_size(two_class):
    from geodet.inference.detector import load_detector

    with pytest.raises(GeodetError, match="80 px chips"):
        load_detector(two_class[1], DetectConfig(chip_size=128))


def test_detect_command_runs_an_export(tmp_path, two_class, make_scene_files):
    s = make_scene_files(96, 96)
    out = tmp_path / "dets.gpkg"
    result = run("detect", s.path, "-m", two_class[1], "-o", out, "--quiet", "--score-threshold", "0.4")
    assert result.exit_code == 0, result.output
    assert out.exists() and "detections" in result.output
    # The output names the model the export was made from, as an in-process run does.
    from geodet.modeling.modelfile import model_hash
    from geodet.io.formats import read_output_metadata

    meta = read_output_metadata(out)
    assert meta["model_name"] == "two.pt" and meta["model_hash"] == model_hash(two_class[0])


def test_execution_providers():
    import onnxruntime as ort

    from geodet.inference.onnx_runtime import _providers

    assert _providers("cpu") == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert _providers("auto")[0] == "CUDAExecutionProvider"
    else:
        assert _providers("auto") == ["CPUExecutionProvider"]
        with pytest.raises(GeodetError, match="CUDA"):
            _providers("cuda")


def _external_tensor(name: str, location: str):
    from onnx import TensorProto, helper

    tensor = helper.make_tensor(name, TensorProto.FLOAT, [1], [0.0])
    del tensor.float_data[:]
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "4")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def test_hostile_onnx_files_give_one_sentence(tmp_path, two_class, make_scene_files):
    from onnx import TensorProto, helper

    s = make_scene_files(64, 64)
    _, good = two_class
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xffnot a protobuf" * 100)
    truncated = tmp_path / "truncated.onnx"
    data = open(good, "rb").read()
    truncated.write_bytes(data[: len(data) // 2])
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(foreign))
    not_json = tmp_path / "notjson.onnx"
    model = onnx.load(good)
    model.metadata_props.add(key="geodet_chip_size", value="{not json")
    onnx.save(model, str(not_json))
    external = tmp_path / "external.onnx"
    model = onnx.load(good)
    onnx.save(model, str(external), save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
              size_threshold=0)
    for path in (garbage, truncated, foreign, not_json, external, tmp_path / "missing.onnx"):
        _one_sentence(run("detect", s.path, "-m", path, "-o", tmp_path / "out.geojson", "--quiet"))
        if path is not external:
            _one_sentence(run("info", path))
    assert not (tmp_path / "out.geojson").exists()


def test_external_data_anywhere_in_the_graph_is_refused_before_the_job_folder(tmp_path, two_class, make_scene_files):
    """A Constant node, or a tensor inside an If branch, whose data lives in a file beside the
    .onnx is refused like an external initializer; the refused command leaves no job folder, so
    the corrected command runs on the same output."""
    from onnx import TensorProto, helper

    s = make_scene_files(64, 64)
    _, good = two_class
    (tmp_path / "secret.bin").write_bytes(np.float32([1e6]).tobytes())  # what onnxruntime would read
    constant = onnx.load(good)
    constant.graph.node.append(helper.make_node("Constant", [], ["hidden"], value=_external_tensor("c", "secret.bin")))
    nested = onnx.load(good)
    branch = helper.make_graph([helper.make_node("Constant", [], ["b"], value=_external_tensor("d", "secret.bin"))],
                               "branch", [], [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])])
    nested.graph.node.append(helper.make_node("Constant", [], ["cond"], value=helper.make_tensor(
        "t", TensorProto.BOOL, [], [True])))
    nested.graph.node.append(helper.make_node("If", ["cond"], ["picked"], then_branch=branch, else_branch=branch))
    out = tmp_path / "out.geojson"
    for name, model in (("constant", constant), ("nested", nested)):
        path = tmp_path / f"{name}.onnx"
        onnx.save(model, str(path))
        result = run("detect", s.path, "-m", path, "-o", out, "--quiet")
        _one_sentence(result)
        assert "external files" in result.output, result.output
        assert not out.exists() and not Path(str(out) + ".geodet-job").exists()
    result = run("detect", s.path, "-m", good, "-o", out, "--quiet")
    assert result.exit_code == 0, result.output


def test_an_export_whose_graph_disagrees_with_its_metadata_is_one_sentence(tmp_path, two_class, make_scene_files):
    s = make_scene_files(64, 64)
    _, good = two_class
    for key, value in (("geodet_chip_size", "112"), ("geodet_class_names", '["a", "b", "c"]'),
                       ("geodet_bands", "[1, 2]")):
        model = onnx.load(good)
        for prop in model.metadata_props:
            if prop.key == key:
                prop.value = value
        path = tmp_path / f"{key}.onnx"
        onnx.save(model, str(path))
        result = run("detect", s.path, "-m", path, "-o", tmp_path / "out.geojson", "--quiet")
        _one_sentence(result)
        assert "does not match its own metadata" in result.output or "band" in result.output, result.output


def test_onnxnet_maps_chips_back_to_raw(two_class):
    """The runner's input is (chip * std + mean) / 255: the graph's normalisation restores the chip."""
    net, meta = load_onnx(two_class[1])
    assert isinstance(net, OnnxNet)
    chips = np.zeros((1, 3, 80, 80), np.float32)
    x = net.raw_input(chips)
    assert x.shape == (1, 3, 96, 96)
    np.testing.assert_allclose(x[0, :, 0, 0] * INPUT_SCALE, meta.band_mean, rtol=1e-6)
    np.testing.assert_allclose(x[0, :, -1, -1] * INPUT_SCALE, meta.band_mean, rtol=1e-6)  # padding = 0 normalised

"""ONNX export: the graph, its metadata, the Deepness layout, and detection through onnxruntime.

Tolerances. The export runs the same float32 network as torch, in another
library (onnxruntime vs oneDNN): only the summation order of the convolutions
differs. Each float32 sum of n terms is off by about sqrt(n) * 6e-8 relative;
over ~20 layers of n <= 3 * 3 * 512 terms that is ~1e-5 relative on a logit
or box delta. Logits are at most ~10 in size and sigmoid's slope is <= 1/4,
so scores agree to ~2.5e-5: SCORE_TOL = 1e-4. A box side is anchor * exp(dw)
(<= ~100 px here): 1e-5 relative is 1e-3 px: BOX_TOL_PX = 1e-2. Detections
within SCORE_TOL of a threshold may fall on either side, so sets are compared
only above threshold + SCORE_TOL.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from geodet.config import AnchorConfig, DetectConfig, ModelConfig
from geodet.inference.detection import detect
from geodet.inference.detector import default_model_path
from geodet.errors import GeodetError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from geodet.inference.onnx_runtime import OnnxNet, load_onnx  # noqa: E402
from geodet.modeling.onnx_export import DEEPNESS_DETECTOR_TYPE, INPUT_SCALE, export_onnx, read_onnx_metadata
from geodet_cli.main import cli  # noqa: E402

from conftest import tiny_model_overrides  # noqa: E402

SCORE_TOL = 1e-4
BOX_TOL_PX = 1e-2


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def default_onnx(tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "default.onnx"
    export_onnx(default_model_path(), out)
    return str(out)


def _two_class_model(path, chip_size=80):
    """A tiny 2-class model with spread-out random scores (many detections, no ties), saved to ``path``."""
    from geodet.modeling.model import build_model
    from geodet.modeling.modelfile import save_model

    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=2, levels=(3, 4), anchors=AnchorConfig(sizes=(16.0, 32.0)), **tiny_model_overrides())
    net = build_model(cfg).eval()
    with torch.no_grad():
        torch.nn.init.normal_(net.head.cls_logits.weight, std=0.05)
        net.head.cls_logits.bias.fill_(-0.5)
        torch.nn.init.normal_(net.head.bbox_reg.weight, std=0.02)
    history = [{"epoch": 1, "loss": 0.5, "seconds": 3.0, "chips": 12, "val_map50": 0.4, "val_map": 0.2,
                "val_ap50": {"car": 0.3, "pool": 0.5}}]
    save_model(path, net, model_config=cfg, class_names=["car", "pool"], bands=[1, 2, 3],
               band_mean=[100.0, 110.0, 90.0], band_std=[40.0, 35.0, 45.0], chip_size=chip_size, overlap=16,
               gsd=0.3, dtype="uint8", extra={"history": history})
    return str(path)


@pytest.fixture(scope="module")
def two_class(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two")
    pt = _two_class_model(folder / "two.pt")
    onnx_path = folder / "two.onnx"
    export_onnx(pt, onnx_path)
    return pt, str(onnx_path)


def _match(a, b):
    """Every detection of ``a`` (boxes [N, 4], scores, labels) has one in ``b`` within the tolerances."""
    boxes_a, scores_a, labels_a = a
    boxes_b, scores_b, labels_b = b
    for box, score, label in zip(boxes_a, scores_a, labels_a):
        same = (labels_b == label) & (np.abs(boxes_b - box).max(axis=1) <= BOX_TOL_PX)
        assert same.any(), f"no counterpart for box {box} ({score:.4f})"
        assert np.abs(scores_b[same] - score).min() <= SCORE_TOL


def _above(dets, threshold):
    boxes, scores, labels = dets
    keep = scores >= threshold + SCORE_TOL
    return boxes[keep], scores[keep], labels[keep]


# --------------------------------------------------------------------------- the file


def test_metadata_has_deepness_and_geodet_keys(default_onnx):
    model = onnx.load(default_onnx)
    assert model.opset_import[0].version >= 17
    raw = {p.key: p.value for p in model.metadata_props}
    values = {k: json.loads(v) for k, v in raw.items()}  # Deepness json.loads every value
    assert values["model_type"] == "Detector"
    assert values["det_type"] == DEEPNESS_DETECTOR_TYPE
    assert values["class_names"] == {"0": "pool"}
    assert values["resolution"] == pytest.approx(40.0)  # 0.4 m/px in cm/px
    assert values["tiles_size"] == values["tile_size"] == 256
    assert values["tiles_overlap"] == 25  # 64 px of 256, in percent
    assert values["det_conf"] == DetectConfig().score_threshold
    assert values["det_iou_thresh"] == DetectConfig().nms_iou
    from geodet.modeling.modelfile import model_hash

    assert values["geodet_model_hash"] == model_hash(default_model_path())
    for key in ("geodet_version", "geodet_bands", "geodet_band_mean", "geodet_band_std", "geodet_gsd_m",
                "geodet_chip_size", "geodet_overlap", "geodet_score_threshold", "geodet_nms_iou", "geodet_input"):
        assert key in values
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 256, 256]


def test_dynamic_batch_1_and_3(two_class):
    _, onnx_path = two_class
    net, meta = load_onnx(onnx_path)
    rng = np.random.default_rng(0)
    x = rng.random((3, 3, 96, 96), dtype=np.float32)
    out3 = net.run_raw(x)
    assert out3.shape[0] == 3 and out3.shape[2] == 5 + 2
    for i in range(3):
        out1 = net.run_raw(x[i:i + 1])
        assert out1.shape == (1,) + out3.shape[1:]
        np.testing.assert_allclose(out1[0], out3[i], atol=BOX_TOL_PX)


# --------------------------------------------------------------------------- Deepness


def _deepness_decode(rows: np.ndarray, conf: float, iou: float):
    """A chip's output decoded as Deepness documents its YOLO_v5_or_v7_default type:
    rows with column 4 >= conf, xywh -> xyxy, greedy NMS by column 4, class = argmax of columns 5+."""
    rows = rows[rows[:, 4] >= conf]
    xyxy = np.stack([rows[:, 0] - rows[:, 2] / 2, rows[:, 1] - rows[:, 3] / 2,
                     rows[:, 0] + rows[:, 2] / 2, rows[:, 1] + rows[:, 3] / 2], 1)
    order = np.argsort(-rows[:, 4])
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        lt = np.maximum(xyxy[i, :2], xyxy[rest, :2])
        rb = np.minimum(xyxy[i, 2:], xyxy[rest, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
        area = np.prod(xyxy[:, 2:] - xyxy[:, :2], axis=1)
        order = rest[inter / (area[i] + area[rest] - inter) < iou]
    keep = np.array(keep, np.int64)
    return xyxy[keep], rows[keep, 4], np.argmax(rows[keep, 5:], axis=1)


def test_deepness_decode_gives_the_torch_detections(default_onnx, make_scene_files):
    """Raw uint8 RGB / 255, as Deepness feeds it, decoded the Deepness way = torch's detections."""
    from geodet.inference.detector import load

    s = make_scene_files(256, 256, seed=5)
    import rasterio

    with rasterio.open(s.path) as src:
        raw = src.read([1, 2, 3]).astype(np.float32)
    net_onnx, meta = load_onnx(default_onnx)
    rows = net_onnx.run_raw((raw / INPUT_SCALE)[None])[0]
    conf, iou = 0.3, 0.5
    deepness = _deepness_decode(rows, conf, iou)

    net, meta, _ = load(default_model_path(), "cpu")
    mean = np.asarray(meta.band_mean, np.float32)[:, None, None]
    std = np.asarray(meta.band_std, np.float32)[:, None, None]
    with torch.inference_mode():
        out = net(torch.from_numpy((raw - mean) / std)[None])[0]
    keep = out["scores"] >= conf
    torch_dets = (out["boxes"][keep].numpy(), out["scores"][keep].numpy(), out["labels"][keep].numpy())
    assert len(torch_dets[1]) >= 3  # the scene has pools the model finds
    _match(_above(torch_dets, conf), deepness)
    _match(_above(deepness, conf), torch_dets)


# --------------------------------------------------------------------------- detect through onnxruntime


def _frame_dets(frame, transform):
    from geodet.core.boxes import geometries_to_pixel_boxes

    classes = sorted(set(frame["class"]))
    boxes = np.asarray(geometries_to_pixel_boxes(frame.geometry.values, transform), np.float64).reshape(-1, 4)
    labels = np.array([classes.index(c) for c in frame["class"]])
    return boxes, frame["score"].to_numpy(), labels


def test_detect_onnx_equals_torch(make_scene_files, default_onnx):
    s = make_scene_files(256, 384, seed=2)
    cfg = DetectConfig(precision="float32", score_threshold=0.3)
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


# --------------------------------------------------------------------------- the command and bad input


def test_export_command_refuses_existing_output_and_writes_atomically(tmp_path, two_class):
    pt, _ = two_class
    out = tmp_path / "m.onnx"
    result = run("export", pt, "-o", out)
    assert result.exit_code == 0, result.output
    first = out.read_bytes()
    result = run("export", pt, "-o", out)
    assert result.exit_code != 0 and "already exists" in result.output and "Traceback" not in result.output
    assert out.read_bytes() == first
    result = run("export", pt, "-o", out, "--overwrite", "--score-threshold", "0.6")
    assert result.exit_code == 0, result.output
    assert read_onnx_metadata(out)["det_conf"] == pytest.approx(0.6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporaries left


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


def _one_sentence(result):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output


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


def _external_tensor(name: str, location: str):
    from onnx import TensorProto, helper

    tensor = helper.make_tensor(name, TensorProto.FLOAT, [1], [0.0])
    del tensor.float_data[:]
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "4")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


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


def test_export_of_bad_model_file_is_one_sentence(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"nope")
    _one_sentence(run("export", bad, "-o", tmp_path / "x.onnx"))
    assert not (tmp_path / "x.onnx").exists()


def test_onnxnet_maps_chips_back_to_raw(two_class):
    """The runner's input is (chip * std + mean) / 255: the graph's normalisation restores the chip."""
    net, meta = load_onnx(two_class[1])
    assert isinstance(net, OnnxNet)
    chips = np.zeros((1, 3, 80, 80), np.float32)
    x = net.raw_input(chips)
    assert x.shape == (1, 3, 96, 96)
    np.testing.assert_allclose(x[0, :, 0, 0] * INPUT_SCALE, meta.band_mean, rtol=1e-6)
    np.testing.assert_allclose(x[0, :, -1, -1] * INPUT_SCALE, meta.band_mean, rtol=1e-6)  # padding = 0 normalised


@pytest.mark.parametrize("input_scale, head_norm, backbone", [
    (2.0, "none", "resnet18"), (0.5, "none", "resnet18"), (1.0, "group", "resnet18"),
    (0.5, "none", "efficientnet-lite0"),
])
def test_export_of_a_resampling_model_equals_torch(tmp_path, make_scene_files, input_scale, head_norm, backbone):
    """ModelConfig.input_scale 2 (tiny objects) and 0.5 (large ones): the graph resamples like
    ChipBatcher and returns chip pixels. A GroupNorm head (``head_norm: group``) and the
    EfficientNet-Lite0 backbone (TensorFlow "same" padding, batch norms folded with their
    activations) export as well."""
    from geodet.modeling.model import build_model
    from geodet.modeling.modelfile import save_model

    torch.manual_seed(1)
    cfg = ModelConfig(num_classes=2, levels=(3, 4), anchors=AnchorConfig(sizes=(16.0, 32.0)), input_scale=input_scale,
                      head_norm=head_norm, **{**tiny_model_overrides(), "backbone": backbone})
    net = build_model(cfg).eval()
    with torch.no_grad():
        torch.nn.init.normal_(net.head.cls_logits.weight, std=0.05)
        net.head.cls_logits.bias.fill_(-0.5)
        torch.nn.init.normal_(net.head.bbox_reg.weight, std=0.02)
    pt = tmp_path / "up.pt"
    save_model(pt, net, model_config=cfg, class_names=["car", "pool"], bands=[1, 2, 3],
               band_mean=[100.0, 110.0, 90.0], band_std=[40.0, 35.0, 45.0], chip_size=64, overlap=16,
               gsd=0.3, dtype="uint8")
    onnx_path = tmp_path / "up.onnx"
    export_onnx(pt, onnx_path)
    s = make_scene_files(128, 160, seed=3)
    dcfg = DetectConfig(precision="float32", score_threshold=0.35)
    a = detect(s.path, str(pt), config=dcfg)
    b = detect(s.path, str(onnx_path), config=dcfg)
    assert len(a) > 5
    da, db = _frame_dets(a, s.transform), _frame_dets(b, s.transform)
    _match(_above(da, dcfg.score_threshold), db)
    _match(_above(db, dcfg.score_threshold), da)

"""ONNX export: the graph, its metadata, the Deepness layout, the export command.

Tolerances: tests/onnx_cases.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from geodet.config import AnchorConfig, DetectConfig, ModelConfig
from geodet.inference.detection import detect
from geodet.inference.detector import default_model_path

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from geodet.inference.onnx_runtime import load_onnx  # noqa: E402
from geodet.modeling.onnx_export import DEEPNESS_DETECTOR_TYPE, INPUT_SCALE, export_onnx, read_onnx_metadata

from conftest import tiny_model_overrides  # noqa: E402

from onnx_cases import BOX_TOL_PX, _above, _frame_dets, _match, _one_sentence, run  # noqa: E402


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


def test_export_of_bad_model_file_is_one_sentence(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"nope")
    _one_sentence(run("export", bad, "-o", tmp_path / "x.onnx"))
    assert not (tmp_path / "x.onnx").exists()


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

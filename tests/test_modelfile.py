"""Tests of geodet.modeling.modelfile: safe, self-describing model files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

import geodet
from geodet.config import AnchorConfig, ModelConfig, to_dict
from geodet.errors import GeodetError
from geodet.modeling.model import build_model
from geodet.modeling.modelfile import ModelMeta, load_model, save_model


class NotAllowed:
    """Stands for any arbitrary object somebody could pickle into a file."""

    def __init__(self) -> None:
        self.payload = "would run on load with weights_only=False"


def tiny_config(**overrides) -> ModelConfig:
    settings = dict(
        num_classes=2,
        fpn_channels=32,
        head_convs=1,
        levels=(2, 3, 4),
        anchors=AnchorConfig(sizes=(8.0, 16.0, 32.0)),
        chip_score_threshold=0.001,
        detections_per_chip=50,
    )
    settings.update(overrides)
    return ModelConfig(**settings)


def description(cfg: ModelConfig) -> dict:
    return dict(
        model_config=cfg,
        class_names=["pool", "car"],
        bands=[3, 2, 1][: cfg.in_channels],
        band_mean=[np.float32(90.5), 80.0, 70.25][: cfg.in_channels],  # numpy scalars are stored as float
        band_std=[30.0, 31.0, 32.0][: cfg.in_channels],
        chip_size=512,
        overlap=64,
        gsd=0.3,
        dtype="uint8",
    )


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config()
    model = build_model(cfg).eval()
    path = save_model(tmp_path / "model.pt", model, **description(cfg), extra={"epochs": 3, "history": [0.5, 0.25]})
    return path, model, cfg


def test_round_trip_same_predictions(saved):
    path, model, cfg = saved
    loaded, meta = load_model(path)
    assert not loaded.training
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = model(x), loaded(x)
    assert len(expected[0]["boxes"]) > 0
    for e, g in zip(expected, got):
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(g[key], e[key], rtol=0, atol=0)
    assert meta == ModelMeta(
        model_config=cfg,
        class_names=("pool", "car"),
        bands=(3, 2, 1),
        band_mean=(90.5, 80.0, 70.25),
        band_std=(30.0, 31.0, 32.0),
        chip_size=512,
        overlap=64,
        gsd=0.3,
        dtype="uint8",
        geodet_version=geodet.__version__,
        format_version=1,
        extra={"epochs": 3, "history": [0.5, 0.25]},
    )


def test_file_is_plain_data(saved):
    path, model, cfg = saved
    data = torch.load(path, weights_only=True)
    assert data["format"] == "geodet-model" and data["format_version"] == 1
    assert data["config"] == to_dict(cfg)
    assert data["bands"] == [3, 2, 1] and type(data["band_mean"][0]) is float
    assert set(data["state_dict"]) == set(model.state_dict())
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary file left


def test_overwrite_and_nested_directory(tmp_path):
    cfg = tiny_config()
    target = tmp_path / "runs" / "a" / "model.pt"
    for _ in range(2):
        save_model(target, build_model(cfg), **description(cfg))
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.pt"]
    load_model(target)


def test_model_with_backbone_weights_loads_without_the_weights_file(tmp_path):
    weights = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    cfg = tiny_config(backbone_weights=str(weights), in_channels=1, frozen_stages=2)
    model = build_model(cfg)
    path = save_model(tmp_path / "model.pt", model, **description(cfg))
    weights.unlink()
    loaded, meta = load_model(path)
    assert meta.model_config.in_channels == 1
    # built on the meta device, then given the file's tensors: none left on meta, frozen stages still frozen
    assert not any(t.is_meta for t in (*loaded.parameters(), *loaded.buffers()))
    assert [p.requires_grad for p in loaded.parameters()] == [p.requires_grad for p in model.parameters()]
    torch.testing.assert_close(loaded.backbone.body.conv1.weight, model.backbone.body.conv1.weight)


def test_pickled_custom_object_is_refused(saved, tmp_path):
    path, _, _ = saved
    data = torch.load(path, weights_only=True)
    data["extra"] = {"note": NotAllowed()}
    crafted = tmp_path / "crafted.pt"
    torch.save(data, crafted)
    with pytest.raises(GeodetError, match="crafted.pt holds Python code or objects that geodet will not load") as err:
        load_model(crafted)
    assert "weights_only" not in str(err.value) and "\n" not in str(err.value)  # never torch's advice


def test_corrupt_files_are_refused(saved, tmp_path):
    path, _, _ = saved
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(bytes(range(256)) * 4)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for bad in (truncated, garbage, empty):
        with pytest.raises(GeodetError, match="is not a readable model file"):
            load_model(bad)


def test_other_files_are_refused(saved, tmp_path):
    path, _, _ = saved
    with pytest.raises(GeodetError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    plain = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(3)}, plain)
    with pytest.raises(GeodetError, match="weights.pt is not a geodet model file"):
        load_model(plain)
    data = torch.load(path, weights_only=True)
    future = tmp_path / "future.pt"
    torch.save({**data, "format_version": 2}, future)
    with pytest.raises(GeodetError, match="upgrade geodet"):
        load_model(future)
    mismatched = tmp_path / "mismatched.pt"
    torch.save({**data, "config": {**data["config"], "fpn_channels": 64}}, mismatched)
    with pytest.raises(GeodetError, match="do not match its config"):
        load_model(mismatched)
    unknown = tmp_path / "unknown.pt"
    torch.save({**data, "config": {**data["config"], "new_knob": 1}}, unknown)
    with pytest.raises(GeodetError, match="cannot read"):
        load_model(unknown)


def test_save_refuses_bad_descriptions(tmp_path):
    cfg = tiny_config()
    model = build_model(cfg)
    with pytest.raises(TypeError, match="NotAllowed"):
        save_model(tmp_path / "m.pt", model, **description(cfg), extra={"x": NotAllowed()})
    with pytest.raises(ValueError, match="class names"):
        save_model(tmp_path / "m.pt", model, **{**description(cfg), "class_names": ["pool"]})
    with pytest.raises(ValueError, match="bands"):
        save_model(tmp_path / "m.pt", model, **{**description(cfg), "bands": [1, 2]})
    assert list(tmp_path.iterdir()) == []


def test_model_files_keep_the_keys_of_the_previous_release(saved):
    """Model files written now are read by geodet 0.1, and 0.1's by this release: the per-chip score
    threshold and NMS IoU (``chip_score_threshold``, ``chip_nms_iou`` in Python) keep their 0.1 keys."""
    import dataclasses

    from geodet.config import MODEL_FILE_KEYS
    from geodet.inference.detector import DEFAULT_MODEL
    from geodet.modeling.modelfile import read_model_file

    path, _, cfg = saved
    stored = read_model_file(path)["config"]
    assert stored["score_thresh"] == cfg.chip_score_threshold and stored["nms_iou"] == cfg.chip_nms_iou
    old_names = {MODEL_FILE_KEYS.get(f.name, f.name) for f in dataclasses.fields(ModelConfig)}
    assert set(stored) == old_names  # exactly the fields 0.1's ModelConfig has, so 0.1's from_dict takes it
    old_file = read_model_file(DEFAULT_MODEL)["config"]  # written by geodet 0.1
    assert {"score_thresh", "nms_iou"} <= set(old_file) and not {"chip_score_threshold", "chip_nms_iou"} & set(old_file)
    _, meta = load_model(DEFAULT_MODEL)
    assert meta.model_config.chip_score_threshold == old_file["score_thresh"]
    assert meta.model_config.chip_nms_iou == old_file["nms_iou"]

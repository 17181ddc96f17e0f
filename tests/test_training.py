"""Training on the CPU with a tiny config: model file, resume, config file."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import tiny_model_overrides
from geodet.config import ChipConfig, TrainConfig
from geodet.errors import GeodetError
from geodet.modelfile import load_model
from geodet.training import last_checkpoint_path, train


@pytest.fixture
def small_scene(make_scene_files):
    return make_scene_files(256, 256, seed=1)


def test_short_training_writes_safe_model_that_predicts(small_scene, tmp_path):
    out = tmp_path / "m.pt"
    result = train(
        [small_scene.path], small_scene.labels, str(out), chip=ChipConfig(size=128, overlap=32),
        model=tiny_model_overrides(), config=TrainConfig(epochs=2, batch_size=4, val_fraction=0.25),
    )
    assert len(result.history) == 2
    assert "val_map50" in result.history[-1]
    raw = torch.load(out, weights_only=True)  # never unpickles arbitrary objects
    assert raw["class_names"] == ["pool"] and raw["chip_size"] == 128
    assert raw["gsd"] == pytest.approx(0.4)
    net, meta = load_model(str(out))
    assert meta.model_config.levels[0] <= 3  # anchors fitted to small objects
    cfg = meta.model_config  # matching thresholds fitted with the anchors, kept in the file
    assert cfg.fg_iou_thresh in (0.5, 0.45, 0.4) and cfg.bg_iou_thresh == pytest.approx(cfg.fg_iou_thresh - 0.1)
    with torch.inference_mode():
        pred = net(torch.zeros(1, 3, 128, 128))
    assert set(pred[0]) == {"boxes", "scores", "labels"}


def test_resume_continues_from_saved_epoch(small_scene, tmp_path):
    out = tmp_path / "m.pt"
    kw = dict(chip=ChipConfig(size=128, overlap=32), model=tiny_model_overrides(), anchors="coco")
    train([small_scene.path], small_scene.labels, str(out), config=TrainConfig(epochs=1, batch_size=4), **kw)
    saved = torch.load(last_checkpoint_path(str(out)), weights_only=True)
    ts = saved["extra"]["train_state"]
    assert ts["epoch"] == 1 and ts["step"] > 0
    result = train([small_scene.path], small_scene.labels, str(out),
                   config=TrainConfig(epochs=2, batch_size=4), resume=True, **kw)
    assert [h["epoch"] for h in result.history] == [1, 2]
    after = torch.load(last_checkpoint_path(str(out)), weights_only=True)["extra"]["train_state"]
    assert after["step"] == 2 * ts["step"]
    # the optimizer state carried over: AdamW's step counter kept counting
    state_before = next(iter(ts["optimizer"]["state"].values()))
    state_after = next(iter(after["optimizer"]["state"].values()))
    assert float(state_after["step"]) == float(state_before["step"]) * 2


def test_existing_model_refused(small_scene, tmp_path):
    out = tmp_path / "m.pt"
    out.write_bytes(b"precious")
    with pytest.raises(GeodetError, match="already exists"):
        train([small_scene.path], small_scene.labels, str(out))
    assert out.read_bytes() == b"precious"
    with pytest.raises(GeodetError, match="cannot resume"):
        train([small_scene.path], small_scene.labels, str(tmp_path / "new.pt"), resume=True)


def test_max_time_stops_cleanly(small_scene, tmp_path):
    out = tmp_path / "m.pt"
    result = train([small_scene.path], small_scene.labels, str(out), chip=ChipConfig(size=128, overlap=32),
                   model=tiny_model_overrides(), config=TrainConfig(epochs=50, batch_size=4, max_time_min=0.05))
    assert len(result.history) < 50
    assert out.exists() and (tmp_path / "m.last.pt").exists()


def test_train_cli_with_config_file(small_scene, tmp_path):
    from geodet_cli.main import cli

    cfg = tmp_path / "train.yaml"
    cfg.write_text(
        "epochs: 1\nbatch-size: 4\nchip_size: 128\noverlap: 32\nanchors: coco\nquiet: true\n"
        "model:\n  fpn_channels: 32\n  head_convs: 1\n  focal_gamma: 1.5\n"
    )
    out = tmp_path / "m.pt"
    res = CliRunner().invoke(cli, ["train", "--config", str(cfg), "--imagery", small_scene.path,
                                   "--labels", small_scene.labels, "-o", str(out)])
    assert res.exit_code == 0, res.output
    _, meta = load_model(str(out))
    assert meta.model_config.fpn_channels == 32 and meta.model_config.focal_gamma == 1.5
    assert meta.chip_size == 128
    # bad input from the CLI: one sentence, no traceback
    res = CliRunner().invoke(cli, ["train", "--imagery", small_scene.path, "--labels", small_scene.labels,
                                   "-o", str(out)])
    assert res.exit_code != 0 and "already exists" in res.output and "Traceback" not in res.output

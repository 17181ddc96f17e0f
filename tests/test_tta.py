"""Test-time flips (geodet/inference/tta.py): exact box geometry, the merge, equivariance of a real
model, and detection through the API and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from geodet.config import DetectConfig
from geodet.inference.detection import detect
from geodet.inference.detector import default_model_path, load_detector
from geodet.inference.jobs import DETECTION_SETTINGS
from geodet.inference.tta import FLIPS, FlipTTA, flip_boxes, flip_images, merge_views
from geodet.io.raster import BandStats, normalise

from geodet_cli.main import cli

# Float32 boxes of up to a few hundred px: flipping is a subtraction from the chip size, exact to
# float32 rounding (~3e-5 px at 256 px); the equivariance test compares two merges of the same four
# forward passes, which differ at most in the order of ties.
BOX_TOL_PX = 1e-3


def _box_of_block(image: np.ndarray) -> list:
    """xyxy pixel-corner box of the nonzero pixels of an [H, W] image."""
    rows, cols = np.nonzero(image)
    return [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]


@pytest.mark.parametrize("lr,tb", FLIPS)
def test_flipped_boxes_land_on_the_flipped_pixels(lr, tb):
    """A box through pixel corners, flipped with the image, still frames the same pixels (no half-pixel shift)."""
    h, w = 37, 50  # not square, odd: a centre-based flip would be off by one
    image = np.zeros((1, 1, h, w), np.float32)
    image[..., 5:12, 30:47] = 1  # rows 5..11, cols 30..46
    box = torch.tensor([[30.0, 5.0, 47.0, 12.0]])
    flipped = flip_images(torch.from_numpy(image), lr, tb)[0, 0].numpy()
    assert flip_boxes(box, (h, w), lr, tb)[0].tolist() == _box_of_block(flipped)
    # the flip is its own inverse
    assert flip_boxes(flip_boxes(box, (h, w), lr, tb), (h, w), lr, tb).tolist() == box.tolist()


def test_flipping_low_precision_boxes_is_exact_in_float32():
    """Boxes from a bfloat16 forward pass are flipped in float32: 256 - 100.5 is 155.5, which
    bfloat16 (8 significant bits) cannot hold."""
    box = torch.tensor([[100.5, 3.25, 120.5, 10.0]], dtype=torch.bfloat16)
    assert box.tolist() == [[100.5, 3.25, 120.5, 10.0]]  # the input itself is exact in bfloat16
    flipped = flip_boxes(box, (256, 256), True, True)
    assert flipped.dtype == torch.float32
    assert flipped.tolist() == [[135.5, 246.0, 155.5, 252.75]]


def test_views_merge_by_class_wise_nms_with_a_cap():
    a = {"boxes": torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]]), "scores": torch.tensor([0.9, 0.4]),
         "labels": torch.tensor([0, 0])}
    b = {"boxes": torch.tensor([[1.0, 0, 11, 10], [0, 0, 10, 10]]), "scores": torch.tensor([0.7, 0.8]),
         "labels": torch.tensor([0, 1])}
    merged = merge_views([a, b], iou=0.5, max_detections=10)
    # the class-0 pair (IoU 0.82) keeps its best box; the class-1 box over it stays
    assert merged["scores"].tolist() == pytest.approx([0.9, 0.8, 0.4])
    assert merged["labels"].tolist() == [0, 1, 0]
    assert merge_views([a, b], iou=0.5, max_detections=2)["scores"].tolist() == pytest.approx([0.9, 0.8])
    empty = {"boxes": torch.zeros((0, 4)), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    assert len(merge_views([empty, empty], iou=0.5, max_detections=10)["boxes"]) == 0


def _chips(make_scene_files, meta, n: int = 2) -> torch.Tensor:
    """n normalised chips of synthetic scenes, [n, C, S, S] with S the model's chip size."""
    size = meta.chip_size
    chips = []
    for seed in range(n):
        image = make_scene_files(size, size, seed=seed, name=f"s{seed}").scene.image.astype(np.float32)
        chips.append(normalise(image, np.ones(image.shape[1:], bool), BandStats(meta.band_mean, meta.band_std)))
    return torch.from_numpy(np.stack(chips))


def test_tta_of_a_flipped_chip_is_the_flipped_tta(make_scene_files):
    """The four views of a flipped chip are the four views of the chip: the bundled model's merged
    detections of a flipped chip, flipped back, are those of the chip."""
    detector = load_detector(None, DetectConfig(tta=True, precision="float32"))
    assert isinstance(detector.net, FlipTTA)
    chips = _chips(make_scene_files, detector.meta)
    size_hw = tuple(chips.shape[-2:])
    with torch.inference_mode():
        plain = detector.net.net(chips)
        base = detector.net(chips)
        for lr, tb in FLIPS[1:]:
            flipped = detector.net(flip_images(chips, lr, tb))
            for b, f in zip(base, flipped):
                assert len(b["boxes"]) == len(f["boxes"]) > 0
                back = flip_boxes(f["boxes"], size_hw, lr, tb)
                order_b, order_f = torch.argsort(b["scores"], stable=True), torch.argsort(f["scores"], stable=True)
                torch.testing.assert_close(back[order_f], b["boxes"][order_b], atol=BOX_TOL_PX, rtol=0)
                torch.testing.assert_close(f["scores"][order_f], b["scores"][order_b])
    # a merge keeps each view's best boxes: every plain detection scores at most its merged match
    for p, b in zip(plain, base):
        assert len(b["scores"]) >= 1 and b["scores"].max() >= p["scores"].max()


def test_detect_with_tta_finds_the_objects_once(make_scene_files):
    s = make_scene_files(384, 384, seed=7)
    plain = detect(s.path, default_model_path(), config=DetectConfig(score_threshold=0.5, precision="float32"))
    tta = detect(s.path, default_model_path(), config=DetectConfig(score_threshold=0.5, precision="float32", tta=True))
    n = len(s.scene.boxes_px)
    assert len(plain) >= 0.8 * n and 0.8 * n <= len(tta) <= 1.2 * n
    b = torch.tensor(tta.geometry.bounds.to_numpy())
    from torchvision.ops import box_iou

    assert int((box_iou(b, b).fill_diagonal_(0) > 0.5).sum()) == 0  # each object once after the merge


def test_tta_is_a_detection_setting_and_a_cli_flag(tmp_path, make_scene_files):
    """A job resumed with another --tta would mix two kinds of detections: tta is a job setting."""
    assert "tta" in DETECTION_SETTINGS and DetectConfig().tta is False
    s = make_scene_files(256, 256, seed=3)
    out = tmp_path / "dets.gpkg"
    result = CliRunner().invoke(cli, ["detect", s.path, "-o", str(out), "--tta", "--quiet"])
    assert result.exit_code == 0, result.output
    assert out.exists() and "detections" in result.output

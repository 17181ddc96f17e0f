"""Training chips: spatial split without overlap, augmentation keeps boxes on objects."""

import numpy as np
import pytest

from geodet.dataset import (
    ChipDataset,
    SceneSource,
    augment_chip,
    block_windows,
    spatial_blocks,
    split_blocks,
)
from geodet.raster import BandStats


def _source(h=600, w=500):
    boxes = np.array([[10, 10, 30, 20], [300, 400, 320, 430]], float)
    return SceneSource("unused.tif", (1,), BandStats((0.0,), (1.0,)), boxes, np.array([0, 0]), h, w)


def test_train_and_validation_chips_never_overlap():
    sources = [_source(), _source(300, 900)]
    blocks = spatial_blocks(sources, 128)
    train, val = split_blocks(blocks, 0.25, seed=3)
    assert train and val and len(train) + len(val) == len(blocks)

    def rects(bs):
        return [(b.scene, w) for b in bs for w in block_windows(b, 64, 16)]

    for scene_t, wt in rects(train):
        for scene_v, wv in rects(val):
            if scene_t != scene_v:
                continue
            overlap_x = min(wt.col_off + wt.width, wv.col_off + wv.width) - max(wt.col_off, wv.col_off)
            overlap_y = min(wt.row_off + wt.height, wv.row_off + wv.height) - max(wt.row_off, wv.row_off)
            assert overlap_x <= 0 or overlap_y <= 0


def test_block_windows_stay_inside_block():
    b = spatial_blocks([_source(300, 300)], 200)[-1]
    for w in block_windows(b, 64, 8):
        assert b.col_off <= w.col_off and w.col_off + w.width <= b.col_off + b.width
        assert b.row_off <= w.row_off and w.row_off + w.height <= b.row_off + b.height


@pytest.mark.parametrize("seed", range(12))
def test_augmentation_keeps_boxes_on_objects(seed):
    size = 64
    chip = np.zeros((2, size, size), np.float32)
    boxes = np.array([[5, 10, 20, 14], [40, 30, 44, 60]], float)
    for x1, y1, x2, y2 in boxes.astype(int):
        chip[:, y1:y2, x1:x2] = 1.0
    out, out_boxes = augment_chip(chip, boxes, np.random.default_rng(seed))
    assert out.shape == chip.shape
    mask = out[0] > 0.5 * out[0].max()
    for x1, y1, x2, y2 in np.round(out_boxes).astype(int):
        assert mask[y1:y2, x1:x2].all()
        assert (x2 - x1) * (y2 - y1) in (15 * 4, 4 * 30)
    assert mask.sum() == 15 * 4 + 4 * 30


def test_dataset_items(make_scene_files):
    from geodet.raster import open_dataset, sample_band_stats
    from geodet.vector import labels_for_scene, read_labels
    from geodet.raster import open_scene

    s = make_scene_files(256, 256)
    info = open_scene(s.path)
    lab = labels_for_scene(read_labels(s.labels), info)
    with open_dataset(s.path) as src:
        stats = sample_band_stats(src, (1, 2, 3))
    src = SceneSource(s.path, (1, 2, 3), stats, lab.boxes_px, lab.class_ids, 256, 256)
    blocks = spatial_blocks([src], 128)
    ds = ChipDataset([src], blocks, 128, 32, negative_ratio=0.0, augment=True, seed=0)
    assert len(ds) == ds.positives > 0
    image, target = ds[0]
    assert image.shape == (3, 128, 128)
    assert target["boxes"].shape[1] == 4 and len(target["boxes"]) == len(target["labels"])
    b = target["boxes"]
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    assert (b >= 0).all() and (b <= 128).all()

"""Training chips: spatial split without overlap, repeat-factor sampling, augmentation keeps boxes on objects."""

import math

import numpy as np
import pytest

from geodet.config import AugmentConfig
from geodet.learning.dataset import (
    ChipDataset,
    RepeatFactorSampler,
    SceneSource,
    augment_chip,
    block_windows,
    dihedral,
    epoch_draw,
    repeat_factors,
    rescale,
    spatial_blocks,
    split_blocks,
)
from geodet.io.raster import BandStats

GEOMETRY_ONLY = AugmentConfig(colour_p=0.0, blur_p=0.0, noise_p=0.0)


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


def _painted(size, boxes, bands=2):
    chip = np.zeros((bands, size, size), np.float32)
    for x1, y1, x2, y2 in np.asarray(boxes).astype(int):
        chip[:, y1:y2, x1:x2] = 1.0
    return chip


@pytest.mark.parametrize("k", range(8))
def test_every_dihedral_transform_keeps_boxes_exact(k):
    size = 64
    boxes = np.array([[5, 10, 20, 14], [40, 30, 44, 60]], float)
    out, out_boxes = dihedral(_painted(size, boxes), boxes, k)
    expected = np.zeros((size, size), bool)
    for x1, y1, x2, y2 in out_boxes.astype(int):
        expected[y1:y2, x1:x2] = True
    assert np.array_equal(out[0] > 0.5, expected)  # painted pixels and mapped boxes agree exactly
    assert np.allclose(out_boxes, np.round(out_boxes))


def test_dihedral_transforms_are_the_eight_distinct_symmetries():
    chip = np.arange(2 * 9 * 9, dtype=np.float32).reshape(2, 9, 9)
    results = {dihedral(chip, np.zeros((0, 4)), k)[0].tobytes() for k in range(8)}
    assert len(results) == 8


@pytest.mark.parametrize("scale, shift", [(0.75, (10.0, 3.5)), (0.8, (0.0, 0.0)), (1.0, (-2.5, 4.0)),
                                          (1.2, (-7.3, -1.1)), (1.33, (-20.0, -12.0))])
def test_scale_jitter_maps_boxes_exactly(scale, shift):
    """Bilinear resampling of a painted box is symmetric about the mapped box, so
    the painted region's centroid sits on the mapped box centre (to within the
    sampling error of a 1 px ramp at each edge, well under 0.25 px for boxes
    of >= 10 px), its 0.5 level lies on the mapped edges (pixel-centre sampling:
    within 1 px), and its mass scales with scale^2."""
    size = 96
    boxes = np.array([[20, 14, 36, 40], [50, 60, 80, 72]], float)
    out, out_boxes = rescale(_painted(size, boxes, bands=1), boxes, scale, shift)
    assert np.allclose(out_boxes, boxes * scale + np.array([*shift, *shift]))
    img = out[0]
    ys, xs = np.mgrid[0:size, 0:size] + 0.5  # pixel centres
    for x1, y1, x2, y2 in out_boxes:
        near = (xs > x1 - 2) & (xs < x2 + 2) & (ys > y1 - 2) & (ys < y2 + 2)
        w = img * near
        assert (w * xs).sum() / w.sum() == pytest.approx((x1 + x2) / 2, abs=0.25)
        assert (w * ys).sum() / w.sum() == pytest.approx((y1 + y2) / 2, abs=0.25)
        rows, cols = np.nonzero((img > 0.5) & near)
        assert abs(cols.min() - x1) <= 1 and abs(cols.max() + 1 - x2) <= 1
        assert abs(rows.min() - y1) <= 1 and abs(rows.max() + 1 - y2) <= 1
        assert w.sum() == pytest.approx((x2 - x1) * (y2 - y1), rel=0.05)  # mass of the mapped box


@pytest.mark.parametrize("seed", range(12))
def test_augmentation_keeps_boxes_on_objects(seed):
    size = 64
    boxes = np.array([[5, 10, 20, 14], [40, 30, 44, 60]], float)
    chip = _painted(size, boxes)
    out, out_boxes, keep = augment_chip(chip, boxes, np.random.default_rng(seed), replace_p(GEOMETRY_ONLY, 0.0))
    assert out.shape == chip.shape and keep.tolist() == [0, 1]
    mask = out[0] > 0.5 * out[0].max()
    for x1, y1, x2, y2 in np.round(out_boxes).astype(int):
        assert mask[y1:y2, x1:x2].all()
        assert (x2 - x1) * (y2 - y1) in (15 * 4, 4 * 30)
    assert mask.sum() == 15 * 4 + 4 * 30


def test_rescale_equals_torch_grid_sample():
    import torch
    import torch.nn.functional as F

    chip = np.random.default_rng(0).random((3, 40, 32)).astype(np.float32)
    for scale, (dx, dy) in [(0.75, (10.0, 3.5)), (1.33, (-20.0, -12.0)), (0.8, (-2.5, 4.0))]:
        ours, _ = rescale(chip, np.zeros((0, 4)), scale, (dx, dy))
        h, w = chip.shape[1:]  # output -> input in the [-1, 1] pixel-edge frame of align_corners=False
        theta = torch.tensor([[[1 / scale, 0, (1 - 2 * dx / w) / scale - 1], [0, 1 / scale, (1 - 2 * dy / h) / scale - 1]]])
        grid = F.affine_grid(theta, [1, 3, h, w], align_corners=False)
        ref = F.grid_sample(torch.from_numpy(chip)[None], grid, align_corners=False)[0].numpy()
        assert np.allclose(ours, ref, atol=1e-4)


@pytest.mark.parametrize("seed", range(12))
def test_augmentation_with_scale_jitter_keeps_boxes_on_objects(seed):
    size = 96
    boxes = np.array([[10, 12, 30, 24], [50, 40, 62, 80], [2, 70, 14, 94]], float)
    out, out_boxes, keep = augment_chip(_painted(size, boxes), boxes, np.random.default_rng(seed),
                                        replace_p(GEOMETRY_ONLY, 1.0))
    assert len(out_boxes) == len(keep) and set(keep.tolist()) <= {0, 1, 2}
    img = out[0]
    inside = np.zeros_like(img, bool)
    for x1, y1, x2, y2 in out_boxes:
        assert 0 <= x1 < x2 <= size and 0 <= y1 < y2 <= size
        core = img[int(np.ceil(y1)) + 1:int(np.floor(y2)) - 1, int(np.ceil(x1)) + 1:int(np.floor(x2)) - 1]
        assert core.size == 0 or core.min() > 0.99  # the box's interior is painted
        inside[max(int(y1) - 1, 0):int(np.ceil(y2)) + 1, max(int(x1) - 1, 0):int(np.ceil(x2)) + 1] = True
    dropped = sorted(set(range(3)) - set(keep.tolist()))
    if not dropped:
        assert img[~inside].max(initial=0.0) < 1e-6  # nothing painted outside the boxes


def replace_p(cfg, scale_p):
    from dataclasses import replace

    return replace(cfg, scale_p=scale_p)


def test_radiometric_augmentation_changes_pixels_not_boxes():
    size = 64
    boxes = np.array([[5, 10, 20, 14], [40, 30, 44, 60]], float)
    chip = _painted(size, boxes, bands=3)
    cfg = AugmentConfig(dihedral=False, scale_p=0.0, colour_p=1.0, blur_p=1.0, noise_p=1.0)
    for seed in range(5):
        out, out_boxes, keep = augment_chip(chip, boxes, np.random.default_rng(seed), cfg)
        assert np.array_equal(out_boxes, boxes) and keep.tolist() == [0, 1]
        assert out.dtype == np.float32 and out.shape == chip.shape
        assert not np.allclose(out, chip)
        # the objects stay where they were: brighter inside the boxes than around them
        for x1, y1, x2, y2 in boxes.astype(int):
            assert out[:, y1 + 1:y2 - 1, x1 + 1:x2 - 1].mean() > out[:, y2 + 3:y2 + 8, x1:x2].mean() + 0.5


def test_repeat_factors_follow_lvis_formula():
    chips = [np.array([0, 0]), np.array([0]), np.array([1]), np.zeros(0, int), np.array([0, 1])]
    # f(0) = 3/5, f(1) = 2/5; t = 0.5: r(0) = 1, r(1) = sqrt(0.5 / 0.4)
    r1 = math.sqrt(0.5 / 0.4)
    assert np.allclose(repeat_factors(chips, 0.5), [1, 1, r1, 1, r1])
    assert np.allclose(repeat_factors(chips, 0.0), 1.0)
    assert np.allclose(repeat_factors(chips, 2.4), [2, 2, math.sqrt(6), 1, math.sqrt(6)])
    assert repeat_factors([], 0.3).shape == (0,)


def test_epoch_draw_rounds_stochastically_and_reproducibly():
    factors = np.array([1.0, 2.0, 1.5, 3.25])
    counts = []
    for epoch in range(400):
        draw = epoch_draw(factors, np.random.default_rng((7, epoch)))
        n = np.bincount(draw[:, 0], minlength=4)
        assert n[0] == 1 and n[1] == 2 and n[2] in (1, 2) and n[3] in (3, 4)
        for i in range(4):  # copy numbers 0..n-1 for each chip
            assert sorted(draw[draw[:, 0] == i, 1].tolist()) == list(range(n[i]))
        counts.append(n)
    mean = np.mean(counts, axis=0)
    # Bernoulli(0.5) and (0.25) over 400 epochs: standard errors 0.025 and 0.022; 5 sigma
    assert mean[2] == pytest.approx(1.5, abs=0.125) and mean[3] == pytest.approx(3.25, abs=0.11)
    a, b = RepeatFactorSampler(factors, seed=3), RepeatFactorSampler(factors, seed=3)
    a.set_epoch(5)
    b.set_epoch(5)
    assert list(a) == list(b) and all(key[2] == 5 for key in a)
    b.set_epoch(6)
    assert list(a) != list(b)


def test_dataset_items(make_scene_files):
    from geodet.io.raster import open_dataset, sample_band_stats
    from geodet.io.vector import labels_for_scene, read_labels
    from geodet.io.raster import open_scene

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


def test_repeated_copies_get_their_own_augmentation(make_scene_files):
    from geodet.io.raster import open_dataset, open_scene, sample_band_stats
    from geodet.io.vector import labels_for_scene, read_labels

    s = make_scene_files(256, 256)
    lab = labels_for_scene(read_labels(s.labels), open_scene(s.path))
    with open_dataset(s.path) as src:
        stats = sample_band_stats(src, (1, 2, 3))
    src = SceneSource(s.path, (1, 2, 3), stats, lab.boxes_px, lab.class_ids, 256, 256)
    ds = ChipDataset([src], spatial_blocks([src], 128), 128, 32, negative_ratio=0.0, augment=True, seed=0)
    first, again, copy = ds[(0, 0, 3)], ds[(0, 0, 3)], ds[(0, 1, 3)]
    assert np.array_equal(first[0].numpy(), again[0].numpy())
    assert not np.array_equal(first[0].numpy(), copy[0].numpy())
    assert all(len(c) > 0 for c in ds.item_class_ids)

"""Cross-chip stitching: seams, corners, dense simulated scenes."""

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from geodet.core.stitch import (
    box_overlap_pairs,
    connected_groups,
    merge_detections,
    merge_detections_np,
    overlap_warning,
    pack_groups,
)
from geodet.core.windows import chip_offsets


def chip_grid(height, width, size, overlap):
    """``[K, 4]`` xyxy scene-pixel windows of a chip grid (last row/column shifted inward)."""
    rows = chip_offsets(height, size, overlap)
    cols = chip_offsets(width, size, overlap)
    return torch.tensor(
        [[c, r, c + min(size, width), r + min(size, height)] for r in rows for c in cols], dtype=torch.float64
    )


def merge(dets, chips, scene_shape, **kwargs):
    """dets: list of (x1, y1, x2, y2, score, label, chip)."""
    d = torch.tensor(dets, dtype=torch.float64).reshape(-1, 7)
    return merge_detections(
        d[:, :4], d[:, 4], d[:, 5].long(), d[:, 6].long(), chips, scene_shape, **kwargs
    )


def simulate_chip_detections(truth, truth_labels, chips, rng, *, noise=0.8, min_visible=0.5):
    """What a good detector reports on each chip: the clipped part of every object
    it sees (at least ``min_visible`` of it, as in training), with coordinate noise, in scene pixels."""
    boxes, scores, labels, chip_idx = [], [], [], []
    area = (truth[:, 2] - truth[:, 0]) * (truth[:, 3] - truth[:, 1])
    for k, (cx1, cy1, cx2, cy2) in enumerate(chips.numpy()):
        clipped = np.stack(
            [np.clip(truth[:, 0], cx1, cx2), np.clip(truth[:, 1], cy1, cy2),
             np.clip(truth[:, 2], cx1, cx2), np.clip(truth[:, 3], cy1, cy2)], axis=1)
        vis = np.clip(clipped[:, 2] - clipped[:, 0], 0, None) * np.clip(clipped[:, 3] - clipped[:, 1], 0, None)
        seen = np.nonzero(vis >= min_visible * area)[0]
        b = clipped[seen] + rng.uniform(-noise, noise, size=(len(seen), 4))
        b[:, [0, 2]] = np.clip(b[:, [0, 2]], cx1, cx2)
        b[:, [1, 3]] = np.clip(b[:, [1, 3]], cy1, cy2)
        boxes.append(b)
        scores.append(rng.uniform(0.3, 1.0, len(seen)))
        labels.append(truth_labels[seen])
        chip_idx.append(np.full(len(seen), k))
    return (torch.from_numpy(np.concatenate(boxes)), torch.from_numpy(np.concatenate(scores)),
            torch.from_numpy(np.concatenate(labels)).long(), torch.from_numpy(np.concatenate(chip_idx)).long())


def jittered_objects(height, width, step, size_range, rng, n_classes=2):
    """Non-overlapping boxes, one per ``step`` x ``step`` cell, random size and position."""
    out = []
    for y in range(0, height - step + 1, step):
        for x in range(0, width - step + 1, step):
            w, h = rng.uniform(*size_range, size=2)
            x1 = x + rng.uniform(0, step - w)
            y1 = y + rng.uniform(0, step - h)
            out.append([x1, y1, x1 + w, y1 + h])
    truth = np.array(out)
    return truth, rng.integers(0, n_classes, len(truth))


# Two chips side by side: [0, 100) and [80, 180) along x, full height 100.
TWO_CHIPS = torch.tensor([[0.0, 0, 100, 100], [80, 0, 180, 100]])


def test_object_straddling_seam_is_reported_once():
    # Object x in [70, 90): whole in chip 0, cut at x = 80 by chip 1's left edge.
    dets = [
        (70.3, 40, 89.8, 55, 0.6, 0, 0),  # chip 0: the whole object
        (80.0, 40.2, 90.1, 54.7, 0.9, 0, 1),  # chip 1: its right half, higher score
    ]
    keep = merge(dets, TWO_CHIPS, (100, 180))
    assert keep.tolist() == [0]  # the whole box wins although the part scores higher


def test_two_truncated_parts_without_whole_box_bigger_part_wins():
    # An object wider than the overlap: each chip sees only a part.
    dets = [
        (60.0, 40, 100, 55, 0.9, 0, 0),  # chip 0: cut at its right edge x = 100
        (80.0, 40, 95, 55, 0.8, 0, 1),  # chip 1: cut at its left edge x = 80, inside chip 0's part
    ]
    assert merge(dets, TWO_CHIPS, (100, 180)).tolist() == [0]


def test_truncated_box_without_neighbour_box_is_kept():
    # Chip 1's interior holds [82, 95) but chip 1 reported nothing: keep chip 0's part.
    dets = [(85.0, 40, 100, 55, 0.7, 0, 0)]
    assert merge(dets, TWO_CHIPS, (100, 180)).tolist() == [0]


def test_scene_border_is_not_an_inner_edge():
    # A box touching the scene's left border (chip 0's left edge) is not truncated,
    # so a bigger same-class box of chip 1 covering it does not replace it.
    chips = torch.tensor([[0.0, 0, 100, 100], [0, 80, 100, 180]])
    dets = [
        (0.0, 10, 10, 20, 0.9, 0, 0),
        (0.0, 5, 30, 40, 0.5, 0, 1),  # far from chip 1's inner (top) edge at y = 80
    ]
    assert sorted(merge(dets, chips, (180, 100)).tolist()) == [0, 1]


def test_object_at_four_chip_corner_is_reported_once():
    chips = chip_grid(180, 180, 100, 20)  # 4 chips, overlap square [80, 100)^2
    assert len(chips) == 4
    obj = np.array([[76.0, 77.0, 92.0, 94.0]])  # crosses x = 80 and y = 80
    rng = np.random.default_rng(1)
    boxes, scores, labels, chip_idx = simulate_chip_detections(obj, np.array([0]), chips, rng, min_visible=0.1)
    assert len(boxes) == 4  # every chip sees (part of) it
    keep = merge_detections(boxes, scores, labels, chip_idx, chips, (180, 180))
    assert len(keep) == 1
    assert box_iou(boxes[keep], torch.from_numpy(obj)).item() > 0.8


def test_dense_grid_every_object_once():
    rng = np.random.default_rng(0)
    height, width, size, overlap = 400, 460, 128, 32
    truth, truth_labels = jittered_objects(height, width, 24, (6, 22), rng)  # objects <= overlap - 2 * tol - noise
    chips = chip_grid(height, width, size, overlap)
    boxes, scores, labels, chip_idx = simulate_chip_detections(truth, truth_labels, chips, rng)
    assert len(boxes) > 1.2 * len(truth)  # plenty of duplicates and parts
    keep = merge_detections(boxes, scores, labels, chip_idx, chips, (height, width))
    kb, kl = boxes[keep], labels[keep]
    iou = box_iou(kb, kb)
    same = kl[:, None] == kl[None, :]
    iou.fill_diagonal_(0)
    assert int(((iou > 0.5) & same).sum()) == 0
    # Every object found exactly once: one kept box of its class with IoU >= 0.5, and no extras.
    t_iou = box_iou(torch.from_numpy(truth), kb)
    t_iou[torch.from_numpy(truth_labels)[:, None] != kl[None, :]] = 0
    assert ((t_iou >= 0.5).sum(dim=1) == 1).all()
    assert len(keep) == len(truth)
    assert torch.all(scores[keep][:-1] >= scores[keep][1:])


def test_different_classes_at_same_place_are_both_kept():
    dets = [
        (10.0, 10, 30, 30, 0.9, 0, 0),
        (10.0, 10, 30, 30, 0.8, 1, 0),
        (10.5, 10, 30, 30, 0.7, 1, 0),  # duplicate of class 1
    ]
    assert merge(dets, TWO_CHIPS, (100, 180)).tolist() == [0, 1]


def test_contained_frac_drops_part_inside_higher_box():
    dets = [
        (10.0, 10, 40, 30, 0.9, 0, 0),
        (10.0, 10, 22, 30, 0.5, 0, 0),  # IoU 0.4: NMS keeps it
    ]
    assert merge(dets, TWO_CHIPS, (100, 180)).tolist() == [0, 1]
    assert merge(dets, TWO_CHIPS, (100, 180), contained_frac=0.8).tolist() == [0]


def test_empty_input():
    empty = torch.zeros((0, 4))
    keep = merge_detections(empty, torch.zeros(0), torch.zeros(0, dtype=torch.int64),
                            torch.zeros(0, dtype=torch.int64), TWO_CHIPS, (100, 180))
    assert keep.dtype == torch.int64 and keep.shape == (0,)


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError):
        merge_detections(torch.zeros((2, 4)), torch.zeros(1), torch.zeros(2, dtype=torch.int64),
                         torch.zeros(2, dtype=torch.int64), TWO_CHIPS, (100, 180))


def test_nms_in_batches_equals_one_global_nms(monkeypatch):
    from torchvision.ops import batched_nms

    import geodet.core.stitch as stitch

    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 500, size=(3000, 2))
    wh = rng.uniform(5, 30, size=(3000, 2))
    boxes = torch.from_numpy(np.concatenate([xy, xy + wh], axis=1))
    scores = torch.from_numpy(rng.permutation(3000) / 3000.0)
    labels = torch.from_numpy(rng.integers(0, 3, 3000))
    chip_idx = torch.zeros(3000, dtype=torch.int64)
    whole_scene = torch.tensor([[0.0, 0, 530, 530]])
    monkeypatch.setattr(stitch, "NMS_BATCH_BOXES", 64)  # force many batches
    keep = merge_detections(boxes, scores, labels, chip_idx, whole_scene, (530, 530))
    assert keep.tolist() == batched_nms(boxes, scores, labels, 0.5).tolist()


def test_overlap_pairs_and_groups():
    boxes = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [10, 0, 20, 5], [14, 14, 30, 30], [100, 100, 101, 101.0]])
    i, j = box_overlap_pairs(boxes)
    pairs = set(zip(i.tolist(), j.tolist()))
    assert pairs == {(0, 1), (1, 0), (1, 3), (3, 1)}  # touching edges (0, 2) do not count
    assert connected_groups(5, i, j).tolist() == [0, 0, 2, 0, 4]
    batch = pack_groups(np.array([0, 0, 2, 0, 4]), 2)
    assert batch[0] == batch[1] == batch[3]


def test_overlap_warning():
    assert overlap_warning(48.0, 64) is None
    msg = overlap_warning(90.5, 64)
    assert "90.5 px" in msg and "64 px" in msg and "91 px" in msg


def test_numpy_core_keeps_what_the_tensor_face_keeps():
    """merge_detections_np on float32 numpy (as predict_scene calls it) == merge_detections on tensors."""
    rng = np.random.default_rng(3)
    height, width, size, overlap = 300, 340, 128, 32
    truth, truth_labels = jittered_objects(height, width, 24, (6, 22), rng)
    chips = chip_grid(height, width, size, overlap)
    boxes, scores, labels, chip_idx = simulate_chip_detections(truth, truth_labels, chips, rng)
    boxes, scores = boxes.float(), scores.float()
    from_tensors = merge_detections(boxes, scores, labels, chip_idx, chips, (height, width))
    from_arrays = merge_detections_np(boxes.numpy(), scores.numpy(), labels.numpy(), chip_idx.numpy(),
                                      chips.numpy(), (height, width))
    assert from_arrays.dtype == np.int64 and len(from_arrays) > 0
    np.testing.assert_array_equal(from_arrays, from_tensors.numpy())

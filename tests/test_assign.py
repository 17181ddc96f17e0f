"""Tests of geodet.modeling.assign: ATSS anchor assignment on hand-made and random cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from geodet.modeling.anchors import (
    FixedStrideAnchorGenerator,
    anchor_sizes_per_level,
    feature_grid_size,
    strides_for_levels,
)
from geodet.modeling.assign import BACKGROUND, atss_candidates, atss_covered, atss_matched_idxs
from geodet.config import AnchorConfig


def grid_anchors(levels, anchors: AnchorConfig, chip: int):
    """Every anchor ``[A, 4]`` of a square chip and the anchors per level."""
    generator = FixedStrideAnchorGenerator(
        anchor_sizes_per_level(anchors), (tuple(anchors.ratios),) * len(levels), strides_for_levels(levels)
    )
    grids = [(feature_grid_size(chip, lv),) * 2 for lv in levels]
    return generator.anchors_for_grid(grids, torch.device("cpu")), generator.anchors_per_level(grids)


#: P2 (stride 4) with one 8 px square template: anchor (i, j) is centred on (4 i, 4 j).
P2_SQUARE = ((2,), AnchorConfig(sizes=(8.0,), scales=(1.0,), ratios=(1.0,)))


def reference_matched_idxs(boxes, anchors, per_level, topk):
    """ATSS written plainly, one box at a time (the definition, for comparison)."""
    boxes, anchors = boxes.double(), anchors.double()
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    ious = box_iou(boxes, anchors)
    positive = torch.zeros_like(ious, dtype=torch.bool)
    for m, box in enumerate(boxes):
        centre = (box[:2] + box[2:]) / 2
        distance = ((centres - centre) ** 2).sum(dim=1)
        candidates, start = [], 0
        for count in per_level:
            order = torch.sort(distance[start : start + count], stable=True).indices[: min(topk, count)]
            candidates.append(order + start)
            start += count
        candidates = torch.cat(candidates)
        cand_iou = ious[m, candidates]
        threshold = cand_iou.mean() + cand_iou.std()
        for a in candidates.tolist():
            cx, cy = centres[a]
            inside = box[0] < cx < box[2] and box[1] < cy < box[3]
            if ious[m, a] >= threshold - 1e-6 and inside and ious[m, a] > 0:
                positive[m, a] = True
    matched = torch.full((anchors.shape[0],), -1, dtype=torch.int64)
    for a in range(anchors.shape[0]):
        claim = torch.where(positive[:, a])[0]
        if len(claim):
            best = ious[claim, a].max()
            matched[a] = claim[ious[claim, a] == best].min()
    return matched


def test_tiny_car_gets_positives_though_no_anchor_reaches_iou_half():
    """A 5 x 10 px car [3.5, 3, 8.5, 13] centred between the grid points (4, 8) and (8, 8) of stride 4.

    The 8 px square anchors there, [0, 4, 8, 12] and [4, 4, 12, 12], overlap it 4.5 x 8 = 36 px:
    IoU 36 / (50 + 64 - 36) = 0.46 < 0.5, the best of any anchor, so a MaxIoU matcher at 0.5 gives it at
    most its single best anchor. Its 9 candidates' IoUs (0.46 x 2, 0.25 x 4, 0.04 x 2, 0.02) give the ATSS
    threshold 0.39: both 0.46 anchors are positives, and their centres lie inside the car.
    """
    anchors, per_level = grid_anchors(*P2_SQUARE, chip=32)
    car = torch.tensor([[3.5, 3.0, 8.5, 13.0]])
    assert box_iou(car, anchors).max() == pytest.approx(36 / 78)
    matched = atss_matched_idxs(car, anchors, per_level)
    positives = torch.where(matched == 0)[0]
    assert anchors[positives].tolist() == [[0.0, 4.0, 8.0, 12.0], [4.0, 4.0, 12.0, 12.0]]
    assert (matched[matched != 0] == BACKGROUND).all()  # no ignored anchors: everything else is background


def test_candidate_above_threshold_with_centre_outside_the_box_is_not_positive():
    """A 2 px wide box [5, 2, 7, 14] lies between the grid columns x = 4 and x = 8.

    Its candidates' IoUs are 16 / 72 = 0.22 (x2), 12 / 76 = 0.16 (x4) and 0 (x3): threshold 0.21, which
    the two best pass, but no anchor centre lies inside the box, so it gets no positive. Moved by 2 px
    onto the column x = 8 it gets some.
    """
    anchors, per_level = grid_anchors(*P2_SQUARE, chip=32)
    box = torch.tensor([[5.0, 2.0, 7.0, 14.0]])
    idxs, ious, positive = atss_candidates(box, anchors, per_level)
    assert idxs.shape == (1, 9)
    assert int((ious >= ious.mean() + ious.std()).sum()) == 2
    assert not positive.any()
    assert (atss_matched_idxs(box, anchors, per_level) == BACKGROUND).all()
    shifted = torch.tensor([[7.0, 2.0, 9.0, 14.0]])
    assert atss_candidates(shifted, anchors, per_level)[2].any()


def test_anchor_claimed_by_two_boxes_goes_to_the_higher_iou():
    """Box 0 [1, 1, 9, 9] and box 1 [0, 0, 8, 8] both take the anchor [0, 0, 8, 8] centred on (4, 4):
    IoU 49 / 79 = 0.62 with box 0 and 1.0 with box 1, so it goes to box 1 although box 0 comes first."""
    anchors, per_level = grid_anchors(*P2_SQUARE, chip=32)
    boxes = torch.tensor([[1.0, 1.0, 9.0, 9.0], [0.0, 0.0, 8.0, 8.0]])
    shared = int(torch.where((anchors == torch.tensor([0.0, 0.0, 8.0, 8.0])).all(dim=1))[0])
    idxs, _, positive = atss_candidates(boxes, anchors, per_level)
    assert shared in idxs[0][positive[0]].tolist() and shared in idxs[1][positive[1]].tolist()
    matched = atss_matched_idxs(boxes, anchors, per_level)
    assert matched[shared] == 1
    # equal IoUs: the lower box index wins
    twins = torch.tensor([[0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 8.0, 8.0]])
    assert atss_matched_idxs(twins, anchors, per_level)[shared] == 0


def test_equal_candidate_ious_are_all_positive_despite_rounding():
    """Nine identical anchors [0, 0, 8, 8] and the box [0, 0, 8, 10]: every IoU is 0.8 (std 0), and the
    float32 mean of nine float32 0.8 is one ulp above 0.8; the threshold must not lock them all out."""
    box = torch.tensor([[0.0, 0.0, 8.0, 10.0]])
    same = torch.tensor([[0.0, 0.0, 8.0, 8.0]] * 9)
    _, ious, positive = atss_candidates(box, same, [9], topk=9)
    assert ious.mean() > ious[0, 0]  # the rounding this guards against
    assert positive.all()
    assert (atss_candidates(box, same[:1], [1])[2]).all()  # one candidate: its own threshold


def test_no_boxes_means_all_background():
    anchors, per_level = grid_anchors(*P2_SQUARE, chip=32)
    matched = atss_matched_idxs(torch.zeros((0, 4)), anchors, per_level)
    assert matched.shape == (anchors.shape[0],) and matched.dtype == torch.int64
    assert (matched == BACKGROUND).all()
    assert atss_covered(torch.zeros((0, 4)), anchors, per_level).shape == (0,)


def test_candidates_are_topk_nearest_on_each_level_ties_to_the_lower_index():
    """Two levels, three templates per location: 9 candidates per level, nearest centres first.

    The box centre (6, 6) is equidistant from four P2 grid points; the 9 nearest anchors are the 3
    templates of the three of those points with the lowest indices (row-major: (4, 4), (8, 4), (4, 8)).
    """
    levels, cfg = (2, 3), AnchorConfig(sizes=(8.0, 16.0), scales=(1.0,), ratios=(0.5, 1.0, 2.0))
    anchors, per_level = grid_anchors(levels, cfg, chip=32)
    box = torch.tensor([[2.0, 2.0, 10.0, 10.0]])
    idxs, _, _ = atss_candidates(box, anchors, per_level, topk=9)
    assert idxs.shape == (1, 18)
    assert (idxs[0, :9] < per_level[0]).all() and (idxs[0, 9:] >= per_level[0]).all()
    centres = (anchors[idxs[0, :9], :2] + anchors[idxs[0, :9], 2:]) / 2
    assert sorted({tuple(c) for c in centres.tolist()}) == [(4.0, 4.0), (4.0, 8.0), (8.0, 4.0)]
    # a level holding fewer anchors than topk gives all of them
    idxs, _, _ = atss_candidates(box, anchors[:per_level[0]], per_level[:1], topk=10_000)
    assert idxs.shape == (1, per_level[0])


@pytest.mark.parametrize("seed", [0, 1])
def test_vectorised_assignment_equals_the_plain_definition(seed):
    rng = np.random.default_rng(seed)
    levels, cfg = (2, 3, 4), AnchorConfig(sizes=(8.0, 16.0, 32.0), scales=(1.0, 1.4), ratios=(0.5, 1.0, 2.0))
    anchors, per_level = grid_anchors(levels, cfg, chip=64)
    n = 25
    size, ratio = rng.uniform(4, 40, n), rng.uniform(0.4, 2.5, n)
    w, h = size / np.sqrt(ratio), size * np.sqrt(ratio)
    cx, cy = rng.uniform(0, 64, n), rng.uniform(0, 64, n)
    # whole pixels, as labels often are: many equal distances and IoUs
    boxes = torch.tensor(np.round(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)), dtype=torch.float32)
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    ours = atss_matched_idxs(boxes, anchors, per_level, topk=9)
    torch.testing.assert_close(ours, reference_matched_idxs(boxes, anchors, per_level, 9))
    covered = atss_covered(boxes, anchors, per_level, 9, chunk=7)
    assert covered.tolist() == atss_candidates(boxes, anchors, per_level, 9)[2].any(dim=1).tolist()


def test_bad_arguments():
    anchors, per_level = grid_anchors(*P2_SQUARE, chip=32)
    with pytest.raises(ValueError, match="sums to"):
        atss_matched_idxs(torch.tensor([[0.0, 0.0, 8.0, 8.0]]), anchors, [per_level[0] - 1])
    with pytest.raises(ValueError, match="topk"):
        atss_matched_idxs(torch.tensor([[0.0, 0.0, 8.0, 8.0]]), anchors, per_level, topk=0)

"""Anchor-to-box assignment by ATSS (adaptive training sample selection).

ATSS (Zhang et al., "Bridging the Gap Between Anchor-based and Anchor-free
Detection via Adaptive Training Sample Selection", CVPR 2020) replaces the
fixed foreground IoU of RetinaNet by a threshold fitted to each box:

1. per box, the ``topk`` anchors whose centres lie nearest to the box centre
   on EACH pyramid level are the candidates;
2. the box's IoU threshold is the mean + standard deviation of its
   candidates' IoUs;
3. candidates with IoU >= that threshold whose centre lies strictly inside
   the box are positives;
4. an anchor that is positive for several boxes goes to the one it overlaps
   most (the lowest box index among equal IoUs).

Every other anchor is background: there is no ignored band. A 5 x 10 px car
that no anchor overlaps at IoU 0.5 still gets the anchors that fit it best.

Boxes and anchors are ``(x1, y1, x2, y2)`` in chip pixels. Everything is
vectorised over boxes; the only Python loop runs over pyramid levels.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor

from geodet.config import ATSS_TOPK

#: ``matched_idxs`` value of a background anchor (as torchvision's ``Matcher``).
BACKGROUND = -1
#: Slack on the IoU threshold for float32 rounding: when all candidates of a box
#: overlap it equally (std 0), their rounded mean may exceed every one of them.
IOU_ROUNDING = 1e-6


def _centres(boxes: Tensor) -> Tensor:
    """``[N, 2]`` centres (cx, cy) of ``[N, 4]`` xyxy boxes."""
    return (boxes[:, :2] + boxes[:, 2:]) / 2


def _squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """``[N, P]`` squared distances between points ``a [N, 2]`` and ``b [P, 2]`` (exact differences)."""
    return (a[:, None, 0] - b[None, :, 0]) ** 2 + (a[:, None, 1] - b[None, :, 1]) ** 2


def _nearest_k(distances: Tensor, k: int) -> Tensor:
    """Column indices ``[N, k]`` (ascending) of the ``k`` smallest entries of each row of ``distances [N, P]``.

    Equal distances (anchor templates sharing a centre, a box centre midway
    between grid points) go to the lower column index, so the choice does
    not depend on the ``topk`` kernel.
    """
    kth = torch.topk(distances, k, dim=1, largest=False).values[:, -1:]  # [N, 1]
    below = distances < kth
    ties = distances == kth
    room = k - below.sum(dim=1, keepdim=True)
    chosen = below | (ties & (torch.cumsum(ties, dim=1) <= room))
    return chosen.nonzero()[:, 1].reshape(-1, k)


def atss_candidates(
    boxes: Tensor,
    anchors: Tensor,
    num_anchors_per_level: Sequence[int],
    topk: int = ATSS_TOPK,
) -> Tuple[Tensor, Tensor, Tensor]:
    """ATSS candidates of every box and which of them are positives.

    Args:
        boxes: ``[M, 4]`` xyxy px ground-truth boxes.
        anchors: ``[A, 4]`` xyxy px, level-major (as the anchor generator
            returns them).
        num_anchors_per_level: anchors of each level; sums to ``A``.
        topk: candidates per level (fewer on a level holding fewer anchors).

    Returns:
        ``(candidate_idxs [M, K] int64, ious [M, K] float32,
        positive [M, K] bool)`` with ``K = sum_l min(topk, A_l)``: the
        candidate anchors' indices into ``anchors``, their IoU with the
        box, and whether each is a positive of that box (ignoring other
        boxes that may claim it).
    """
    if sum(int(n) for n in num_anchors_per_level) != anchors.shape[0]:
        raise ValueError(
            f"num_anchors_per_level sums to {sum(num_anchors_per_level)} but there are {anchors.shape[0]} anchors"
        )
    if topk < 1:
        raise ValueError(f"topk must be at least 1, got {topk}")
    boxes = boxes.float()
    anchors = anchors.float()
    box_centres = _centres(boxes)
    anchor_centres = _centres(anchors)
    picked = []
    start = 0
    for count in num_anchors_per_level:
        count = int(count)
        k = min(int(topk), count)
        if k > 0:
            distances = _squared_distances(box_centres, anchor_centres[start : start + count])  # [M, A_l]
            picked.append(_nearest_k(distances, k) + start)
        start += count
    idxs = torch.cat(picked, dim=1) if picked else boxes.new_zeros((boxes.shape[0], 0), dtype=torch.int64)
    cand = anchors[idxs]  # [M, K, 4]
    ious = _paired_iou(boxes[:, None, :].expand_as(cand), cand)  # [M, K]
    if ious.shape[1] > 1:
        threshold = ious.mean(dim=1) + ious.std(dim=1)  # Bessel-corrected std (torch's default), as the paper's code
    else:  # one candidate is its own threshold; none gives no positive
        threshold = ious.sum(dim=1)
    centres = anchor_centres[idxs]  # [M, K, 2]
    inside = (
        (centres[..., 0] > boxes[:, None, 0])
        & (centres[..., 0] < boxes[:, None, 2])
        & (centres[..., 1] > boxes[:, None, 1])
        & (centres[..., 1] < boxes[:, None, 3])
    )
    positive = (ious >= threshold[:, None] - IOU_ROUNDING) & inside & (ious > 0)
    return idxs, ious, positive


def _paired_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of matching pairs ``a[..., 4]`` and ``b[..., 4]`` xyxy (0 where the union is empty)."""
    wh = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


def atss_matched_idxs(
    boxes: Tensor,
    anchors: Tensor,
    num_anchors_per_level: Sequence[int],
    topk: int = ATSS_TOPK,
) -> Tensor:
    """The box each anchor is trained on under ATSS.

    Args:
        boxes: ``[M, 4]`` xyxy px ground-truth boxes of one chip (M may be 0).
        anchors: ``[A, 4]`` xyxy px, level-major.
        num_anchors_per_level: anchors of each level; sums to ``A``.
        topk: candidates per level.

    Returns:
        ``int64 [A]``: index into ``boxes`` of the anchor's box, or
        :data:`BACKGROUND` (-1). An anchor positive for several boxes goes
        to the box of highest IoU (the lowest index among equal IoUs).
    """
    matched = torch.full((anchors.shape[0],), BACKGROUND, dtype=torch.int64, device=anchors.device)
    if boxes.shape[0] == 0:
        return matched
    idxs, ious, positive = atss_candidates(boxes, anchors, num_anchors_per_level, topk)
    box_of = torch.arange(boxes.shape[0], device=anchors.device)[:, None].expand_as(idxs)
    anchor_idx, box_idx, iou = idxs[positive], box_of[positive], ious[positive]
    if anchor_idx.numel() == 0:
        return matched
    best_iou = torch.full((anchors.shape[0],), -1.0, device=anchors.device)
    best_iou = best_iou.scatter_reduce(0, anchor_idx, iou, reduce="amax")
    winner = iou >= best_iou[anchor_idx]  # the pairs holding their anchor's highest IoU
    lowest = torch.full((anchors.shape[0],), boxes.shape[0], dtype=torch.int64, device=anchors.device)
    lowest = lowest.scatter_reduce(0, anchor_idx[winner], box_idx[winner], reduce="amin")
    claimed = lowest < boxes.shape[0]
    matched[claimed] = lowest[claimed]
    return matched


def atss_covered(
    boxes: Tensor,
    anchors: Tensor,
    num_anchors_per_level: Sequence[int],
    topk: int = ATSS_TOPK,
    *,
    chunk: int = 256,
) -> Tensor:
    """Whether each box gets at least one ATSS positive anchor (other boxes ignored).

    Used to report coverage under ATSS for many boxes gathered from many
    chips into one chip frame, where boxes of different chips overlap; boxes
    are processed ``chunk`` at a time to bound memory (``chunk x A_l``
    distances).

    Returns:
        ``bool [M]``.
    """
    out = []
    for i in range(0, boxes.shape[0], chunk):
        _, _, positive = atss_candidates(boxes[i : i + chunk], anchors, num_anchors_per_level, topk)
        out.append(positive.any(dim=1))
    return torch.cat(out) if out else torch.zeros((0,), dtype=torch.bool)

"""Merge the detections of overlapping chips of one scene (pure; no I/O).

Every detection is in scene pixel space (continuous xyxy, pixel ``(col, row)``
covers ``[col, col+1] x [row, row+1]``) and remembers the chip it came from.
An object that lies in the overlap of several chips is reported by each of
them, whole by the chips that contain it and cut by the edge of the chips that
do not. :func:`merge_detections` keeps one box per object:

(a) **Truncated boxes.** A box is *truncated* when it lies within
    ``edge_tol_px`` of an *inner* edge of its own chip (an edge that is not on
    the scene border): the object may continue past that edge. A truncated box
    is dropped when a same-class box of *another* chip covers it
    (``intersection / area(truncated) >= min_inside``) and that box is either
    not truncated (the neighbour saw the whole object) or larger (it saw more
    of the object). Whole beats part, bigger part beats smaller part, whatever
    the scores.

    A truncated box is **kept** when no other chip reported a covering box,
    even if its region lies well inside another chip that therefore saw the
    whole object and did not detect it. Either chip may be wrong; dropping
    the box would turn a possible false positive into a certain miss, and the
    score threshold is the right tool for trading precision against recall.
(b) **Class-wise NMS** with :func:`torchvision.ops.batched_nms` at
    ``nms_iou``.
(c) **Containment (off by default).** With ``contained_frac`` set, a box of
    which at least that fraction lies inside a higher-scoring same-class kept
    box is dropped as well (e.g. a half-car detected next to the whole car).
    It is off by default because touching or nested objects of one class
    (cars in a tight row with loose boxes) would lose true objects; (a) and
    (b) already give one box per object when the overlap is large enough.

Stitching is exact when the chip overlap is at least the largest object plus
``2 * edge_tol_px``: every object then lies whole, away from inner edges, in
at least one chip. Larger objects may be cut by every chip that sees them and
be reported in two parts; :func:`overlap_warning` says so.

The box-graph helpers (:func:`box_overlap_pairs`, :func:`connected_groups`,
:func:`pack_groups`) are plain numpy and are shared with evaluation.

Scaling: all pairwise work runs on the pairs of boxes that intersect, found
with a Shapely STR-tree (``O(N log N)``). NMS runs per packed batch of
connected groups of intersecting boxes, which gives exactly the result of one
global NMS (boxes that do not intersect never suppress each other) at about
``N * NMS_BATCH_BOXES`` box comparisons instead of ``N**2``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional, Tuple

import numpy as np
import shapely

if TYPE_CHECKING:
    from torch import Tensor

log = logging.getLogger(__name__)

#: Target number of boxes per ``batched_nms`` call (whole groups are packed).
NMS_BATCH_BOXES = 2048


def overlap_warning(max_anchor_px: float, overlap_px: int) -> Optional[str]:
    """A warning sentence when objects can be larger than the chip overlap.

    Stitching reports an object once only when some chip contains it whole,
    which every object smaller than the overlap does. The largest anchor is a
    proxy for the largest object the model was built to find.

    Args:
        max_anchor_px: side of the model's largest anchor in pixels.
        overlap_px: overlap between neighbouring chips in pixels.

    Returns:
        None when ``max_anchor_px <= overlap_px``, else the warning.
    """
    if max_anchor_px <= overlap_px:
        return None
    return (
        f"The model's largest anchor ({max_anchor_px:g} px) exceeds the chip overlap ({overlap_px} px), "
        f"so objects larger than the overlap may be cut by every chip and reported in parts; "
        f"use an overlap of at least {int(np.ceil(max_anchor_px))} px if such objects occur."
    )


def box_overlap_pairs(boxes_a: np.ndarray, boxes_b: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Index pairs of boxes whose intersection has a positive area.

    Args:
        boxes_a: ``[N, 4]`` xyxy, any planar coordinates.
        boxes_b: ``[M, 4]`` xyxy in the same space, or None for ``boxes_a``
            against itself (then self pairs are left out and each unordered
            pair appears twice, once per order).

    Returns:
        ``(i, j)`` int64 arrays: ``boxes_a[i]`` overlaps ``boxes_b[j]``.
        Runs an STR-tree query: about ``O((N + M) log M + pairs)``.
    """
    a = np.asarray(boxes_a, np.float64).reshape(-1, 4)
    b = a if boxes_b is None else np.asarray(boxes_b, np.float64).reshape(-1, 4)
    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    geoms_a = shapely.box(a[:, 0], a[:, 1], a[:, 2], a[:, 3])
    geoms_b = geoms_a if boxes_b is None else shapely.box(b[:, 0], b[:, 1], b[:, 2], b[:, 3])
    i, j = shapely.STRtree(geoms_b).query(geoms_a, predicate="intersects")
    iw = np.minimum(a[i, 2], b[j, 2]) - np.maximum(a[i, 0], b[j, 0])
    ih = np.minimum(a[i, 3], b[j, 3]) - np.maximum(a[i, 1], b[j, 1])
    keep = (iw > 0) & (ih > 0)
    if boxes_b is None:
        keep &= i != j
    return i[keep].astype(np.int64), j[keep].astype(np.int64)


def connected_groups(n_nodes: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected components of an undirected graph given by edges ``(i, j)``.

    Returns:
        int64 ``[n_nodes]``: the smallest node index of each node's component.
        Min-label propagation with pointer jumping; a few vectorised passes.
    """
    label = np.arange(n_nodes, dtype=np.int64)
    i = np.asarray(i, np.int64)
    j = np.asarray(j, np.int64)
    if len(i) == 0:
        return label
    while True:
        m = np.minimum(label[i], label[j])
        new = label.copy()
        np.minimum.at(new, i, m)
        np.minimum.at(new, j, m)
        new = new[new]
        if np.array_equal(new, label):
            return label
        label = new


def pack_groups(group: np.ndarray, target: int) -> np.ndarray:
    """Batch ids that put whole groups together, about ``target`` nodes per batch.

    Args:
        group: ``[N]`` group label of each node (any integers).
        target: wanted batch size; a group larger than it gets a batch to itself.

    Returns:
        int64 ``[N]`` batch id of each node; nodes of one group share a batch.
    """
    if len(group) == 0:
        return np.zeros(0, np.int64)
    uniq, inverse, counts = np.unique(group, return_inverse=True, return_counts=True)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])  # nodes before each group
    return (start // max(int(target), 1))[inverse].astype(np.int64)


def _truncated_mask(boxes: np.ndarray, chips: np.ndarray, scene_hw: Tuple[int, int], tol: float) -> np.ndarray:
    """``[N]`` bool: box lies within ``tol`` px of an inner edge of its chip ``chips [N, 4]``."""
    height, width = scene_hw
    return (
        ((chips[:, 0] > 0) & (boxes[:, 0] <= chips[:, 0] + tol))
        | ((chips[:, 1] > 0) & (boxes[:, 1] <= chips[:, 1] + tol))
        | ((chips[:, 2] < width) & (boxes[:, 2] >= chips[:, 2] - tol))
        | ((chips[:, 3] < height) & (boxes[:, 3] >= chips[:, 3] - tol))
    )


def merge_detections(
    boxes_px: Tensor,
    scores: Tensor,
    labels: Tensor,
    chip_index: Tensor,
    chip_boxes_px: Tensor,
    scene_shape: Tuple[int, int],
    *,
    nms_iou: float = 0.5,
    edge_tol_px: float = 2.0,
    min_inside: float = 0.6,
    contained_frac: Optional[float] = None,
) -> Tensor:
    """Keep one detection per object across the overlapping chips of a scene (tensors in and out).

    The tensor face of :func:`merge_detections_np`, which holds the rules and
    documents the arguments: ``boxes_px (Tensor[N, 4])`` xyxy scene pixels,
    ``scores (Tensor[N])``, ``labels (Tensor[N])`` int64, ``chip_index
    (Tensor[N])`` int64, ``chip_boxes_px (Tensor[K, 4])``.

    Returns:
        Tensor[M] int64: indices into the inputs of the kept detections,
        sorted by descending score, on the device of ``boxes_px``.
    """
    import torch  # here, so that the numpy helpers of this module import without torch

    kept = merge_detections_np(
        boxes_px.detach().cpu().numpy(),
        scores.detach().cpu().numpy(),
        labels.detach().cpu().numpy(),
        chip_index.detach().cpu().numpy(),
        chip_boxes_px.detach().cpu().numpy(),
        scene_shape,
        nms_iou=nms_iou,
        edge_tol_px=edge_tol_px,
        min_inside=min_inside,
        contained_frac=contained_frac,
    )
    return torch.from_numpy(kept).to(boxes_px.device)


def merge_detections_np(
    boxes_px: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    chip_index: np.ndarray,
    chip_boxes_px: np.ndarray,
    scene_shape: Tuple[int, int],
    *,
    nms_iou: float = 0.5,
    edge_tol_px: float = 2.0,
    min_inside: float = 0.6,
    contained_frac: Optional[float] = None,
) -> np.ndarray:
    """Keep one detection per object across the overlapping chips of a scene.

    Args:
        boxes_px: ``[N, 4]`` detections, xyxy in scene pixels.
        scores: ``[N]`` detection scores.
        labels: ``[N]`` integer class of each detection.
        chip_index: ``[N]`` integer index into ``chip_boxes_px`` of the chip
            each detection came from.
        chip_boxes_px: ``[K, 4]`` each chip's window in scene pixels,
            ``(col_off, row_off, col_off + width, row_off + height)``
            (:func:`geodet.core.windows.window_bounds_px`).
        scene_shape: ``(height, width)`` of the scene in pixels; chip edges on
            (or beyond) the scene border are not inner edges.
        nms_iou: IoU above which class-wise NMS drops the lower-scoring box.
        edge_tol_px: a box side within this many pixels of an inner chip edge
            marks the box as truncated.
        min_inside: share of a truncated box's area that a box of another
            chip must cover to replace it.
        contained_frac: if set, also drop boxes of which at least this share
            lies inside a higher-scoring kept box of the same class (see the
            module docstring, step (c)).

    Returns:
        int64 ``[M]``: indices into the inputs of the kept detections, sorted
        by descending score. Boxes and scores are compared in float64; the
        class-wise NMS runs on torch views of the same float64 arrays.
    """
    import torch  # batched_nms; here, so that the numpy helpers above import without torch
    from torchvision.ops import batched_nms

    n = int(np.shape(boxes_px)[0])
    if n == 0:
        return np.zeros(0, np.int64)
    for name, a in (("scores", scores), ("labels", labels), ("chip_index", chip_index)):
        if np.shape(a)[0] != n:
            raise ValueError(f"{name} has {np.shape(a)[0]} entries but boxes_px has {n}")

    # copies (float64 / int64), writable, so torch can view them for the NMS
    boxes = np.array(boxes_px, np.float64).reshape(-1, 4)
    score = np.array(scores, np.float64)
    label = np.array(labels, np.int64)
    chip = np.asarray(chip_index, np.int64)
    chips = np.asarray(chip_boxes_px, np.float64).reshape(-1, 4)
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)

    # One spatial query serves every step: same-class pairs with a positive overlap.
    i, j = box_overlap_pairs(boxes)
    same = label[i] == label[j]
    i, j = i[same], j[same]
    inter = (np.minimum(boxes[i, 2], boxes[j, 2]) - np.maximum(boxes[i, 0], boxes[j, 0])) * (
        np.minimum(boxes[i, 3], boxes[j, 3]) - np.maximum(boxes[i, 1], boxes[j, 1])
    )
    covered_i = inter >= min_inside * np.maximum(area[i], 1e-12)  # j covers enough of i

    # (a) truncated box i replaced by a box j of another chip that is whole or larger.
    truncated = _truncated_mask(boxes, chips[chip], scene_shape, edge_tol_px)
    replaced = truncated[i] & covered_i & (chip[i] != chip[j]) & (~truncated[j] | (area[j] > area[i]))
    keep = np.ones(n, dtype=bool)
    keep[i[replaced]] = False
    log.debug("stitch: %d of %d boxes truncated, %d replaced", int(truncated.sum()), n, int(keep.size - keep.sum()))

    # (b) class-wise NMS, run per batch of whole groups of intersecting boxes.
    alive = keep[i] & keep[j]
    group = connected_groups(n, i[alive], j[alive])
    idx = np.nonzero(keep)[0]
    batch = pack_groups(group[idx], NMS_BATCH_BOXES)
    order = np.argsort(batch, kind="stable")
    idx, batch = idx[order], batch[order]
    bounds = np.flatnonzero(np.diff(batch)) + 1
    boxes_t = torch.from_numpy(boxes)
    scores_t = torch.from_numpy(score)
    labels_t = torch.from_numpy(label)
    survivors = []
    for part in np.split(idx, bounds):
        part_t = torch.from_numpy(part)
        kept = batched_nms(boxes_t[part_t], scores_t[part_t], labels_t[part_t], nms_iou)
        survivors.append(part[kept.numpy()])
    keep[:] = False
    keep[np.concatenate(survivors)] = True

    # (c) optional: drop boxes mostly inside a higher-scoring kept box of the same class.
    if contained_frac is not None:
        inside = inter >= contained_frac * np.maximum(area[i], 1e-12)
        higher = (score[j] > score[i]) | ((score[j] == score[i]) & (j < i))
        drop = keep[i] & keep[j] & inside & higher
        keep[i[drop]] = False

    kept = np.nonzero(keep)[0]
    return kept[np.argsort(-score[kept], kind="stable")].astype(np.int64, copy=False)

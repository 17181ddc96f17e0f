"""Anchor boxes: the generator the model uses, their coverage of labelled
objects, and a small search that fits anchors to the objects.

Coordinate space: every box here is ``(x1, y1, x2, y2)`` in chip pixels, in
the pixel-corner convention (pixel (col, row) covers [col, col+1] x [row, row+1]).

Anchors are placed exactly as torchvision's ``AnchorGenerator`` places them:
a zero-centred template per (ratio, scale), with corners rounded by
``torch.round`` (half to even), shifted to the grid points
``(i * stride, j * stride)`` for ``i, j = 0 .. grid - 1``. The stride of level
``l`` is ``2 ** l`` pixels. The grid of a chip is the feature map of the padded
chip (the model pads a chip to a multiple of :data:`PAD_MULTIPLE_PX`).

Because a template is symmetric about its centre, the overlap of a box with
an anchor of fixed shape shrinks monotonically as the anchor centre moves away
from the box centre along either axis. The best anchor of a given shape is
therefore the one at the grid point nearest to the box centre, which makes the
coverage computation exact in O(boxes x levels x templates).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from geodet.config import (
    ATSS_TOPK,
    COCO_ANCHORS,
    COCO_LEVELS,
    LARGE_OBJECT_PX,
    LARGE_OBJECT_SCALE,
    OCTAVE_SCALES,
    SMALL_OBJECT_PX,
    SMALL_OBJECT_SCALE,
    AnchorConfig,
    ModelConfig,
    check_assigner,
    to_dict,
)
from geodet.errors import GeodetError
from geodet.modeling.assign import atss_covered

log = logging.getLogger(__name__)

#: The model pads every chip to a multiple of this many pixels (the C5 stride).
PAD_MULTIPLE_PX = 32


# --------------------------------------------------------------------------- grid


def strides_for_levels(levels: Sequence[int]) -> Tuple[int, ...]:
    """Stride in pixels of each pyramid level: ``2 ** level``."""
    return tuple(2 ** int(level) for level in levels)


def anchor_sizes_per_level(anchors: AnchorConfig) -> Tuple[Tuple[float, ...], ...]:
    """Anchor sizes (px) per level: ``sizes[i] * scale`` for every scale."""
    return tuple(tuple(float(size) * float(scale) for scale in anchors.scales) for size in anchors.sizes)


def feature_grid_size(length_px: int, level: int) -> int:
    """Number of anchor grid points along a chip side of ``length_px`` pixels.

    The chip is padded to a multiple of :data:`PAD_MULTIPLE_PX`; every stride-2
    step of the network (ResNet stem, stages, extra P6/P7 convolutions) maps a
    side of ``n`` to ``ceil(n / 2)``.
    """
    n = int(math.ceil(length_px / PAD_MULTIPLE_PX) * PAD_MULTIPLE_PX)
    for _ in range(int(level)):
        n = (n + 1) // 2
    return n


def anchor_templates(anchors: AnchorConfig) -> List[np.ndarray]:
    """Zero-centred anchor templates per level, exactly as torchvision makes them.

    Returns:
        one ``float32`` array ``[A, 4]`` (x1, y1, x2, y2) per entry of
        ``anchors.sizes``; ``A = len(ratios) * len(scales)``, ratio-major.
    """
    generator = AnchorGenerator(anchor_sizes_per_level(anchors), (tuple(anchors.ratios),) * len(anchors.sizes))
    return [cell.numpy().astype(np.float32) for cell in generator.cell_anchors]


class FixedStrideAnchorGenerator(AnchorGenerator):
    """torchvision ``AnchorGenerator`` with the true stride ``2 ** level`` per level.

    torchvision derives strides as ``image_size // grid_size``, which is wrong
    for P6/P7 of chips that are not multiples of 128 px. Anchors are always
    ``float32`` (also under autocast) and cached per grid shape and device.

    Args:
        sizes: anchor sizes (px) per level.
        aspect_ratios: ratios height / width per level.
        strides: stride (px) per level.
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[float]],
        aspect_ratios: Sequence[Sequence[float]],
        strides: Sequence[int],
    ) -> None:
        super().__init__(tuple(tuple(s) for s in sizes), tuple(tuple(r) for r in aspect_ratios))
        if len(strides) != len(sizes):
            raise ValueError(f"one stride per level is needed, got {len(strides)} for {len(sizes)} levels")
        self.strides = tuple(int(s) for s in strides)
        self._cache: Dict[tuple, Tensor] = {}
        #: Anchors per level of the last :meth:`forward` call (level-major split of its output).
        self.num_anchors_per_level: List[int] = []

    def anchors_for_grid(self, grid_sizes: Sequence[Tuple[int, int]], device: torch.device) -> Tensor:
        """All anchors ``[sum_l H_l * W_l * A, 4]`` xyxy px, level-major, then row, column, template."""
        key = (tuple((int(h), int(w)) for h, w in grid_sizes), str(device))
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        self.set_cell_anchors(torch.float32, device)
        strides = [[s, s] for s in self.strides]
        anchors = torch.cat(self.grid_anchors([list(g) for g in key[0]], strides)).to(torch.float32)
        if len(self._cache) >= 8:
            self._cache.clear()
        self._cache[key] = anchors
        return anchors

    def anchors_per_level(self, grid_sizes: Sequence[Tuple[int, int]]) -> List[int]:
        """Number of anchors ``H_l * W_l * A_l`` of each level for feature grids ``[(H_l, W_l)]``."""
        return [int(h) * int(w) * n for (h, w), n in zip(grid_sizes, self.num_anchors_per_location())]

    def forward(self, image_list: ImageList, feature_maps: List[Tensor]) -> List[Tensor]:
        grid_sizes = [tuple(fm.shape[-2:]) for fm in feature_maps]
        anchors = self.anchors_for_grid(grid_sizes, feature_maps[0].device)
        self.num_anchors_per_level = self.anchors_per_level(grid_sizes)
        return [anchors for _ in range(len(image_list.image_sizes))]


def make_anchor_generator(cfg: ModelConfig) -> FixedStrideAnchorGenerator:
    """The anchor generator of a model built from ``cfg``."""
    return FixedStrideAnchorGenerator(
        anchor_sizes_per_level(cfg.anchors),
        (tuple(cfg.anchors.ratios),) * len(cfg.levels),
        strides_for_levels(cfg.levels),
    )


def anchor_count(levels: Sequence[int], anchors: AnchorConfig, chip_size: int) -> int:
    """Total number of anchors of a square chip of ``chip_size`` pixels."""
    per_location = anchors.anchors_per_location
    return int(sum(feature_grid_size(chip_size, lv) ** 2 * per_location for lv in levels))


# --------------------------------------------------------------------------- coverage


def _as_boxes(boxes_px: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes_px, dtype=np.float64).reshape(-1, 4)
    return boxes


def _best_iou_per_template(
    boxes: np.ndarray, level: int, templates: np.ndarray, chip_size: Optional[int]
) -> np.ndarray:
    """Best IoU ``[N, T]`` of each box with anchors of each template on ``level``'s grid.

    Args:
        boxes: ``[N, 4]`` xyxy px.
        templates: ``[T, 4]`` zero-centred, symmetric xyxy px.
    """
    stride = 2 ** level
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    last = feature_grid_size(chip_size, level) - 1 if chip_size is not None else np.inf
    gx = np.clip(np.round(cx / stride), 0, last) * stride  # nearest grid point to the centre
    gy = np.clip(np.round(cy / stride), 0, last) * stride
    t = templates.astype(np.float64)
    ax1 = gx[:, None] + t[None, :, 0]
    ay1 = gy[:, None] + t[None, :, 1]
    ax2 = gx[:, None] + t[None, :, 2]
    ay2 = gy[:, None] + t[None, :, 3]
    iw = np.clip(np.minimum(ax2, boxes[:, 2:3]) - np.maximum(ax1, boxes[:, 0:1]), 0, None)
    ih = np.clip(np.minimum(ay2, boxes[:, 3:4]) - np.maximum(ay1, boxes[:, 1:2]), 0, None)
    inter = iw * ih
    area_box = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[:, None]
    area_anchor = ((t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1]))[None, :]
    union = area_box + area_anchor - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def best_anchor_iou(
    boxes_px: np.ndarray,
    levels: Sequence[int],
    anchors: AnchorConfig,
    *,
    chip_size: Optional[int] = None,
) -> np.ndarray:
    """IoU of each box with its best anchor on any level.

    Args:
        boxes_px: ``[N, 4]`` xyxy in chip pixels.
        levels: pyramid levels, one per entry of ``anchors.sizes``.
        anchors: anchor sizes, scales and ratios.
        chip_size: side of the (square) chip in px; limits the grid to the
            chip's feature maps. ``None`` = an unbounded grid (indices >= 0).

    Returns:
        ``float64 [N]`` best IoU per box.
    """
    boxes = _as_boxes(boxes_px)
    if len(levels) != len(anchors.sizes):
        raise ValueError(f"{len(levels)} levels but {len(anchors.sizes)} anchor sizes")
    best = np.zeros(len(boxes), dtype=np.float64)
    if len(boxes) == 0:
        return best
    for level, templates in zip(levels, anchor_templates(anchors)):
        best = np.maximum(best, _best_iou_per_template(boxes, int(level), templates, chip_size).max(axis=1))
    return best


def anchor_coverage(
    boxes_px: np.ndarray,
    levels: Sequence[int],
    anchors: AnchorConfig,
    iou_thresh: float = 0.5,
    *,
    chip_size: Optional[int] = None,
) -> float:
    """Share of boxes whose best anchor has IoU >= ``iou_thresh`` (NaN for no boxes).

    See :func:`best_anchor_iou` for the arguments.
    """
    best = best_anchor_iou(boxes_px, levels, anchors, chip_size=chip_size)
    if len(best) == 0:
        return float("nan")
    return float(np.mean(best >= iou_thresh))


# --------------------------------------------------------------------------- fitting


def box_sizes_px(boxes_px: np.ndarray) -> np.ndarray:
    """Object size ``sqrt(w * h)`` in px of each box ``[N, 4]`` xyxy."""
    boxes = _as_boxes(boxes_px)
    return np.sqrt(np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None))


def box_aspect_ratios(boxes_px: np.ndarray) -> np.ndarray:
    """Aspect ratio ``h / w`` of each box ``[N, 4]`` xyxy (boxes must have w > 0)."""
    boxes = _as_boxes(boxes_px)
    return (boxes[:, 3] - boxes[:, 1]) / (boxes[:, 2] - boxes[:, 0])


def _valid_boxes(boxes_px: np.ndarray, class_ids: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Boxes ``[N', 4]`` with a positive width and height, and their class ids ``[N']``
    (all 0 when ``class_ids`` is None)."""
    boxes = _as_boxes(boxes_px)
    if class_ids is None:
        ids = np.zeros(len(boxes), dtype=np.int64)
    else:
        ids = np.asarray(class_ids, dtype=np.int64).reshape(-1)
        if len(ids) != len(boxes):
            raise ValueError(f"{len(ids)} class ids for {len(boxes)} boxes")
    ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & np.isfinite(boxes).all(axis=1)
    if not ok.all():
        log.warning("ignoring %d degenerate box(es) with zero width or height", int((~ok).sum()))
    boxes, ids = boxes[ok], ids[ok]
    if len(boxes) == 0:
        raise GeodetError("there are no labelled boxes with a positive width and height to fit anchors to")
    return boxes, ids


def class_weights(class_ids: np.ndarray) -> np.ndarray:
    """Weight ``[N]`` of each box so that every class present weighs the same in total.

    Coverage weighted this way is the mean over classes of the per-class
    coverage: 109 cars count as much as 699 pools.
    """
    ids = np.asarray(class_ids, dtype=np.int64)
    _, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    return 1.0 / (counts[inverse] * len(counts))


#: Base anchor size per level, as multiples of the level's stride.
_SIZE_FACTORS: Tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0)
_SCALE_SETS: Tuple[Tuple[float, ...], ...] = ((1.0,), (1.0, 2 ** 0.5), OCTAVE_SCALES)


#: A group of aspect ratios counts as one mode when 90% of it lies within this
#: many octaves (log2 units) of its centre: a box whose h / w is 2^0.5 off a
#: same-area anchor still overlaps it at IoU 0.73.
_MODE_SPREAD_LOG2 = 0.5
#: Modes of different classes closer than this (log2 units) are merged.
_MODE_MERGE_LOG2 = 0.3


def choose_input_scale(boxes_px: np.ndarray, class_ids: Optional[np.ndarray] = None) -> float:
    """``ModelConfig.input_scale`` for these objects, from the smallest per-class median short
    side: :data:`~geodet.config.SMALL_OBJECT_SCALE` under :data:`~geodet.config.SMALL_OBJECT_PX`
    pixels (a rare tiny class counts as much as a common one),
    :data:`~geodet.config.LARGE_OBJECT_SCALE` at :data:`~geodet.config.LARGE_OBJECT_PX` or more
    (every class is large), else 1.

    Args:
        boxes_px: [N, 4] xyxy pixels.
        class_ids: [N] class of each box (None: one class).
    """
    if not len(_as_boxes(boxes_px)):
        return 1.0
    boxes, ids = _valid_boxes(boxes_px, class_ids)
    short = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    smallest = min(float(np.median(short[ids == c])) for c in np.unique(ids))
    if smallest < SMALL_OBJECT_PX:
        return float(SMALL_OBJECT_SCALE)
    return float(LARGE_OBJECT_SCALE) if smallest >= LARGE_OBJECT_PX else 1.0


def ratio_modes(ratios: np.ndarray, max_modes: int = 3) -> Tuple[float, ...]:
    """Modes of the aspect ratios ``h / w`` ``[N]``: the fewest cluster centres that describe them.

    One-dimensional k-means on ``log2(h / w)`` for k = 1 .. ``max_modes``
    (started at evenly spaced quantiles); the first k whose clusters each
    hold 90% of their members within :data:`_MODE_SPREAD_LOG2` octaves of
    their median wins. Cars in both orientations give (0.5, 2.0), not their
    mean 1.0.

    Returns:
        the modes (h / w, rounded to 2 decimals), ascending.
    """
    logs = np.log2(np.asarray(ratios, dtype=np.float64))
    centres = np.array([np.median(logs)])
    for k in range(1, max_modes + 1):
        centres = np.quantile(logs, (np.arange(k) + 0.5) / k)
        for _ in range(20):
            member = np.abs(logs[:, None] - centres[None, :]).argmin(axis=1)
            updated = np.array([np.median(logs[member == j]) if (member == j).any() else centres[j] for j in range(k)])
            if np.allclose(updated, centres):
                break
            centres = updated
        member = np.abs(logs[:, None] - centres[None, :]).argmin(axis=1)
        spread = max(
            float(np.quantile(np.abs(logs[member == j] - centres[j]), 0.9)) for j in range(k) if (member == j).any()
        )
        if spread <= _MODE_SPREAD_LOG2:
            break
    return tuple(sorted({round(float(2 ** c), 2) for c in centres}))


def _merge_modes(modes: Sequence[float]) -> Tuple[float, ...]:
    """Ascending ratios with modes closer than :data:`_MODE_MERGE_LOG2` octaves merged (geometric mean)."""
    groups: List[List[float]] = []
    for m in sorted(modes):
        if groups and math.log2(m) - math.log2(groups[-1][0]) < _MODE_MERGE_LOG2:
            groups[-1].append(m)
        else:
            groups.append([m])
    return tuple(round(float(2 ** np.mean(np.log2(g))), 2) for g in groups)


def _ratio_sets(ratios: np.ndarray, class_ids: np.ndarray) -> List[Tuple[float, ...]]:
    """Candidate aspect-ratio sets: from the quantiles of all objects' h / w, and the
    union of every class's ratio modes (:func:`ratio_modes`)."""
    q10, q50, q90 = (round(float(v), 2) for v in np.quantile(ratios, [0.1, 0.5, 0.9]))
    modes = _merge_modes([m for c in np.unique(class_ids) for m in ratio_modes(ratios[class_ids == c])])
    candidates = [(1.0,), (q50,), tuple(sorted({q10, q50, q90})), modes, (0.5, 1.0, 2.0)]
    unique: List[Tuple[float, ...]] = []
    for c in candidates:
        if c not in unique and all(r > 0 for r in c):
            unique.append(c)
    return unique


@dataclass(frozen=True)
class _Candidate:
    covered: Tuple[float, ...]  # class-weighted coverage (mean of per-class coverage) at each IoU threshold
    count: int
    levels: Tuple[int, ...]
    anchors: AnchorConfig


def _candidates(
    boxes: np.ndarray, class_ids: np.ndarray, chip_size: int, max_levels: int, thresholds: Sequence[float]
) -> List[_Candidate]:
    """Every searched anchor design with its class-weighted coverage at each IoU of ``thresholds``."""
    weights = class_weights(class_ids)
    ratio_sets = _ratio_sets(box_aspect_ratios(boxes), class_ids)
    all_ratios = sorted({r for rs in ratio_sets for r in rs})
    all_scales = sorted({s for ss in _SCALE_SETS for s in ss})

    # Best IoU of every box with every candidate template: per level an
    # array [N, k, scale, ratio].
    per_level: Dict[int, np.ndarray] = {}
    for level in range(2, 8):
        stride = 2 ** level
        sizes = tuple(k * stride for k in _SIZE_FACTORS)
        cfg = AnchorConfig(sizes=sizes, scales=tuple(all_scales), ratios=tuple(all_ratios))
        ious = [
            _best_iou_per_template(boxes, level, templates, chip_size)
            for templates in anchor_templates(cfg)
        ]  # each [N, ratio * scale], ratio-major
        per_level[level] = np.stack(ious, axis=1).reshape(len(boxes), len(sizes), len(all_ratios), len(all_scales))

    out: List[_Candidate] = []
    for ki, k in enumerate(_SIZE_FACTORS):
        for scales in _SCALE_SETS:
            si = [all_scales.index(s) for s in scales]
            best_per_ratio = {lv: per_level[lv][:, ki][:, :, si].max(axis=2) for lv in per_level}  # [N, ratio]
            for ratios in ratio_sets:
                ri = [all_ratios.index(r) for r in ratios]
                best_per_level = {lv: best_per_ratio[lv][:, ri].max(axis=1) for lv in per_level}
                for low in range(2, 6):
                    best = np.zeros(len(boxes))
                    for high in range(low, min(low + max_levels, 8)):
                        best = np.maximum(best, best_per_level[high])
                        levels = tuple(range(low, high + 1))
                        anchors = AnchorConfig(
                            sizes=tuple(float(k * 2 ** lv) for lv in levels), scales=scales, ratios=ratios
                        )
                        count = anchor_count(levels, anchors, chip_size)
                        covered = tuple(float(weights @ (best >= t)) for t in thresholds)
                        out.append(_Candidate(covered=covered, count=count, levels=levels, anchors=anchors))
    return out


def _choose(candidates: List[_Candidate], i: int, tolerance: float) -> _Candidate:
    """Among candidates within ``tolerance`` of the best coverage at threshold ``i``, the one with
    the fewest anchors (then the higher coverage, then the first searched)."""
    best_covered = max(c.covered[i] for c in candidates)
    tied = [c for c in candidates if c.covered[i] >= best_covered - tolerance - 1e-12]
    return min(tied, key=lambda c: (c.count, -c.covered[i]))  # min() keeps the first of equals


def _log_choice(chosen: _Candidate, covered: float, n: int, classes: int, fg_iou: float) -> None:
    log.info(
        "fitted anchors: levels %s sizes %s scales %s ratios %s cover %.1f%% of %d boxes (mean over %d class(es)) "
        "at IoU %.2f",
        chosen.levels,
        chosen.anchors.sizes,
        chosen.anchors.scales,
        chosen.anchors.ratios,
        100 * covered,
        n,
        classes,
        fg_iou,
    )


def fit_anchors(
    boxes_px: np.ndarray,
    *,
    class_ids: Optional[np.ndarray] = None,
    fg_iou: float = 0.5,
    chip_size: int = 512,
    max_levels: int = 5,
    tolerance: float = 0.01,
) -> Tuple[Tuple[int, ...], AnchorConfig]:
    """Pyramid levels and anchors fitted to the labelled objects.

    Searches lowest level 2..5, 1..``max_levels`` consecutive levels (up to
    P7), a base size per level of ``k * stride`` for k in
    (1, 1.5, 2, 3, 4), scale sets (1), (1, sqrt 2), (1, 2^1/3, 2^2/3) and ratio
    sets (1), (median), (p10, median, p90) of the objects' h / w, the union
    of the ratio modes of each class (:func:`ratio_modes`: cars in both
    orientations bring 0.5 and 2, pools 1) and (0.5, 1, 2). Coverage is the
    share of a class's boxes whose best anchor reaches ``fg_iou``, averaged
    over the classes, so a rare class weighs as much as a common one. Every
    config within ``tolerance`` of the best coverage counts as tied; among
    those the one with the fewest anchors per chip wins, then the higher
    coverage, then the first in search order (deterministic).

    Args:
        boxes_px: ``[N, 4]`` xyxy boxes in chip pixels (real positions).
        class_ids: ``[N]`` class of each box; None = one class.
        fg_iou: IoU an anchor needs to count as matching a box.
        chip_size: chip side in px (grid extent and anchor count).
        max_levels: most pyramid levels to use.
        tolerance: coverage difference treated as a tie.

    Returns:
        ``(levels, AnchorConfig)``.

    Raises:
        GeodetError: when there is no box with a positive area.
    """
    boxes, ids = _valid_boxes(boxes_px, class_ids)
    chosen = _choose(_candidates(boxes, ids, chip_size, max_levels, (fg_iou,)), 0, tolerance)
    _log_choice(chosen, chosen.covered[0], len(boxes), len(np.unique(ids)), fg_iou)
    return chosen.levels, chosen.anchors


#: Foreground IoU thresholds tried by :func:`fit_assignment`, strictest first.
FG_IOU_CANDIDATES: Tuple[float, ...] = (0.5, 0.45, 0.4)
#: Gap between the foreground and background IoU thresholds.
BG_IOU_GAP = 0.1


def fit_assignment(
    boxes_px: np.ndarray,
    *,
    class_ids: Optional[np.ndarray] = None,
    assigner: str = ModelConfig.assigner,
    chip_size: int = 512,
    min_coverage: float = 0.95,
    fg_candidates: Sequence[float] = FG_IOU_CANDIDATES,
    max_levels: int = 5,
    tolerance: float = 0.01,
) -> Tuple[Tuple[int, ...], AnchorConfig, float, float]:
    """Anchors and the anchor-to-box IoU thresholds of training, fitted together.

    With ``assigner="atss"`` the anchors are fitted at the first (strictest)
    of ``fg_candidates``, 0.5, and that threshold is returned unchanged: ATSS
    sets each box's IoU threshold itself, so nothing is gained by lowering
    the bar.

    With ``"maxiou"``: objects of a few pixels cannot reach IoU 0.5 with any
    anchor on a grid of stride 4: a 5 x 10 px car half a stride off the
    nearest anchor centre tops out near 0.4. At a 0.5 threshold such objects
    get a single low-quality match or none, and the anchors beside it are
    ignored or called background, so the classifier learns from a hair-thin
    target. This picks the strictest foreground threshold in
    ``fg_candidates`` at which the fitted anchors cover at least
    ``min_coverage`` (mean over classes, see :func:`fit_anchors`) of the
    boxes (the last candidate when none does); background is
    ``BG_IOU_GAP`` below it.

    Args:
        boxes_px: ``[N, 4]`` xyxy boxes in chip pixels.
        class_ids: ``[N]`` class of each box; None = one class.
        assigner: ``"atss"`` or ``"maxiou"`` (see :class:`ModelConfig`).

    Returns:
        ``(levels, AnchorConfig, fg_iou_thresh, bg_iou_thresh)``.
    """
    check_assigner(assigner)
    if assigner == "atss":
        fg_candidates = tuple(fg_candidates)[:1]
    boxes, ids = _valid_boxes(boxes_px, class_ids)
    candidates = _candidates(boxes, ids, chip_size, max_levels, fg_candidates)
    for i, fg in enumerate(fg_candidates):
        chosen = _choose(candidates, i, tolerance)
        if chosen.covered[i] >= min_coverage:
            break
    _log_choice(chosen, chosen.covered[i], len(boxes), len(np.unique(ids)), fg)
    return chosen.levels, chosen.anchors, float(fg), round(float(fg) - BG_IOU_GAP, 4)


# --------------------------------------------------------------------------- report


#: Side (px) of the tiles of boxes that share one crop of anchors in :func:`atss_positive_boxes`.
_ATSS_TILE_PX = 128.0


def atss_positive_boxes(
    boxes_px: np.ndarray,
    levels: Sequence[int],
    anchors: AnchorConfig,
    *,
    chip_size: Optional[int] = None,
    topk: int = ATSS_TOPK,
) -> np.ndarray:
    """Whether each box gets at least one positive anchor under ATSS (:mod:`geodet.modeling.assign`).

    Each box is assigned on its own (boxes gathered from many chips into one
    chip frame overlap each other; in a real chip they rarely share anchors).

    Args:
        boxes_px: ``[N, 4]`` xyxy in chip pixels.
        levels: pyramid levels, one per entry of ``anchors.sizes``.
        anchors: anchor sizes, scales and ratios.
        chip_size: side of the (square) chip in px; None = the smallest
            multiple of 32 px holding every box.
        topk: ATSS candidates per level.

    Returns:
        ``bool [N]``.
    """
    boxes = _as_boxes(boxes_px)
    if len(boxes) == 0:
        return np.zeros(0, dtype=bool)
    if chip_size is None:
        chip_size = max(PAD_MULTIPLE_PX, int(math.ceil(float(boxes[:, 2:].max()))))
    generator = FixedStrideAnchorGenerator(
        anchor_sizes_per_level(anchors), (tuple(anchors.ratios),) * len(levels), strides_for_levels(levels)
    )
    grids = [(feature_grid_size(chip_size, lv),) * 2 for lv in levels]
    every_anchor = generator.anchors_for_grid(grids, torch.device("cpu"))
    per_location = generator.num_anchors_per_location()
    starts = np.cumsum([0] + generator.anchors_per_level(grids))[:-1]
    # The k nearest anchors of a box lie within a few strides of its centre (twice as far at a
    # chip corner, where the grid is cut): each tile of boxes only needs the anchors near it.
    # Anchor centres are the grid points (i * stride, j * stride), stored row, column, template.
    boxes_t = torch.as_tensor(boxes, dtype=torch.float32)
    box_centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    tiles = np.floor(box_centres / _ATSS_TILE_PX).astype(np.int64)
    covered = torch.zeros(len(boxes), dtype=torch.bool)
    for tile in np.unique(tiles, axis=0):
        in_tile = torch.as_tensor((tiles == tile).all(axis=1))
        low, high = tile * _ATSS_TILE_PX, (tile + 1) * _ATSS_TILE_PX
        picked, counts = [], []
        for stride, (grid, _), n, start in zip(strides_for_levels(levels), grids, per_location, starts):
            margin = 2.0 * (math.ceil(math.sqrt(topk)) + 1) * stride
            first = np.clip(np.ceil((low - margin) / stride), 0, grid - 1).astype(int)  # (x, y)
            last = np.clip(np.floor((high + margin) / stride), 0, grid - 1).astype(int)
            locations = (np.arange(first[1], last[1] + 1)[:, None] * grid + np.arange(first[0], last[0] + 1)).ravel()
            idx = start + (locations[:, None] * n + np.arange(n)).ravel()
            picked.append(idx)
            counts.append(len(idx))
        near = every_anchor[torch.as_tensor(np.concatenate(picked))]
        covered[in_tile] = atss_covered(boxes_t[in_tile], near, counts, topk)
    return covered.numpy()


def _quantiles(values: np.ndarray, qs: Sequence[float]) -> List[float]:
    return [float(v) for v in np.quantile(values, qs)]


#: A class whose coverage (at IoU 0.5 or under the assignment) is below this is flagged.
MIN_CLASS_COVERAGE = 0.9


def coverage_report(
    boxes_px: np.ndarray,
    fitted: Tuple[Sequence[int], AnchorConfig],
    fg_iou: float = 0.5,
    *,
    chip_size: Optional[int] = 512,
    class_ids: Optional[np.ndarray] = None,
    class_names: Optional[Sequence[str]] = None,
    assigner: str = ModelConfig.assigner,
    atss_topk: int = ATSS_TOPK,
    min_class_coverage: float = MIN_CLASS_COVERAGE,
) -> dict:
    """Object statistics and anchor coverage of the COCO defaults vs fitted anchors, overall and per class.

    Three coverages are reported: at ``fg_iou`` (``coverage``), at IoU 0.5
    (``coverage_iou50``) and under the assignment training uses
    (``coverage_assigned``): with ATSS the share of boxes that get at least
    one positive anchor, with MaxIoU the share whose best anchor reaches
    ``fg_iou``.

    Args:
        boxes_px: ``[N, 4]`` xyxy boxes in chip pixels.
        fitted: ``(levels, AnchorConfig)`` e.g. from :func:`fit_anchors`.
        fg_iou: IoU an anchor needs to count as matching a box (MaxIoU).
        chip_size: chip side in px (grid extent, anchor count); None = unbounded grid.
        class_ids: ``[N]`` class of each box; None = one class.
        class_names: name of each class id; None = the ids as text.
        assigner: ``"atss"`` or ``"maxiou"``.
        atss_topk: ATSS candidates per level.
        min_class_coverage: classes below this coverage (at IoU 0.5 or
            under the assignment, fitted anchors) are flagged.

    Returns:
        a JSON-safe dict: ``count``, ``size_px`` (min, p5, median, p95, max of
        sqrt(w*h)), ``aspect_ratio`` (p5, p25, median, p75, p95 of h/w),
        ``fg_iou``, ``assigner``, ``atss_topk``, ``coco`` and ``fitted`` (each
        ``levels``, ``anchors``, ``coverage``, ``coverage_iou50``,
        ``coverage_assigned``, ``anchors_per_chip``), ``classes`` (per class
        ``name``, ``count``, ``size_px``, ``aspect_ratio``, and the fitted
        anchors' ``coverage_iou50``, ``coverage_assigned``,
        ``poorly_covered``), ``min_class_coverage`` and ``poorly_covered``
        (names of the flagged classes).
    """
    check_assigner(assigner)
    boxes, ids = _valid_boxes(boxes_px, class_ids)
    sizes = box_sizes_px(boxes)
    ratios = box_aspect_ratios(boxes)

    def stats(sel: np.ndarray) -> dict:
        return {
            "size_px": dict(
                zip(("min", "p5", "median", "p95", "max"), _quantiles(sizes[sel], [0, 0.05, 0.5, 0.95, 1]))
            ),
            "aspect_ratio": dict(
                zip(("p5", "p25", "median", "p75", "p95"), _quantiles(ratios[sel], [0.05, 0.25, 0.5, 0.75, 0.95]))
            ),
        }

    def per_box(levels: Sequence[int], anchors: AnchorConfig) -> Tuple[np.ndarray, np.ndarray]:
        best = best_anchor_iou(boxes, levels, anchors, chip_size=chip_size)
        if assigner == "atss":
            assigned = atss_positive_boxes(boxes, levels, anchors, chip_size=chip_size, topk=atss_topk)
        else:
            assigned = best >= fg_iou
        return best, assigned

    def entry(levels: Sequence[int], anchors: AnchorConfig) -> Tuple[dict, np.ndarray, np.ndarray]:
        best, assigned = per_box(levels, anchors)
        return (
            {
                "levels": [int(lv) for lv in levels],
                "anchors": to_dict(anchors),
                "coverage": float(np.mean(best >= fg_iou)),
                "coverage_iou50": float(np.mean(best >= 0.5)),
                "coverage_assigned": float(np.mean(assigned)),
                "anchors_per_chip": anchor_count(levels, anchors, chip_size) if chip_size else None,
            },
            best,
            assigned,
        )

    coco, _, _ = entry(COCO_LEVELS, COCO_ANCHORS)
    fitted_entry, best, assigned = entry(tuple(fitted[0]), fitted[1])
    classes = []
    for c in np.unique(ids):
        sel = ids == c
        name = str(class_names[c]) if class_names is not None and 0 <= c < len(class_names) else str(int(c))
        cov50, cov_assigned = float(np.mean(best[sel] >= 0.5)), float(np.mean(assigned[sel]))
        classes.append(
            {
                "name": name,
                "id": int(c),
                "count": int(sel.sum()),
                **stats(sel),
                "coverage_iou50": cov50,
                "coverage_assigned": cov_assigned,
                "poorly_covered": bool(min(cov50, cov_assigned) < min_class_coverage),
            }
        )
    everything = np.ones(len(boxes), dtype=bool)
    return {
        "count": int(len(boxes)),
        **stats(everything),
        "fg_iou": float(fg_iou),
        "assigner": assigner,
        "atss_topk": int(atss_topk),
        "chip_size": chip_size,
        "coco": coco,
        "fitted": fitted_entry,
        "classes": classes,
        "min_class_coverage": float(min_class_coverage),
        "poorly_covered": [c["name"] for c in classes if c["poorly_covered"]],
    }


def _fmt(values: Sequence[float], digits: int = 1) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


def _assignment_text(report: dict) -> str:
    if report.get("assigner", "maxiou") == "atss":
        return f"ATSS, top {report['atss_topk']} anchors per level: share of objects with at least one positive anchor"
    return f"MaxIoU: share of objects whose best anchor has IoU >= {report['fg_iou']:.2f}"


def format_coverage_report(report: dict) -> str:
    """Human-readable text of a :func:`coverage_report` dict."""
    s, r = report["size_px"], report["aspect_ratio"]
    lines = [
        f"objects: {report['count']}" + (f" in {len(report['classes'])} classes" if len(report["classes"]) > 1 else ""),
        "size sqrt(w*h) px: min {:.1f}  p5 {:.1f}  median {:.1f}  p95 {:.1f}  max {:.1f}".format(
            s["min"], s["p5"], s["median"], s["p95"], s["max"]
        ),
        "aspect h/w: p5 {:.2f}  p25 {:.2f}  median {:.2f}  p75 {:.2f}  p95 {:.2f}".format(
            r["p5"], r["p25"], r["median"], r["p75"], r["p95"]
        ),
        "coverage: 'IoU 0.5' = share of objects whose best anchor has IoU >= 0.50;",
        f"          'assigned' = {_assignment_text(report)}",
    ]
    for name, key in (("COCO defaults", "coco"), ("fitted", "fitted")):
        e = report[key]
        count = f", {e['anchors_per_chip']} anchors per chip" if e.get("anchors_per_chip") else ""
        lines.append(
            f"  {name:<13} IoU 0.5 {100 * e['coverage_iou50']:5.1f}%  assigned {100 * e['coverage_assigned']:5.1f}%"
            f"  levels P{e['levels'][0]}-P{e['levels'][-1]}"
            f"  sizes [{_fmt(e['anchors']['sizes'])}]  scales [{_fmt(e['anchors']['scales'], 3)}]"
            f"  ratios [{_fmt(e['anchors']['ratios'], 2)}]{count}"
        )
    lines.append("per class, fitted anchors:")
    width = max(len(c["name"]) for c in report["classes"])
    for c in report["classes"]:
        flag = "  POORLY COVERED" if c["poorly_covered"] else ""
        lines.append(
            f"  {c['name']:<{width}} {c['count']:6d} objects  size median {c['size_px']['median']:5.1f} px"
            f"  aspect p5 {c['aspect_ratio']['p5']:.2f} median {c['aspect_ratio']['median']:.2f}"
            f" p95 {c['aspect_ratio']['p95']:.2f}"
            f"  IoU 0.5 {100 * c['coverage_iou50']:5.1f}%  assigned {100 * c['coverage_assigned']:5.1f}%{flag}"
        )
    if report["poorly_covered"]:
        lines.append(
            f"warning: poorly covered class(es) (below {100 * report['min_class_coverage']:.0f}%): "
            + ", ".join(report["poorly_covered"])
        )
    return "\n".join(lines)



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

from geodet.config import COCO_ANCHORS, COCO_LEVELS, OCTAVE_SCALES, AnchorConfig, ModelConfig, to_dict
from geodet.errors import GeodetError

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

    def forward(self, image_list: ImageList, feature_maps: List[Tensor]) -> List[Tensor]:
        grid_sizes = [tuple(fm.shape[-2:]) for fm in feature_maps]
        anchors = self.anchors_for_grid(grid_sizes, feature_maps[0].device)
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


def _valid_boxes(boxes_px: np.ndarray) -> np.ndarray:
    boxes = _as_boxes(boxes_px)
    ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & np.isfinite(boxes).all(axis=1)
    if not ok.all():
        log.warning("ignoring %d degenerate box(es) with zero width or height", int((~ok).sum()))
    boxes = boxes[ok]
    if len(boxes) == 0:
        raise GeodetError("there are no labelled boxes with a positive width and height to fit anchors to")
    return boxes


#: Base anchor size per level, as multiples of the level's stride.
_SIZE_FACTORS: Tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0)
_SCALE_SETS: Tuple[Tuple[float, ...], ...] = ((1.0,), (1.0, 2 ** 0.5), OCTAVE_SCALES)


def _ratio_sets(ratios: np.ndarray) -> List[Tuple[float, ...]]:
    """Candidate aspect-ratio sets from the quantiles of the objects' h / w."""
    q10, q50, q90 = (round(float(v), 2) for v in np.quantile(ratios, [0.1, 0.5, 0.9]))
    candidates = [(1.0,), (q50,), tuple(sorted({q10, q50, q90})), (0.5, 1.0, 2.0)]
    unique: List[Tuple[float, ...]] = []
    for c in candidates:
        if c not in unique and all(r > 0 for r in c):
            unique.append(c)
    return unique


@dataclass(frozen=True)
class _Candidate:
    covered: Tuple[int, ...]  # boxes covered at each searched IoU threshold
    count: int
    levels: Tuple[int, ...]
    anchors: AnchorConfig


def _candidates(
    boxes: np.ndarray, chip_size: int, max_levels: int, thresholds: Sequence[float]
) -> List[_Candidate]:
    """Every searched anchor design with the number of boxes it covers at each IoU of ``thresholds``."""
    ratio_sets = _ratio_sets(box_aspect_ratios(boxes))
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
            for ratios in ratio_sets:
                ri = [all_ratios.index(r) for r in ratios]
                best_per_level = {
                    lv: per_level[lv][:, ki][:, ri][:, :, si].reshape(len(boxes), -1).max(axis=1)
                    for lv in per_level
                }
                for low in range(2, 6):
                    best = np.zeros(len(boxes))
                    for high in range(low, min(low + max_levels, 8)):
                        best = np.maximum(best, best_per_level[high])
                        levels = tuple(range(low, high + 1))
                        anchors = AnchorConfig(
                            sizes=tuple(float(k * 2 ** lv) for lv in levels), scales=scales, ratios=ratios
                        )
                        count = anchor_count(levels, anchors, chip_size)
                        covered = tuple(int((best >= t).sum()) for t in thresholds)
                        out.append(_Candidate(covered=covered, count=count, levels=levels, anchors=anchors))
    return out


def _choose(candidates: List[_Candidate], i: int, n: int, tolerance: float) -> _Candidate:
    """Among candidates within ``tolerance`` of the best coverage at threshold ``i``, the one with
    the fewest anchors (then the higher coverage, then the first searched)."""
    best_covered = max(c.covered[i] for c in candidates)
    tied = [c for c in candidates if c.covered[i] >= best_covered - tolerance * n]
    return min(tied, key=lambda c: (c.count, -c.covered[i]))  # min() keeps the first of equals


def _log_choice(chosen: _Candidate, covered: int, n: int, fg_iou: float) -> None:
    log.info(
        "fitted anchors: levels %s sizes %s scales %s ratios %s cover %.1f%% of %d boxes at IoU %.2f",
        chosen.levels,
        chosen.anchors.sizes,
        chosen.anchors.scales,
        chosen.anchors.ratios,
        100 * covered / n,
        n,
        fg_iou,
    )


def fit_anchors(
    boxes_px: np.ndarray,
    *,
    fg_iou: float = 0.5,
    chip_size: int = 512,
    max_levels: int = 5,
    tolerance: float = 0.01,
) -> Tuple[Tuple[int, ...], AnchorConfig]:
    """Pyramid levels and anchors fitted to the labelled objects.

    Searches lowest level 2..5, 1..``max_levels`` consecutive levels (up to
    P7), a base size per level of ``k * stride`` for k in
    (1, 1.5, 2, 3, 4), scale sets (1), (1, sqrt 2), (1, 2^1/3, 2^2/3) and ratio
    sets (1), (median), (p10, median, p90) of the objects' h / w and
    (0.5, 1, 2). Coverage is the share of boxes whose best anchor reaches
    ``fg_iou``. Every config within ``tolerance`` of the best coverage counts
    as tied; among those the one with the fewest anchors per chip wins, then
    the higher coverage, then the first in search order (deterministic).

    Args:
        boxes_px: ``[N, 4]`` xyxy boxes in chip pixels (real positions).
        fg_iou: IoU an anchor needs to count as matching a box.
        chip_size: chip side in px (grid extent and anchor count).
        max_levels: most pyramid levels to use.
        tolerance: coverage difference treated as a tie.

    Returns:
        ``(levels, AnchorConfig)``.

    Raises:
        GeodetError: when there is no box with a positive area.
    """
    boxes = _valid_boxes(boxes_px)
    chosen = _choose(_candidates(boxes, chip_size, max_levels, (fg_iou,)), 0, len(boxes), tolerance)
    _log_choice(chosen, chosen.covered[0], len(boxes), fg_iou)
    return chosen.levels, chosen.anchors


#: Foreground IoU thresholds tried by :func:`fit_assignment`, strictest first.
FG_IOU_CANDIDATES: Tuple[float, ...] = (0.5, 0.45, 0.4)
#: Gap between the foreground and background IoU thresholds.
BG_IOU_GAP = 0.1


def fit_assignment(
    boxes_px: np.ndarray,
    *,
    chip_size: int = 512,
    min_coverage: float = 0.95,
    fg_candidates: Sequence[float] = FG_IOU_CANDIDATES,
    max_levels: int = 5,
    tolerance: float = 0.01,
) -> Tuple[Tuple[int, ...], AnchorConfig, float, float]:
    """Anchors and the anchor-to-box IoU thresholds of training, fitted together.

    Objects of a few pixels cannot reach IoU 0.5 with any anchor on a grid of
    stride 4: a 5 x 10 px car half a stride off the nearest anchor centre tops
    out near 0.4. At a 0.5 threshold such objects get a single low-quality
    match or none, and the anchors beside it are ignored or called
    background, so the classifier learns from a hair-thin target. This picks
    the strictest foreground threshold in ``fg_candidates`` at which the
    fitted anchors cover at least ``min_coverage`` of the boxes (the last
    candidate when none does); background is ``BG_IOU_GAP`` below it.

    Returns:
        ``(levels, AnchorConfig, fg_iou_thresh, bg_iou_thresh)``.
    """
    boxes = _valid_boxes(boxes_px)
    candidates = _candidates(boxes, chip_size, max_levels, fg_candidates)
    for i, fg in enumerate(fg_candidates):
        chosen = _choose(candidates, i, len(boxes), tolerance)
        if chosen.covered[i] >= min_coverage * len(boxes):
            break
    _log_choice(chosen, chosen.covered[i], len(boxes), fg)
    return chosen.levels, chosen.anchors, float(fg), round(float(fg) - BG_IOU_GAP, 4)


# --------------------------------------------------------------------------- report


def _quantiles(values: np.ndarray, qs: Sequence[float]) -> List[float]:
    return [float(v) for v in np.quantile(values, qs)]


def coverage_report(
    boxes_px: np.ndarray,
    fitted: Tuple[Sequence[int], AnchorConfig],
    fg_iou: float = 0.5,
    *,
    chip_size: Optional[int] = 512,
) -> dict:
    """Object statistics and anchor coverage of the COCO defaults vs fitted anchors.

    Args:
        boxes_px: ``[N, 4]`` xyxy boxes in chip pixels.
        fitted: ``(levels, AnchorConfig)`` e.g. from :func:`fit_anchors`.
        fg_iou: IoU an anchor needs to count as matching a box.
        chip_size: chip side in px (grid extent, anchor count); None = unbounded grid.

    Returns:
        a JSON-safe dict: ``count``, ``size_px`` (min, p5, median, p95, max of
        sqrt(w*h)), ``aspect_ratio`` (p5, p25, median, p75, p95 of h/w),
        ``fg_iou``, ``coco`` and ``fitted`` (each ``levels``, ``anchors``,
        ``coverage``, ``anchors_per_chip``).
    """
    boxes = _valid_boxes(boxes_px)
    sizes = box_sizes_px(boxes)
    ratios = box_aspect_ratios(boxes)
    size_q = _quantiles(sizes, [0.0, 0.05, 0.5, 0.95, 1.0])
    ratio_q = _quantiles(ratios, [0.05, 0.25, 0.5, 0.75, 0.95])

    def entry(levels: Sequence[int], anchors: AnchorConfig) -> dict:
        return {
            "levels": [int(lv) for lv in levels],
            "anchors": to_dict(anchors),
            "coverage": anchor_coverage(boxes, levels, anchors, fg_iou, chip_size=chip_size),
            "anchors_per_chip": anchor_count(levels, anchors, chip_size) if chip_size else None,
        }

    return {
        "count": int(len(boxes)),
        "size_px": dict(zip(("min", "p5", "median", "p95", "max"), size_q)),
        "aspect_ratio": dict(zip(("p5", "p25", "median", "p75", "p95"), ratio_q)),
        "fg_iou": float(fg_iou),
        "chip_size": chip_size,
        "coco": entry(COCO_LEVELS, COCO_ANCHORS),
        "fitted": entry(tuple(fitted[0]), fitted[1]),
    }


def _fmt(values: Sequence[float], digits: int = 1) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


def format_coverage_report(report: dict) -> str:
    """Human-readable text of a :func:`coverage_report` dict."""
    s, r = report["size_px"], report["aspect_ratio"]
    lines = [
        f"objects: {report['count']}",
        "size sqrt(w*h) px: min {:.1f}  p5 {:.1f}  median {:.1f}  p95 {:.1f}  max {:.1f}".format(
            s["min"], s["p5"], s["median"], s["p95"], s["max"]
        ),
        "aspect h/w: p5 {:.2f}  p25 {:.2f}  median {:.2f}  p75 {:.2f}  p95 {:.2f}".format(
            r["p5"], r["p25"], r["median"], r["p75"], r["p95"]
        ),
        f"coverage = share of objects whose best anchor has IoU >= {report['fg_iou']:.2f}:",
    ]
    for name, key in (("COCO defaults", "coco"), ("fitted", "fitted")):
        e = report[key]
        count = f", {e['anchors_per_chip']} anchors per chip" if e.get("anchors_per_chip") else ""
        lines.append(
            f"  {name:<13} {100 * e['coverage']:5.1f}%  levels P{e['levels'][0]}-P{e['levels'][-1]}"
            f"  sizes [{_fmt(e['anchors']['sizes'])}]  scales [{_fmt(e['anchors']['scales'], 3)}]"
            f"  ratios [{_fmt(e['anchors']['ratios'], 2)}]{count}"
        )
    return "\n".join(lines)

"""Detection metrics on boxes (pure): COCO AP through pycocotools, the best-F1 point.

Axis-aligned xyxy boxes in any planar coordinates (pixels or metres) with
class names in, a report dict out. :func:`geodet.reports.evaluation.evaluate`
brings vector files in any CRS here; training's validation
(:func:`geodet.learning.training.validate`) calls :func:`coco_map` on chips.
See :mod:`geodet.reports.evaluation` for why dense scenes are split into
groups of overlapping boxes, each its own COCO image.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from geodet.core.stitch import box_overlap_pairs, connected_groups, pack_groups
from geodet.errors import GeodetError

#: COCO's IoU thresholds 0.50:0.05:0.95.
COCO_IOUS: Tuple[float, ...] = tuple(float(t) for t in np.round(np.linspace(0.5, 0.95, 10), 2))


#: Class name of a class-agnostic evaluation whose predictions carry several classes.
SINGLE_CLASS = "object"


#: Boxes per COCO image when groups of overlapping boxes are packed together.
IMAGE_BOXES = 16


def evaluate_boxes(
    pred_boxes,
    pred_scores,
    pred_classes: Sequence,
    true_boxes,
    true_classes: Sequence,
    *,
    iou: float = 0.5,
) -> Dict[str, Any]:
    """COCO AP and best-F1 precision / recall of predicted boxes, per class and overall.

    Args:
        pred_boxes: ``[N, 4]`` xyxy predicted boxes (array-like, any planar units).
        pred_scores: ``[N]`` confidence of each prediction.
        pred_classes: ``[N]`` class names (compared as ``str``).
        true_boxes: ``[M, 4]`` xyxy ground-truth boxes in the same units.
        true_classes: ``[M]`` class names.
        iou: IoU at which a prediction matches a truth box for the counts, the
            best-F1 threshold, the PR curve and ``ap``. AP50 and AP50:95 always
            use COCO's thresholds.

    Returns:
        A JSON-serialisable dict::

            {"iou": float,
             "classes": {name: metrics},   # every class of predictions or truth
             "overall": metrics}

        where ``metrics`` holds ``n_true``, ``n_pred``, ``ap50``, ``ap50_95``,
        ``ap`` (AP at ``iou``; None for a class without truth), the best-F1
        operating point ``threshold`` (keep predictions with score >= it),
        ``precision``, ``recall``, ``f1``, ``tp``, ``fp``, ``fn``; per class
        also ``pr_curve`` = ``{"recall", "precision", "score"}``: COCO's
        101-point interpolated curve at ``iou``. Overall AP values are the
        means over classes with truth (mAP); overall counts and P/R/F1 pool
        all classes at one threshold.
    """
    if not 0 < iou <= 1:
        raise GeodetError(f"IoU threshold must be in (0, 1], got {iou}.")
    pb = np.asarray(pred_boxes, np.float64).reshape(-1, 4)
    tb = np.asarray(true_boxes, np.float64).reshape(-1, 4)
    ps = np.asarray(pred_scores, np.float64).reshape(-1)
    pc = np.asarray([str(c) for c in pred_classes], dtype=object)
    tc = np.asarray([str(c) for c in true_classes], dtype=object)
    if not len(pb) == len(ps) == len(pc):
        raise ValueError(f"{len(pb)} predicted boxes, {len(ps)} scores and {len(pc)} classes differ in number")
    if len(tb) != len(tc):
        raise ValueError(f"{len(tb)} truth boxes but {len(tc)} truth classes")

    ious = list(COCO_IOUS)
    t_user = next((k for k, t in enumerate(ious) if abs(t - iou) < 1e-9), None)
    if t_user is None:
        ious.append(float(iou))
        t_user = len(ious) - 1

    classes: Dict[str, Any] = {}
    pooled_scores, pooled_tp = [], []
    for name in sorted(set(pc) | set(tc)):
        p_sel, t_sel = pc == name, tc == name
        precision, rec_scores, det_scores, det_tp = _coco_eval_one_class(pb[p_sel], ps[p_sel], tb[t_sel], ious, t_user)
        n_true = int(t_sel.sum())
        has_truth = n_true > 0
        metrics = {
            "n_true": n_true,
            "n_pred": int(p_sel.sum()),
            "ap50": float(precision[0].mean()) if has_truth else None,
            "ap50_95": float(precision[: len(COCO_IOUS)].mean()) if has_truth else None,
            "ap": float(precision[t_user].mean()) if has_truth else None,
        }
        metrics.update(best_f1_point(det_scores, det_tp, n_true))
        metrics["pr_curve"] = {
            "recall": [round(float(r), 2) for r in np.linspace(0, 1, 101)] if has_truth else [],
            "precision": [float(v) for v in precision[t_user]] if has_truth else [],
            "score": [float(v) for v in rec_scores[t_user]] if has_truth else [],
        }
        classes[name] = metrics
        pooled_scores.append(det_scores)
        pooled_tp.append(det_tp)

    with_truth = [m for m in classes.values() if m["n_true"] > 0]

    def mean_of(key: str) -> Optional[float]:
        return float(np.mean([m[key] for m in with_truth])) if with_truth else None

    overall = {
        "n_true": int(len(tb)),
        "n_pred": int(len(pb)),
        "ap50": mean_of("ap50"),
        "ap50_95": mean_of("ap50_95"),
        "ap": mean_of("ap"),
    }
    scores_all = np.concatenate(pooled_scores) if pooled_scores else np.zeros(0)
    tp_all = np.concatenate(pooled_tp) if pooled_tp else np.zeros(0, bool)
    overall.update(best_f1_point(scores_all, tp_all, int(len(tb))))
    return {"iou": float(iou), "classes": classes, "overall": overall}


def coco_map(preds: Sequence[dict], truths: Sequence[dict]) -> Dict[str, Any]:
    """mAP50 and mAP50:95 over a set of chips (training validation), and AP50 per class.

    Args:
        preds: per chip ``{"boxes": [N, 4] xyxy px, "scores": [N], "labels": [N]}``.
        truths: per chip ``{"boxes": [M, 4] xyxy px, "labels": [M]}``.

    Chips are laid side by side on one virtual canvas, so boxes of different
    chips can never match, and scored with :func:`evaluate_boxes`.

    Returns:
        ``{"map_50": float, "map": float, "ap50_per_class": {label (int): float}}``;
        the maps are 0.0 when there is no truth, and ``ap50_per_class`` holds
        only the labels that have truth.
    """
    width = 1.0 + max(
        [float(np.max(d["boxes"][:, 2])) for d in list(preds) + list(truths) if len(d["boxes"])] or [1.0]
    )
    pb, ps, pc, tb, tc = [], [], [], [], []
    for i, (p, t) in enumerate(zip(preds, truths)):
        shift = np.array([i * width, 0, i * width, 0])
        pb.append(np.asarray(p["boxes"], np.float64).reshape(-1, 4) + shift)
        ps.append(np.asarray(p["scores"], np.float64).reshape(-1))
        pc.append(np.asarray(p["labels"]).reshape(-1).astype(np.int64).astype(str))
        tb.append(np.asarray(t["boxes"], np.float64).reshape(-1, 4) + shift)
        tc.append(np.asarray(t["labels"]).reshape(-1).astype(np.int64).astype(str))
    true_boxes = np.concatenate(tb) if tb else np.zeros((0, 4))
    if len(true_boxes) == 0:
        return {"map_50": 0.0, "map": 0.0, "ap50_per_class": {}}
    report = evaluate_boxes(
        np.concatenate(pb), np.concatenate(ps), np.concatenate(pc), true_boxes, np.concatenate(tc), iou=0.5
    )
    overall = report["overall"]
    per_class = {int(name): float(m["ap50"]) for name, m in report["classes"].items() if m["n_true"] > 0}
    return {
        "map_50": float(overall["ap50"] or 0.0),
        "map": float(overall["ap50_95"] or 0.0),
        "ap50_per_class": dict(sorted(per_class.items())),
    }


def best_f1_point(scores: np.ndarray, is_tp: np.ndarray, n_true: int) -> Dict[str, Any]:
    """Precision, recall, F1 and counts at the score threshold of best F1.

    Args:
        scores: ``[D]`` detection scores.
        is_tp: ``[D]`` bool, the detection matched a truth object (one-to-one).
        n_true: number of truth objects.

    Returns:
        ``threshold`` (keep detections with score >= it; ties are kept or
        dropped together), ``precision``, ``recall``, ``f1``, ``tp``, ``fp``,
        ``fn``. With no truth, recall, F1 and threshold are None and every
        detection is a false positive. When no threshold gives a true
        positive, the point of the lowest threshold (all detections) is given.
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    is_tp = np.asarray(is_tp, bool).reshape(-1)
    n_pred = len(scores)
    if n_true == 0:
        return {"threshold": None, "precision": 0.0, "recall": None, "f1": None, "tp": 0, "fp": n_pred, "fn": 0}
    if n_pred == 0:
        return {"threshold": None, "precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 0, "fn": n_true}
    order = np.argsort(-scores, kind="mergesort")
    s = scores[order]
    tp = np.cumsum(is_tp[order])
    fp = np.arange(1, n_pred + 1) - tp
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # last detection of each run of equal scores
    tp, fp, s = tp[ends], fp[ends], s[ends]
    f1 = 2 * tp / (2 * tp + fp + (n_true - tp))
    best = int(np.argmax(f1)) if f1.max() > 0 else len(ends) - 1
    t, f = int(tp[best]), int(fp[best])
    return {
        "threshold": float(s[best]),
        "precision": t / (t + f),
        "recall": t / n_true,
        "f1": float(f1[best]),
        "tp": t,
        "fp": f,
        "fn": n_true - t,
    }


def _coco_eval_one_class(
    pred_boxes: np.ndarray, pred_scores: np.ndarray, true_boxes: np.ndarray, ious: Sequence[float], t_user: int
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run pycocotools on one class, one COCO image per group of overlapping boxes.

    Returns:
        ``precision [T, 101]`` and ``scores [T, 101]`` (COCO's interpolated
        curve per IoU threshold; -1 without truth), and the detections'
        ``scores [D]`` and ``is_tp [D]`` at IoU index ``t_user``.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    n, m = len(pred_boxes), len(true_boxes)
    image = _image_ids(pred_boxes, true_boxes)

    def annotations(boxes, first_node, scores=None):
        out = []
        for k, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
            w, h = x2 - x1, y2 - y1
            ann = {"id": k + 1, "image_id": int(image[first_node + k]), "category_id": 1,
                   "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0}
            if scores is not None:
                ann["score"] = float(scores[k])
            out.append(ann)
        return out

    image_ids = sorted(set(image.tolist()))
    common = {"images": [{"id": int(i)} for i in image_ids], "categories": [{"id": 1, "name": "c"}]}
    per_image = np.bincount(image[:n], minlength=1) if n else np.zeros(1, np.int64)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt, dt = COCO(), COCO()
        gt.dataset = {**common, "annotations": annotations(true_boxes, n)}
        dt.dataset = {**common, "annotations": annotations(pred_boxes, 0, pred_scores)}
        gt.createIndex()
        dt.createIndex()
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.imgIds = image_ids
        ev.params.catIds = [1]
        ev.params.iouThrs = np.asarray(ious, np.float64)
        ev.params.maxDets = [max(int(per_image.max()), 1)]  # never cut detections off
        ev.params.areaRng = [[0.0, float("inf")]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][:, :, 0, 0, 0]
    rec_scores = ev.eval["scores"][:, :, 0, 0, 0]
    done = [e for e in ev.evalImgs if e is not None]
    if done:
        det_scores = np.concatenate([np.asarray(e["dtScores"], np.float64) for e in done])
        det_tp = np.concatenate([e["dtMatches"][t_user] > 0 for e in done])
    else:
        det_scores, det_tp = np.zeros(0), np.zeros(0, bool)
    return precision, rec_scores, det_scores, det_tp


def _image_ids(pred_boxes: np.ndarray, true_boxes: np.ndarray) -> np.ndarray:
    """COCO image id of every box, predictions first then truth: ``[N + M]``.

    Image 0 holds predictions that overlap no truth box, image 1 truth boxes
    that overlap no prediction, and each group of overlapping boxes gets an
    image of its own (ids >= 2).
    """
    n, m = len(pred_boxes), len(true_boxes)
    i, j = box_overlap_pairs(pred_boxes, true_boxes)
    group = connected_groups(n + m, i, j + n)
    _, inverse, counts = np.unique(group, return_inverse=True, return_counts=True)
    image = pack_groups(group, IMAGE_BOXES) + 2
    alone = counts[inverse] == 1
    image[:n][alone[:n]] = 0
    image[n:][alone[n:]] = 1
    return image

"""Detections against ground truth: COCO AP, precision, recall, F1.

Two layers:

* :func:`geodet.core.metrics.evaluate_boxes` (pure, in :mod:`geodet.core.metrics`): axis-aligned xyxy boxes in any planar
  coordinates (pixels or metres) with class names. AP comes from
  **pycocotools**, the reference implementation of the COCO metric, run with
  the ``all`` area range only (COCO's small/medium/large ranges are in
  pixels^2 and mean nothing in metres) and no cap on detections per image.
  Precision, recall, F1 and TP/FP/FN counts at the best-F1 score threshold
  reuse pycocotools' own one-to-one greedy matching at the requested IoU, so
  every number in the report comes from one matching.
* :func:`evaluate` (geo): vector files or GeoDataFrames in any CRS, reprojected
  to one projected CRS, optionally restricted to what an image covers.

Dense scenes: pycocotools matches detections to truth per image in a Python
loop that is quadratic in the boxes of an image. A whole scene as one image
(tens of thousands of objects) would take hours, so each connected group of
overlapping prediction/truth boxes becomes its own COCO "image". Boxes that
do not overlap have IoU 0 and can never match, so the matching, the
precision-recall curve and the AP are exactly those of one scene-sized image
(a test pins this).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional, Tuple

import numpy as np
import pandas as pd
from pyproj import CRS, Transformer

from geodet.core.boxes import world_to_pixel_points
from geodet.core.metrics import SINGLE_CLASS, evaluate_boxes
from geodet.errors import GeodetError
from geodet.io.raster import open_dataset, read_errors
from geodet.io.vector import auto_class_field, class_name_strings, read_frame

log = logging.getLogger(__name__)


#: Side, in pixels, of the blocks in which the imagery's valid-data mask is read.
MASK_BLOCK_PX = 512


# --------------------------------------------------------------------------- geo layer


def evaluate(
    pred,
    truth,
    *,
    iou: float = 0.5,
    class_field: Optional[str] = None,
    imagery: Optional[str] = None,
) -> Dict[str, Any]:
    """Evaluate detections against ground truth given as vector data.

    Args:
        pred: path of a vector file or a GeoDataFrame of detections with
            columns ``score`` (required) and ``class`` (optional: without it
            all detections are one class).
        truth: path or GeoDataFrame of ground-truth objects (polygons), read
            by :func:`geodet.io.vector.read_frame`.
        iou: IoU of a match (see :func:`evaluate_boxes`).
        class_field: truth column with class names; None uses the labels' rule,
            :func:`geodet.io.vector.auto_class_field` (the first of ``class``,
            ``label``, ``category`` present), else all truth is one class and
            the evaluation is class-agnostic (prediction classes are ignored).
        imagery: optional GeoTIFF path. Truth counts only when its box centre
            lies on a valid pixel of the image (inside the footprint and not
            nodata); predictions whose centre lies outside the footprint are
            dropped. The valid-data mask is read in windows around objects.

    Both inputs are reprojected to one projected CRS: the imagery's if it is
    projected, else a UTM zone if the truth is geographic, else the truth's
    CRS. Boxes are the geometries' bounds in that CRS.

    Returns:
        The :func:`evaluate_boxes` report plus ``crs``, ``class_agnostic``,
        ``imagery`` and ``excluded`` = ``{"truth_outside_imagery",
        "truth_on_nodata", "pred_outside_imagery"}``.

    Raises:
        GeodetError: unreadable input, missing CRS, empty truth, missing
            ``score`` or class field, truth without area, no truth on the
            imagery.
    """
    pred_frame, pred_name = read_frame(pred, "predictions")
    truth_frame, truth_name = read_frame(truth, "ground truth")
    if len(truth_frame) == 0:
        raise GeodetError(f"{truth_name} holds no objects to evaluate against.")
    if len(pred_frame) == 0:  # a file without features may carry no columns at all
        pred_frame = pred_frame.assign(score=np.zeros(0))
    if "score" not in pred_frame.columns:
        raise GeodetError(f"{pred_name} has no 'score' column; evaluation needs a confidence per detection.")
    scores = _numeric_scores(pred_frame["score"], pred_name)
    pred_classes, true_classes, agnostic = _resolve_classes(pred_frame, truth_frame, class_field, pred_name, truth_name)

    src = None
    if imagery is not None:
        src = open_dataset(os.fspath(imagery))
    try:
        crs = _projected_crs(truth_frame, src)
        pred_boxes = _bounds(pred_frame.to_crs(crs)) if len(pred_frame) else np.zeros((0, 4))
        true_boxes = _bounds(truth_frame.to_crs(crs))
        _check_area(true_boxes, truth_name)
        excluded = {"truth_outside_imagery": 0, "truth_on_nodata": 0, "pred_outside_imagery": 0}
        if src is not None:
            t_inside, t_valid = _on_image(src, true_boxes, crs, check_mask=True)
            p_inside, _ = _on_image(src, pred_boxes, crs, check_mask=False)
            excluded = {
                "truth_outside_imagery": int((~t_inside).sum()),
                "truth_on_nodata": int((t_inside & ~t_valid).sum()),
                "pred_outside_imagery": int((~p_inside).sum()),
            }
            keep_t = t_inside & t_valid
            if not keep_t.any():
                raise GeodetError(
                    f"None of the {len(keep_t)} objects of {truth_name} lies on valid pixels of {imagery}."
                )
            true_boxes, true_classes = true_boxes[keep_t], true_classes[keep_t]
            pred_boxes, pred_classes, scores = pred_boxes[p_inside], pred_classes[p_inside], scores[p_inside]
            log.info("imagery restriction: %s", excluded)
    finally:
        if src is not None:
            src.close()

    unmatched = set(pred_classes) - set(true_classes)
    if unmatched and not set(pred_classes) & set(true_classes):
        log.warning("no predicted class (%s) occurs in the ground truth (%s)",
                    ", ".join(sorted(unmatched)), ", ".join(sorted(set(true_classes))))
    report = evaluate_boxes(pred_boxes, scores, pred_classes, true_boxes, true_classes, iou=iou)
    report.update({
        "crs": crs.to_string(),
        "class_agnostic": agnostic,
        "imagery": None if imagery is None else os.fspath(imagery),
        "excluded": excluded,
    })
    return report


_REPORT_COLUMNS = (
    ("class", "{}", 12),
    ("n_true", "{}", 7),
    ("n_pred", "{}", 7),
    ("AP50", "{:.3f}", 6),
    ("AP50:95", "{:.3f}", 7),
    ("P", "{:.3f}", 6),
    ("R", "{:.3f}", 6),
    ("F1", "{:.3f}", 6),
    ("thresh", "{:.3f}", 6),
    ("TP", "{}", 7),
    ("FP", "{}", 7),
    ("FN", "{}", 7),
)
_REPORT_KEYS = ("n_true", "n_pred", "ap50", "ap50_95", "precision", "recall", "f1", "threshold", "tp", "fp", "fn")


def format_report(report: Dict[str, Any]) -> str:
    """A plain-text table of an :func:`evaluate` (or :func:`evaluate_boxes`) report.

    One row per class, then the overall row, then notes on how the overall row
    is pooled, the IoU, the CRS and what the imagery excluded (``geodet evaluate``
    prints this).
    """
    name_width = max([len("overall")] + [len(n) for n in report["classes"]]) + 1
    columns = ((_REPORT_COLUMNS[0][0], _REPORT_COLUMNS[0][1], max(_REPORT_COLUMNS[0][2], name_width)),) + _REPORT_COLUMNS[1:]

    def row(cells):
        out = []
        for (title, fmt, width), value in zip(columns, cells):
            text = "-" if value is None else fmt.format(value)
            out.append(text.ljust(width) if title == "class" else text.rjust(width))
        return " ".join(out)

    lines = [" ".join(t.ljust(w) if t == "class" else t.rjust(w) for t, _, w in columns)]
    for name, m in sorted(report["classes"].items()):
        lines.append(row([name] + [m[k] for k in _REPORT_KEYS]))
    lines.append(row(["overall"] + [report["overall"][k] for k in _REPORT_KEYS]))
    notes = [f"IoU {report['iou']:g}"]
    if report.get("crs"):
        notes.append(f"CRS {report['crs']}")
    if report.get("class_agnostic"):
        notes.append("class-agnostic (ground truth has no class field)")
    excluded = report.get("excluded") or {}
    if report.get("imagery"):
        notes.append(
            f"excluded by the imagery: {excluded.get('truth_outside_imagery', 0)} truth outside, "
            f"{excluded.get('truth_on_nodata', 0)} truth on nodata, "
            f"{excluded.get('pred_outside_imagery', 0)} predictions outside"
        )
    lines.append("overall AP = mean over classes; P/R/F1 and counts pool all classes at one threshold.")
    lines.append("; ".join(notes))
    return "\n".join(lines)


def _numeric_scores(column, name: str) -> np.ndarray:
    values = pd.to_numeric(column, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        raise GeodetError(f"{name} has {int(bad.sum())} detection(s) without a numeric 'score'.")
    return values


def _class_names(frame, field: str, name: str) -> np.ndarray:
    values = frame[field]
    missing = int(values.isna().sum())
    if missing:
        raise GeodetError(f"{name} has {missing} feature(s) without a value in its class field {field!r}.")
    return np.asarray(class_name_strings(values).to_numpy(), dtype=object)


def _resolve_classes(pred_frame, truth_frame, class_field, pred_name, truth_name):
    """``(pred_classes [N], true_classes [M], class_agnostic)`` as object arrays of str."""
    if class_field is not None and class_field not in truth_frame.columns:
        cols = ", ".join(str(c) for c in truth_frame.columns if c != truth_frame.geometry.name) or "none"
        raise GeodetError(f"{truth_name} has no class field {class_field!r} (its fields: {cols}).")
    field = class_field if class_field is not None else auto_class_field(truth_frame.columns)
    if "class" in pred_frame.columns:
        pred_classes = _class_names(pred_frame, "class", pred_name)
    else:
        pred_classes = None
    if field is None:
        names = sorted(set(pred_classes)) if pred_classes is not None else []
        single = names[0] if len(names) == 1 else SINGLE_CLASS
        if len(names) > 1:
            log.warning(
                "%s has no class field: evaluating the %d predicted classes as one class", truth_name, len(names)
            )
        return (np.full(len(pred_frame), single, dtype=object), np.full(len(truth_frame), single, dtype=object), True)
    true_classes = _class_names(truth_frame, field, truth_name)
    if pred_classes is None:
        names = sorted(set(true_classes))
        if len(pred_frame) == 0:
            return np.zeros(0, dtype=object), true_classes, False
        if len(names) != 1:
            raise GeodetError(
                f"{pred_name} has no 'class' column but {truth_name} holds {len(names)} classes; "
                "add the class to the predictions or evaluate class-agnostically."
            )
        pred_classes = np.full(len(pred_frame), names[0], dtype=object)
    return pred_classes, true_classes, False


def _projected_crs(truth_frame, src):
    """The CRS boxes are compared in: imagery's if projected, else UTM for geographic truth, else truth's."""
    if src is not None:
        img_crs = CRS.from_user_input(src.crs.to_wkt())
        if img_crs.is_projected:
            return img_crs
    crs = CRS.from_user_input(truth_frame.crs)
    if crs.is_geographic:
        return truth_frame.estimate_utm_crs()
    return crs


def _bounds(frame) -> np.ndarray:
    """``[N, 4]`` xyxy bounds of each geometry."""
    return np.asarray(frame.geometry.bounds.to_numpy(), np.float64).reshape(-1, 4)


def _check_area(boxes: np.ndarray, name: str) -> None:
    flat = ~((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
    if flat.any():
        raise GeodetError(
            f"{name} holds {int(flat.sum())} feature(s) without area (points or lines); "
            "evaluation compares boxes, so give objects polygon outlines."
        )


def _on_image(src, boxes: np.ndarray, crs, *, check_mask: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Whether each box centre lies inside the image, and on a valid (not nodata) pixel.

    Args:
        src: open rasterio dataset.
        boxes: ``[N, 4]`` xyxy in ``crs``.
        check_mask: read the valid-data mask (else the second array is all True).

    Returns:
        ``(inside [N], valid [N])`` bool arrays.
    """
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    img_crs = CRS.from_user_input(src.crs.to_wkt())
    if not img_crs.equals(crs):
        cx, cy = Transformer.from_crs(crs, img_crs, always_xy=True).transform(cx, cy)
    col, row = world_to_pixel_points(np.stack([cx, cy], axis=-1), src.transform).T
    inside = np.isfinite(col) & np.isfinite(row) & (col >= 0) & (col < src.width) & (row >= 0) & (row < src.height)
    valid = np.ones(len(boxes), bool)
    if check_mask and inside.any():
        idx = np.flatnonzero(inside)
        valid[idx] = valid_pixels(src, np.floor(row[idx]).astype(np.int64), np.floor(col[idx]).astype(np.int64))
    return inside, valid


def valid_pixels(src, rows: np.ndarray, cols: np.ndarray, *, block_px: int = MASK_BLOCK_PX) -> np.ndarray:
    """Whether pixels ``(rows[k], cols[k])`` of an open dataset hold valid data.

    Reads ``src.dataset_mask`` only in windows: per ``block_px`` block that
    holds queried pixels, the smallest window around them. Memory stays at
    one block whatever the scene size.

    Returns:
        ``[K]`` bool, True where the dataset mask is non-zero.
    """
    from rasterio.windows import Window


    rows = np.asarray(rows, np.int64)
    cols = np.asarray(cols, np.int64)
    out = np.zeros(len(rows), bool)
    if len(rows) == 0:
        return out
    n_block_cols = -(-src.width // block_px)
    key = (rows // block_px) * n_block_cols + cols // block_px
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.diff(key[order])) + 1
    for sel in np.split(order, bounds):
        r0, r1 = int(rows[sel].min()), int(rows[sel].max()) + 1
        c0, c1 = int(cols[sel].min()), int(cols[sel].max()) + 1
        window = Window(c0, r0, c1 - c0, r1 - r0)
        with read_errors(src, window):
            mask = src.dataset_mask(window=window)
        out[sel] = mask[rows[sel] - r0, cols[sel] - c0] > 0
    return out

"""Anchors fitted to a training set: what ``geodet anchors`` reports before any training.

The scenes and labels are read as training reads them
(:func:`geodet.learning.training.load_sources`), the boxes placed in chip
coordinates, and the pure fitting and coverage maths of
:mod:`geodet.modeling.anchors` run on them.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from geodet.config import TRAIN_CHIP, ChipConfig, ModelConfig, check_assigner
from geodet.errors import ConfigError
from geodet.learning.training import boxes_in_chip_frame, load_sources
from geodet.modeling.anchors import coverage_report, fit_anchors, fit_assignment

def anchor_report(
    imagery: Sequence[str],
    labels: str,
    *,
    class_field: Optional[str] = None,
    chip_size: Optional[int] = None,
    point_size_m: Optional[float] = None,
    assigner: Optional[str] = None,
    fg_iou: Optional[float] = None,
) -> dict:
    """Measure labelled objects against scenes and fit anchors to them, as training would.

    Reads the scenes and labels (I/O, like training's sources), places the
    boxes in chip coordinates, fits anchors per class and reports
    :func:`geodet.modeling.anchors.coverage_report` of them.

    Args:
        imagery: GeoTIFF paths the labels are measured against.
        labels: vector labels (any CRS).
        class_field: the labels' class column (None: :func:`geodet.io.vector.auto_class_field`).
        chip_size: training chip side in px (default :data:`geodet.config.TRAIN_CHIP`'s).
        point_size_m: side in metres of a point label's box (default TRAIN_CHIP's).
        assigner: ``"atss"`` or ``"maxiou"``; None: ``"maxiou"`` when ``fg_iou``
            is given, else ``ModelConfig.assigner``.
        fg_iou: MaxIoU matching IoU; None fits it as training does.

    Returns:
        the :func:`geodet.modeling.anchors.coverage_report` dict (format it with :func:`geodet.modeling.anchors.format_coverage_report`).
    """
    if fg_iou is not None and assigner == "atss":
        raise ConfigError("fg_iou applies to the maxiou assigner only; ATSS fits its IoU per object.")
    assigner = check_assigner(assigner or ("maxiou" if fg_iou is not None else ModelConfig.assigner))
    chip_size = TRAIN_CHIP.size if chip_size is None else chip_size
    point_size_m = TRAIN_CHIP.point_size_m if point_size_m is None else point_size_m
    chip = ChipConfig(size=chip_size, overlap=0, point_size_m=point_size_m)
    _, label_set, sources = load_sources(list(imagery), labels, class_field, chip)
    boxes = boxes_in_chip_frame(sources, chip_size)
    class_ids = np.concatenate([s.class_ids for s in sources]) if sources else np.zeros(0, np.int64)
    if fg_iou is None:
        *fitted, fg_iou, _ = fit_assignment(boxes, class_ids=class_ids, assigner=assigner, chip_size=chip_size)
    else:
        fitted = fit_anchors(boxes, class_ids=class_ids, fg_iou=fg_iou, chip_size=chip_size)
    return coverage_report(
        boxes, fitted, fg_iou=fg_iou, chip_size=chip_size, class_ids=class_ids,
        class_names=label_set.class_names, assigner=assigner,
    )

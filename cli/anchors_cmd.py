"""``geodet anchors``: object sizes and anchor coverage per class, default vs fitted."""

from __future__ import annotations

import dataclasses
import json

import click

from geodet.config import ASSIGNERS, TRAIN_CHIP
from geodet_cli.options import class_field_option, user_errors


@click.command("anchors")
@click.option("--imagery", multiple=True, required=True, type=click.Path(dir_okay=False),
              help="GeoTIFF the labels are measured against; repeat for several.")
@click.option("--labels", required=True, type=click.Path(dir_okay=False), help="Vector labels (any CRS).")
@class_field_option
@click.option("--chip-size", type=click.IntRange(min=8), default=TRAIN_CHIP.size, show_default=True,
              help="Training chip side (px).")
@click.option("--assigner", type=click.Choice(ASSIGNERS), default=None,
              help="Anchor assignment of training (default: the model default, maxiou). Coverage is "
                   "reported under it.")
@click.option("--fg-iou", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="IoU at which an anchor covers a box under --assigner maxiou (implied by this option); "
                   "default: fitted as in training, the strictest of 0.5, 0.45, 0.4 that covers 95% of the boxes.")
@click.option("--point-size", type=click.FloatRange(0, min_open=True), default=TRAIN_CHIP.point_size_m, show_default=True,
              help="Side in metres of the box drawn around a point label.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def anchors_cmd(imagery, labels, class_field, chip_size, assigner, fg_iou, point_size, as_json):
    """Measure the objects and propose anchors fitted to them, per class.

    Anchors are fitted so that every class is covered (a rare class weighs
    as much as a common one) and keep each class's aspect ratios. Coverage
    is reported overall and per class, at IoU 0.5 and under the training
    assignment (MaxIoU: best anchor IoU >= the fitted threshold; ATSS: the
    share of objects with at least one positive anchor); classes below 90%
    are flagged.

    \b
    Examples:
      geodet anchors --imagery sample_data/suburb.tif --labels sample_data/pools.geojson
      geodet anchors --imagery a.tif --labels objects.gpkg --class-field class --json
    """
    if fg_iou is not None and assigner == "atss":
        raise click.BadParameter("--fg-iou applies to --assigner maxiou only; ATSS fits its IoU per object.",
                                 param_hint="--fg-iou")
    with user_errors():
        from geodet.learning.anchor_fit import anchor_report
        from geodet.modeling.anchors import format_coverage_report

        report = anchor_report(list(imagery), labels, class_field=class_field, chip_size=chip_size,
                               point_size_m=point_size, assigner=assigner, fg_iou=fg_iou)
    if as_json:
        click.echo(json.dumps(report, default=_jsonable))
    else:
        click.echo(format_coverage_report(report))


def _jsonable(value):
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)

"""``geodet anchors``: object sizes and anchor coverage, default vs fitted."""

from __future__ import annotations

import click

from geodet_cli.options import class_field_option, user_errors


@click.command("anchors")
@click.option("--imagery", multiple=True, required=True, type=click.Path(dir_okay=False),
              help="GeoTIFF the labels are measured against; repeat for several.")
@click.option("--labels", required=True, type=click.Path(dir_okay=False), help="Vector labels (any CRS).")
@class_field_option
@click.option("--chip-size", type=click.IntRange(min=8), default=256, show_default=True)
@click.option("--fg-iou", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="IoU at which an anchor counts as covering a box (default: fitted as in training, "
                   "the strictest of 0.5, 0.45, 0.4 that covers 95% of the boxes).")
@click.option("--point-size", type=click.FloatRange(0, min_open=True), default=5.0, show_default=True,
              help="Side in metres of the box drawn around a point label.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def anchors_cmd(imagery, labels, class_field, chip_size, fg_iou, point_size, as_json):
    """Measure the objects and propose anchors fitted to them.

    Reports object sizes in pixels and anchor coverage (the share of boxes
    whose best anchor has IoU >= --fg-iou) for the COCO defaults and the proposal.

    \b
    Examples:
      geodet anchors --imagery sample_data/suburb.tif --labels sample_data/pools.geojson
      geodet anchors --imagery a.tif --labels cars.gpkg --json
    """
    with user_errors():
        import json

        from geodet.anchors import coverage_report, fit_anchors, fit_assignment, format_coverage_report
        from geodet.config import ChipConfig
        from geodet.training import boxes_in_chip_frame, load_sources

        chip = ChipConfig(size=chip_size, overlap=0, point_size_m=point_size)
        _, _, sources = load_sources(list(imagery), labels, class_field, chip)
        boxes = boxes_in_chip_frame(sources, chip_size)
        if fg_iou is None:
            *fitted, fg_iou, _ = fit_assignment(boxes, chip_size=chip_size)
        else:
            fitted = fit_anchors(boxes, fg_iou=fg_iou, chip_size=chip_size)
        report = coverage_report(boxes, fitted, fg_iou=fg_iou)
    if as_json:
        click.echo(json.dumps(report, default=_jsonable))
    else:
        click.echo(format_coverage_report(report))


def _jsonable(value):
    import dataclasses

    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)

"""``geodet evaluate``: score detections against ground truth."""

from __future__ import annotations

import json

import click

from geodet_cli.options import LazyHelpOption, auto_class_fields_text, overwrite_option


@click.command("evaluate")
@click.argument("predictions", type=click.Path(dir_okay=False))
@click.argument("ground_truth", type=click.Path(dir_okay=False))
@click.option("--iou", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
              help="IoU at which a detection matches an object (counts, P/R/F1, PR curve).")
@click.option("--class-field", default=None, cls=LazyHelpOption,
              help_fn=lambda: f"Ground-truth column of class names (default: the first of "
                              f"{auto_class_fields_text()} present, as for training labels; else one class).")
@click.option("--imagery", type=click.Path(dir_okay=False), default=None,
              help="GeoTIFF: count only objects on its valid pixels and predictions on its footprint.")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as one JSON object.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write the precision-recall curves to this PNG.")
@overwrite_option
def evaluate_cmd(predictions, ground_truth, iou, class_field, imagery, as_json, plot_path, overwrite):
    """Score PREDICTIONS (vector file with 'class' and 'score') against
    GROUND_TRUTH (vector file of object outlines), in any CRS.

    Reports per class COCO AP50 and AP50:95, and precision, recall, F1,
    true positives, false positives and misses at the score threshold of best
    F1. Both files are compared in one projected CRS (the imagery's, else a
    UTM zone for geographic data, else the ground truth's).

    \b
    Examples:
      geodet evaluate detections.gpkg pools.geojson
      geodet evaluate detections.gpkg pools.geojson --imagery suburb.tif --plot pr.png
      geodet evaluate cars.geojson truth.gpkg --class-field type --iou 0.3 --json > report.json
    """
    from geodet.errors import GeodetError
    from geodet.reports.evaluation import evaluate, format_report

    try:
        if plot_path is not None:
            from geodet.reports.plot import check_png_path, plot_pr_curve

            check_png_path(plot_path, overwrite=overwrite)
        report = evaluate(predictions, ground_truth, iou=iou, class_field=class_field, imagery=imagery)
        if plot_path is not None:
            plot_pr_curve(report, plot_path, overwrite=overwrite)
    except GeodetError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report))
    else:
        click.echo(format_report(report))
    if plot_path is not None:
        click.echo(f"Wrote {plot_path}", err=True)

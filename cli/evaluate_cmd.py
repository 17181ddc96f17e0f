"""``geodet evaluate``: score detections against ground truth."""

from __future__ import annotations

import click

from geodet_cli.options import overwrite_option

_COLUMNS = (
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
_KEYS = ("n_true", "n_pred", "ap50", "ap50_95", "precision", "recall", "f1", "threshold", "tp", "fp", "fn")


def format_report(report: dict) -> str:
    """A plain-text table of an evaluation report: one row per class, then overall."""
    name_width = max([len("overall")] + [len(n) for n in report["classes"]]) + 1
    columns = ((_COLUMNS[0][0], _COLUMNS[0][1], max(_COLUMNS[0][2], name_width)),) + _COLUMNS[1:]

    def row(cells):
        out = []
        for (title, fmt, width), value in zip(columns, cells):
            text = "-" if value is None else fmt.format(value)
            out.append(text.ljust(width) if title == "class" else text.rjust(width))
        return " ".join(out)

    lines = [" ".join(t.ljust(w) if t == "class" else t.rjust(w) for t, _, w in columns)]
    for name, m in sorted(report["classes"].items()):
        lines.append(row([name] + [m[k] for k in _KEYS]))
    lines.append(row(["overall"] + [report["overall"][k] for k in _KEYS]))
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


@click.command("evaluate")
@click.argument("predictions", type=click.Path(dir_okay=False))
@click.argument("ground_truth", type=click.Path(dir_okay=False))
@click.option("--iou", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
              help="IoU at which a detection matches an object (counts, P/R/F1, PR curve).")
@click.option("--class-field", default=None,
              help="Ground-truth column of class names (default: 'class' if present, else one class).")
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
    import json

    from geodet.errors import GeodetError
    from geodet.evaluation import evaluate

    try:
        if plot_path is not None:
            from geodet.plot import check_png_path, plot_pr_curve

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

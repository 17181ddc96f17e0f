"""``geodet info``: what a model file or an ONNX export says about its model."""

from __future__ import annotations

import json

import click

from geodet_cli.options import user_errors


@click.command("info")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info_cmd(file, as_json):
    """Describe FILE, a geodet model (.pt) or ONNX export (.onnx): classes, bands,
    pixel size, chips, anchors, training summary, validation AP50 per class,
    geodet version and model hash.
    """
    with user_errors():
        from geodet.reports.info import describe, format_info

        info = describe(file)
    click.echo(json.dumps(info, indent=2) if as_json else format_info(info))

"""``geodet export``: a model file -> ONNX for onnxruntime and the QGIS Deepness plugin."""

from __future__ import annotations

import click

from geodet.config import DetectConfig
from geodet_cli.options import overwrite_option, user_errors

#: Defaults shown by --help: DetectConfig's, the one home.
_DEFAULTS = DetectConfig()


@click.command("export")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False), help="The ONNX file to write.")
@click.option("--score-threshold", type=click.FloatRange(0, 1), default=_DEFAULTS.score_threshold, show_default=True,
              help="Default confidence written into the export (Deepness det_conf).")
@click.option("--nms-iou", type=click.FloatRange(0, 1), default=_DEFAULTS.nms_iou, show_default=True,
              help="Default NMS IoU written into the export (Deepness det_iou_thresh).")
@overwrite_option
def export_cmd(model, out, score_threshold, nms_iou, overwrite):
    """Export MODEL (a geodet .pt file) to ONNX, with box decoding in the graph.

    The file runs in `geodet detect -m OUT.onnx` (onnxruntime) and loads in the
    QGIS Deepness plugin as a YOLO_v5_or_v7_default detector: its input is the
    model's bands as raw values / 255, its output [B, N, 5 + classes].

    \b
    Examples:
      geodet export pools.pt -o pools.onnx
      geodet detect scene.tif -m pools.onnx -o pools.gpkg
    """
    with user_errors():
        from geodet.modeling.onnx_export import export_onnx

        cfg = DetectConfig(score_threshold=score_threshold, nms_iou=nms_iou)
        path = export_onnx(model, out, overwrite=overwrite, config=cfg)
    click.echo(f"wrote {path}")

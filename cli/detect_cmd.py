"""``geodet detect``: scenes -> georeferenced detections."""

from __future__ import annotations

import click

from geodet.config import NORMALISATIONS, PRECISIONS, DetectConfig
from geodet_cli.options import (
    ProgressBar,
    device_option,
    exit_on_failed_scenes,
    overwrite_option,
    parse_bands_option,
    user_errors,
)


#: Defaults shown by --help and used when a flag is left out: DetectConfig's, the one home.
_DEFAULTS = DetectConfig()


@click.command("detect")
@click.argument("scenes", nargs=-1, required=True)
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False),
              help="Output file: .geojson (EPSG:4326), .gpkg, .shp or .parquet (scene CRS).")
@click.option("-m", "--model", default=None, type=click.Path(dir_okay=False),
              help="Model file (default: the small bundled pool model).")
@click.option("--batch-size", type=click.IntRange(min=1), default=_DEFAULTS.batch_size, show_default=True)
@click.option("--overlap", type=click.IntRange(min=0), default=None, help="Chip overlap in px (default: the model's).")
@click.option("--chip-size", type=click.IntRange(min=8), default=None, help="Chip side in px (default: the model's).")
@click.option("--score-threshold", type=click.FloatRange(0, 1), default=_DEFAULTS.score_threshold, show_default=True)
@click.option("--nms-iou", type=click.FloatRange(0, 1), default=_DEFAULTS.nms_iou, show_default=True)
@device_option
@click.option("--workers", type=click.IntRange(min=1), default=_DEFAULTS.workers, show_default=True,
              help="Reader threads.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=_DEFAULTS.precision,
              show_default=True,
              help="Forward-pass arithmetic. auto: bf16 on a GPU (fp16 where bf16 is missing) and on CPUs with "
                   "native bf16 (AVX-512 BF16, AMX); float32 elsewhere.")
@click.option("--normalisation", type=click.Choice(NORMALISATIONS), default=_DEFAULTS.normalisation,
              show_default=True,
              help="Band statistics chips are normalised with. model: those stored in the model file, which the "
                   "model was trained on; scene: sampled from each scene (for imagery whose radiometry differs "
                   "from the training scenes', e.g. another sensor or season).")
@click.option("--bands", callback=parse_bands_option, default=None,
              help="Scene bands fed to the model, 1-based, e.g. 3,2,1 (default: the model's).")
@click.option("--mosaic/--no-mosaic", default=_DEFAULTS.mosaic, show_default=True,
              help="Detect scenes of one mosaic (same grid, touching or overlapping) across their shared edges, "
                   "so an object on a scene edge is reported once, whole; --no-mosaic detects each scene alone.")
@click.option("--quicklook", type=click.Path(dir_okay=False), default=None,
              help="Also write a downsampled PNG of the scene with the detections drawn.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@overwrite_option
def detect_cmd(scenes, out, model, batch_size, overlap, chip_size, score_threshold, nms_iou, device, workers,
               precision, normalisation, bands, mosaic, quicklook, quiet, overwrite):
    """Detect objects in SCENES (GeoTIFFs or glob patterns) and write them to OUT.

    Several scenes give one output with a `scene` column. A scene that cannot
    be read is reported and left out; the others are still written, and the
    command then exits with status 1, naming the failed scenes. Scenes that
    tile one mosaic are detected across their shared edges (--no-mosaic: each
    alone).

    \b
    Examples:
      geodet detect sample_data/suburb.tif -o pools.geojson
      geodet detect 'tiles/*.tif' -m cars.pt -o cars.gpkg --device cuda --batch-size 32
      geodet detect scene.tif -o pools.parquet --score-threshold 0.5 --quicklook pools.png
      geodet detect other_sensor.tif -m pools.pt -o pools.gpkg --normalisation scene
    """
    with user_errors():
        from geodet.detection import detect, expand_scenes, write_detections
        from geodet.vector import check_output_path

        check_output_path(out, overwrite=overwrite)
        if quicklook:
            from geodet.plot import check_png_path

            check_png_path(quicklook, overwrite=overwrite)
        paths = expand_scenes(list(scenes))
        cfg = DetectConfig(batch_size=batch_size, overlap=overlap, chip_size=chip_size, bands=bands,
                           score_threshold=score_threshold, nms_iou=nms_iou, device=device, workers=workers,
                           precision=precision, normalisation=normalisation, mosaic=mosaic)
        bar = ProgressBar("detect", enabled=not quiet)
        try:
            frame = detect(paths, model, config=cfg, progress=bar, on_error="skip")
        finally:
            bar.close()
        write_detections(frame, out, overwrite=overwrite)
        failed = frame.attrs.get("failed_scenes", {})
        if quicklook:
            from geodet.plot import quicklook as make_quicklook

            make_quicklook(next(p for p in paths if p not in failed), frame, quicklook, overwrite=overwrite)
    counts = frame["class"].value_counts().to_dict() if len(frame) else {}
    detail = ", ".join(f"{n} {c}" for c, n in sorted(counts.items())) or "nothing found"
    click.echo(f"wrote {len(frame)} detections ({detail}) from {len(paths) - len(failed)} scene(s) to {out}")
    exit_on_failed_scenes(failed, len(paths))

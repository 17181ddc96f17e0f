"""``geodet detect``: scenes -> georeferenced detections."""

from __future__ import annotations

import contextlib

import click

from geodet.config import NORMALISATIONS, PRECISIONS, DetectConfig, JobConfig
from geodet_cli.options import (
    ProgressBar,
    allow_local_hrefs_option,
    asset_option,
    device_option,
    exit_on_failed_scenes,
    parse_bands_option,
    user_errors,
)


#: Defaults shown by --help and used when a flag is left out: DetectConfig's, the one home.
_DEFAULTS = DetectConfig()
_JOB_DEFAULTS = JobConfig()


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
              help="Band statistics chips are normalised with. auto: the model's for scenes of its training "
                   "pixel type, each scene's own for any other (uint16 or float copies of uint8 imagery work as "
                   "is); model: those stored in the model file, which the model was trained on; scene: sampled "
                   "from each scene (for imagery whose radiometry differs from the training scenes', e.g. another "
                   "sensor or season).")
@click.option("--tta", is_flag=True,
              help="Test-time flips: run the model on each chip and its three flips and merge the detections "
                   "(four times the compute; steadier on imagery unlike the training scenes).")
@click.option("--bands", callback=parse_bands_option, default=None,
              help="Scene bands fed to the model, 1-based, e.g. 3,2,1 (default: the model's).")
@click.option("--mosaic/--no-mosaic", default=_DEFAULTS.mosaic, show_default=True,
              help="Detect scenes of one mosaic (same grid, touching or overlapping) across their shared edges, "
                   "so an object on a scene edge is reported once, whole; --no-mosaic detects each scene alone.")
@click.option("--quicklook", type=click.Path(dir_okay=False), default=None,
              help="Also write a downsampled PNG of the scene with the detections drawn.")
@asset_option
@allow_local_hrefs_option
@click.option("--checkpoint-chips", type=click.IntRange(min=1), default=_JOB_DEFAULTS.block_chips, show_default=True,
              help="A scene of more chips than this is run in blocks of this many chips, each kept in the job "
                   "folder, so that a rerun resumes mid-scene.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--cluster", default=None, metavar="local:N",
              help="Run each scene as a task on a local Dask cluster of N worker processes (needs geodet[cluster]).")
@click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
              help="Run each scene as a task on the Dask cluster of this running scheduler. Its workers need "
                   "geodet installed and must be able to open the scenes (shared paths or URLs); the model file is "
                   "sent to them.")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing output, and start over instead of resuming OUT.geodet-job.")
def detect_cmd(scenes, out, model, batch_size, overlap, chip_size, score_threshold, nms_iou, device, workers,
               precision, normalisation, tta, bands, mosaic, quicklook, asset, allow_local_hrefs, checkpoint_chips, quiet, cluster, scheduler, overwrite):
    """Detect objects in SCENES and write them to OUT.

    A scene is a GeoTIFF or VRT path, a glob pattern (quoted), @LIST.txt (one
    per line, # comments), a URL (https://, s3://, gs://, az://) or GDAL path
    (/vsicurl/, /vsis3/, ...), or a STAC Item, ItemCollection or Catalog JSON
    (one scene per item; --asset picks the band asset).

    Several scenes give one output with a `scene` column (the file name). A
    scene that cannot be read is reported and left out; the others are still
    written, and the command then exits with status 1, naming the failed scenes.
    Scenes that tile one mosaic are detected across their shared edges
    (--no-mosaic: each alone).

    The work is kept in OUT.geodet-job/ while the command runs: one part per
    finished scene, and finished chip blocks of large scenes. Running the same
    command again after an interruption or a failed scene skips what is done
    and retries the rest; the folder is removed once OUT holds every scene.

    \b
    Examples:
      geodet detect sample_data/suburb.tif -o pools.geojson
      geodet detect 'tiles/*.tif' -m cars.pt -o cars.gpkg --device cuda --batch-size 32
      geodet detect https://example.com/cogs/area.tif s3://bucket/ortho/t1.tif -o pools.gpkg
      geodet detect @scenes.txt -o pools.parquet
      geodet detect items.json --asset visual -o pools.parquet
      geodet detect scene.tif -o pools.parquet --score-threshold 0.5 --quicklook pools.png
      geodet detect other_sensor.tif -m pools.pt -o pools.gpkg --normalisation scene
      geodet detect 'tiles/*.tif' -m pools.pt -o pools.parquet --cluster local:4
      geodet detect 'tiles/*.tif' -m pools.pt -o pools.parquet --scheduler tcp://10.0.0.5:8786
    """
    with user_errors():
        from geodet.inference.detection import check_job_output, detect_to_file
        from geodet.inference.jobs import job_dir_for
        from geodet.io.sources import resolve_scenes

        check_job_output(out, overwrite=overwrite)
        if quicklook:
            from geodet.reports.plot import check_png_path

            check_png_path(quicklook, overwrite=overwrite)
        paths = resolve_scenes(list(scenes), asset=asset, allow_local_hrefs=allow_local_hrefs)
        cfg = DetectConfig(batch_size=batch_size, overlap=overlap, chip_size=chip_size, bands=bands,
                           score_threshold=score_threshold, nms_iou=nms_iou, device=device, workers=workers,
                           precision=precision, normalisation=normalisation, tta=tta, mosaic=mosaic)
        client_context = contextlib.nullcontext()
        if cluster or scheduler:  # Dask is imported only when asked for
            from geodet.inference.cluster import open_client

            client_context = open_client(cluster, scheduler)
        bar = ProgressBar("detect", enabled=not quiet and not (cluster or scheduler))
        try:
            with client_context as client:
                frame = detect_to_file(paths, out, model, config=cfg, job_config=JobConfig(block_chips=checkpoint_chips),
                                       overwrite=overwrite, progress=bar, client=client,
                                       allow_local_hrefs=allow_local_hrefs)
        finally:
            bar.close()
        failed = frame.attrs.get("failed_scenes", {})
        if quicklook:
            from geodet.reports.plot import quicklook as make_quicklook

            make_quicklook(next(p for p in paths if p not in failed), frame, quicklook, overwrite=overwrite)
    counts = frame["class"].value_counts().to_dict() if len(frame) else {}
    detail = ", ".join(f"{n} {c}" for c, n in sorted(counts.items())) or "nothing found"
    before = frame.attrs.get("scenes_done_before", 0)
    resumed = f"; {before} of them finished by an earlier run" if before else ""
    changed = frame.attrs.get("scenes_changed", [])
    if changed:
        resumed += f"; {len(changed)} changed since an earlier run and detected again"
    click.echo(f"wrote {len(frame)} detections ({detail}) from {len(paths) - len(failed)} scene(s) to {out}{resumed}")
    if failed:
        click.echo(f"the finished scenes are kept in {job_dir_for(out)}: run the same command again to retry the "
                   "failed ones.", err=True)
    exit_on_failed_scenes(failed, len(paths), f" (each scene's reason is in {job_dir_for(out)}/scenes/)")

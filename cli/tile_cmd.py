"""``geodet tile``: export georeferenced chips and COCO annotations."""

from __future__ import annotations

import click

from geodet.config import ChipConfig
from geodet_cli.options import (
    allow_local_hrefs_option,
    asset_option,
    bands_option,
    chip_size_option,
    class_field_option,
    exit_on_failed_scenes,
    overlap_option,
    overwrite_option,
    user_errors,
)


@click.command("tile")
@click.argument("imagery", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--labels", required=True, type=click.Path(dir_okay=False), help="Vector file of objects (any CRS).")
@class_field_option
@chip_size_option
@overlap_option
@bands_option
@click.option("--min-visible", type=click.FloatRange(0, 1, min_open=True), default=ChipConfig.min_visible,
              show_default=True, help="Keep a box cut by a chip edge when this fraction of it is inside the chip.")
@click.option("--point-size", type=click.FloatRange(0, min_open=True), default=ChipConfig.point_size_m,
              show_default=True, help="Side in metres of the box drawn around a point label.")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@asset_option
@allow_local_hrefs_option
@overwrite_option
def tile_cmd(imagery, labels, class_field, chip_size, overlap, bands, min_visible, point_size, out_dir, asset,
             allow_local_hrefs, overwrite):
    """Cut IMAGERY into georeferenced chips with COCO annotations.

    IMAGERY takes the scenes `geodet detect` takes: GeoTIFF or VRT paths, glob
    patterns, @LIST.txt, URLs and GDAL paths, STAC JSON (see --asset).

    Writes OUT_DIR/chips/*.tif (each with its own transform and CRS) and
    OUT_DIR/annotations.json (COCO: bbox = [x, y, w, h] in chip pixels).
    Chips holding only nodata are skipped.

    \b
    Examples:
      geodet tile sample_data/suburb.tif --labels sample_data/pools.geojson -o tiles
      geodet tile a.tif b.tif --labels trees.gpkg --class-field species \\
          --chip-size 256 --overlap 32 --bands 1,2,3 -o tiles
    """
    with user_errors():
        from geodet.learning.tiling import tile

        chip = ChipConfig(size=chip_size, overlap=overlap, bands=bands, min_visible=min_visible,
                          point_size_m=point_size)
        summary = tile(list(imagery), labels, out_dir, class_field=class_field, chip=chip, overwrite=overwrite,
                       asset=asset, allow_local_hrefs=allow_local_hrefs)
    click.echo(
        f"wrote {summary.chips} chips and {summary.annotations} boxes "
        f"({', '.join(summary.class_names)}) to {summary.out_dir}; "
        f"{summary.labels_inside} of {summary.labels_total} labels inside the imagery; "
        f"{summary.skipped_nodata} nodata-only chips skipped"
    )
    exit_on_failed_scenes(summary.failed, summary.scenes)

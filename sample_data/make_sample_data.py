"""Write geodet's bundled sample data, deterministically.

Run from anywhere::

    python sample_data/make_sample_data.py

It (re)writes, next to this script:

* ``suburb.tif``: a 1024 x 1024 RGB uint8 synthetic suburb, 0.4 m pixels,
  EPSG:32611 (UTM zone 11N, Los Angeles), internally tiled 256 x 256, deflate;
* ``pools.geojson``: the pools' outline polygons in EPSG:4326, column ``class``;
* ``pools_points.geojson``: the pools' centre points in EPSG:4326, column ``class``;
* ``README.md``: what the files are and how they were made.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # use this checkout's geodet, installed or not

from geodet.testing.synthetic import make_scene, write_labels, write_scene  # noqa: E402

SEED = 20240611
SIZE_PX = 1024
PIXEL_SIZE_M = 0.4
CRS = "EPSG:32611"
#: Top-left corner in UTM 11N metres: about 118.31 W, 34.07 N (central Los Angeles).
ORIGIN = (379000.0, 3771000.0)

README = """# geodet sample data

Small, synthetic, fully reproducible data for the quick start, the notebooks
and the tests. Nothing here is real imagery.

| file | what |
|---|---|
| `suburb.tif` | {size} x {size} px RGB `uint8` GeoTIFF of a synthetic suburb (houses, roads, trees, pools); internally tiled 256 x 256, deflate; no nodata |
| `pools.geojson` | {n} swimming-pool outlines (rectangles and ovals, rim included) as polygons, EPSG:4326, attribute `class` = `pool` |
| `pools_points.geojson` | the same {n} pools as centre points, EPSG:4326, attribute `class` = `pool` |

* CRS of the image: `{crs}` (WGS 84 / UTM zone 11N), around Los Angeles.
* Pixel size: {px} m; north-up; top-left corner at easting {x0:.1f} m, northing {y0:.1f} m.
* Pools are {lo:.0f}-{hi:.0f} px ({lo_m:.1f}-{hi_m:.1f} m) a side. Blue roofs are look-alike distractors without labels.
* Label polygons are the exact drawn footprints: converting them back to
  pixels with the image's inverse affine gives each pool's pixel-corner box
  to within 1e-6 px.

Made by `python sample_data/make_sample_data.py` with
`geodet.testing.synthetic.make_scene({size}, {size}, seed={seed}, difficulty="easy")`;
running it again rewrites identical files.
"""


def main() -> None:
    scene = make_scene(SIZE_PX, SIZE_PX, seed=SEED, difficulty="easy")
    transform = write_scene(
        os.path.join(HERE, "suburb.tif"),
        scene,
        crs=CRS,
        origin=ORIGIN,
        pixel_size=PIXEL_SIZE_M,
        tiled=True,
        blocksize=256,
        compress="deflate",
    )
    write_labels(os.path.join(HERE, "pools.geojson"), scene, transform, CRS, to_crs="EPSG:4326", kind="polygon")
    write_labels(os.path.join(HERE, "pools_points.geojson"), scene, transform, CRS, to_crs="EPSG:4326", kind="point")
    lo, hi = 8, 30
    text = README.format(
        size=SIZE_PX,
        n=len(scene.boxes_px),
        crs=CRS,
        px=PIXEL_SIZE_M,
        x0=ORIGIN[0],
        y0=ORIGIN[1],
        lo=lo,
        hi=hi,
        lo_m=lo * PIXEL_SIZE_M,
        hi_m=hi * PIXEL_SIZE_M,
        seed=SEED,
    )
    with open(os.path.join(HERE, "README.md"), "w", encoding="utf-8") as f:
        f.write(text)


if __name__ == "__main__":
    main()

"""Deterministic synthetic aerial scenes with exact labels.

Lives in :mod:`geodet.testing` (see its docstring for why it ships in the
package): tests, benchmarks, the sample data and the default model's script
draw their scenes here; the detection and training path never imports it.
This module is the public API and the scene parameters; the work is done in
three private parts: ``_layout`` (where everything goes), ``render_scene`` (drawing
it) and ``_materials`` (the colours both use).

A scene is a small suburb seen from above at about 0.4 m per pixel: textured
ground, a grid of streets plus one curved road, houses with cast shadows,
trees, and swimming pools (class ``"pool"``) in the back yards. The ``"hard"``
difficulty adds low-contrast and tree-occluded pools, blue tarps as
distractors, parked cars (class ``"car"``) in dense rows, an illumination
gradient, haze, sensor blur and noise.

Everything is drawn from one ``numpy.random.Generator`` seeded by ``seed``: the
same arguments give bit-identical scenes.

Coordinate conventions:
    * Pixel space: ``x`` = column, ``y`` = row; pixel ``(c, r)`` covers
      ``[c, c + 1] x [r, r + 1]`` (pixel-corner coordinates).
    * Objects are drawn with exact area coverage (anti-aliased), so an object's
      polygon is its exact drawn footprint and ``boxes_px`` is the polygon's
      bounding box, to sub-pixel precision.

Radiometry: the scene is rendered as four channels (red, green, blue,
near-infrared) of values in ``[0, 1]`` and converted to the requested bands and
dtype (see :func:`make_scene`).

Typical use::

    scene = make_scene(1024, 1024, seed=0)
    transform = write_scene("scene.tif", scene)
    write_labels("pools.geojson", scene, transform, "EPSG:32611")

Benchmarks draw the look of each scene at random per seed instead
(:func:`draw_params` gives a frozen :class:`SceneParams`)::

    scene = make_scene(2048, 2048, seed=101, params=draw_params(101, "hard"))
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

import geopandas as gpd
import numpy as np
import shapely
from affine import Affine
from shapely.geometry import Polygon
from shapely.geometry import box as shapely_box

from geodet.core.boxes import pixel_geometries_to_world
from geodet.errors import GeodetError
from geodet.testing.layout import Planner, thin_classes
from geodet.testing.materials import Rect
from geodet.testing.params import (  # noqa: F401 (the defaults stay importable from here)
    CLASSES,
    DEFAULT_NOISE,
    DEFAULT_OBJECT_SIZE_PX,
    SceneParams,
)
from geodet.testing.render import add_noise, hard_effects, nodata_valid, render_scene, to_bands, to_dtype

logger = logging.getLogger(__name__)

__all__ = [
    "SceneParams",
    "SyntheticScene",
    "draw_params",
    "make_scene",
    "scene_transform",
    "write_scene",
    "label_frame",
    "write_labels",
]


#: Nodata value written for float32 scenes with a nodata region (integers use 0).
FLOAT_NODATA = float("nan")


@dataclass
class SyntheticScene:
    """A synthetic scene and its exact labels.

    Attributes:
        image: ``[C, H, W]`` array of the requested dtype.
        boxes_px: ``float64 [N, 4]`` xyxy in pixel-corner coordinates; the exact
            bounding box of each object's drawn footprint (its polygon's bounds).
        classes: ``[N]`` array of ``str`` (``"pool"``, ``"car"``).
        polygons_px: ``N`` shapely Polygons in pixel coordinates (x = column,
            y = row); rectangles and ellipses whose bounds equal ``boxes_px``.
        valid: ``bool [H, W]``, False inside the nodata region.
        nodata: the nodata value of ``image`` (0 for integers, NaN for float32
            by default), or None when the scene has no nodata region.
        band_names: one name per band of ``image``.
        occluded: ``bool [N]``, True where a tree crown is drawn over part of
            the object (its box is still the full footprint).
        distractors_px: ``float64 [M, 4]`` xyxy boxes of unlabelled look-alikes
            (blue roofs, blue tarps), for false-positive analysis.
    """

    image: np.ndarray
    boxes_px: np.ndarray
    classes: np.ndarray
    polygons_px: list
    valid: np.ndarray
    nodata: Optional[float]
    band_names: Tuple[str, ...] = ()
    occluded: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    distractors_px: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))

    @property
    def height(self) -> int:
        return int(self.image.shape[1])

    @property
    def width(self) -> int:
        return int(self.image.shape[2])


#: Ranges :func:`draw_params` draws from, per setting (uniform unless noted).
#: ``pool_min``/``pool_span``: the pool side range is ``[lo, lo + span]`` with
#: ``lo`` and ``span`` drawn, capped at ``pool_max``; cars likewise.
PARAM_RANGES = {
    "easy": dict(
        pool_min=(8.0, 12.0), pool_span=(8.0, 18.0), pool_max=30.0,
        contrast=(0.75, 1.0), density=(0.6, 1.4), noise=(0.003, 0.012),
    ),
    "hard": dict(
        pool_min=(6.0, 10.0), pool_span=(5.0, 14.0), pool_max=24.0,
        car_width_min=(4.0, 5.5), car_width_span=(0.5, 1.5), car_width_max=7.0,
        car_length_min=(8.0, 11.0), car_length_span=(1.0, 3.0), car_length_max=14.0,
        car_vertical_share=(0.1, 0.9), rare_share=(0.10, 0.15),
        contrast=(0.55, 1.0), density=(0.6, 1.4), occluded_share=(0.2, 0.5),
        gradient=(0.1, 0.5), haze_base=(0.04, 0.18), haze_amp=(0.04, 0.16),
        blur_sigma_px=(0.4, 1.0), noise=(0.008, 0.025),
    ),
}

_SETTING_TAG = {"easy": 1, "hard": 2}


def draw_params(seed: int, setting: str = "hard") -> SceneParams:
    """Scene parameters drawn at random for ``seed`` from :data:`PARAM_RANGES`.

    Deterministic per ``(seed, setting)``: its generator is seeded by both, so
    it is independent of the scene's own generator. In "hard" draws one class
    (pool or car, with equal chance) is rare: 10-15 % of all objects.

    Raises:
        GeodetError: unknown setting.
    """
    if setting not in PARAM_RANGES:
        raise GeodetError(f"setting must be one of {', '.join(sorted(PARAM_RANGES))}, got {setting!r}.")
    r = PARAM_RANGES[setting]
    rng = np.random.default_rng([int(seed), _SETTING_TAG[setting], 13])

    def u(name):
        return float(rng.uniform(*r[name]))

    def size_range(prefix, cap):
        lo = u(f"{prefix}_min")
        return (round(lo, 3), round(min(lo + u(f"{prefix}_span"), cap), 3))

    pools = size_range("pool", r["pool_max"])
    common = dict(pool_size_px=pools, contrast=round(u("contrast"), 3), density=round(u("density"), 3))
    if setting == "easy":
        return SceneParams(difficulty="easy", noise=round(u("noise"), 4), **common)
    width = size_range("car_width", r["car_width_max"])
    length = size_range("car_length", r["car_length_max"])
    return SceneParams(
        difficulty="hard",
        car_width_px=width,
        car_length_px=length,
        car_vertical_share=round(u("car_vertical_share"), 3),
        rare_class=("pool", "car")[int(rng.integers(2))],
        rare_share=round(u("rare_share"), 4),
        occluded_share=round(u("occluded_share"), 3),
        gradient=round(u("gradient"), 3),
        haze=(round(u("haze_base"), 3), round(u("haze_amp"), 3)),
        blur_sigma_px=(round(u("blur_sigma_px"), 3),) * 2,
        noise=round(u("noise"), 4),
        **common,
    )


# --------------------------------------------------------------------------- public API
def _ellipse_polygon(rect: Rect, n: int = 32):
    x0, y0, x1, y1 = rect
    cx, cy, a, b = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    t = 2 * np.pi * np.arange(n) / n
    cos, sin = np.cos(t), np.sin(t)
    q = n // 4  # exact extremes so that the bounds equal the rect
    cos[[0, q, 2 * q, 3 * q]] = (1, 0, -1, 0)
    sin[[0, q, 2 * q, 3 * q]] = (0, 1, 0, -1)
    xs = np.where(cos == 1, x1, np.where(cos == -1, x0, cx + a * cos))
    ys = np.where(sin == 1, y1, np.where(sin == -1, y0, cy + b * sin))
    return Polygon(np.column_stack([xs, ys]))


def make_scene(
    height: int,
    width: int,
    *,
    seed: int = 0,
    bands: int = 3,
    dtype: str = "uint8",
    difficulty: str = "easy",
    object_size_px: Optional[Sequence[float]] = None,
    density: float = 1.0,
    nodata_region: bool = False,
    nodata_value: Optional[float] = None,
    params: Optional[SceneParams] = None,
) -> SyntheticScene:
    """Make a deterministic synthetic suburb with labelled pools (and cars).

    Args:
        height, width: scene size in pixels.
        seed: seed of every random choice; equal arguments give identical scenes.
        bands: 1 = panchromatic (mean of R, G, B); 2 = pan + NIR; 3 = RGB;
            4 = RGB + NIR (vegetation bright, water dark); >= 5 adds red edge,
            coastal, yellow, SWIR-like and then fixed mixes of R, G, B, NIR.
        dtype: "uint8" (1-255), "uint16" (12-bit counts 40-4040) or
            "float32" (reflectance 0-1).
        difficulty: "easy" (clear pools, blue roofs as distractors) or "hard"
            (small low-contrast and partly tree-covered pools, blue tarps,
            parked cars of class "car", gradient, haze, blur, noise).
        object_size_px: (min, max) pool side in pixels; default (8, 30) for
            easy and (6, 20) for hard. Sides are drawn independently with
            aspect ratios between 0.5 and 2.
        density: pool (and car) density multiplier; 1.0 gives about 150-250
            pools per 1024 x 1024 pixels.
        nodata_region: blank a slanted strip edge (about the right 35 % of
            the scene) to the nodata value; objects touching it are removed.
        nodata_value: override the nodata value (default 0 for integer
            dtypes, NaN for float32).
        params: a :class:`SceneParams` (e.g. from :func:`draw_params`) in
            place of ``difficulty``, ``object_size_px`` and ``density``, which
            must then keep their defaults. ``SceneParams(difficulty=d)`` gives
            the same scene as ``difficulty=d``.

    Returns:
        a :class:`SyntheticScene`.

    Raises:
        GeodetError: on an invalid argument.
    """
    if int(height) < 1 or int(width) < 1:
        raise GeodetError(f"scene size must be positive, got {height} x {width} pixels.")
    if int(bands) < 1:
        raise GeodetError(f"bands must be at least 1, got {bands}.")
    if dtype not in ("uint8", "uint16", "float32"):
        raise GeodetError(f"dtype must be 'uint8', 'uint16' or 'float32', got {dtype!r}.")
    if params is None:
        size = None if object_size_px is None else tuple(object_size_px)
        params = SceneParams(difficulty=difficulty, pool_size_px=size, density=density)
    elif difficulty != "easy" or object_size_px is not None or density != 1.0:
        raise GeodetError("give either params or difficulty / object_size_px / density, not both.")
    params.check()
    H, W, hard = int(height), int(width), params.hard

    rng = np.random.default_rng(seed)
    layout = Planner(rng, H, W, params).plan()

    valid = np.ones((H, W), bool)
    nodata = None
    if nodata_region:
        valid = nodata_valid(H, W)
        nodata = (FLOAT_NODATA if dtype == "float32" else 0) if nodata_value is None else nodata_value
        invalid_sum = np.pad(np.cumsum(np.cumsum(~valid, 0), 1), ((1, 0), (1, 0)))

        def clear(rect: Rect) -> bool:
            r0, c0 = min(max(math.floor(rect[1]) - 1, 0), H), min(max(math.floor(rect[0]) - 1, 0), W)
            r1, c1 = max(min(math.ceil(rect[3]) + 1, H), r0), max(min(math.ceil(rect[2]) + 1, W), c0)
            return invalid_sum[r1, c1] - invalid_sum[r0, c1] - invalid_sum[r1, c0] + invalid_sum[r0, c0] == 0

        layout.pools = [p for p in layout.pools if clear(p.rect)]
        layout.cars = [c for c in layout.cars if clear(c[0])]
        layout.tarps = [t for t in layout.tarps if clear(t[0])]
        for house in layout.houses:
            house.blue = house.blue and all(clear(part) for part in house.parts)

    if params.rare_class is not None:
        thin_classes(layout, rng, params.rare_class, params.rare_share)

    channels = 3 if int(bands) in (1, 3) else 4  # NIR is rendered only when used
    img = render_scene(layout, rng, H, W, channels)
    if hard:
        img = hard_effects(img, rng, params)
    else:
        add_noise(img, rng, params.noise_sigma)
    values, band_names = to_bands(img, int(bands))
    image = to_dtype(values, dtype)
    if nodata is not None:
        image[:, ~valid] = nodata


    polygons = [_ellipse_polygon(p.rect) if p.oval else shapely_box(*p.rect) for p in layout.pools]
    polygons += [shapely_box(*c[0]) for c in layout.cars]
    classes = np.array(["pool"] * len(layout.pools) + ["car"] * len(layout.cars), dtype="<U4")
    boxes = np.array([p.bounds for p in polygons], np.float64).reshape(-1, 4)
    occluded = np.array([p.occluded for p in layout.pools] + [False] * len(layout.cars), bool)
    distractors = [part for h in layout.houses if h.blue for part in h.parts]
    distractors += [t[0] for t in layout.tarps]
    logger.debug("synthetic scene %dx%d seed=%s: %d objects", H, W, seed, len(boxes))
    return SyntheticScene(
        image=image,
        boxes_px=boxes,
        classes=classes,
        polygons_px=polygons,
        valid=valid,
        nodata=nodata,
        band_names=band_names,
        occluded=occluded,
        distractors_px=np.array(distractors, np.float64).reshape(-1, 4),
    )


def scene_transform(
    origin: Tuple[float, float] = (500000.0, 3760000.0),
    pixel_size: float = 0.4,
    rotation_deg: float = 0.0,
):
    """The affine of a grid whose top-left corner is ``origin``.

    North-up (``rotation_deg = 0``) gives ``Affine(px, 0, x0, 0, -px, y0)``; a
    rotation turns the grid counter-clockwise about the origin.
    """
    x0, y0 = origin
    return Affine.translation(x0, y0) * Affine.rotation(rotation_deg) * Affine.scale(pixel_size, -pixel_size)


def write_scene(
    path,
    scene: SyntheticScene,
    *,
    crs="EPSG:32611",
    origin: Optional[Tuple[float, float]] = (500000.0, 3760000.0),
    pixel_size: float = 0.4,
    rotation_deg: float = 0.0,
    tiled: bool = True,
    blocksize: int = 256,
    compress: Optional[str] = "deflate",
    transform=None,
):
    """Write ``scene.image`` as a GeoTIFF and return its affine transform.

    Args:
        path: output file.
        scene: the scene to write.
        crs: any CRS rasterio accepts, or None to write no CRS.
        origin: world coordinates of the top-left pixel corner; None (with
            ``transform=None``) writes no geotransform at all and returns the
            identity.
        pixel_size: pixel side in CRS units.
        rotation_deg: counter-clockwise rotation of the grid about ``origin``.
        tiled: internal tiles of ``blocksize`` (a multiple of 16) when True,
            strips when False.
        compress: GDAL compression name, or None.
        transform: an explicit ``affine.Affine`` overriding origin,
            pixel_size and rotation_deg.

    Returns:
        the ``affine.Affine`` pixel-corner -> CRS transform written.
    """
    import rasterio
    if tiled and (blocksize <= 0 or blocksize % 16):
        raise GeodetError(f"blocksize must be a positive multiple of 16, got {blocksize}.")
    count, height, width = scene.image.shape
    profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": count,
        "dtype": scene.image.dtype.name,
    }
    if transform is None and origin is not None:
        transform = scene_transform(origin, pixel_size, rotation_deg)
    if transform is not None:
        profile["transform"] = transform
    if crs is not None:
        profile["crs"] = crs
    if scene.nodata is not None:
        profile["nodata"] = scene.nodata
    if tiled:
        profile.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
    else:
        profile.update(tiled=False, blockysize=max(1, min(height, 16)))
    if compress:
        profile["compress"] = compress
        profile["predictor"] = 3 if scene.image.dtype.kind == "f" else 2
    if count == 3 and scene.image.dtype == np.uint8:
        profile["photometric"] = "RGB"
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(scene.image)
        for i, name in enumerate(scene.band_names, start=1):
            dst.set_band_description(i, name)
    return transform if transform is not None else Affine.identity()


def label_frame(
    scene: SyntheticScene,
    transform,
    crs,
    *,
    to_crs="EPSG:4326",
    kind: str = "polygon",
    class_field: Optional[str] = "class",
):
    """The scene's objects as a GeoDataFrame in ``to_crs``.

    Args:
        scene: the labelled scene.
        transform: ``affine.Affine`` pixel-corner -> ``crs`` (as returned by
            :func:`write_scene`).
        crs: CRS of ``transform``'s world coordinates (None = unknown; then
            ``to_crs`` must be None too).
        to_crs: output CRS, or None to keep ``crs``.
        kind: "polygon" (exact footprints mapped through the affine) or
            "point" (footprint centres).
        class_field: name of the class column, or None for no class column.

    Returns:
        a ``geopandas.GeoDataFrame`` with one row per object, in scene order.
    """
    if kind not in ("polygon", "point"):
        raise GeodetError(f"kind must be 'polygon' or 'point', got {kind!r}.")
    if crs is None and to_crs is not None:
        raise GeodetError("labels without a CRS cannot be reprojected: pass to_crs=None.")

    if kind == "polygon":
        geoms = np.array(scene.polygons_px, dtype=object)
    else:
        centres = (scene.boxes_px[:, :2] + scene.boxes_px[:, 2:]) / 2
        geoms = shapely.points(centres) if len(centres) else np.array([], dtype=object)
    geoms = pixel_geometries_to_world(geoms, transform)
    data = {class_field: list(scene.classes)} if class_field else {}
    frame = gpd.GeoDataFrame(data, geometry=list(geoms), crs=crs)
    if to_crs is not None:
        frame = frame.to_crs(to_crs)
    return frame


_DRIVERS = {".geojson": "GeoJSON", ".json": "GeoJSON", ".gpkg": "GPKG", ".shp": "ESRI Shapefile"}


def write_labels(path, scene: SyntheticScene, transform, crs, **kw) -> None:
    """:func:`label_frame` written to ``path``; the format follows the extension.

    Supported: ``.geojson`` / ``.json``, ``.gpkg``, ``.shp``. Keyword arguments
    go to :func:`label_frame`.
    """
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in _DRIVERS:
        raise GeodetError(f"cannot tell the label format of {os.fspath(path)!r}: use .geojson, .gpkg or .shp.")
    frame = label_frame(scene, transform, crs, **kw)
    if os.path.exists(path) and ext != ".shp":
        os.remove(path)
    frame.to_file(path, driver=_DRIVERS[ext])

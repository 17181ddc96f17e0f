"""Deterministic synthetic aerial scenes with exact labels.

Lives in :mod:`geodet.testing` (see its docstring for why it ships in the
package): tests, benchmarks, the sample data and the default model's script
draw their scenes here; the detection and training path never imports it.

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
from typing import List, Optional, Sequence, Tuple

import numpy as np

from geodet.errors import GeodetError

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

Rect = Tuple[float, float, float, float]  # x0, y0, x1, y1 in scene pixels

#: Default pool side range (pixels) per difficulty.
DEFAULT_OBJECT_SIZE_PX = {"easy": (8.0, 30.0), "hard": (6.0, 20.0)}

#: Default sensor noise sigma (display units) per difficulty.
DEFAULT_NOISE = {"easy": 0.005, "hard": 0.014}

#: Class names per difficulty.
CLASSES = {"easy": ("pool",), "hard": ("pool", "car")}

#: Nodata value written for float32 scenes with a nodata region (integers use 0).
FLOAT_NODATA = float("nan")

# --------------------------------------------------------------------------- colours
# Each material is (red, green, blue, near-infrared) in [0, 1].
_GRASS = np.array([0.30, 0.42, 0.20, 0.52], np.float32)
_DRY = np.array([0.56, 0.52, 0.38, 0.40], np.float32)
_SOIL = np.array([0.55, 0.45, 0.34, 0.33], np.float32)
_ASPHALT = np.array([0.37, 0.37, 0.38, 0.22], np.float32)
_PARKING = np.array([0.30, 0.30, 0.31, 0.20], np.float32)
_CONCRETE = np.array([0.72, 0.71, 0.68, 0.50], np.float32)
_PAINT = np.array([0.88, 0.84, 0.62, 0.60], np.float32)
_TREE = np.array([0.14, 0.27, 0.11, 0.60], np.float32)
_RIM = np.array([0.88, 0.87, 0.82, 0.62], np.float32)
_HAZE = np.array([0.78, 0.80, 0.84, 0.60], np.float32)
_ROOFS = np.array(
    [
        [0.64, 0.32, 0.24, 0.42],  # terracotta
        [0.58, 0.28, 0.22, 0.40],  # red
        [0.46, 0.34, 0.26, 0.36],  # brown
        [0.56, 0.56, 0.57, 0.45],  # grey
        [0.31, 0.31, 0.33, 0.26],  # dark grey
        [0.78, 0.72, 0.62, 0.58],  # beige
        [0.86, 0.86, 0.84, 0.70],  # white
    ],
    np.float32,
)
_BLUE_ROOFS = np.array([[0.22, 0.38, 0.62, 0.30], [0.30, 0.50, 0.72, 0.34]], np.float32)
_WATER_EASY = np.array([[0.20, 0.64, 0.86, 0.04], [0.30, 0.76, 0.90, 0.05], [0.16, 0.52, 0.82, 0.03]], np.float32)
_WATER_HARD = np.array(
    [
        [0.55, 0.68, 0.72, 0.12],  # pale
        [0.33, 0.47, 0.41, 0.10],  # greenish
        [0.14, 0.26, 0.40, 0.04],  # dark blue
        [0.40, 0.55, 0.58, 0.08],  # grey teal
        [0.26, 0.62, 0.80, 0.05],  # clear cyan
    ],
    np.float32,
)
_TARPS = np.array([[0.18, 0.36, 0.78, 0.25], [0.26, 0.50, 0.86, 0.30], [0.20, 0.58, 0.80, 0.28]], np.float32)
_CARS = np.array(
    [
        [0.88, 0.88, 0.88, 0.70],  # white
        [0.66, 0.67, 0.69, 0.55],  # silver
        [0.44, 0.45, 0.46, 0.35],  # grey
        [0.10, 0.10, 0.11, 0.10],  # black
        [0.62, 0.12, 0.10, 0.35],  # red
        [0.14, 0.24, 0.55, 0.20],  # blue
        [0.18, 0.30, 0.20, 0.22],  # dark green
        [0.72, 0.66, 0.52, 0.50],  # beige
    ],
    np.float32,
)
_CAR_CUMULATIVE = np.cumsum([0.24, 0.2, 0.16, 0.18, 0.07, 0.07, 0.04, 0.04])  # colour frequencies
_SHADOW = np.array([0.50, 0.52, 0.56, 0.62], np.float32)  # multiplicative darkening

# Occupancy bits of the layout grid.
_OCC_ROAD, _OCC_CURVE, _OCC_HOUSE, _OCC_POOL, _OCC_CAR, _OCC_TREE, _OCC_DRIVE, _OCC_MISC = (1 << i for i in range(8))


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


@dataclass(frozen=True)
class SceneParams:
    """What a synthetic scene looks like, apart from its seed.

    The defaults reproduce ``make_scene(difficulty=...)`` bit for bit: every
    field left at its default draws exactly what the fixed easy and hard
    settings draw. :func:`draw_params` draws them at random per seed.

    Attributes:
        difficulty: base style. "easy": clear pools among blue roofs;
            "hard": hard water colours, tree-occluded pools, blue tarps,
            cars (class "car"), gradient, haze, blur and noise.
        pool_size_px: (min, max) pool side in pixels; None = the difficulty's
            default (:data:`DEFAULT_OBJECT_SIZE_PX`).
        car_width_px, car_length_px: (min, max) car width and length in
            pixels (hard only); None = the fixed layout's ranges (about
            4.4-5.4 x 9-11 px, a little different per place: curbs,
            driveways, parking stalls).
        car_vertical_share: share of cars whose long axis runs along the
            rows (y); None = whatever the street layout gives. Cars are
            turned about their centre to reach it.
        rare_class: a class thinned to ``rare_share`` of all objects (the
            other class is thinned instead when the rare one is already
            scarcer); None = no thinning.
        rare_share: share of ``rare_class`` among all objects, in (0, 0.5).
        contrast: 1 = the palette's colours; below 1 pulls water and pool
            coping towards grass and cars towards asphalt.
        density: pool and car density multiplier (1 = about 150-250 pools
            per 1024 x 1024 px).
        occluded_share: chance that a hard pool gets a tree crown over part
            of it.
        gradient: peak-to-peak illumination gain across the scene (hard).
        haze: (base, amplitude) of the haze veil (hard).
        blur_sigma_px: (min, max) of the gaussian blur sigma (hard).
        noise: gaussian noise sigma in display units [0, 1]; None = the
            difficulty's default (:data:`DEFAULT_NOISE`).
    """

    difficulty: str = "easy"
    pool_size_px: Optional[Tuple[float, float]] = None
    car_width_px: Optional[Tuple[float, float]] = None
    car_length_px: Optional[Tuple[float, float]] = None
    car_vertical_share: Optional[float] = None
    rare_class: Optional[str] = None
    rare_share: Optional[float] = None
    contrast: float = 1.0
    density: float = 1.0
    occluded_share: float = 0.36
    gradient: float = 0.35
    haze: Tuple[float, float] = (0.10, 0.12)
    blur_sigma_px: Tuple[float, float] = (0.6, 0.8)
    noise: Optional[float] = None

    @property
    def hard(self) -> bool:
        return self.difficulty == "hard"

    @property
    def pool_size(self) -> Tuple[float, float]:
        size = DEFAULT_OBJECT_SIZE_PX[self.difficulty] if self.pool_size_px is None else self.pool_size_px
        return float(size[0]), float(size[1])

    @property
    def noise_sigma(self) -> float:
        return DEFAULT_NOISE[self.difficulty] if self.noise is None else float(self.noise)

    def to_dict(self) -> dict:
        """Plain JSON-able values (tuples as lists)."""
        from dataclasses import asdict

        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def check(self) -> None:
        """Raise :class:`GeodetError` on a value :func:`make_scene` cannot draw."""
        if self.difficulty not in DEFAULT_OBJECT_SIZE_PX:
            raise GeodetError(f"difficulty must be 'easy' or 'hard', got {self.difficulty!r}.")
        size = self.pool_size_px
        if size is not None and (len(size) != 2 or not 2 <= size[0] <= size[1]):
            raise GeodetError(f"object_size_px must be (min, max) with 2 <= min <= max, got {size}.")
        for name in ("car_width_px", "car_length_px"):
            rng_ = getattr(self, name)
            if rng_ is not None and (len(rng_) != 2 or not 2 <= rng_[0] <= rng_[1]):
                raise GeodetError(f"{name} must be (min, max) with 2 <= min <= max, got {rng_}.")
        if (self.car_width_px is None) != (self.car_length_px is None):
            raise GeodetError("car_width_px and car_length_px go together: give both or neither.")
        if self.car_width_px is not None and self.car_width_px[1] > self.car_length_px[0]:
            raise GeodetError(f"cars must be longer than wide: {self.car_width_px} x {self.car_length_px} px.")
        if self.density < 0:
            raise GeodetError(f"density must not be negative, got {self.density}.")
        if self.rare_class is not None:
            if self.rare_class not in CLASSES[self.difficulty]:
                raise GeodetError(f"rare_class {self.rare_class!r} is not a class of a {self.difficulty} scene.")
            if self.rare_share is None or not 0 < self.rare_share < 0.5:
                raise GeodetError(f"rare_share must lie in (0, 0.5), got {self.rare_share}.")
        for name in ("car_vertical_share", "occluded_share"):
            v = getattr(self, name)
            if v is not None and not 0 <= v <= 1:
                raise GeodetError(f"{name} must lie in [0, 1], got {v}.")
        if not 0 < self.contrast <= 1:
            raise GeodetError(f"contrast must lie in (0, 1], got {self.contrast}.")
        lo, hi = self.blur_sigma_px
        if not 0 < lo <= hi:
            raise GeodetError(f"blur_sigma_px must be (min, max) with 0 < min <= max, got {self.blur_sigma_px}.")
        if self.noise is not None and self.noise < 0:
            raise GeodetError(f"noise must not be negative, got {self.noise}.")


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


# --------------------------------------------------------------------------- drawing helpers
def _rect_alpha(rect: Rect) -> Tuple[int, int, np.ndarray]:
    """Exact area coverage of an axis-aligned rectangle.

    Returns ``(row0, col0, alpha [h, w] float32)`` for the pixel window touched.
    """
    x0, y0, x1, y1 = rect
    c0, r0 = math.floor(x0), math.floor(y0)
    return r0, c0, np.outer(_coverage_1d(y0, y1, r0), _coverage_1d(x0, x1, c0)).astype(np.float32)


def _coverage_1d(a: float, b: float, first: int) -> np.ndarray:
    """Covered length of each unit cell ``[first + i, first + i + 1]`` by ``[a, b]``."""
    n = max(math.ceil(b) - first, 1)
    cover = np.ones(n)
    if n == 1:
        cover[0] = b - a
    else:
        cover[0] = first + 1 - a
        cover[-1] = b - (first + n - 1)
    return cover


def _ellipse_alpha(rect: Rect, window: Optional[Tuple[int, int, int, int]] = None, samples: int = 4):
    """Area coverage (supersampled) of the ellipse inscribed in ``rect``.

    ``window`` = (row0, col0, h, w) forces the pixel window (default: the one
    touched by ``rect``). Returns ``(row0, col0, alpha [h, w] float32)``.
    """
    x0, y0, x1, y1 = rect
    if window is None:
        r0, c0 = math.floor(y0), math.floor(x0)
        h, w = math.ceil(y1) - r0, math.ceil(x1) - c0
    else:
        r0, c0, h, w = window
    cx, cy, a, b = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    sub = (np.arange(samples) + 0.5) / samples
    xs = ((np.arange(c0, c0 + w)[:, None] + sub[None, :]).ravel() - cx) / a
    ys = ((np.arange(r0, r0 + h)[:, None] + sub[None, :]).ravel() - cy) / b
    inside = (ys[:, None] ** 2 + xs[None, :] ** 2) <= 1.0
    alpha = inside.reshape(h, samples, w, samples).mean(axis=(1, 3), dtype=np.float32)
    return r0, c0, alpha


def _clip_window(img: np.ndarray, r0: int, c0: int, h: int, w: int):
    """Clip a window to the image: (image slices, local slices) or None."""
    H, W = img.shape[-2:]
    rr0, cc0, rr1, cc1 = max(r0, 0), max(c0, 0), min(r0 + h, H), min(c0 + w, W)
    if rr0 >= rr1 or cc0 >= cc1:
        return None
    return (slice(rr0, rr1), slice(cc0, cc1)), (slice(rr0 - r0, rr1 - r0), slice(cc0 - c0, cc1 - c0))


def _paint(img: np.ndarray, r0: int, c0: int, alpha: np.ndarray, colour: np.ndarray) -> None:
    """Alpha-blend ``colour`` ([C] or [C, h, w]) over ``img`` [C, H, W] in place."""
    clipped = _clip_window(img, r0, c0, *alpha.shape)
    if clipped is None:
        return
    (rs, cs), (lr, lc) = clipped
    a = alpha[lr, lc]
    C = img.shape[0]
    col = colour[:C, lr, lc] if colour.ndim == 3 else colour[:C, None, None]
    win = img[:, rs, cs]
    win += a * (col - win)


def _darken(img: np.ndarray, r0: int, c0: int, alpha: np.ndarray, factor: np.ndarray) -> None:
    """Multiply ``img`` by ``factor`` [C] where ``alpha`` covers it (shadows)."""
    clipped = _clip_window(img, r0, c0, *alpha.shape)
    if clipped is None:
        return
    (rs, cs), (lr, lc) = clipped
    a = alpha[lr, lc]
    img[:, rs, cs] *= 1.0 - a * (1.0 - factor[: img.shape[0], None, None])


def _texture(tex: np.ndarray, r0: int, c0: int, h: int, w: int) -> np.ndarray:
    """A ``[h, w]`` window of the scene-wide texture field (zeros outside)."""
    out = np.zeros((h, w), np.float32)
    clipped = _clip_window(tex[None], r0, c0, h, w)
    if clipped is not None:
        (rs, cs), (lr, lc) = clipped
        out[lr, lc] = tex[rs, cs]
    return out


def _toward(colour: np.ndarray, background: np.ndarray, contrast: float) -> np.ndarray:
    """``colour`` [C] pulled towards ``background`` [C]: ``contrast`` 1 keeps it, 0 gives the background."""
    return (background + contrast * (colour - background)).astype(np.float32)


def _value_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth value noise in [0, 1], ``float32 [h, w]``, features about ``cell`` px."""
    gh, gw = int(h / cell) + 3, int(w / cell) + 3
    grid = rng.random((gh, gw), dtype=np.float32)

    def axis(n):
        t = (np.arange(n, dtype=np.float32) + 0.5) / cell
        i = t.astype(np.int64)
        f = t - i
        return i, f * f * (3 - 2 * f)

    iy, fy = axis(h)
    ix, fx = axis(w)
    rows = grid[iy] * (1 - fy)[:, None] + grid[iy + 1] * fy[:, None]
    return rows[:, ix] * (1 - fx)[None, :] + rows[:, ix + 1] * fx[None, :]


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable gaussian blur of ``float32 [C, H, W]`` with edge replication."""
    radius = max(1, int(math.ceil(2.5 * sigma)))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k = (k / k.sum()).astype(np.float32)
    out = np.empty_like(img)
    tmp = np.empty_like(img[0])
    for c, band in enumerate(img):
        for axis in (0, 1):
            n = band.shape[axis]
            padded = np.pad(band, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], mode="edge")
            acc = out[c]
            for i, weight in enumerate(k):
                shifted = padded[i : i + n] if axis == 0 else padded[:, i : i + n]
                if i == 0:
                    np.multiply(shifted, weight, out=acc)
                else:
                    np.multiply(shifted, weight, out=tmp)
                    acc += tmp
            band = acc.copy() if axis == 0 else acc
    return out


# --------------------------------------------------------------------------- layout
@dataclass
class _Pool:
    rect: Rect
    oval: bool
    water: np.ndarray
    rim_colour: np.ndarray
    rim: float
    grad: Tuple[float, float]
    occluded: bool = False


@dataclass
class _House:
    parts: List[Rect]
    colour: np.ndarray
    shadow: Tuple[float, float]
    blue: bool = False


@dataclass
class _Tree:
    cx: float
    cy: float
    lobes: np.ndarray  # [K, 3] (dx, dy, radius)


@dataclass
class _Layout:
    """Geometry of everything in the scene, in scene pixels."""

    roads: List[Rect] = field(default_factory=list)
    curve_mask: Optional[np.ndarray] = None
    dashes: List[Rect] = field(default_factory=list)
    sidewalks: List[Rect] = field(default_factory=list)
    lots: List[Tuple[Rect, np.ndarray]] = field(default_factory=list)
    parking: List[Rect] = field(default_factory=list)
    stall_lines: List[Rect] = field(default_factory=list)
    driveways: List[Rect] = field(default_factory=list)
    houses: List[_House] = field(default_factory=list)
    pools: List[_Pool] = field(default_factory=list)
    tarps: List[Tuple[Rect, np.ndarray]] = field(default_factory=list)
    cars: List[Tuple[Rect, np.ndarray, bool]] = field(default_factory=list)  # rect, colour, long axis along x
    trees: List[_Tree] = field(default_factory=list)


class _Planner:
    """Places objects on an occupancy grid; all randomness from one generator."""

    def __init__(self, rng, height, width, params: SceneParams):
        self.rng = rng
        self.H, self.W = height, width
        self.params = params
        self.hard = params.hard
        self.size_lo, self.size_hi = params.pool_size
        self.density = float(params.density)
        self.scale = max(1.0, self.size_hi / 30.0)  # lots grow with large objects
        self.occ = np.zeros((height, width), np.uint8)
        self.out = _Layout()

    # -- occupancy
    def _window(self, rect: Rect, margin: float):
        x0, y0, x1, y1 = rect
        r0 = max(math.floor(y0 - margin), 0)
        c0 = max(math.floor(x0 - margin), 0)
        r1 = min(math.ceil(y1 + margin), self.H)
        c1 = min(math.ceil(x1 + margin), self.W)
        return r0, r1, c0, c1

    def free(self, rect: Rect, bits: int, margin: float = 0.0, inside: float = -1.0) -> bool:
        """True when no pixel within ``margin`` of ``rect`` has any of ``bits``.

        ``inside >= 0`` also requires the rect to lie that far inside the scene.
        """
        x0, y0, x1, y1 = rect
        if inside >= 0 and (x0 < inside or y0 < inside or x1 > self.W - inside or y1 > self.H - inside):
            return False
        r0, r1, c0, c1 = self._window(rect, margin)
        if r0 >= r1 or c0 >= c1:
            return True
        return not (self.occ[r0:r1, c0:c1] & bits).any()

    def mark(self, rect: Rect, bit: int, margin: float = 0.0) -> None:
        r0, r1, c0, c1 = self._window(rect, margin)
        if r0 < r1 and c0 < c1:
            self.occ[r0:r1, c0:c1] |= bit

    # -- roads and blocks
    def road_lines(self, length: int, period_mean: float, jitter: float, road_w: float) -> List[float]:
        """Start coordinates of roads across one axis, covering beyond both ends.

        A scene shorter than one block along this axis is put inside a block,
        around its middle (the back yards), so that small scenes hold objects.
        """
        starts = []
        u = self.rng.uniform(0.2, 0.9)
        if length < period_mean - road_w:
            u = (period_mean + road_w - length) / (2 * period_mean) + (u - 0.55) * (1 - length / period_mean) / 2
        pos = -u * period_mean
        while pos < length + period_mean:
            starts.append(pos)
            pos += period_mean + self.rng.uniform(-jitter, jitter)
        return [round(p) for p in starts]

    def plan(self) -> _Layout:
        s = self.scale
        road_w = round(20 * s)
        lot_d = 94 * s
        h_starts = self.road_lines(self.H, 2 * lot_d + road_w, 8 * s, road_w)
        v_starts = self.road_lines(self.W, self.rng.uniform(5.0, 7.0) * 46 * s + road_w, 60 * s, road_w)
        h_roads = [(0.0, float(y), float(self.W), float(y + road_w)) for y in h_starts]
        v_roads = [(float(x), 0.0, float(x + road_w), float(self.H)) for x in v_starts]
        for rect in h_roads + v_roads:
            self.out.roads.append(rect)
            self.mark(rect, _OCC_ROAD)
        self._curved_road(road_w)
        self._dashes(h_roads, v_roads)

        blocks = []
        for (ya, yb) in zip(h_starts[:-1], h_starts[1:]):
            for (xa, xb) in zip(v_starts[:-1], v_starts[1:]):
                rect = (float(xa + road_w), float(ya + road_w), float(xb), float(yb))
                if rect[2] > 0 and rect[3] > 0 and rect[0] < self.W and rect[1] < self.H:
                    blocks.append(rect)
        for block in blocks:
            u = self.rng.random()
            if self.hard and u < 0.06:
                self._parking_lot(block)
            elif u > 0.96:
                self._park(block)
            else:
                self._residential(block)
        if self.hard:
            self._curb_parking(h_roads, v_roads)
        return self.out

    def _curved_road(self, road_w: int) -> None:
        if min(self.H, self.W) < 384:
            return
        import rasterio.features
        from shapely.geometry import LineString

        H, W = self.H, self.W
        p0 = np.array([-20.0, self.rng.uniform(0.15, 0.45) * H])
        p2 = np.array([self.rng.uniform(0.55, 0.95) * W, H + 20.0])
        p1 = np.array([self.rng.uniform(0.35, 0.65) * W, self.rng.uniform(0.25, 0.5) * H])
        t = np.linspace(0, 1, 64)[:, None]
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
        line = LineString(pts).buffer(road_w / 2, cap_style="flat")
        mask = rasterio.features.rasterize([(line, 1)], out_shape=(H, W), dtype="uint8").astype(bool)
        self.out.curve_mask = mask
        self.occ[mask] |= _OCC_CURVE

    def _dashes(self, h_roads, v_roads) -> None:
        """Dashed centre lines on the grid roads, interrupted at crossings."""
        for horizontal, roads, cross in ((True, h_roads, v_roads), (False, v_roads, h_roads)):
            for r in roads:
                centre = (r[1] + r[3]) / 2 if horizontal else (r[0] + r[2]) / 2
                length = self.W if horizontal else self.H
                pos = 0.0
                while pos < length:
                    a, b = pos, pos + 7.0
                    pos += 16.0
                    blocked = any(
                        (c[0] - 3 < b and a < c[2] + 3) if horizontal else (c[1] - 3 < b and a < c[3] + 3)
                        for c in cross
                    )
                    if blocked:
                        continue
                    dash = (a, centre - 0.5, b, centre + 0.5) if horizontal else (centre - 0.5, a, centre + 0.5, b)
                    if self.free(dash, _OCC_CURVE, 1):
                        self.out.dashes.append(dash)

    # -- blocks
    def _park(self, block: Rect) -> None:
        x0, y0, x1, y1 = block
        area = (x1 - x0) * (y1 - y0)
        for _ in range(int(area / 900)):
            cx, cy = self.rng.uniform(x0 + 6, x1 - 6), self.rng.uniform(y0 + 6, y1 - 6)
            self._tree(cx, cy, self.rng.uniform(5, 12), avoid=_OCC_ROAD | _OCC_CURVE | _OCC_TREE, margin=0)

    def _parking_lot(self, block: Rect) -> None:
        """An asphalt lot with double rows of perpendicular stalls (hard only)."""
        x0, y0, x1, y1 = block
        m = 4.0
        area = (x0 + m, y0 + m, x1 - m, y1 - m)
        self.out.parking.append(area)
        self.mark(area, _OCC_MISC)
        along_x = (area[2] - area[0]) >= (area[3] - area[1])
        stall_w = self.rng.uniform(5.6, 6.2)  # car width 4.6-5.4 + 0.5-1 px gap
        car_len = 10.5
        sized = self.params.car_width_px is not None
        if sized:  # stalls fit the widest and longest car drawn
            stall_w += self.params.car_width_px[1] - 5.4
            car_len = self.params.car_length_px[1] + 0.5
        aisle = 14.0
        # rows run along the long side; stalls are perpendicular to it
        a0, a1 = (area[0], area[2]) if along_x else (area[1], area[3])
        b0, b1 = (area[1], area[3]) if along_x else (area[0], area[2])
        b = b0 + 1.0
        while b + car_len + 1 <= b1:
            pos = a0 + 1.0
            while pos + stall_w <= a1 - 1:
                line = (pos - 0.25, b, pos + 0.25, b + car_len) if along_x else (b, pos - 0.25, b + car_len, pos + 0.25)
                self.out.stall_lines.append(line)
                if self.rng.random() < min(0.95, 0.78 * self.density):
                    if sized:
                        cw, cl = self._car_size()
                    else:
                        cw = self.rng.uniform(4.6, min(5.4, stall_w - 0.5))
                        cl = self.rng.uniform(9.0, car_len - 0.3)
                    gap = (stall_w - cw) / 2
                    lead = self.rng.uniform(0.1, car_len - cl)
                    if along_x:
                        rect = (pos + gap, b + lead, pos + gap + cw, b + lead + cl)
                    else:
                        rect = (b + lead, pos + gap, b + lead + cl, pos + gap + cw)
                    self._car(rect, along_x=not along_x)
                pos += stall_w
            b += car_len + (aisle if int((b - b0) / car_len) % 2 == 0 else 0.6)

    def _residential(self, block: Rect) -> None:
        x0, y0, x1, y1 = block
        s = self.scale
        sw = (1.5 * s, 4.5 * s)  # sidewalk offset range from the road edge
        mid = (y0 + y1) / 2
        for top in (True, False):
            ry0, ry1 = (y0, mid) if top else (mid, y1)
            walk = (x0, ry0 + sw[0], x1, ry0 + sw[1]) if top else (x0, ry1 - sw[1], x1, ry1 - sw[0])
            self.out.sidewalks.append(walk)
            self.mark(walk, _OCC_MISC)
        for side in ((x0 + sw[0], y0, x0 + sw[1], y1), (x1 - sw[1], y0, x1 - sw[0], y1)):
            self.out.sidewalks.append(side)
            self.mark(side, _OCC_MISC)
        for top in (True, False):
            ry0, ry1 = (y0, mid) if top else (mid, y1)
            pos = x0
            while pos < x1 - 1:
                lw = self.rng.uniform(42, 54) * s
                if x1 - (pos + lw) < 32 * s:
                    lw = x1 - pos
                if pos + lw > 0 and pos < self.W:
                    self._lot((pos, ry0, pos + lw, ry1), front_top=top)
                pos += lw

    # -- lots
    def _lot(self, lot: Rect, front_top: bool) -> None:
        rng, s = self.rng, self.scale
        lx0, ly0, lx1, ly1 = lot
        lw, ld = lx1 - lx0, ly1 - ly0

        def world(xx, yy, w, h) -> Rect:
            """Lot frame (front at yy = 0, depth growing away from the road) to scene."""
            if front_top:
                return (lx0 + xx, ly0 + yy, lx0 + xx + w, ly0 + yy + h)
            return (lx0 + xx, ly1 - yy - h, lx0 + xx + w, ly1 - yy)

        tint = rng.uniform(0.92, 1.08) * (1 + rng.normal(0, 0.025, 4))  # lawn brightness and hue
        tint[1] += rng.uniform(-0.04, 0.08)
        tint = tint.astype(np.float32)
        self.out.lots.append((lot, tint))

        # house with a driveway to the road
        setback = rng.uniform(14, 20) * s
        house_d = rng.uniform(24, 34) * s
        margin_l, margin_r = rng.uniform(4, 9) * s, rng.uniform(4, 9) * s
        house_w = lw - margin_l - margin_r
        drive_w = rng.uniform(11.5, 13.0) * s
        if house_w >= 18 * s:
            main = world(margin_l, setback, house_w, house_d)
            parts = [main]
            if rng.random() < 0.35:  # a back wing
                ww = house_w * rng.uniform(0.35, 0.6)
                wx = margin_l if rng.random() < 0.5 else margin_l + house_w - ww
                parts.append(world(wx, setback + house_d - 0.5, ww, rng.uniform(7, 13) * s))
            height = rng.uniform(3.0, 5.5) * s
            shadow = (height * 0.85, height)
            ok = all(self.free(p, _OCC_ROAD | _OCC_CURVE | _OCC_POOL | _OCC_CAR, 3) for p in parts)
            if ok:
                blue = rng.random() < 0.07
                palette = _BLUE_ROOFS if blue else _ROOFS
                colour = (palette[rng.integers(len(palette))] * rng.uniform(0.92, 1.08)).astype(np.float32)
                self.out.houses.append(_House(parts, colour, shadow, blue))
                for p in parts:
                    self.mark(p, _OCC_HOUSE, 1)
                    sh = (p[0] + shadow[0], p[1] + shadow[1], p[2] + shadow[0], p[3] + shadow[1])
                    self.mark(sh, _OCC_HOUSE, 1)
                # driveway in front of one end of the house
                dx = margin_l if rng.random() < 0.5 else margin_l + house_w - drive_w
                drive = world(dx, 0, drive_w, setback)
                if self.free(drive, _OCC_CURVE | _OCC_POOL, 1):
                    self.out.driveways.append(drive)
                    self.mark(drive, _OCC_DRIVE)
                    if self.hard:
                        self._driveway_cars(world, dx, drive_w, setback)

        # pools in the yard behind / beside the house
        lam = 1.35 * self.density
        attempts = int(lam) + int(rng.random() < lam - int(lam))
        for _ in range(attempts):
            self._pool(world, lw, ld, setback)
        if self.hard and rng.random() < 0.16 * self.density:
            self._tarp(world, lw, ld, setback)
        # yard trees
        for _ in range(rng.integers(1, 5)):
            r = rng.uniform(4, 11) * min(s, 1.5)
            xx, yy = rng.uniform(r, lw - r), rng.uniform(setback * 0.3, ld - r)
            cx, cy, _, _ = world(xx, yy, 0, 0)
            self._tree(cx, cy, r, avoid=_OCC_ROAD | _OCC_CURVE | _OCC_HOUSE | _OCC_POOL | _OCC_CAR | _OCC_DRIVE | _OCC_TREE, margin=1.5)

    def _pool_size(self) -> Tuple[float, float]:
        lo, hi = self.size_lo, self.size_hi
        w = self.rng.uniform(lo, hi)
        h = self.rng.uniform(max(lo, w / 2), min(hi, 2 * w))
        return (w, h) if self.rng.random() < 0.5 else (h, w)

    def _pool(self, world, lw, ld, setback) -> None:
        rng = self.rng
        w, h = self._pool_size()
        for _ in range(12):
            if lw - 4 - w <= 2 or ld - 3 - h <= setback:
                return
            xx, yy = rng.uniform(2, lw - 2 - w), rng.uniform(setback, ld - 2 - h)
            rect = world(xx, yy, w, h)
            if self.free(rect, 0xFF & ~_OCC_TREE, 2.0, inside=1.0):
                break
        else:
            return
        oval = rng.random() < 0.35
        if self.hard:
            water = _WATER_HARD[rng.choice(len(_WATER_HARD), p=[0.25, 0.2, 0.2, 0.2, 0.15])]
            rim_colour = _RIM * rng.uniform(0.72, 0.92)
            rim = rng.uniform(0.6, 1.2)
        else:
            water = _WATER_EASY[rng.integers(len(_WATER_EASY))]
            rim_colour = _RIM * rng.uniform(0.95, 1.05)
            rim = rng.uniform(0.9, 1.6) + 0.02 * min(w, h)
        water = (water * rng.uniform(0.9, 1.1, 4)).astype(np.float32)
        if self.params.contrast != 1.0:
            water = _toward(water, _GRASS, self.params.contrast)
            rim_colour = _toward(rim_colour, _GRASS, self.params.contrast)
        angle = rng.uniform(0, 2 * math.pi)
        pool = _Pool(rect, oval, water, rim_colour.astype(np.float32), rim, (math.cos(angle), math.sin(angle)))
        self.out.pools.append(pool)
        self.mark(rect, _OCC_POOL)
        if self.hard and rng.random() < self.params.occluded_share:
            self._occluding_tree(pool)

    def _occluding_tree(self, pool: _Pool) -> None:
        """A tree crown over part of ``pool`` (roughly 15-50 % of its area)."""
        rng = self.rng
        x0, y0, x1, y1 = pool.rect
        w, h = x1 - x0, y1 - y0
        r = rng.uniform(0.45, 0.75) * min(w, h) + 1.5
        side = rng.integers(4)
        t = rng.uniform(0.15, 0.85)
        push = rng.uniform(0.1, 0.6) * r
        if side == 0:
            cx, cy = x0 - push, y0 + t * h
        elif side == 1:
            cx, cy = x1 + push, y0 + t * h
        elif side == 2:
            cx, cy = x0 + t * w, y0 - push
        else:
            cx, cy = x0 + t * w, y1 + push
        self._tree(cx, cy, r, avoid=_OCC_ROAD | _OCC_CURVE | _OCC_HOUSE | _OCC_CAR, margin=0, force=True)
        pool.occluded = True

    def _tarp(self, world, lw, ld, setback) -> None:
        rng = self.rng
        w, h = self._pool_size()
        w, h = w * 0.8, h * 0.8
        for _ in range(8):
            if lw - 4 - w <= 2 or ld - 3 - h <= setback:
                return
            rect = world(rng.uniform(2, lw - 2 - w), rng.uniform(setback * 0.5, ld - 2 - h), w, h)
            if self.free(rect, 0xFF, 2.0, inside=1.0):
                colour = (_TARPS[rng.integers(len(_TARPS))] * rng.uniform(0.9, 1.1)).astype(np.float32)
                self.out.tarps.append((rect, colour))
                self.mark(rect, _OCC_MISC)
                return

    def _tree(self, cx, cy, r, *, avoid: int, margin: float, force: bool = False) -> None:
        rng = self.rng
        k = rng.integers(2, 5)
        lobes = np.zeros((k, 3))
        lobes[0] = (0, 0, r)
        for i in range(1, k):
            ang = rng.uniform(0, 2 * math.pi)
            d = rng.uniform(0.2, 0.45) * r
            lobes[i] = (d * math.cos(ang), d * math.sin(ang), r * rng.uniform(0.55, 0.8))
        ext = np.max(np.hypot(lobes[:, 0], lobes[:, 1]) + lobes[:, 2])
        rect = (cx - ext, cy - ext, cx + ext, cy + ext)
        if not force and not self.free(rect, avoid, margin):
            return
        self.out.trees.append(_Tree(cx, cy, lobes))
        self.mark(rect, _OCC_TREE)

    # -- cars
    def _car_size(self) -> Tuple[float, float]:
        """(width, length) in px from ``params.car_width_px`` / ``car_length_px``."""
        return self.rng.uniform(*self.params.car_width_px), self.rng.uniform(*self.params.car_length_px)

    def _car(self, rect: Rect, along_x: bool) -> bool:
        avoid = _OCC_CAR | _OCC_CURVE | _OCC_POOL
        share = self.params.car_vertical_share
        if share is not None and (self.rng.random() >= share) != along_x:
            # turn the car a quarter about its centre; it may now reach past the curb
            x0, y0, x1, y1 = rect
            cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
            rect, along_x = (cx - hh, cy - hw, cx + hh, cy + hw), not along_x
            avoid |= _OCC_TREE | _OCC_HOUSE
        if not self.free(rect, avoid, 0.0, inside=1.0):
            return False
        colour = _CARS[np.searchsorted(_CAR_CUMULATIVE, self.rng.random() * _CAR_CUMULATIVE[-1], side="right")]
        colour = (colour * self.rng.uniform(0.92, 1.06)).astype(np.float32)
        if self.params.contrast != 1.0:
            colour = _toward(colour, _ASPHALT, self.params.contrast)
        self.out.cars.append((rect, colour, along_x))
        self.mark(rect, _OCC_CAR)
        return True

    def _driveway_cars(self, world, dx, drive_w, setback) -> None:
        rng = self.rng
        if rng.random() > 0.65 * self.density:
            return
        if self.params.car_width_px is not None:
            cw, cl = self._car_size()
        else:
            cw, cl = rng.uniform(4.5, 5.3), rng.uniform(9.0, 11.0)
        gap = rng.uniform(0.5, 1.0)
        yy = setback - 0.7 - cl
        if yy < 0.5:
            return
        if drive_w >= 2 * cw + gap + 0.6 and rng.random() < 0.5:  # side by side
            left = dx + (drive_w - 2 * cw - gap) / 2
            for xx in (left, left + cw + gap):
                self._car(world(xx, yy, cw, cl), along_x=False)
        else:  # one or two in tandem
            xx = dx + (drive_w - cw) / 2
            self._car(world(xx, yy, cw, cl), along_x=False)
            cl2 = rng.uniform(*(self.params.car_length_px or (9.0, 11.0)))
            if rng.random() < 0.4 and yy - gap - cl2 > 0.3:
                self._car(world(xx, yy - gap - cl2, cw, cl2), along_x=False)

    def _curb_parking(self, h_roads, v_roads) -> None:
        """Dense rows of cars along both curbs of every grid road segment."""
        rng = self.rng
        sized = self.params.car_width_px is not None
        reach = self.params.car_length_px[1] if sized else 11  # longest car, to keep off crossings
        for horizontal, roads, cross in ((True, h_roads, v_roads), (False, v_roads, h_roads)):
            length = self.W if horizontal else self.H
            blocked = sorted((c[0], c[2]) if horizontal else (c[1], c[3]) for c in cross)
            for road in roads:
                lo_edge, hi_edge = (road[1], road[3]) if horizontal else (road[0], road[2])
                for near_lo in (True, False):
                    pos, in_run = 0.0, rng.random() < 0.5
                    while pos < length:
                        hit = next((b for b in blocked if b[0] - 4 < pos + reach and pos < b[1] + 4), None)
                        if hit is not None:
                            pos = hit[1] + 4 + rng.uniform(0, 3)
                            continue
                        if not in_run:
                            pos += rng.uniform(8, 60)
                            in_run = rng.random() < min(0.9, 0.45 * self.density)
                            continue
                        cw, cl = self._car_size() if sized else (rng.uniform(4.4, 5.4), rng.uniform(9.0, 11.0))
                        off = rng.uniform(0.6, 1.4)
                        a = lo_edge + off if near_lo else hi_edge - off - cw
                        rect = (pos, a, pos + cl, a + cw) if horizontal else (a, pos, a + cw, pos + cl)
                        self._car(rect, along_x=horizontal)
                        pos += cl + rng.uniform(0.5, 1.0)
                        in_run = rng.random() > 0.12


# --------------------------------------------------------------------------- rendering
def _centres(r0: int, c0: int, h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of a window: ``yy [h, 1]`` and ``xx [1, w]``."""
    yy = (np.arange(r0, r0 + h, dtype=np.float32) + 0.5)[:, None]
    xx = (np.arange(c0, c0 + w, dtype=np.float32) + 0.5)[None, :]
    return yy, xx


def _render(layout: _Layout, rng: np.random.Generator, H: int, W: int, channels: int) -> np.ndarray:
    """Draw ``layout`` into ``float32 [channels, H, W]`` (R, G, B[, NIR] in [0, 1])."""
    C = channels
    # ground: grass / dry grass / soil mixed by low-frequency noise, with fine texture
    low = _value_noise(rng, H, W, 180.0)
    mid = _value_noise(rng, H, W, 40.0)
    fine = _value_noise(rng, H, W, 6.0)
    fine *= 0.6
    fine += 0.4 * _value_noise(rng, H, W, 2.0)
    dry = np.clip((low - 0.45) * 2.5, 0, 1)
    soil = np.clip((mid - 0.72) * 4.0, 0, 1) * 0.6
    bright = 0.86 + 0.28 * fine
    img = np.empty((C, H, W), np.float32)
    for i in range(C):
        band = _GRASS[i] + (_DRY[i] - _GRASS[i]) * dry
        band += (_SOIL[i] - band) * soil
        band *= bright
        img[i] = band
    del low, mid, fine, dry, soil, bright
    tex = rng.standard_normal((H, W), dtype=np.float32)

    for (x0, y0, x1, y1), tint in layout.lots:
        r0, r1 = max(int(y0), 0), min(int(math.ceil(y1)), H)
        c0, c1 = max(int(x0), 0), min(int(math.ceil(x1)), W)
        if r0 < r1 and c0 < c1:
            img[:, r0:r1, c0:c1] *= tint[:C, None, None]

    def fill(rect, colour, tex_amp=0.0):
        r0, c0, alpha = _rect_alpha(rect)
        if tex_amp:
            col = colour[:C, None, None] * (1 + tex_amp * _texture(tex, r0, c0, *alpha.shape))[None]
            _paint(img, r0, c0, alpha, col)
        else:
            _paint(img, r0, c0, alpha, colour)

    for rect in layout.parking:
        fill(rect, _PARKING, 0.04)
    for rect in layout.stall_lines:
        fill(rect, _PAINT * 0.9)
    for rect in layout.roads:
        fill(rect, _ASPHALT, 0.04)
    if layout.curve_mask is not None:
        m = layout.curve_mask
        img[:, m] = _ASPHALT[:C, None] * (1 + 0.04 * tex[m])[None]
    for rect in layout.dashes:
        fill(rect, _PAINT)
    for rect in layout.sidewalks:
        fill(rect, _CONCRETE, 0.03)
    for rect in layout.driveways:
        fill(rect, _CONCRETE * 0.96, 0.03)

    for pool in layout.pools:
        _draw_pool(img, pool, tex)
    for rect, colour in layout.tarps:
        fill(rect, colour, 0.10)

    for house in layout.houses:
        for x0, y0, x1, y1 in house.parts:
            sx, sy = house.shadow
            r0, c0, alpha = _rect_alpha((x0 + sx, y0 + sy, x1 + sx, y1 + sy))
            _darken(img, r0, c0, alpha, _SHADOW)
    for house in layout.houses:
        for part in house.parts:
            _draw_roof(img, part, house.colour, tex)

    for rect, colour, along_x in layout.cars:
        x0, y0, x1, y1 = rect
        r0, c0, alpha = _rect_alpha((x0 + 0.8, y0 + 1.0, x1 + 0.8, y1 + 1.0))
        _darken(img, r0, c0, alpha, _SHADOW)
    for rect, colour, along_x in layout.cars:
        _draw_car(img, rect, colour, along_x, tex)

    for tree in layout.trees:
        _draw_tree(img, tree, tex, shadow=True)
    for tree in layout.trees:
        _draw_tree(img, tree, tex, shadow=False)
    return img


def _draw_pool(img: np.ndarray, pool: _Pool, tex: np.ndarray) -> None:
    """Light coping (the full footprint) around water inset by ``pool.rim``."""
    x0, y0, x1, y1 = pool.rect
    r0, c0 = math.floor(y0), math.floor(x0)
    h, w = math.ceil(y1) - r0, math.ceil(x1) - c0
    inner = (x0 + pool.rim, y0 + pool.rim, x1 - pool.rim, y1 - pool.rim)
    if pool.oval:
        _, _, outer_a = _ellipse_alpha(pool.rect)
        _, _, inner_a = _ellipse_alpha(inner, window=(r0, c0, h, w))
    else:
        _, _, outer_a = _rect_alpha(pool.rect)
        ir0, ic0, ia = _rect_alpha(inner)
        inner_a = np.zeros((h, w), np.float32)
        inner_a[ir0 - r0 : ir0 - r0 + ia.shape[0], ic0 - c0 : ic0 - c0 + ia.shape[1]] = ia
    _paint(img, r0, c0, outer_a, pool.rim_colour)
    # water: lighter shallow end along a random direction, faint ripples
    yy, xx = _centres(r0, c0, h, w)
    u = ((xx - (x0 + x1) / 2) * pool.grad[0] + (yy - (y0 + y1) / 2) * pool.grad[1]) / max(x1 - x0, y1 - y0)
    shade = 1.0 + 0.22 * u + 0.025 * _texture(tex, r0, c0, h, w)
    _paint(img, r0, c0, inner_a, pool.water[:, None, None] * shade[None])


def _draw_roof(img: np.ndarray, part: Rect, colour: np.ndarray, tex: np.ndarray) -> None:
    """A gabled roof: two halves lit differently, a ridge along the long side."""
    x0, y0, x1, y1 = part
    r0, c0, alpha = _rect_alpha(part)
    h, w = alpha.shape
    yy, xx = _centres(r0, c0, h, w)
    if (x1 - x0) >= (y1 - y0):
        d = yy - (y0 + y1) / 2  # ridge along x; the north half faces the sun
    else:
        d = xx - (x0 + x1) / 2  # ridge along y; the west half faces the sun
    side = np.where(np.abs(d) < 0.6, 0.8, np.where(d < 0, 1.08, 0.86)).astype(np.float32)
    shade = side * (1.0 + 0.035 * _texture(tex, r0, c0, h, w))
    _paint(img, r0, c0, alpha, colour[:, None, None] * shade[None])


_GLASS = np.array([0.12, 0.13, 0.15, 0.08], np.float32)


def _draw_car(img: np.ndarray, rect: Rect, colour: np.ndarray, along_x: bool, tex: np.ndarray) -> None:
    """Body of ``colour`` with a dark windscreen and rear window."""
    x0, y0, x1, y1 = rect
    r0, c0, alpha = _rect_alpha(rect)
    h, w = alpha.shape
    yy, xx = _centres(r0, c0, h, w)
    t = (xx - x0) / (x1 - x0) if along_x else (yy - y0) / (y1 - y0)  # 0..1 along the car
    glass = (((t > 0.22) & (t < 0.36)) | ((t > 0.72) & (t < 0.82))).astype(np.float32)
    body = 1.0 + 0.03 * _texture(tex, r0, c0, h, w)
    col = (colour[:, None, None] * (1 - glass)[None] + _GLASS[:, None, None] * glass[None]) * body[None]
    _paint(img, r0, c0, alpha, col)


def _draw_tree(img: np.ndarray, tree: _Tree, tex: np.ndarray, shadow: bool) -> None:
    """A crown of overlapping lobes lit from the north-west, or its cast shadow."""
    ext = float(np.max(np.hypot(tree.lobes[:, 0], tree.lobes[:, 1]) + tree.lobes[:, 2])) + 1
    ox, oy = (ext * 0.45, ext * 0.55) if shadow else (0.0, 0.0)
    cx, cy = tree.cx + ox, tree.cy + oy
    r0, c0 = math.floor(cy - ext), math.floor(cx - ext)
    n, m = math.ceil(cy + ext) - r0, math.ceil(cx + ext) - c0
    yy, xx = _centres(r0, c0, n, m)
    sd = np.full((n, m), np.inf, np.float32)
    for dx, dy, r in tree.lobes:
        sd = np.minimum(sd, np.hypot(xx - (cx + dx), yy - (cy + dy)) - r)
    t = _texture(tex, r0, c0, n, m)
    alpha = np.clip(0.5 - sd - 0.5 * t, 0, 1)
    if shadow:
        _darken(img, r0, c0, alpha, _SHADOW)
        return
    radius = float(tree.lobes[0, 2])
    light = 1.0 - 0.28 * ((xx - cx) + (yy - cy)) / (1.4 * radius)
    shade = np.clip(light, 0.6, 1.35) * (1 + 0.18 * t)
    _paint(img, r0, c0, alpha, _TREE[:, None, None] * shade[None])


def _hard_effects(img: np.ndarray, rng: np.random.Generator, params: SceneParams) -> np.ndarray:
    """Illumination gradient, haze, sensor blur and noise on ``[C, H, W]`` (in place)."""
    C, H, W = img.shape
    ang = rng.uniform(0, 2 * math.pi)
    yy = (np.arange(H, dtype=np.float32) / max(H - 1, 1) - 0.5)[:, None]
    xx = (np.arange(W, dtype=np.float32) / max(W - 1, 1) - 0.5)[None, :]
    gain = 1.0 + params.gradient * (xx * math.cos(ang) + yy * math.sin(ang))
    haze = params.haze[0] + params.haze[1] * _value_noise(rng, H, W, 300.0)
    gain *= 1 - haze
    for i in range(C):
        img[i] *= gain
        img[i] += _HAZE[i] * haze
    img = _gaussian_blur(img, rng.uniform(*params.blur_sigma_px))
    _add_noise(img, rng, params.noise_sigma)
    return img


def _thin_classes(layout: _Layout, rng: np.random.Generator, rare: str, share: float) -> None:
    """Drop random pools or cars so that ``rare`` makes up ``share`` of all objects.

    The rare class is thinned when it is too common, the other class when the
    rare one is too scarce; the share is then within ``0.5 / n_objects`` of
    ``share``. A scene missing either class is left alone.
    """
    counts = {"pool": len(layout.pools), "car": len(layout.cars)}
    other = "car" if rare == "pool" else "pool"
    n_rare, n_other = counts[rare], counts[other]
    if n_rare == 0 or n_other == 0:
        logger.debug("no thinning: %d %s, %d %s", n_rare, rare, n_other, other)
        return
    if n_rare / (n_rare + n_other) > share:
        keep = {rare: max(1, round(share * n_other / (1 - share))), other: n_other}
    else:
        keep = {rare: n_rare, other: max(1, round(n_rare * (1 - share) / share))}

    def subset(items, k):
        if k >= len(items):
            return items
        idx = np.sort(rng.choice(len(items), size=k, replace=False))
        return [items[i] for i in idx]

    layout.pools = subset(layout.pools, keep["pool"])
    layout.cars = subset(layout.cars, keep["car"])


def _add_noise(img: np.ndarray, rng: np.random.Generator, sigma: float) -> None:
    """Add gaussian noise band by band in place (band k's noise does not depend on C)."""
    buf = np.empty(img.shape[1:], np.float32)
    for band in img:
        rng.standard_normal(dtype=np.float32, out=buf)
        buf *= sigma
        band += buf


# --------------------------------------------------------------------------- bands and dtypes
def _to_bands(rgbn: np.ndarray, bands: int) -> Tuple[np.ndarray, Tuple[str, ...]]:
    """Map the rendered ``[3 or 4, H, W]`` R, G, B(, NIR) to ``bands`` output bands."""
    if bands == 1:
        return (rgbn[:3].sum(axis=0) / 3)[None], ("pan",)
    if bands == 3:
        return rgbn[:3], ("red", "green", "blue")
    r, g, b, n = rgbn
    if bands == 2:
        return np.stack([(r + g + b) / 3, n]), ("pan", "nir")
    out = [r, g, b]
    names = ["red", "green", "blue"]
    extras = [
        ("nir", lambda: n),
        ("red_edge", lambda: 0.35 * r + 0.65 * n),
        ("coastal", lambda: 0.85 * b + 0.15 * g),
        ("yellow", lambda: 0.5 * r + 0.5 * g),
        ("swir", lambda: 0.45 * r + 0.2 * g + 0.35 * n),
    ]
    mix_rng = np.random.default_rng(12345)  # fixed: further bands are fixed mixes
    for i in range(3, bands):
        if i - 3 < len(extras):
            name, make = extras[i - 3]
            out.append(make())
            names.append(name)
        else:
            weights = mix_rng.dirichlet(np.ones(4)).astype(np.float32)
            out.append(np.tensordot(weights, rgbn, axes=1))
            names.append(f"mix{i + 1}")
    return np.stack(out).astype(np.float32), tuple(names)


def _to_dtype(values: np.ndarray, dtype: str) -> np.ndarray:
    """Display values in [0, 1] to the stored scale.

    uint8: 1-255 (0 is kept free for nodata); uint16: 12-bit counts 40-4040;
    float32: reflectance 0-1.
    """
    v = np.clip(values, 0.0, 1.0)
    if dtype == "uint8":
        return np.clip(np.rint(v * 255.0), 1, 255).astype(np.uint8)
    if dtype == "uint16":
        return np.rint(40.0 + v * 4000.0).astype(np.uint16)
    return v.astype(np.float32)


def _nodata_valid(H: int, W: int) -> np.ndarray:
    """Valid mask of a slanted image-strip edge: about the right 35 % is nodata."""
    rows = (np.arange(H) + 0.5)[:, None] / H
    cols = (np.arange(W) + 0.5)[None, :]
    edge = W * (0.71 - 0.12 * rows)  # from 71 % of the width at the top to 59 % at the bottom
    return cols < edge


# --------------------------------------------------------------------------- public API
def _ellipse_polygon(rect: Rect, n: int = 32):
    from shapely.geometry import Polygon

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
    layout = _Planner(rng, H, W, params).plan()

    valid = np.ones((H, W), bool)
    nodata = None
    if nodata_region:
        valid = _nodata_valid(H, W)
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
        _thin_classes(layout, rng, params.rare_class, params.rare_share)

    channels = 3 if int(bands) in (1, 3) else 4  # NIR is rendered only when used
    img = _render(layout, rng, H, W, channels)
    if hard:
        img = _hard_effects(img, rng, params)
    else:
        _add_noise(img, rng, params.noise_sigma)
    values, band_names = _to_bands(img, int(bands))
    image = _to_dtype(values, dtype)
    if nodata is not None:
        image[:, ~valid] = nodata

    from shapely.geometry import box as shapely_box

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
    from affine import Affine

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
    from affine import Affine

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
    import geopandas as gpd
    import shapely

    if kind not in ("polygon", "point"):
        raise GeodetError(f"kind must be 'polygon' or 'point', got {kind!r}.")
    if crs is None and to_crs is not None:
        raise GeodetError("labels without a CRS cannot be reprojected: pass to_crs=None.")
    from geodet.boxes import pixel_geometries_to_world

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

"""Rendering of a synthetic scene's layout into four channels, then bands and dtype.

Part of :mod:`geodet.testing.synthetic`: anti-aliased drawing with exact area coverage
(an object's polygon is its drawn footprint), textures, shadows, the hard setting's
effects (gradient, haze, blur, noise), and the conversion to the requested bands and dtype.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

from geodet.testing.layout import Layout, Pool, Tree
from geodet.testing.materials import (
    ASPHALT,
    CONCRETE,
    DRY,
    GRASS,
    HAZE,
    PAINT,
    PARKING,
    SHADOW,
    SOIL,
    TREE,
    Rect,
)
from geodet.testing.params import SceneParams


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


# --------------------------------------------------------------------------- rendering
def _centres(r0: int, c0: int, h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of a window: ``yy [h, 1]`` and ``xx [1, w]``."""
    yy = (np.arange(r0, r0 + h, dtype=np.float32) + 0.5)[:, None]
    xx = (np.arange(c0, c0 + w, dtype=np.float32) + 0.5)[None, :]
    return yy, xx


def render_scene(layout: Layout, rng: np.random.Generator, H: int, W: int, channels: int) -> np.ndarray:
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
        band = GRASS[i] + (DRY[i] - GRASS[i]) * dry
        band += (SOIL[i] - band) * soil
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
        fill(rect, PARKING, 0.04)
    for rect in layout.stall_lines:
        fill(rect, PAINT * 0.9)
    for rect in layout.roads:
        fill(rect, ASPHALT, 0.04)
    if layout.curve_mask is not None:
        m = layout.curve_mask
        img[:, m] = ASPHALT[:C, None] * (1 + 0.04 * tex[m])[None]
    for rect in layout.dashes:
        fill(rect, PAINT)
    for rect in layout.sidewalks:
        fill(rect, CONCRETE, 0.03)
    for rect in layout.driveways:
        fill(rect, CONCRETE * 0.96, 0.03)

    for pool in layout.pools:
        _draw_pool(img, pool, tex)
    for rect, colour in layout.tarps:
        fill(rect, colour, 0.10)

    for house in layout.houses:
        for x0, y0, x1, y1 in house.parts:
            sx, sy = house.shadow
            r0, c0, alpha = _rect_alpha((x0 + sx, y0 + sy, x1 + sx, y1 + sy))
            _darken(img, r0, c0, alpha, SHADOW)
    for house in layout.houses:
        for part in house.parts:
            _draw_roof(img, part, house.colour, tex)

    for rect, colour, along_x in layout.cars:
        x0, y0, x1, y1 = rect
        r0, c0, alpha = _rect_alpha((x0 + 0.8, y0 + 1.0, x1 + 0.8, y1 + 1.0))
        _darken(img, r0, c0, alpha, SHADOW)
    for rect, colour, along_x in layout.cars:
        _draw_car(img, rect, colour, along_x, tex)

    for tree in layout.trees:
        _draw_tree(img, tree, tex, shadow=True)
    for tree in layout.trees:
        _draw_tree(img, tree, tex, shadow=False)
    return img


def _draw_pool(img: np.ndarray, pool: Pool, tex: np.ndarray) -> None:
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


def _draw_tree(img: np.ndarray, tree: Tree, tex: np.ndarray, shadow: bool) -> None:
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
        _darken(img, r0, c0, alpha, SHADOW)
        return
    radius = float(tree.lobes[0, 2])
    light = 1.0 - 0.28 * ((xx - cx) + (yy - cy)) / (1.4 * radius)
    shade = np.clip(light, 0.6, 1.35) * (1 + 0.18 * t)
    _paint(img, r0, c0, alpha, TREE[:, None, None] * shade[None])


def hard_effects(img: np.ndarray, rng: np.random.Generator, params: SceneParams) -> np.ndarray:
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
        img[i] += HAZE[i] * haze
    img = _gaussian_blur(img, rng.uniform(*params.blur_sigma_px))
    add_noise(img, rng, params.noise_sigma)
    return img


def add_noise(img: np.ndarray, rng: np.random.Generator, sigma: float) -> None:
    """Add gaussian noise band by band in place (band k's noise does not depend on C)."""
    buf = np.empty(img.shape[1:], np.float32)
    for band in img:
        rng.standard_normal(dtype=np.float32, out=buf)
        buf *= sigma
        band += buf


# --------------------------------------------------------------------------- bands and dtypes
def to_bands(rgbn: np.ndarray, bands: int) -> Tuple[np.ndarray, Tuple[str, ...]]:
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


def to_dtype(values: np.ndarray, dtype: str) -> np.ndarray:
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


def nodata_valid(H: int, W: int) -> np.ndarray:
    """Valid mask of a slanted image-strip edge: about the right 35 % is nodata."""
    rows = (np.arange(H) + 0.5)[:, None] / H
    cols = (np.arange(W) + 0.5)[None, :]
    edge = W * (0.71 - 0.12 * rows)  # from 71 % of the width at the top to 59 % at the bottom
    return cols < edge

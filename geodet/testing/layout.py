"""Layout of a synthetic scene: where roads, lots, houses, pools, cars and trees go.

Part of :mod:`geodet.testing.synthetic`. :class:`Planner` places every object on an
occupancy grid, in scene pixels, drawing all randomness from the scene's one generator
(the order of the draws is part of the scene: reordering them changes every scene);
:func:`geodet.testing.render.render_scene` then draws the :class:`Layout` it returns.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
from shapely.geometry import LineString

from geodet.testing.materials import (
    ASPHALT,
    BLUE_ROOFS,
    CAR_CUMULATIVE,
    CARS,
    GRASS,
    RIM,
    ROOFS,
    TARPS,
    WATER_EASY,
    WATER_HARD,
    Rect,
    toward,
)
from geodet.testing.params import SceneParams

logger = logging.getLogger("geodet.testing.synthetic")

# Occupancy bits of the layout grid.
_OCC_ROAD, _OCC_CURVE, _OCC_HOUSE, _OCC_POOL, _OCC_CAR, _OCC_TREE, _OCC_DRIVE, _OCC_MISC = (1 << i for i in range(8))

@dataclass
class Pool:
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
class Tree:
    cx: float
    cy: float
    lobes: np.ndarray  # [K, 3] (dx, dy, radius)


@dataclass
class Layout:
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
    pools: List[Pool] = field(default_factory=list)
    tarps: List[Tuple[Rect, np.ndarray]] = field(default_factory=list)
    cars: List[Tuple[Rect, np.ndarray, bool]] = field(default_factory=list)  # rect, colour, long axis along x
    trees: List[Tree] = field(default_factory=list)


class Planner:
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
        self.out = Layout()

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

    def plan(self) -> Layout:
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
                palette = BLUE_ROOFS if blue else ROOFS
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
            water = WATER_HARD[rng.choice(len(WATER_HARD), p=[0.25, 0.2, 0.2, 0.2, 0.15])]
            rim_colour = RIM * rng.uniform(0.72, 0.92)
            rim = rng.uniform(0.6, 1.2)
        else:
            water = WATER_EASY[rng.integers(len(WATER_EASY))]
            rim_colour = RIM * rng.uniform(0.95, 1.05)
            rim = rng.uniform(0.9, 1.6) + 0.02 * min(w, h)
        water = (water * rng.uniform(0.9, 1.1, 4)).astype(np.float32)
        if self.params.contrast != 1.0:
            water = toward(water, GRASS, self.params.contrast)
            rim_colour = toward(rim_colour, GRASS, self.params.contrast)
        angle = rng.uniform(0, 2 * math.pi)
        pool = Pool(rect, oval, water, rim_colour.astype(np.float32), rim, (math.cos(angle), math.sin(angle)))
        self.out.pools.append(pool)
        self.mark(rect, _OCC_POOL)
        if self.hard and rng.random() < self.params.occluded_share:
            self._occluding_tree(pool)

    def _occluding_tree(self, pool: Pool) -> None:
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
                colour = (TARPS[rng.integers(len(TARPS))] * rng.uniform(0.9, 1.1)).astype(np.float32)
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
        self.out.trees.append(Tree(cx, cy, lobes))
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
        colour = CARS[np.searchsorted(CAR_CUMULATIVE, self.rng.random() * CAR_CUMULATIVE[-1], side="right")]
        colour = (colour * self.rng.uniform(0.92, 1.06)).astype(np.float32)
        if self.params.contrast != 1.0:
            colour = toward(colour, ASPHALT, self.params.contrast)
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


def thin_classes(layout: Layout, rng: np.random.Generator, rare: str, share: float) -> None:
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

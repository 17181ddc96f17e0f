"""Scenes of one mosaic: grouping, the mosaic's grid, ownership and the VRT a scene is read through.

Neighbouring scenes of one mosaic (orthophoto tiles that touch or overlap) are
detected so that an object on a shared edge is reported once, whole, even when
the edge cuts it in two and neither scene alone sees it whole:

1. :func:`group_footprints` puts scenes into *mosaics*: same CRS, band count
   and pixel type, the same pixel size and orientation, origins on one pixel
   grid (within :data:`ALIGN_TOL_PX`), and footprints touching or overlapping
   in a strip (:func:`is_seam`), connected through their neighbours. Every
   other scene runs alone; two scenes that overlap over a block (two dates of
   one place) are each detected over all of their ground.
2. Each scene of a mosaic stays one task (:class:`MosaicContext`). It reads,
   through a VRT of its mosaic (:func:`vrt_xml`, XML text, not a file, so a
   worker on another machine that sees the same scene paths can open it), the
   chips of the mosaic's own chip grid (:func:`grid_chip_windows`) that touch
   its footprint grown by a halo of at least the chip overlap. So its chips are
   exactly the chips a detection of the whole mosaic would run, and it stitches
   them with the usual rule (:mod:`geodet.core.stitch`) in mosaic pixels.
3. It keeps the detections whose box centre it *owns* (:func:`owned_mask`):
   where footprints overlap, the scene listed last owns the overlap (it is also
   the one the VRT shows there), and footprints are half-open (``[x0, x1) x
   [y0, y1)``), so a centre exactly on a shared edge belongs to exactly one
   scene. Ownership partitions the mosaic: every detection of the whole mosaic
   is reported by exactly one scene.

Limits: scenes on different grids (another pixel size, a sub-pixel shift,
another CRS) are not grouped, and an object on their shared edge may be
reported in two parts. A neighbour that cannot be opened or read is left out
of the VRT: its part of the halo is nodata, so objects on that seam may be
missed or cut. A scene reads its neighbours from a margin of its own size
around it; a chip plus halo larger than the scene itself sees nodata beyond.

Everything here is pure (numbers, shapely, XML text); the callers
(:mod:`geodet.inference.detection`) open the files.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple
from xml.sax.saxutils import escape

import numpy as np
import shapely
from affine import Affine

from geodet.core.stitch import connected_groups
from geodet.core.windows import chip_offsets

#: Two scenes share a grid when their origins are this close (in pixels) to a whole pixel
#: offset, and their pixel sizes differ by less than this over the larger scene's extent.
ALIGN_TOL_PX = 0.01

#: Two overlapping scenes are tiles of one mosaic only where they share a strip: the overlap is at
#: most this share of the smaller scene's width or height. Scenes overlapping more (two dates of
#: one place) are different images of the same ground, and each is detected over all of it.
MAX_SEAM_SHARE = 0.25

#: GDAL data type names of the numpy pixel types a VRT band can hold.
GDAL_TYPES = {
    "uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
    "int32": "Int32", "uint64": "UInt64", "int64": "Int64", "float32": "Float32", "float64": "Float64",
}

#: ``(x0, y0, x1, y1)`` integer pixel rectangle, half-open ``[x0, x1) x [y0, y1)``.
Rect = Tuple[int, int, int, int]


@dataclass(frozen=True)
class Footprint:
    """Where a scene lies and what its pixels are, without its pixels.

    Attributes:
        path: the scene as given (a local path, a ``/vsi…`` reference, ...).
        crs_wkt: its CRS as WKT.
        transform: pixel corner -> CRS affine.
        width, height: size in pixels.
        count: band count.
        dtype: numpy name of the pixel type.
    """

    path: str
    crs_wkt: str
    transform: Affine
    width: int
    height: int
    count: int
    dtype: str


@dataclass(frozen=True)
class MosaicSource:
    """One scene of a mosaic as a VRT source: its reference and its place.

    Attributes:
        path: GDAL reference of the scene (absolute when local).
        rect_px: its footprint in the mosaic grid, ``(x0, y0, x1, y1)`` pixels.
        order: its place in the mosaic order: a later scene owns, and the VRT
            shows, the area it shares with earlier ones.
    """

    path: str
    rect_px: Rect
    order: int


@dataclass(frozen=True)
class MosaicContext:
    """How one scene of a mosaic takes part in its neighbours' seams (``SceneTask.context``).

    Attributes:
        own: this scene; ``own.rect_px`` in mosaic pixels.
        neighbours: the other scenes of the mosaic near it (within a margin of
            the scene's own size), in mosaic order.
        later: rectangles of the neighbours listed after it in the mosaic
            order that overlap it: they own that overlap.
        grid_transform: pixel corner -> CRS affine of the mosaic grid, whose
            pixel ``(0, 0)`` is the top-left corner of the mosaic's bounding box.
        grid_shape: ``(height, width)`` of the mosaic's bounding box in pixels.
        crs_wkt, count, dtype: the mosaic's CRS, band count and pixel type.
        group_size: scenes in the mosaic.
    """

    own: MosaicSource
    neighbours: Tuple[MosaicSource, ...]
    later: Tuple[Rect, ...]
    grid_transform: Affine
    grid_shape: Tuple[int, int]
    crs_wkt: str
    count: int
    dtype: str
    group_size: int


def _same_grid(ref: Footprint, fp: Footprint, tol_px: float) -> Optional[Tuple[int, int]]:
    """Integer pixel offset ``(col, row)`` of ``fp``'s origin on ``ref``'s grid, or None when the grids differ."""
    if (ref.crs_wkt, ref.count, ref.dtype) != (fp.crs_wkt, fp.count, fp.dtype):
        return None
    a, b = ref.transform, fp.transform
    extent = max(ref.width, ref.height, fp.width, fp.height)
    for name in ("a", "b", "d", "e"):
        if abs(getattr(a, name) - getattr(b, name)) * extent > tol_px * math.hypot(a.a, a.b):
            return None
    col, row = ~a * (b.c, b.f)
    icol, irow = round(col), round(row)
    if abs(col - icol) > tol_px or abs(row - irow) > tol_px:
        return None
    return int(icol), int(irow)


def group_footprints(
    footprints: Sequence[Optional[Footprint]], tol_px: float = ALIGN_TOL_PX
) -> List[List[Tuple[int, Rect]]]:
    """Mosaics among scenes: groups of two or more that share a grid and touch.

    Args:
        footprints: one per scene, None for a scene that could not be opened
            (it stays alone).
        tol_px: alignment tolerance in pixels (:data:`ALIGN_TOL_PX`).

    Returns:
        One list per mosaic, in input order, of ``(scene index, rect)`` where
        ``rect`` is the scene's footprint ``(x0, y0, x1, y1)`` in pixels of the
        grid of the mosaic's first scene. Scenes touching at an edge or a
        corner, or overlapping, are connected; connection is transitive.
    """
    # Scenes are compared only within a bucket of one CRS, band count, pixel type and (rounded)
    # pixel size, so that many scenes on many grids do not cost a comparison per pair.
    buckets: Dict[tuple, List[Tuple[Footprint, List[Tuple[int, Rect]]]]] = {}
    for index, fp in enumerate(footprints):
        if fp is None:
            continue
        t = fp.transform
        families = buckets.setdefault((fp.crs_wkt, fp.count, fp.dtype, float(f"{math.hypot(t.a, t.d):.4g}")), [])
        for ref, members in families:
            offset = _same_grid(ref, fp, tol_px)
            if offset is not None:
                members.append((index, (offset[0], offset[1], offset[0] + fp.width, offset[1] + fp.height)))
                break
        else:
            families.append((fp, [(index, (0, 0, fp.width, fp.height))]))
    groups: List[List[Tuple[int, Rect]]] = []
    for _ref, members in (family for families in buckets.values() for family in families):
        if len(members) < 2:
            continue
        rects = np.array([r for _i, r in members], np.float64)
        boxes = shapely.box(rects[:, 0], rects[:, 1], rects[:, 2], rects[:, 3])
        i, j = shapely.STRtree(boxes).query(boxes, predicate="intersects")  # closed: touching counts
        seam = np.array([is_seam(members[a][1], members[b][1]) for a, b in zip(i, j)], bool).reshape(-1)
        i, j = i[seam], j[seam]
        label = connected_groups(len(members), i, j)
        for root in np.unique(label):
            picked = np.flatnonzero(label == root)
            if len(picked) > 1:
                groups.append([members[k] for k in picked])
    groups.sort(key=lambda g: g[0][0])
    return groups


def is_seam(a: Rect, b: Rect, share: float = MAX_SEAM_SHARE) -> bool:
    """Two footprints meet as tiles of one mosaic: they touch, or overlap in a strip no wider than
    ``share`` of the smaller one (:data:`MAX_SEAM_SHARE`)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw < 0 or ih < 0:
        return False
    return iw <= share * min(a[2] - a[0], b[2] - b[0]) or ih <= share * min(a[3] - a[1], b[3] - b[1])


def scene_ref(path: str) -> str:
    """The reference a VRT source uses for a scene: absolute when it is a local file, else as given."""
    return os.path.abspath(path) if os.path.exists(path) else path


def mosaic_contexts(footprints: Sequence[Footprint], group: Sequence[Tuple[int, Rect]]) -> List[MosaicContext]:
    """The :class:`MosaicContext` of each scene of one group from :func:`group_footprints`, in group order."""
    rects = np.array([r for _i, r in group], np.int64)
    gx0, gy0 = int(rects[:, 0].min()), int(rects[:, 1].min())
    grid_shape = (int(rects[:, 3].max()) - gy0, int(rects[:, 2].max()) - gx0)
    first = footprints[group[0][0]]
    grid_transform = first.transform * Affine.translation(gx0, gy0)
    sources = [
        MosaicSource(scene_ref(footprints[i].path), (r[0] - gx0, r[1] - gy0, r[2] - gx0, r[3] - gy0), k)
        for k, (i, r) in enumerate(group)
    ]
    shifted = np.array([s.rect_px for s in sources], np.float64)
    tree = shapely.STRtree(shapely.box(shifted[:, 0], shifted[:, 1], shifted[:, 2], shifted[:, 3]))
    out = []
    for k, src in enumerate(sources):
        x0, y0, x1, y1 = src.rect_px
        margin = max(x1 - x0, y1 - y0)
        near = sorted(int(n) for n in tree.query(shapely.box(x0 - margin, y0 - margin, x1 + margin, y1 + margin)))
        # a scene covering much of this one is another image of its ground: neither shown nor owning here
        rect = src.rect_px
        near = [n for n in near if is_seam(sources[n].rect_px, rect) or not _overlap(sources[n].rect_px, rect)]
        later = tuple(sources[n].rect_px for n in near if n > k and _overlap(sources[n].rect_px, src.rect_px))
        out.append(
            MosaicContext(
                own=src,
                neighbours=tuple(sources[n] for n in near if n != k),
                later=later,
                grid_transform=grid_transform,
                grid_shape=grid_shape,
                crs_wkt=first.crs_wkt,
                count=first.count,
                dtype=first.dtype,
                group_size=len(group),
            )
        )
    return out


def _overlap(a: Rect, b: Rect) -> bool:
    """Half-open rectangles share a positive area."""
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def owned_mask(centres_px: np.ndarray, own: Rect, later: Sequence[Rect] = ()) -> np.ndarray:
    """Which points a scene owns: inside its half-open rectangle, outside every later scene's.

    Args:
        centres_px: ``[N, 2]`` (x, y) points in mosaic pixels (box centres).
        own: the scene's rectangle ``(x0, y0, x1, y1)``.
        later: rectangles of the scenes after it in the mosaic order.

    Returns:
        bool ``[N]``. Over all scenes of a mosaic the masks partition the union
        of their rectangles: each point there is owned by exactly one scene.
    """
    pts = np.asarray(centres_px, np.float64).reshape(-1, 2)

    def inside(rect) -> np.ndarray:
        return (pts[:, 0] >= rect[0]) & (pts[:, 0] < rect[2]) & (pts[:, 1] >= rect[1]) & (pts[:, 1] < rect[3])

    keep = inside(own)
    for rect in later:
        keep &= ~inside(rect)
    return keep


def box_centres(boxes_px: np.ndarray) -> np.ndarray:
    """``[N, 2]`` centres of ``[N, 4]`` xyxy boxes."""
    b = np.asarray(boxes_px, np.float64).reshape(-1, 4)
    return np.column_stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2])


def grid_chip_windows(grid_shape: Tuple[int, int], size_px: int, overlap_px: int, region: Rect):
    """The chips of the mosaic's chip grid that share area with ``region``.

    The grid is the one :func:`geodet.core.windows.chip_windows` lays over the
    whole mosaic (its bounding box), so two scenes of a mosaic run identical
    chips where their regions meet, and a scene's chips are those of a
    detection of the whole mosaic. Only the offsets along each axis are
    computed, so the cost does not grow with the mosaic's area.

    Args:
        grid_shape: ``(height, width)`` of the mosaic in pixels.
        size_px: chip side in mosaic pixels.
        overlap_px: overlap between neighbouring chips.
        region: ``(x0, y0, x1, y1)`` pixels, e.g. a footprint grown by a halo.

    Returns:
        rasterio ``Window`` s, row-major.
    """
    from rasterio.windows import Window

    height, width = grid_shape
    h, w = min(size_px, height), min(size_px, width)  # as chip_windows: a mosaic smaller than a chip
    rows = [r for r in chip_offsets(height, size_px, overlap_px) if r < region[3] and r + h > region[1]]
    cols = [c for c in chip_offsets(width, size_px, overlap_px) if c < region[2] and c + w > region[0]]
    return [Window(c, r, w, h) for r in rows for c in cols]


def grow(rect: Rect, by_px: int) -> Rect:
    """``rect`` grown by ``by_px`` on every side."""
    return (rect[0] - by_px, rect[1] - by_px, rect[2] + by_px, rect[3] + by_px)


def _source_xml(src: MosaicSource, band: str, is_mask: bool) -> str:
    x0, y0, x1, y1 = src.rect_px
    w, h = x1 - x0, y1 - y0
    # A masked-out pixel of a later scene must not hide an earlier scene's valid pixel:
    # data sources composite through their mask, mask sources skip their zeros.
    extra = "<NODATA>0</NODATA>" if is_mask else "<UseMaskBand>true</UseMaskBand>"
    return (
        f'<ComplexSource><SourceFilename relativeToVRT="0">{escape(src.path)}</SourceFilename>'
        f"<SourceBand>{band}</SourceBand>"
        f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
        f'<DstRect xOff="{x0}" yOff="{y0}" xSize="{w}" ySize="{h}"/>{extra}</ComplexSource>'
    )


def vrt_xml(ctx: MosaicContext, sources: Sequence[MosaicSource]) -> str:
    """A VRT (XML text) of the mosaic grid holding ``sources``, later sources drawn over earlier ones.

    Pixels no source covers, and each source's own nodata / masked pixels, are
    masked (a per-dataset mask band built from the sources' masks), so they
    read as invalid, as nodata of a single scene does.

    Args:
        ctx: the mosaic (grid, CRS, bands, pixel type).
        sources: scenes to draw, in mosaic order (a scene last owns and shows
            the overlap it shares with earlier ones).
    """
    gdal_type = GDAL_TYPES.get(ctx.dtype)
    if gdal_type is None:
        raise ValueError(f"no VRT data type for {ctx.dtype} pixels")
    t = ctx.grid_transform
    height, width = ctx.grid_shape
    bands = []
    for b in range(1, ctx.count + 1):
        body = "".join(_source_xml(s, str(b), False) for s in sources)
        bands.append(f'<VRTRasterBand dataType="{gdal_type}" band="{b}">{body}</VRTRasterBand>')
    mask = "".join(_source_xml(s, "mask,1", True) for s in sources)
    return (
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">'
        f"<SRS>{escape(ctx.crs_wkt)}</SRS>"
        f"<GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, {t.e!r}</GeoTransform>"
        + "".join(bands)
        + f'<MaskBand><VRTRasterBand dataType="Byte">{mask}</VRTRasterBand></MaskBand>'
        "</VRTDataset>"
    )


def sources_in_order(ctx: MosaicContext) -> List[MosaicSource]:
    """The scene and its neighbours in mosaic order (the VRT's drawing order)."""
    return sorted((ctx.own, *ctx.neighbours), key=lambda src: src.order)

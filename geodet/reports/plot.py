"""Figures of geodet: scenes with labels and detections, object sizes, PR curves.

matplotlib only, and no pyplot state is touched at import. A function given
an ``ax`` draws on it and returns it; without one it makes a figure with
``matplotlib.pyplot.subplots`` (so it shows in a notebook) and returns its
Axes. Files are written atomically through :mod:`geodet.io.outputs` (never replacing a file unasked)
without pyplot.

Coordinate spaces: :func:`show_scene` draws in the scene's CRS (imshow
extent = the window's bounds; north-up scenes); :func:`quicklook` draws in
the downsampled image's pixels, so it works for any geotransform.
Scenes are only ever read in (decimated) windows: a large scene is read
through ``out_shape``, which GDAL serves from an overview when there is one.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import shapely

from geodet.config import COCO_ANCHORS
from geodet.core.boxes import geometries_to_pixel_boxes
from geodet.errors import GeodetError
from geodet.io.outputs import check_output, staged_file
from geodet.io.raster import open_dataset
from geodet.reports import webmap
from geodet.reports.display import (  # noqa: F401  (CLASS_COLORS, LABEL_COLOR: still importable from here)
    CLASS_COLORS,
    LABEL_COLOR,
    display_bands,
    frame_in_crs,
    read_for_display,
    snap_window,
    stretch_to_rgba,
)

log = logging.getLogger(__name__)

#: Line style of ground-truth outlines: dashed and drawn above the detections (here and on web
#: maps, :data:`geodet.reports.webmap.TRUTH_DASH`), so both show where a label and a detection coincide.
LABEL_LINESTYLE = (0, (4, 3))
#: Outline colour of detections (single class; see :data:`CLASS_COLORS`).
DETECTION_COLOR = "#ff2d55"
#: Most score labels drawn by :func:`show_scene` (more would be unreadable).
MAX_SCORE_TEXTS = 300

Bounds = Tuple[float, float, float, float]


def outline_vertices(geoms) -> Tuple[List[np.ndarray], np.ndarray]:
    """Outlines of geometries for drawing.

    Returns:
        ``(rings, points)``: one float64 ``[K, 2]`` (x, y) array per polygon
        exterior or line part, and float64 ``[P, 2]`` of the point geometries.
    """
    parts = shapely.get_parts(np.asarray(list(geoms), dtype=object))
    kinds = shapely.get_type_id(parts)
    rings: List[np.ndarray] = []
    for geom, kind in zip(parts, kinds):
        if kind == 3:  # polygon
            rings.append(shapely.get_coordinates(shapely.get_exterior_ring(geom)))
        elif kind in (1, 2):  # line string, linear ring
            rings.append(shapely.get_coordinates(geom))
    points = shapely.get_coordinates(parts[kinds == 0]) if (kinds == 0).any() else np.zeros((0, 2))
    return rings, points


def _draw_outlines(ax, geoms, color: str, *, linewidth: float, gid: str, zorder: float, linestyle="solid") -> None:
    from matplotlib.collections import LineCollection, PolyCollection

    rings, points = outline_vertices(geoms)
    closed = [r for r in rings if len(r) > 2 and np.array_equal(r[0], r[-1])]
    open_ = [r for r in rings if not (len(r) > 2 and np.array_equal(r[0], r[-1]))]
    if closed:
        polys = PolyCollection(
            [r[:-1] for r in closed], closed=True, facecolors="none", edgecolors=color,
            linewidths=linewidth, linestyles=linestyle, zorder=zorder,
        )
        polys.set_gid(gid)
        ax.add_collection(polys, autolim=False)
    if open_:
        lines = LineCollection(open_, colors=color, linewidths=linewidth, linestyles=linestyle, zorder=zorder)
        lines.set_gid(gid + "-lines")
        ax.add_collection(lines, autolim=False)
    if len(points):
        ax.scatter(points[:, 0], points[:, 1], s=12, marker="o", facecolors="none", edgecolors=color,
                   linewidths=linewidth, zorder=zorder, gid=gid + "-points")


# --------------------------------------------------------------------------- figures


def _new_axes(ax, figsize: Tuple[float, float]):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)[1]


def show_scene(
    scene_path: Union[str, os.PathLike],
    *,
    window=None,
    labels=None,
    detections=None,
    bands: Optional[Sequence[int]] = None,
    ax=None,
    max_px: int = 1500,
    scores: bool = False,
    label_color: str = LABEL_COLOR,
    detection_color: str = DETECTION_COLOR,
):
    """Draw (part of) a scene in its CRS with labels and detections outlined.

    Args:
        scene_path: a georeferenced, north-up raster (any dtype and band count).
        window: a rasterio ``Window`` in scene pixels, or bounds
            ``(left, bottom, right, top)`` in the scene CRS; None = the whole
            scene. It is grown to whole pixels and clipped to the scene.
        labels: ground truth to outline: a vector file path or GeoDataFrame in
            any CRS (reprojected to the scene's).
        detections: a GeoDataFrame (e.g. from :func:`geodet.detect`) in any CRS.
        bands: 1-based bands to show: 3 (RGB) or 1 (grey); default bands 1-3,
            or band 1 for scenes with fewer than 3 bands.
        ax: matplotlib Axes to draw on; None makes a new figure.
        max_px: the window is read decimated so its longer side is at most this.
        scores: write each detection's ``score`` beside its box.
        label_color / detection_color: outline colours.

    Returns:
        The Axes: x/y limits are the window's bounds in the scene CRS, and the
        outlines are collections with gid ``"labels"`` / ``"detections"``.

    Raises:
        GeodetError: unreadable scene, rotated geotransform, window outside
            the scene, vectors without CRS, bad bands.
    """
    from matplotlib.lines import Line2D


    path = os.fspath(scene_path)
    with open_dataset(path) as src:
        t = src.transform
        if t.b != 0 or t.d != 0:
            raise GeodetError(
                f"show_scene draws north-up scenes only; {path} has a rotated geotransform (use quicklook)."
            )
        win = snap_window(src, window)
        use_bands = display_bands(src.count, bands)
        pixels, valid = read_for_display(src, win, use_bands, max_px)
        crs = src.crs
    x_at_col0, y_at_row0 = t @ (win.col_off, win.row_off)
    x_at_col1, y_at_row1 = t @ (win.col_off + win.width, win.row_off + win.height)
    left, right = sorted((x_at_col0, x_at_col1))
    bottom, top = sorted((y_at_row0, y_at_row1))

    ax = _new_axes(ax, (8, 8))
    ax.imshow(
        stretch_to_rgba(pixels, valid),
        extent=(x_at_col0, x_at_col1, y_at_row1, y_at_row0),
        origin="upper",
        interpolation="nearest",
        zorder=0,
    )
    handles = []
    box = (left, bottom, right, top)
    if labels is not None:
        frame = _in_box(frame_in_crs(labels, crs, "labels"), box)
        _draw_outlines(ax, frame.geometry, label_color, linewidth=1.2, gid="labels", zorder=3,
                       linestyle=LABEL_LINESTYLE)
        handles.append(Line2D([], [], color=label_color, lw=1.5, ls=LABEL_LINESTYLE, label=f"labels ({len(frame)})"))
    if detections is not None:
        frame = _in_box(frame_in_crs(detections, crs, "detections"), box)
        _draw_outlines(ax, frame.geometry, detection_color, linewidth=1.2, gid="detections", zorder=2)
        handles.append(Line2D([], [], color=detection_color, lw=1.5, label=f"detections ({len(frame)})"))
        if scores and "score" in frame.columns:
            _draw_scores(ax, frame, detection_color)
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.set_aspect("equal")
    units = _crs_units(crs)
    ax.set_xlabel(f"x ({units})")
    ax.set_ylabel(f"y ({units})")
    ax.ticklabel_format(useOffset=False, style="plain")
    ax.tick_params(axis="x", labelrotation=30)
    ax.set_title(Path(path).name, fontsize=10)
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.8)
    return ax


def _in_box(frame, box: Bounds):
    """Rows of ``frame`` whose bounds touch ``box`` (left, bottom, right, top)."""
    if not len(frame):
        return frame
    b = frame.geometry.bounds.to_numpy()
    left, bottom, right, top = box
    keep = (b[:, 0] <= right) & (b[:, 2] >= left) & (b[:, 1] <= top) & (b[:, 3] >= bottom)
    return frame[keep]


def _draw_scores(ax, frame, color: str) -> None:
    top = frame.nlargest(MAX_SCORE_TEXTS, "score") if len(frame) > MAX_SCORE_TEXTS else frame
    if len(top) < len(frame):
        log.info("score text drawn for the %d best of %d detections", len(top), len(frame))
    b = top.geometry.bounds.to_numpy()
    for (x1, _, _, y2), score in zip(b, top["score"].to_numpy()):
        ax.text(x1, y2, f"{score:.2f}", color=color, fontsize=6, va="bottom", ha="left", clip_on=True, zorder=4)


def _crs_units(crs) -> str:
    name = crs.to_string() if crs is not None else "no CRS"
    try:
        unit = crs.linear_units if crs.is_projected else "degrees"
    except Exception:  # pragma: no cover - exotic CRS without units
        unit = "unknown units"
    unit = {"metre": "m", "meter": "m"}.get(unit, unit)
    return f"{name}, {unit}"


def _sizes_from_boxes(boxes_px) -> np.ndarray:
    boxes = np.asarray(boxes_px, dtype=np.float64).reshape(-1, 4)
    w = np.clip(boxes[:, 2] - boxes[:, 0], 0, None)
    h = np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    sizes = np.sqrt(w * h)
    return sizes[np.isfinite(sizes) & (sizes > 0)]


def anchor_sizes_px(anchors) -> np.ndarray:
    """Every anchor size (px) of an ``AnchorConfig`` or a ``(levels, AnchorConfig)`` pair.

    Sizes are ``sizes[level] * scale`` for every level and scale, sorted.
    """
    if isinstance(anchors, tuple) and len(anchors) == 2 and hasattr(anchors[1], "sizes"):
        anchors = anchors[1]
    if isinstance(anchors, dict):  # AnchorConfig as a dict, e.g. from a coverage report
        sizes, scales = anchors["sizes"], anchors["scales"]
    else:
        sizes, scales = anchors.sizes, anchors.scales
    return np.sort(np.asarray([float(s) * float(k) for s in sizes for k in scales]))


def plot_object_sizes(
    boxes_or_report,
    *,
    anchors=None,
    coco: bool = True,
    ax=None,
    bins: int = 30,
):
    """Histogram of object sizes ``sqrt(w * h)`` (px) with anchor sizes as vertical lines.

    Args:
        boxes_or_report: ``[N, 4]`` xyxy boxes in chip pixels, or a dict from
            :func:`geodet.modeling.anchors.coverage_report` (it holds only size
            quantiles: the p5-p95 range is shaded and the median drawn, and its
            fitted anchors and coverages are used).
        anchors: ``(levels, AnchorConfig)`` (e.g. from
            :func:`geodet.fit_anchors`) drawn as solid lines; None = the
            report's fitted anchors, or none for boxes.
        coco: also draw the COCO default anchors (32-512 px x 3 scales), dashed.
        ax: matplotlib Axes; None makes a new figure.
        bins: histogram bins (log-spaced).

    Returns:
        The Axes (log-scaled x axis in px).
    """

    report = boxes_or_report if isinstance(boxes_or_report, dict) else None
    ax = _new_axes(ax, (7, 4))
    lines: List[float] = []
    if report is None:
        sizes = _sizes_from_boxes(boxes_or_report)
        if sizes.size == 0:
            raise GeodetError("there are no boxes with a positive width and height to plot.")
        lo, hi = float(sizes.min()), float(sizes.max())
        edges = np.geomspace(lo * 0.95, hi * 1.05, bins + 1)
        ax.hist(sizes, bins=edges, color="#4c72b0", alpha=0.85, label=f"objects ({sizes.size})")
        lines.extend([lo, hi])
    else:
        s = report["size_px"]
        ax.axvspan(s["p5"], s["p95"], color="#4c72b0", alpha=0.3, label=f"objects p5-p95 ({report['count']})")
        ax.axvline(s["median"], color="#4c72b0", lw=2, label=f"median {s['median']:.1f} px")
        lines.extend([s["min"], s["max"]])

    fitted = anchors
    fitted_cov = coco_cov = None
    if report is not None:
        coco_cov = report["coco"]["coverage"]
        if fitted is None:
            fitted = report["fitted"]["anchors"]
            fitted_cov = report["fitted"]["coverage"]
    if fitted is not None:
        sizes_fit = anchor_sizes_px(fitted)
        label = "fitted anchors" + (f" (coverage {100 * fitted_cov:.0f}%)" if fitted_cov is not None else "")
        for i, size in enumerate(sizes_fit):
            ax.axvline(size, color="#dd8452", lw=1.5, label=label if i == 0 else None)
        lines.extend(sizes_fit)
    if coco:
        sizes_coco = anchor_sizes_px(COCO_ANCHORS)
        label = "COCO anchors" + (f" (coverage {100 * coco_cov:.0f}%)" if coco_cov is not None else "")
        for i, size in enumerate(sizes_coco):
            ax.axvline(size, color="0.35", lw=1.0, ls="--", label=label if i == 0 else None)
        lines.extend(sizes_coco)
    ax.set_xscale("log")
    ax.set_xlim(min(lines) / 1.3, max(lines) * 1.3)
    ax.set_xlabel("object size sqrt(w * h) (px)")
    if report is None:
        ax.set_ylabel("objects")
    else:
        ax.set_yticks([])  # a report holds quantiles only: no counts to show
    ax.set_title("Object sizes and anchor sizes")
    ax.legend(fontsize=8, loc="upper right")
    return ax


def plot_pr_curve(report: dict, path_or_ax=None, *, overwrite: bool = True):
    """Precision-recall curves of an evaluation report, one per class.

    Args:
        report: a report of :func:`geodet.reports.evaluation.evaluate` or
            :func:`~geodet.core.metrics.evaluate_boxes` (uses ``iou`` and each
            class's ``pr_curve`` and ``ap``).
        path_or_ax: a matplotlib ``Axes`` to draw on, a PNG path to write, or
            None for a new figure.
        overwrite: a PNG path may replace an existing file (False: never, also in a race).

    Returns:
        The ``Axes`` drawn on, or the path written.
    """
    iou = report.get("iou", 0.5)

    def draw(ax) -> None:
        for name, metrics in sorted(report["classes"].items()):
            curve = metrics.get("pr_curve") or {}
            if not curve.get("recall"):
                continue  # a class without truth has no curve
            ap = metrics.get("ap")
            label = f"{name} (AP{round(iou * 100)} {ap:.3f})" if ap is not None else name
            ax.plot(curve["recall"], curve["precision"], drawstyle="steps-post", label=label)
        ax.set_xlabel("Recall")
        ax.set_ylabel("Precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"Precision-recall at IoU {iou:g}")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower left")

    if path_or_ax is None:
        ax = _new_axes(None, (6, 5))
        draw(ax)
        return ax
    return _draw_or_save(draw, path_or_ax, figsize=(6, 5), overwrite=overwrite)


# --------------------------------------------------------------------------- quicklook


def quicklook(
    scene_path: Union[str, os.PathLike],
    detections,
    out_png: Union[str, os.PathLike],
    *,
    max_px: int = 2048,
    bands: Optional[Sequence[int]] = None,
    overwrite: bool = False,
) -> str:
    """Write a downsampled PNG of a whole scene with detections as box outlines.

    The scene is read once, decimated so its longer side is at most
    ``max_px`` (from an overview when the file has one), percentile-stretched,
    and the detections' boxes are drawn 1 px wide in the PNG's pixels (one
    colour per class, :data:`CLASS_COLORS` in sorted class order). Works for
    any geotransform: boxes go through the scene's inverse affine. Nodata is
    transparent.

    Args:
        scene_path: the scene.
        detections: GeoDataFrame in any CRS (e.g. from :func:`geodet.detect`);
            when it has a ``scene`` column naming this file, only those rows.
        out_png: the PNG to write.
        max_px: longest side of the PNG in pixels.
        bands: 1 or 3 bands to show (default: 1-3, or 1).
        overwrite: replace an existing ``out_png``.

    Returns:
        The path written.

    Raises:
        GeodetError: ``out_png`` exists without ``overwrite``, its folder is
            missing, unreadable scene, detections without CRS.
    """
    out = os.fspath(out_png)
    check_png_path(out, overwrite=overwrite)
    rgba = quicklook_array(scene_path, detections, max_px=max_px, bands=bands)

    def write(fh) -> None:
        from matplotlib.image import imsave

        imsave(fh, rgba, format="png")

    _write_atomic(out, write, overwrite=overwrite)
    log.info("wrote quicklook %s (%d x %d px)", out, rgba.shape[1], rgba.shape[0])
    return out


def quicklook_array(scene_path, detections, *, max_px: int = 2048, bands=None) -> np.ndarray:
    """The quicklook image: uint8 ``[h, w, 4]`` RGBA with the detections drawn.

    See :func:`quicklook` for the arguments.
    """

    path = os.fspath(scene_path)
    with open_dataset(path) as src:
        win = snap_window(src, None)
        use_bands = display_bands(src.count, bands)
        pixels, valid = read_for_display(src, win, use_bands, max_px)
        crs, transform, height, width = src.crs, src.transform, src.height, src.width
    rgba = (stretch_to_rgba(pixels, valid) * 255 + 0.5).astype(np.uint8)
    if detections is None:
        return rgba
    frame = frame_in_crs(detections, crs, "detections")
    if "scene" in frame.columns and (frame["scene"] == Path(path).name).any():
        frame = frame[frame["scene"] == Path(path).name]
    if not len(frame):
        return rgba
    boxes_px = geometries_to_pixel_boxes(frame.geometry.values, transform)
    out_h, out_w = rgba.shape[:2]
    scale = np.array([out_w / width, out_h / height, out_w / width, out_h / height])
    boxes_out = boxes_px * scale
    classes = frame["class"].astype(str).to_numpy() if "class" in frame.columns else np.zeros(len(frame), str)
    for i, name in enumerate(sorted(set(classes))):
        color = _hex_to_rgba(CLASS_COLORS[i % len(CLASS_COLORS)])
        draw_box_outlines(rgba, boxes_out[classes == name], color)
    return rgba


def draw_box_outlines(image: np.ndarray, boxes_px: np.ndarray, color: Sequence[int], *, width_px: int = 1) -> None:
    """Draw box outlines into an image in place.

    Args:
        image: ``[H, W, C]`` array.
        boxes_px: ``[N, 4]`` xyxy in the image's pixel-corner coordinates;
            each edge is drawn on the pixels just inside it, clipped to the image.
        color: C values.
        width_px: line width in pixels.
    """
    h, w = image.shape[:2]
    color = np.asarray(color, dtype=image.dtype)
    boxes = np.asarray(boxes_px, dtype=np.float64).reshape(-1, 4)
    boxes = boxes[np.isfinite(boxes).all(axis=1)]
    eps = 1e-3  # edges within this of a pixel edge (e.g. after reprojection) snap to it
    c0 = np.floor(boxes[:, 0] + eps).astype(np.int64)
    r0 = np.floor(boxes[:, 1] + eps).astype(np.int64)
    c1 = np.maximum(np.ceil(boxes[:, 2] - eps).astype(np.int64) - 1, c0)  # last column inside the box
    r1 = np.maximum(np.ceil(boxes[:, 3] - eps).astype(np.int64) - 1, r0)
    for a0, b0, a1, b1 in zip(c0, r0, c1, r1):
        if a1 < 0 or b1 < 0 or a0 >= w or b0 >= h:
            continue
        ca, cb = max(a0, 0), min(a1, w - 1) + 1
        ra, rb = max(b0, 0), min(b1, h - 1) + 1
        for k in range(width_px):
            for row in (b0 + k, b1 - k):
                if 0 <= row < h:
                    image[row, ca:cb] = color
            for col in (a0 + k, a1 - k):
                if 0 <= col < w:
                    image[ra:rb, col] = color


def _hex_to_rgba(color: str) -> Tuple[int, int, int, int]:
    c = color.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16), 255


# --------------------------------------------------------------------------- interactive maps


def explore(detections=None, scene=None, truth=None, **kw):
    """An interactive folium map: detections coloured by class and score, the ground truth in
    another layer and a decimated image of the scene underneath, on an OpenStreetMap basemap
    when one is reachable and on a blank background when not.

    A thin entry to :func:`geodet.reports.webmap.explore`, which documents the arguments (``basemap``,
    ``max_px``, ``bands``, ...). Needs folium (``pip install 'geodet[maps]'``).

    Returns:
        a ``folium.Map`` (a notebook shows it when it is a cell's last value).
    """

    return webmap.explore(detections, scene, truth, **kw)


# --------------------------------------------------------------------------- files


def check_png_path(path: Union[str, os.PathLike], *, overwrite: bool = False) -> None:
    """Check before long work that ``path`` can be written (see :func:`geodet.io.outputs.check_output`).

    Raises:
        GeodetError: with one sentence saying why not.
    """

    check_output(path, overwrite=overwrite)


def _write_atomic(path: str, write: Callable, *, overwrite: bool = True) -> None:
    """Call ``write(binary file)`` on a temporary file beside ``path``, then publish it."""

    with staged_file(path, overwrite=overwrite) as tmp, open(tmp, "wb") as fh:
        write(fh)


def _draw_or_save(draw: Callable, path_or_ax, *, figsize: Tuple[float, float], overwrite: bool = True):
    """Call ``draw(ax)`` on the given Axes, or on a new figure saved atomically to a PNG path."""
    if hasattr(path_or_ax, "plot"):
        draw(path_or_ax)
        return path_or_ax
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = os.fspath(path_or_ax)
    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    draw(fig.add_subplot(1, 1, 1))
    fig.tight_layout()
    _write_atomic(path, lambda fh: fig.savefig(fh, format="png"), overwrite=overwrite)
    return path

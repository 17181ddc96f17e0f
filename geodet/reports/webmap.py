"""Interactive web maps of detections (folium).

What a notebook user pans and zooms: the detections outlined in their class colour and lightly
filled, with a score filter (a slider) and a tooltip; the ground truth dashed in a pane above
them; a decimated image of the scene underneath; a layer control that is the legend (each layer
named with its colour and count); all on an OpenStreetMap basemap when it can be reached and on a
blank background with a note saying why when not, zoomable to :data:`MAX_ZOOM` on either. Text
that comes from the data (class names, scene names, column names) is HTML-escaped before it
reaches the page: folium puts layer names and tooltip values into the page as HTML.

Coordinate spaces: web maps draw in web mercator (EPSG:3857), and a Leaflet image overlay is
stretched linearly between two lon/lat corners *in web mercator*. So the decimated scene image
is warped (nearest neighbour) from the scene's CRS onto a north-up EPSG:3857 grid
(:func:`web_mercator_grid`), and its overlay bounds are that grid's corners in lon/lat; vectors
go to EPSG:4326 through geopandas. Nothing here touches the network: the tiles are fetched by
the browser, and :func:`basemap_reachable` only tries a TCP connection with a short timeout.

The vector layers are made by ``GeoDataFrame.explore`` (one call per layer, onto one map), which
needs folium, matplotlib and mapclassify.

folium and mapclassify come with the ``maps`` extra (``pip install 'geodet[maps]'``).
"""

from __future__ import annotations

import html
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
from affine import Affine

from geodet.errors import GeodetError
from geodet.io.raster import open_dataset
from geodet.io.vector import auto_class_field
from geodet.reports.display import (
    CLASS_COLORS,
    LABEL_COLOR,
    display_bands,
    frame_in_crs,
    read_for_display,
    snap_window,
    stretch_to_rgba,
)

log = logging.getLogger(__name__)

#: Longest side, in pixels, of the scene image under a map (it is embedded in the HTML as a PNG).
MAP_IMAGE_PX = 1024
#: Most detections drawn on a map (the best-scoring); more make the HTML slow to open.
MAX_MAP_DETECTIONS = 20_000
#: Basemap used when one is reachable: OpenStreetMap's standard tiles.
OSM_TILES = "OpenStreetMap"
#: Host and port probed to decide whether the basemap is reachable.
OSM_PROBE = ("tile.openstreetmap.org", 443)
#: Seconds the probe may take (name lookup included) before the map goes blank.
PROBE_TIMEOUT_S = 0.5
#: Highest zoom of the map; OpenStreetMap tiles exist up to zoom 19 and are magnified past it.
MAX_ZOOM, OSM_MAX_NATIVE_ZOOM = 22, 19
#: Fill opacity of a detection box: light, so the scene and the truth show through (scores are
#: read from the tooltip and chosen with the map's score filter, not from the fill).
FILL_OPACITY = 0.12
#: Leaflet pane of the ground truth and its z-index: above the detections (overlay pane, 400), below
#: tooltips (650), so the truth is painted on top whichever layers are switched on and off.
TRUTH_PANE, TRUTH_PANE_Z = "geodet-truth", 450
#: Dash pattern of the truth outlines (px): where a truth outline lies on a detection's, both show.
TRUTH_DASH = "6 4"

LonLatBounds = Tuple[Tuple[float, float], Tuple[float, float]]  # ((south, west), (north, east)), Leaflet's order


def require_folium():
    """The folium module.

    Raises:
        GeodetError: folium or mapclassify is not installed.
    """
    try:
        import folium
        import mapclassify  # noqa: F401  (GeoDataFrame.explore needs it)
    except ImportError:
        raise GeodetError(
            "interactive maps need folium and mapclassify; install them with pip install 'geodet[maps]'."
        ) from None
    return folium


def basemap_reachable(address: Tuple[str, int] = OSM_PROBE, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``address`` opens within ``timeout_s`` (name lookup included).

    The probe runs in a daemon thread so that a hanging name lookup cannot block the caller for
    longer than ``timeout_s``; a late answer counts as unreachable.
    """
    done = threading.Event()
    result = {"ok": False}

    def probe() -> None:
        try:
            with socket.create_connection(address, timeout=timeout_s):
                result["ok"] = True
        except OSError:
            pass
        finally:
            done.set()

    threading.Thread(target=probe, name="geodet-basemap-probe", daemon=True).start()
    return done.wait(timeout_s) and result["ok"]


def web_mercator_grid(transform, width: int, height: int, crs, *, densify: int = 21):
    """A north-up EPSG:3857 grid covering an image, with about as many pixels along its longer side.

    Args:
        transform: the image's affine (image pixels -> ``crs``); may be rotated.
        width, height: image size in pixels.
        crs: the image's CRS.
        densify: points per image edge transformed to find the footprint (edges curve in 3857).

    Returns:
        ``(dst_transform, dst_width, dst_height)`` in EPSG:3857 metres; the grid's top-left corner
        is the footprint's, and it reaches at most one pixel past the footprint right and down.
    """
    from rasterio.warp import transform as warp_points

    t = np.linspace(0.0, 1.0, densify)
    cols = np.concatenate([t * width, np.full(densify, width), t[::-1] * width, np.zeros(densify)])
    rows = np.concatenate([np.zeros(densify), t * height, np.full(densify, height), t[::-1] * height])
    xs, ys = transform * (cols, rows)
    mx, my = warp_points(crs, "EPSG:3857", np.asarray(xs).tolist(), np.asarray(ys).tolist())
    left, right, bottom, top = min(mx), max(mx), min(my), max(my)
    res = max(right - left, top - bottom) / max(width, height)
    dst_width = max(1, int(np.ceil((right - left) / res - 1e-9)))
    dst_height = max(1, int(np.ceil((top - bottom) / res - 1e-9)))
    return Affine(res, 0.0, left, 0.0, -res, top), dst_width, dst_height


def lonlat_bounds(transform_3857, width: int, height: int) -> LonLatBounds:
    """``((south, west), (north, east))`` of a north-up EPSG:3857 grid, as Leaflet takes them."""
    from rasterio.warp import transform as warp_points

    (west, east), (north, south) = warp_points(
        "EPSG:3857", "EPSG:4326", [transform_3857.c, transform_3857.c + transform_3857.a * width],
        [transform_3857.f, transform_3857.f + transform_3857.e * height],
    )
    return (south, west), (north, east)


def scene_overlay(
    scene_path: Union[str, os.PathLike], *, max_px: int = MAP_IMAGE_PX, bands: Optional[Sequence[int]] = None
) -> Tuple[np.ndarray, LonLatBounds]:
    """A scene's image for a web map: decimated, stretched, warped to web mercator.

    The scene is read once, decimated so its longer side is at most ``max_px`` (from an
    overview when there is one), percentile-stretched (:func:`geodet.reports.display.stretch_to_rgba`),
    then warped with nearest neighbour onto :func:`web_mercator_grid`. Nodata and the corners
    outside the scene are transparent. Any CRS and any (also rotated) geotransform.

    Returns:
        ``(rgba, bounds)``: uint8 ``[h, w, 4]`` (row 0 = north) and its ``((south, west),
        (north, east))`` in degrees.

    Raises:
        GeodetError: unreadable scene, a scene without CRS, bad bands.
    """
    from rasterio.warp import Resampling, reproject


    path = os.fspath(scene_path)
    with open_dataset(path) as src:
        if src.crs is None:
            raise GeodetError(f"{path} has no CRS, so it cannot be placed on a map.")
        win = snap_window(src, None)
        use_bands = display_bands(src.count, bands)
        pixels, valid = read_for_display(src, win, use_bands, max_px)
        crs, transform, height, width = src.crs, src.transform, src.height, src.width
    rgba = (stretch_to_rgba(pixels, valid) * 255 + 0.5).astype(np.uint8)
    h, w = rgba.shape[:2]
    small = transform * Affine.scale(width / w, height / h)  # decimated pixels -> scene CRS
    dst_transform, dst_w, dst_h = web_mercator_grid(small, w, h, crs)
    warped = np.zeros((4, dst_h, dst_w), dtype=np.uint8)
    reproject(
        np.ascontiguousarray(rgba.transpose(2, 0, 1)), warped, src_transform=small, src_crs=crs,
        dst_transform=dst_transform, dst_crs="EPSG:3857", resampling=Resampling.nearest,
        src_nodata=None, dst_nodata=None, init_dest_nodata=False,
    )
    return warped.transpose(1, 2, 0), lonlat_bounds(dst_transform, dst_w, dst_h)


def explore(
    detections=None,
    scene: Optional[Union[str, os.PathLike]] = None,
    truth=None,
    *,
    basemap: Union[None, bool, str] = None,
    attribution: Optional[str] = None,
    max_px: int = MAP_IMAGE_PX,
    bands: Optional[Sequence[int]] = None,
    max_detections: int = MAX_MAP_DETECTIONS,
    **kw,
):
    """An interactive map of detections, ground truth and the scene, for notebooks.

    Every layer is in the layer control, which is the legend: the scene (``scene: <file>``),
    ``ground truth (N)`` with its colour and ``detections: <class> (N)`` with the class colour.
    The truth is drawn dashed in a pane above the detections, and the boxes are outlined and
    lightly filled, so both show where they overlap. A score filter (a slider) hides boxes below
    a score; the tooltip shows class, score, scene and class_id. Text from the data (class names,
    the scene's name, column names) is escaped before it reaches the page.

    Args:
        detections: a GeoDataFrame (e.g. from :func:`geodet.detect`) or vector file in any CRS;
            one layer per ``class`` (:func:`class_colors`). None: no detections layer.
        scene: a georeferenced raster drawn underneath, decimated to ``max_px`` and warped to
            web mercator (:func:`scene_overlay`).
        truth: ground truth (GeoDataFrame or vector file, any CRS), outlined in
            :data:`geodet.reports.display.LABEL_COLOR` in a layer of its own.
        basemap: None: OpenStreetMap when :func:`basemap_reachable` says so within
            :data:`PROBE_TIMEOUT_S`, else a blank background with a note on the map saying why;
            False: blank; True: OpenStreetMap; a string: a folium/xyzservices tiles name or an XYZ
            URL template (give ``attribution`` for a URL).
        attribution: the basemap's attribution (needed for a tiles URL).
        max_px: longest side of the scene image in pixels.
        bands: 1 or 3 scene bands to show (default 1-3, or 1).
        max_detections: at most this many detections are drawn, the best-scoring.
        **kw: passed to ``GeoDataFrame.explore`` for each detections layer (e.g.
            ``style_kwds``, ``tooltip``, ``popup``), over geodet's choices; text given here is
            the caller's and is not escaped.

    Returns:
        a ``folium.Map`` zoomed to fit its layers, at most :data:`MAX_ZOOM` deep on any background.

    Raises:
        GeodetError: folium is missing, nothing to map, vectors without CRS, unreadable scene.
    """

    folium = require_folium()
    if detections is None and scene is None and truth is None:
        raise GeodetError("nothing to map: give detections, a scene or ground truth.")
    m = folium.Map(tiles=None, control_scale=True, maxZoom=MAX_ZOOM)
    note = _add_basemap(folium, m, basemap, attribution)
    extents = []
    if scene is not None:
        rgba, bounds = scene_overlay(scene, max_px=max_px, bands=bands)
        folium.raster_layers.ImageOverlay(
            rgba, bounds=[list(bounds[0]), list(bounds[1])], pixelated=False,
            name=f"scene: {html.escape(Path(os.fspath(scene)).name)}",
        ).add_to(m)
        extents.append((bounds[0][1], bounds[0][0], bounds[1][1], bounds[1][0]))
    if detections is not None:
        frame = frame_in_crs(detections, "EPSG:4326", "detections")
        if len(frame):
            names = _add_detections(m, frame, max_detections, kw)
            if "score" in frame.columns:
                score_filter(names, float(frame["score"].min())).add_to(m)
            extents.append(tuple(frame.total_bounds))
        else:
            log.info("no detections to map")
    if truth is not None:
        frame = frame_in_crs(truth, "EPSG:4326", "ground truth")
        if len(frame):
            _add_truth(folium, m, frame)
            extents.append(tuple(frame.total_bounds))
    folium.LayerControl(collapsed=False).add_to(m)
    if note:
        map_note(note).add_to(m)
    if extents:
        e = np.asarray(extents, dtype=np.float64)
        m.fit_bounds([[e[:, 1].min(), e[:, 0].min()], [e[:, 3].max(), e[:, 2].max()]])
    return m


def _add_basemap(folium, m, basemap, attribution: Optional[str]) -> Optional[str]:
    """Add the basemap; returns the note to show on the map when it fell back to blank, else None."""
    note = None
    if basemap is None:
        basemap = OSM_TILES if basemap_reachable(OSM_PROBE) else False
        if basemap is False:
            note = blank_background_note(OSM_PROBE)
            log.info(note)
    if basemap is False:
        return note
    tiles = OSM_TILES if basemap is True else str(basemap)
    if "{" in tiles and not attribution:
        raise GeodetError("a basemap given as a tiles URL needs its attribution: pass attribution='...'.")
    native = OSM_MAX_NATIVE_ZOOM if tiles == OSM_TILES else None
    folium.TileLayer(
        tiles, attr=attribution, name="basemap", max_zoom=MAX_ZOOM, max_native_zoom=native, overlay=False
    ).add_to(m)
    return None


def blank_background_note(address: Tuple[str, int] = OSM_PROBE, timeout_s: float = PROBE_TIMEOUT_S) -> str:
    """The sentence a map shows when its background is blank because no tile server answered."""
    return (f"Blank background: {address[0]} did not answer within {timeout_s:g} s "
            "(offline?). explore(..., basemap=True) asks for OpenStreetMap tiles anyway.")


def layer_name(label: str, color: Optional[str] = None, count: Optional[int] = None, *, swatch: str = "&#9632;") -> str:
    """A layer control entry (HTML): a ``swatch`` in ``color``, the escaped ``label``, ``(count)``.

    ``label`` may come from the data (a class name, a file name): it is escaped here, so it shows
    as text; ``color`` and ``swatch`` are geodet's own.
    """
    mark = f'<span style="color:{color}">{swatch}</span> ' if color else ""
    tail = "" if count is None else f" ({count})"
    return f"{mark}{html.escape(str(label))}{tail}"


def escaped_text(frame, columns: Sequence[str]):
    """``frame`` with ``columns`` as HTML-escaped strings (folium puts property values into tooltip HTML)."""
    return frame.assign(**{c: frame[c].astype(str).map(html.escape) for c in columns})


def _tooltip(fields: Sequence[str]):
    """``GeoDataFrame.explore`` tooltip arguments for ``fields`` with escaped labels (no popup: one of the two)."""
    return dict(tooltip=list(fields) or False, popup=False,
                tooltip_kwds={"aliases": [html.escape(f) for f in fields]} if fields else {})


def _add_truth(folium, m, frame) -> None:
    """The ground-truth layer: dashed outlines in :data:`LABEL_COLOR` in :data:`TRUTH_PANE`, above
    the detections; the class (if any) as tooltip."""

    field = auto_class_field(frame.columns)
    columns = [field] if field else []
    if field:
        frame = escaped_text(frame, columns)
    folium.map.CustomPane(TRUTH_PANE, z_index=TRUTH_PANE_Z, pointer_events=True).add_to(m)
    frame[columns + [frame.geometry.name]].explore(
        m=m, name=layer_name("ground truth", LABEL_COLOR, len(frame), swatch="&#9633;"), pane=TRUTH_PANE,
        style_kwds={"color": LABEL_COLOR, "weight": 2, "fill": False, "dashArray": TRUTH_DASH},
        highlight_kwds={"weight": 4}, **_tooltip(columns),
    )


def class_colors(classes: Sequence[str]) -> dict:
    """``{class name: colour}``: :data:`geodet.reports.display.CLASS_COLORS` in sorted class order (as in quicklooks)."""
    return {name: CLASS_COLORS[i % len(CLASS_COLORS)] for i, name in enumerate(sorted(set(classes)))}


def _add_detections(m, frame, max_detections: int, kw: dict) -> list:
    """One layer per class, named ``detections: <class> (N)`` with a colour swatch (the legend),
    its boxes outlined in the class colour and lightly filled; tooltip: class, score, scene and
    class_id. Returns the layers' JavaScript names."""
    if len(frame) > max_detections and "score" in frame.columns:
        log.info("map shows the %d best-scoring of %d detections", max_detections, len(frame))
        frame = frame.nlargest(max_detections, "score")
    if "score" in frame.columns:
        frame = frame.assign(score=frame["score"].astype(float).round(3))
    classes = frame["class"].astype(str) if "class" in frame.columns else None
    frame = escaped_text(frame, [c for c in ("class", "scene") if c in frame.columns])
    shown = [c for c in ("class", "score", "scene", "class_id") if c in frame.columns]
    colors = class_colors(classes) if classes is not None else {None: CLASS_COLORS[0]}
    names = []
    for name, color in colors.items():
        part = frame if name is None else frame[(classes == name).to_numpy()]
        label = "detections" if name is None else f"detections: {name}"
        options = dict(
            m=m, name=layer_name(label, color, len(part)), color=color,
            style_kwds={"color": color, "weight": 2, "fillColor": color, "fillOpacity": FILL_OPACITY},
            highlight_kwds={"weight": 4, "fillOpacity": 2 * FILL_OPACITY}, **_tooltip(shown),
        )
        options.update(kw)
        part[shown + [part.geometry.name]].explore(**options)
        names.append(_last_layer(m).get_name())
    return names


def _last_layer(m):
    """The map's most recently added GeoJSON layer (``GeoDataFrame.explore`` returns the map, not the layer)."""
    from folium import GeoJson

    return next(c for c in reversed(list(m._children.values())) if isinstance(c, GeoJson))


def _control(name: str, template: str, **fields):
    """A folium element whose JavaScript is ``template`` (a jinja ``script`` macro reading ``this.<field>``)."""
    from branca.element import MacroElement
    from jinja2 import Template

    element = MacroElement()
    element._name, element._template = name, Template(template)
    for key, value in fields.items():
        setattr(element, key, value)
    return element


_NOTE_JS = """
{% macro script(this, kwargs) %}
(function () {
    var note = L.control({position: "bottomright"});
    note.onAdd = function () {
        var div = L.DomUtil.create("div", "geodet-note leaflet-bar");
        div.style.cssText = "background:#fffbe6;padding:3px 8px;font:12px sans-serif;max-width:320px;";
        div.textContent = {{ this.text|tojson }};
        return div;
    };
    note.addTo({{ this._parent.get_name() }});
})();
{% endmacro %}
"""

_SCORE_FILTER_JS = """
{% macro script(this, kwargs) %}
(function () {
    var groups = [{% for name in this.layers %}{{ name }}{{ "," if not loop.last }}{% endfor %}];
    var items = [];
    groups.forEach(function (g) {
        g.eachLayer(function (l) { items.push([g, l, l.feature.properties.score]); });
    });
    var control = L.control({position: "bottomleft"});
    control.onAdd = function () {
        var div = L.DomUtil.create("div", "geodet-score-filter leaflet-bar");
        div.style.cssText = "background:#fff;padding:3px 8px;font:12px sans-serif;";
        var title = L.DomUtil.create("span", "", div);
        title.textContent = "detections with score \u2265 ";
        var value = L.DomUtil.create("b", "geodet-score-value", div);
        L.DomUtil.create("br", "", div);
        var input = L.DomUtil.create("input", "geodet-score-input", div);
        input.type = "range";
        input.min = {{ this.low|tojson }};
        input.max = "1";
        input.step = "0.01";
        input.value = {{ this.low|tojson }};
        input.style.verticalAlign = "middle";
        var count = L.DomUtil.create("span", "geodet-score-count", div);
        function apply() {
            var t = parseFloat(input.value), shown = 0;
            items.forEach(function (it) {
                var keep = !(it[2] < t);
                if (keep) { shown += 1; }
                if (keep && !it[0].hasLayer(it[1])) { it[0].addLayer(it[1]); }
                if (!keep && it[0].hasLayer(it[1])) { it[0].removeLayer(it[1]); }
            });
            value.textContent = t.toFixed(2);
            count.textContent = " " + shown + " of " + items.length;
        }
        L.DomEvent.on(input, "input", apply);
        L.DomEvent.disableClickPropagation(div);
        L.DomEvent.disableScrollPropagation(div);
        apply();
        return div;
    };
    control.addTo({{ this._parent.get_name() }});
})();
{% endmacro %}
"""


def map_note(text: str):
    """A Leaflet control showing ``text`` (as text, never HTML) at the map's bottom right."""
    return _control("MapNote", _NOTE_JS, text=str(text))


def score_filter(layers: Sequence[str], low: float):
    """A Leaflet control with a slider that hides the boxes of ``layers`` (their JavaScript names)
    scoring below its value; it starts at ``low`` (floored to 0.01), showing every box."""
    low = np.floor(min(max(low, 0.0), 1.0) * 100) / 100
    return _control("ScoreFilter", _SCORE_FILTER_JS, layers=list(layers), low=f"{low:.2f}")

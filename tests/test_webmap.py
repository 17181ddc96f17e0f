"""Interactive maps (geodet.reports.webmap): the folium map as built, and as a person sees it in Chromium.

The browser tests open saved ``explore()`` maps in headless Chromium (Debian's ``chromium`` and
``chromium-driver``) through Selenium, with Leaflet and folium's other companions from their npm
packages in ``.webdeps/`` (or ``$GEODET_WEBDEPS``): ``scripts/install_browser_deps.sh`` installs
both. Without them the browser tests skip, unless ``GEODET_REQUIRE_BROWSER=1`` (CI sets it): then
they fail.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from matplotlib.image import imread
from shapely import affinity

from geodet.errors import GeodetError
from test_plot import CRS, PX, X0, Y0, pixel_box_world, write_scene

folium = pytest.importorskip("folium", reason="needs the maps extra (folium)")

from geodet.reports import webmap  # noqa: E402  (needs folium)
from geodet.reports.display import LABEL_COLOR  # noqa: E402
from geodet.reports.plot import explore
from geodet.reports.webmap import (  # noqa: E402
    FILL_OPACITY,
    MAX_ZOOM,
    TRUTH_PANE,
    basemap_reachable,
    blank_background_note,
    class_colors,
    escaped_text,
    layer_name,
    scene_overlay,
)

UTM_ROTATED = Affine(PX, 0, X0, 0, -PX, Y0) * Affine.rotation(25.0)
DEG = Affine(1e-5, 0, -118.3, 0, -1e-5, 34.07)  # about 1 m pixels in EPSG:4326
HOSTILE = "<img src=x onerror=window.pwned=1>"  # a class name or file name that is markup


def map_layers(m):
    """``{kind: [children]}`` of a folium map: ImageOverlay, GeoJson, TileLayer, LayerControl..."""
    out = {}
    for child in m._children.values():
        out.setdefault(type(child).__name__, []).append(child)
    return out


def detections_frame(transform, crs=CRS):
    """Two pools and a car as boxes in the scene's CRS, scores 0.9, 0.3 and 0.6."""
    boxes = [pixel_box_world(transform, 4, 4, 12, 12), pixel_box_world(transform, 20, 8, 30, 16),
             pixel_box_world(transform, 40, 30, 50, 36)]
    return gpd.GeoDataFrame({"class": ["pool", "pool", "car"], "class_id": [1, 1, 0], "score": [0.9, 0.3, 0.6],
                             "scene": "scene.tif"}, geometry=boxes, crs=crs)


def overlay_lonlat(rgba, bounds, rows, cols):
    """Lon/lat of overlay pixel centres: Leaflet stretches the image linearly in web mercator."""
    from rasterio.warp import transform as warp_points

    (south, west), (north, east) = bounds
    (x0, x1), (y0, y1) = warp_points("EPSG:4326", "EPSG:3857", [west, east], [south, north])
    h, w = rgba.shape[:2]
    xs = x0 + (np.asarray(cols) + 0.5) / w * (x1 - x0)
    ys = y1 - (np.asarray(rows) + 0.5) / h * (y1 - y0)
    return warp_points("EPSG:3857", "EPSG:4326", xs.tolist(), ys.tolist())


def closed_port() -> tuple:
    """A loopback address nobody listens on (a tile server that does not answer)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return ("127.0.0.1", s.getsockname()[1])


# --------------------------------------------------------------------------- the map as built


def test_explore_returns_a_map_with_image_truth_and_detection_layers(tmp_path):
    path = tmp_path / "scene.tif"
    transform = write_scene(path)
    dets = detections_frame(transform)
    truth = dets.drop(columns=["score", "class_id", "scene"]).to_crs("EPSG:4326")
    m = explore(dets, scene=path, truth=truth, basemap=False)
    assert isinstance(m, folium.Map)
    layers = map_layers(m)
    assert [c.layer_name for c in layers["ImageOverlay"]] == ["scene: scene.tif"]
    rgba, bounds = scene_overlay(path)  # the overlay is the warped scene image, placed at its bounds
    overlay = layers["ImageOverlay"][0]
    assert np.allclose(overlay.bounds, bounds, rtol=0, atol=1e-12)
    png = imread(io.BytesIO(base64.b64decode(overlay.url.split(",", 1)[1])))
    assert np.array_equal((png * 255 + 0.5).astype(np.uint8), rgba)
    colors = class_colors(["pool", "car"])
    names = [c.layer_name for c in layers["GeoJson"]]  # every layer named with its colour and count
    assert names == [layer_name("detections: car", colors["car"], 1), layer_name("detections: pool", colors["pool"], 2),
                     layer_name("ground truth", LABEL_COLOR, 3, swatch="&#9633;")]
    assert len(layers["LayerControl"]) == 1 and "TileLayer" not in layers  # blank background
    for layer, name in zip(layers["GeoJson"][:2], ("car", "pool")):
        details = {type(c).__name__: c for c in layer._children.values()}  # a tooltip, no popup
        assert "GeoJsonPopup" not in details
        assert details["GeoJsonTooltip"].fields == ["class", "score", "scene", "class_id"]
        for feature in layer.data["features"]:
            style = layer.style_function(feature)
            assert feature["properties"]["class"] == name
            assert style["color"] == colors[name] and style["fillOpacity"] == FILL_OPACITY
    truth_layer = layers["GeoJson"][2]
    style = truth_layer.style_function(truth_layer.data["features"][0])
    assert style["color"] == LABEL_COLOR and style["fill"] is False and truth_layer.options["pane"] == TRUTH_PANE
    html = m.get_root().render()  # no network: nothing is fetched to render
    assert "L.imageOverlay" in html and "openstreetmap" not in html.lower()
    assert '"maxZoom": %d' % MAX_ZOOM in html and "geodet-score-filter" in html and "geodet-note" not in html


def test_layer_names_and_tooltip_values_are_escaped():
    name = layer_name(f"detections: {HOSTILE}", "#ff2d55", 3)
    assert HOSTILE not in name and "&lt;img src=x onerror=window.pwned=1&gt; (3)" in name
    assert name.startswith('<span style="color:#ff2d55">&#9632;</span> ')
    frame = gpd.GeoDataFrame({"class": [HOSTILE, "pool"], "n": [1, 2]}, geometry=[None, None])
    assert escaped_text(frame, ["class"])["class"].tolist() == ["&lt;img src=x onerror=window.pwned=1&gt;", "pool"]


def test_explore_escapes_class_scene_and_column_names(tmp_path):
    path = tmp_path / f"{HOSTILE}.tif"
    transform = write_scene(path)
    dets = detections_frame(transform).assign(**{"class": [HOSTILE, HOSTILE, "car"], "scene": path.name})
    truth = dets[["class", "geometry"]].rename(columns={"class": "label"})
    html = explore(dets, scene=path, truth=truth, basemap=False).get_root().render()
    assert "<img src=x" not in html.replace("\\u003c", "<")  # nowhere as markup, also not inside JSON strings
    assert html.count("\\u0026lt;img src=x onerror=window.pwned=1\\u0026gt;") >= 4  # layer names, properties


@pytest.mark.parametrize("transform,crs", [(None, CRS), (UTM_ROTATED, CRS), (DEG, "EPSG:4326")],
                         ids=["utm", "utm-rotated", "lonlat"])
def test_scene_overlay_lands_on_the_scene_in_lonlat(tmp_path, transform, crs):
    from rasterio.warp import transform as warp_points
    from rasterio.warp import transform_bounds

    height, width = 60, 80
    rows, cols = np.mgrid[0:height, 0:width]
    data = np.stack([np.where((rows + cols) % 2, 200, 100)] * 3).astype(np.uint16)  # grey checks
    data[0, 40:44, 10:14], data[1, 40:44, 10:14] = 1000, 0  # a red 4 x 4 px square
    path = tmp_path / "scene.tif"
    transform = write_scene(path, height, width, data=data, transform=transform, crs=crs)
    rgba, bounds = scene_overlay(path, max_px=width)
    (south, west), (north, east) = bounds
    px_lon, px_lat = (east - west) / rgba.shape[1], (north - south) / rgba.shape[0]
    with rasterio.open(path) as src:  # the overlay covers the scene's footprint, within a pixel
        w0, s0, e0, n0 = transform_bounds(crs, "EPSG:4326", *src.bounds, densify_pts=21)
    if transform.b == 0:  # north-up: the footprint's bounds are the scene's bounds
        assert abs(west - w0) < px_lon and abs(east - e0) < px_lon
        assert abs(south - s0) < px_lat and abs(north - n0) < px_lat
    else:
        assert west <= w0 + px_lon and east >= e0 - px_lon and south <= s0 + px_lat and north >= n0 - px_lat
    rows, cols = np.nonzero((rgba[..., 0] == 255) & (rgba[..., 1] == 0) & (rgba[..., 3] == 255))
    assert 4 <= len(rows) <= 36
    (lon,), (lat,) = overlay_lonlat(rgba, bounds, [rows.mean()], [cols.mean()])
    x, y = transform * (12.0, 42.0)  # the square's centre
    (true_lon,), (true_lat,) = warp_points(crs, "EPSG:4326", [x], [y])
    assert abs(lon - true_lon) < 1.0 * px_lon and abs(lat - true_lat) < 1.0 * px_lat
    assert rgba[0, 0, 3] == 0 if transform.b else rgba[..., 3].mean() > 0.9 * 255  # outside: transparent


def test_explore_basemap_choices_probe_and_blank_note(tmp_path, monkeypatch):
    dets = detections_frame(Affine(PX, 0, X0, 0, -PX, Y0))
    html = explore(dets, basemap=True).get_root().render()
    assert "tile.openstreetmap.org" in html and "maxNativeZoom" in html and "geodet-note" not in html
    url = "https://tiles.example.org/{z}/{x}/{y}.png"
    assert url in explore(dets, basemap=url, attribution="example").get_root().render()
    with pytest.raises(GeodetError, match="attribution"):
        explore(dets, basemap=url)
    with socket.socket() as server:  # a local listener is reachable; a closed port is not
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        assert basemap_reachable(("127.0.0.1", port), timeout_s=2.0)
    assert not basemap_reachable(("127.0.0.1", port), timeout_s=2.0)
    monkeypatch.setattr(webmap, "OSM_PROBE", ("127.0.0.1", port))  # the tile server does not answer
    html = explore(dets).get_root().render()
    assert "geodet-note" in html and "TileLayer" not in str(map_layers(explore(dets)))
    assert f"127.0.0.1 did not answer within {webmap.PROBE_TIMEOUT_S:g} s" in blank_background_note(webmap.OSM_PROBE)
    assert "geodet-note" not in explore(dets, basemap=False).get_root().render()  # asked for blank: no note


def test_explore_refuses_nothing_and_needs_folium(tmp_path, monkeypatch):
    with pytest.raises(GeodetError, match="nothing to map"):
        explore()
    empty = detections_frame(Affine(PX, 0, X0, 0, -PX, Y0)).iloc[:0]
    path = tmp_path / "scene.tif"
    write_scene(path)
    layers = map_layers(explore(empty, scene=path, basemap=False))
    assert "GeoJson" not in layers and len(layers["ImageOverlay"]) == 1
    monkeypatch.setitem(sys.modules, "folium", None)  # as if the maps extra were not installed
    with pytest.raises(GeodetError, match=r"pip install 'geodet\[maps\]'"):
        explore(empty, basemap=False)


# --------------------------------------------------------------------------- the map in a browser

REPO = Path(__file__).resolve().parents[1]
NODE_MODULES = Path(os.environ.get("GEODET_WEBDEPS", REPO / ".webdeps")) / "node_modules"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
#: folium's page resources (``Map.default_js`` / ``default_css`` names) -> their npm package files.
LOCAL_ASSETS = {
    "leaflet": "leaflet/dist/leaflet.js",
    "jquery": "jquery/dist/jquery.min.js",
    "bootstrap": "bootstrap/dist/js/bootstrap.bundle.min.js",
    "awesome_markers": "leaflet.awesome-markers/dist/leaflet.awesome-markers.js",
    "leaflet_css": "leaflet/dist/leaflet.css",
    "bootstrap_css": "bootstrap/dist/css/bootstrap.min.css",
    "awesome_markers_font_css": "@fortawesome/fontawesome-free/css/all.min.css",
    "awesome_markers_css": "leaflet.awesome-markers/dist/leaflet.awesome-markers.css",
}
#: Not on npm (Bootstrap 3.0's glyphicons sheet, folium's own rotation CSS); they style marker
#: icons, which geodet's maps never draw, so the test pages leave them out.
LEFT_OUT_ASSETS = {"glyphicons_css", "awesome_rotate_css"}


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by Selenium, its console log kept; skips (or fails in CI) without it."""
    missing = [what for what, ok in [("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER),
                                     (str(NODE_MODULES / "leaflet"), (NODE_MODULES / "leaflet").is_dir())] if not ok]
    try:
        from selenium import webdriver
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    if missing:
        message = f"browser tests need {', '.join(missing)}: run scripts/install_browser_deps.sh"
        if os.environ.get("GEODET_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download anything
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1000,760", "--allow-file-access-from-files"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def local_assets(monkeypatch):
    """folium's pages load Leaflet & co. from the npm packages (this test only; users get the CDNs)."""
    def local(pairs):
        names = {name for name, _ in pairs}
        unknown = names - set(LOCAL_ASSETS) - LEFT_OUT_ASSETS
        assert not unknown, f"folium names page resources this test does not know: {unknown}"
        return [(n, (NODE_MODULES / LOCAL_ASSETS[n]).as_uri()) for n, _ in pairs if n in LOCAL_ASSETS]

    monkeypatch.setattr(folium.Map, "default_js", local(folium.Map.default_js))
    monkeypatch.setattr(folium.Map, "default_css", local(folium.Map.default_css))


def open_map(driver, m, path: Path) -> dict:
    """Save ``m``, open it, return what the page holds: console errors, control entries, layers."""
    m.save(str(path))
    page = path.read_text()
    assert "http://" not in page and "https://" not in page.replace("https://leafletjs.com", "")  # all local
    driver.get(path.as_uri())
    return {"errors": [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]}


def js(driver, body: str, *args):
    return driver.execute_script(body, *args)


def control_entries(driver) -> list:
    """The layer control's entries: (text, swatch colour as 'rgb(r, g, b)' or None, checked)."""
    entries = js(driver, """
        return Array.from(document.querySelectorAll('.leaflet-control-layers-overlays label')).map(label => {
            const swatch = label.querySelector('span[style]');
            return [label.textContent.trim(), swatch ? swatch.style.color : null,
                    label.querySelector('input').checked];
        });""")
    return [tuple(entry) for entry in entries]


def drawn_paths(driver, layer: str) -> int:
    """How many of a GeoJSON layer's features have an SVG path in the page with a visible extent."""
    return js(driver, """
        return window[arguments[0]].getLayers().filter(l => l._path && l._path.isConnected
            && l._path.getBBox().width > 0 && l._path.getBBox().height > 0).length;""", layer)


def rgb(color: str) -> str:
    c = color.lstrip("#")
    return "rgb({}, {}, {})".format(int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16))


def scene_and_maps(make_scene_files, tmp_path):
    """A synthetic scene named ``HOSTILE``, its truth in three classes (``pool``, ``HOSTILE``,
    ``tree`` in turn) in a file, and detections made from it: the truth boxes grown by 20 %."""
    files = make_scene_files(256, 256, seed=3, name=HOSTILE, density=1.2)
    truth = gpd.read_file(files.labels)
    truth["class"] = np.array(["pool", HOSTILE, "tree"])[np.arange(len(truth)) % 3]
    truth_path = tmp_path / "truth.geojson"
    truth.to_file(truth_path)
    grown = truth.to_crs(files.crs).geometry.envelope.map(lambda g: affinity.scale(g, 1.2, 1.2))
    scores = np.round(np.linspace(0.35, 0.98, len(truth)), 3)
    dets = gpd.GeoDataFrame({"class": truth["class"].to_numpy(), "score": scores, "scene": Path(files.path).name,
                             "class_id": np.arange(len(truth)) % 3}, geometry=grown.to_numpy(), crs=files.crs)
    return files, truth_path, truth, dets


def test_map_in_a_browser_reads_as_a_person_expects(tmp_path, make_scene_files, browser, local_assets, monkeypatch):
    from rasterio.warp import transform_bounds

    files, truth_path, truth, dets = scene_and_maps(make_scene_files, tmp_path)
    assert len(set(dets["class"])) >= 3 and HOSTILE in set(dets["class"])
    monkeypatch.setattr(webmap, "OSM_PROBE", closed_port())  # no tile server answers: blank, with the note
    m = explore(dets, scene=files.path, truth=truth_path)
    layers = map_layers(m)
    page = open_map(browser, m, tmp_path / "map.html")
    browser.save_screenshot(str(tmp_path / "map.png"))  # for a person to open
    assert page["errors"] == []

    # the layer control is the legend: the scene, each detection class and the truth, colour and count
    colors = class_colors(dets["class"])
    expected = [(f"scene: {HOSTILE}.tif", None, True)]
    expected += [(f"■ detections: {name} ({(dets['class'] == name).sum()})", rgb(color), True)
                 for name, color in colors.items()]
    expected += [(f"□ ground truth ({len(truth)})", rgb(LABEL_COLOR), True)]
    assert control_entries(browser) == expected
    assert js(browser, "return document.querySelectorAll('.leaflet-control-layers-base label').length") == 0

    # one drawn path per feature: detections in the overlay pane, the truth in its pane above it
    geo = [layer.get_name() for layer in layers["GeoJson"]]
    assert [drawn_paths(browser, name) for name in geo] == [*((dets["class"] == c).sum() for c in colors), len(truth)]
    panes = js(browser, f"""
        const z = s => +getComputedStyle(document.querySelector(s)).zIndex;
        return [document.querySelectorAll('.leaflet-overlay-pane path').length,
                document.querySelectorAll('.leaflet-{TRUTH_PANE}-pane path').length,
                z('.leaflet-{TRUTH_PANE}-pane') > z('.leaflet-overlay-pane')];""")
    assert panes == [len(dets), len(truth), True]
    # along each truth outline, over a detection's fill, the truth is what the eye (and the mouse)
    # meets on its dashes and the detection in its gaps; with the truth hidden, the detection (points
    # under a control box, such as the layer control over the map's corner, are left out)
    outline = """
        const sample = l => {
            const path = l._path, n = 24, len = path.getTotalLength(), m = path.getScreenCTM(), seen = [];
            for (let i = 0; i < n; i++) {
                const p = path.getPointAtLength(len * (i + 0.5) / n);
                const e = document.elementFromPoint(m.a * p.x + m.c * p.y + m.e, m.b * p.x + m.d * p.y + m.f);
                seen.push(e === path ? 'truth' : !e ? 'other' : e.closest('.leaflet-overlay-pane') ? 'detection'
                          : e.closest('.leaflet-control') ? 'control' : 'other');
            }
            return seen;
        };
        const pane = document.querySelector('.leaflet-' + arguments[1] + '-pane');
        pane.style.visibility = arguments[2] ? 'hidden' : '';
        const seen = window[arguments[0]].getLayers().map(sample);
        pane.style.visibility = '';
        return seen;"""
    for seen in js(browser, outline, geo[-1], TRUTH_PANE, False):
        seen = [s for s in seen if s != "control"]
        assert seen.count("truth") >= len(seen) / 3 and set(seen) <= {"truth", "detection"}, seen
    for seen in js(browser, outline, geo[-1], TRUTH_PANE, True):
        assert set(seen) - {"control"} == {"detection"}, seen

    # the scene image lies on the scene's footprint, and is drawn where it says
    with rasterio.open(files.path) as src:
        w0, s0, e0, n0 = transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)
        px_deg = 2 * max(e0 - w0, n0 - s0) / max(src.width, src.height)
    overlay = js(browser, """
        const o = window[arguments[0]], b = o.getBounds(), map = window[arguments[1]];
        const nw = map.latLngToLayerPoint(b.getNorthWest()), se = map.latLngToLayerPoint(b.getSouthEast());
        const img = o.getElement(), r = img.getBoundingClientRect(), c = map.getContainer().getBoundingClientRect();
        const origin = map.containerPointToLayerPoint([0, 0]);
        return [b.getWest(), b.getSouth(), b.getEast(), b.getNorth(),
                [nw.x - origin.x, nw.y - origin.y, se.x - origin.x, se.y - origin.y],
                [r.left - c.left, r.top - c.top, r.right - c.left, r.bottom - c.top],
                img.complete && img.naturalWidth > 0];
    """, layers["ImageOverlay"][0].get_name(), m.get_name())
    assert np.allclose(overlay[:4], [w0, s0, e0, n0], rtol=0, atol=px_deg)
    assert np.allclose(overlay[4], overlay[5], atol=1.0) and overlay[6]

    # the note says why the background is blank
    note = js(browser, "return document.querySelector('.geodet-note').textContent")
    assert note == blank_background_note(webmap.OSM_PROBE)

    # hostile names show as text: in the control (above), and in the tooltip a mouse opens
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    hostile_layer = geo[list(colors).index(HOSTILE)]
    point = js(browser, """
        const map = window[arguments[0]], rect = map.getContainer().getBoundingClientRect();
        for (const l of window[arguments[1]].getLayers()) {
            const p = map.latLngToContainerPoint(l.getBounds().getCenter());
            if (document.elementFromPoint(rect.left + p.x, rect.top + p.y) === l._path) {
                return [p.x - rect.width / 2, p.y - rect.height / 2];
            }
        }
        return null;""", m.get_name(), hostile_layer)
    assert point is not None
    container = browser.find_element(By.CSS_SELECTOR, ".leaflet-container")
    ActionChains(browser).move_to_element_with_offset(container, int(point[0]), int(point[1])).perform()
    browser.save_screenshot(str(tmp_path / "map-tooltip.png"))  # the hostile names, as text
    tooltip = js(browser, "const t = document.querySelector('.leaflet-tooltip'); return t ? t.textContent : null")
    assert tooltip is not None and f"class {HOSTILE}" in " ".join(tooltip.split()) and f"{HOSTILE}.tif" in tooltip
    assert js(browser, "return [window.pwned, document.querySelectorAll('img[src=\"x\"]').length]") == [None, 0]
    assert js(browser, "return document.querySelectorAll('.leaflet-popup').length") == 0  # a tooltip, no popup

    # the score filter hides the boxes below its value and says how many it shows
    shown = js(browser, """
        const input = document.querySelector('.geodet-score-input');
        input.value = '0.7';
        input.dispatchEvent(new Event('input'));
        return [document.querySelectorAll('.leaflet-overlay-pane path').length,
                document.querySelector('.geodet-score-filter').textContent];""")
    keep = int((dets["score"] >= 0.7).sum())
    assert shown == [keep, f"detections with score ≥ 0.70 {keep} of {len(dets)}"]

    # zoom ends: the + button greys out at the deepest zoom, on a blank background too
    zoom = js(browser, """
        const map = window[arguments[0]];
        map.setZoom(map.getMaxZoom(), {animate: false});
        return [map.getMaxZoom(), map.getZoom(),
                document.querySelector('.leaflet-control-zoom-in').classList.contains('leaflet-disabled')];""",
              m.get_name())
    assert zoom == [MAX_ZOOM, MAX_ZOOM, True]
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    assert js(browser, "return window.pwned") is None


def test_map_in_a_browser_detections_only(tmp_path, make_scene_files, browser, local_assets):
    files, truth_path, truth, dets = scene_and_maps(make_scene_files, tmp_path)
    pools = dets[dets["class"] == "pool"].drop(columns="score")  # one class, no scores: no filter
    m = explore(pools, basemap=False)
    page = open_map(browser, m, tmp_path / "pools.html")
    browser.save_screenshot(str(tmp_path / "pools.png"))
    assert page["errors"] == []
    color = class_colors(["pool"])["pool"]
    assert control_entries(browser) == [(f"■ detections: pool ({len(pools)})", rgb(color), True)]
    assert drawn_paths(browser, map_layers(m)["GeoJson"][0].get_name()) == len(pools)
    controls = "return ['.geodet-score-filter', '.geodet-note'].map(s => !!document.querySelector(s))"
    assert js(browser, controls) == [False, False]
    assert js(browser, "return window[arguments[0]].getMaxZoom()", m.get_name()) == MAX_ZOOM

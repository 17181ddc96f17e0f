"""Scene sources: the URL mappings, @lists, globs, STAC, GDAL settings, and a COG read over real HTTP.

The HTTP tests serve a real COG from a threaded server on 127.0.0.1 that answers ``Range``
requests with 206 and ``Content-Range`` (and HEAD), as object storage does; GDAL reads it
through ``/vsicurl/``.
"""

from __future__ import annotations

import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import rasterio.shutil
from click.testing import CliRunner

from geodet.inference.scenes import scene_name
from geodet.errors import GeodetError
from geodet.io.raster import open_dataset, read_raw
from geodet.io.sources import (
    GDAL_DEFAULTS,
    choose_asset,
    dedupe,
    file_name,
    gdal_options,
    redact,
    resolve_scenes,
    to_gdal_path,
)
from geodet_cli.main import cli

PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
              "GDAL_HTTP_PROXY")


# ------------------------------------------------------------------------------------------ pure maps


@pytest.mark.parametrize("typed, gdal", [
    ("https://host/a/b.tif", "/vsicurl/https://host/a/b.tif"),
    ("http://host:8080/b.tif?sig=x&se=y", "/vsicurl/http://host:8080/b.tif?sig=x&se=y"),
    ("s3://bucket/key/c.tif", "/vsis3/bucket/key/c.tif"),
    ("gs://bucket/key/c.tif", "/vsigs/bucket/key/c.tif"),
    ("az://container/blob/c.tif", "/vsiaz/container/blob/c.tif"),
    ("abfs://container/blob/c.tif", "/vsiaz/container/blob/c.tif"),
    ("file:///data/my%20scene.tif", "/data/my scene.tif"),
    ("/vsicurl/https://host/b.tif", "/vsicurl/https://host/b.tif"),
    ("/vsizip//vsicurl/https://host/a.zip/b.tif", "/vsizip//vsicurl/https://host/a.zip/b.tif"),
    ("/vsis3/bucket/c.tif", "/vsis3/bucket/c.tif"),
    ("relative/scene.tif", "relative/scene.tif"),
    ("/abs/scene.vrt", "/abs/scene.vrt"),
])
def test_to_gdal_path(typed, gdal):
    assert to_gdal_path(typed) == gdal


def test_to_gdal_path_refuses_unknown_schemes_and_abfs_accounts():
    with pytest.raises(GeodetError, match="ftp:// URL"):
        to_gdal_path("ftp://host/a.tif")
    with pytest.raises(GeodetError, match="AZURE_STORAGE_ACCOUNT"):
        to_gdal_path("abfs://container@account.dfs.core.windows.net/a.tif")


@pytest.mark.parametrize("ref, name", [
    ("/vsicurl/https://host/a/b.tif?sig=abc/def&x=1", "b.tif"),
    ("https://host/a/b.tif#frag", "b.tif"),
    ("/vsicurl/https://host/a/my%20scene.tif", "my scene.tif"),
    ("/vsis3/bucket/k/c.tif", "c.tif"),
    ("/vsizip//vsicurl/https://host/a.zip/d.tif", "d.tif"),
    ("/data/e.tif", "e.tif"),
    ("e.tif", "e.tif"),
])
def test_scene_name_is_the_file_name(ref, name):
    assert file_name(ref) == name
    assert scene_name(ref) == name


def test_redact_hides_signed_queries():
    assert redact("/vsicurl/https://h/b.tif?sig=SECRET") == "/vsicurl/https://h/b.tif?..."
    assert redact("/data/a?b.tif") == "/data/a?b.tif"
    # anywhere in a message, GDAL's own included: several URLs, user-info, a shortened path's query
    message = ("HTTP error code: 503 - https://user:pw@h/a.tif?X-Amz-Signature=S1&X-Amz-Credential=S2. "
               "Retrying again in 1.0 secs; `/vsicurl/http://h/b.tif?se=2030&sig=S3' (b.tif?sv=1&sig=S4, band 1)")
    clean = redact(message)
    assert not any(secret in clean for secret in ("S1", "S2", "S3", "S4", "pw"))
    assert clean == ("HTTP error code: 503 - https://***@h/a.tif?... Retrying again in 1.0 secs; "
                     "`/vsicurl/http://h/b.tif?...' (b.tif?... band 1)")


def test_dedupe_keeps_first_occurrences_in_order():
    assert dedupe(["b", "a", "b", "c", "a"]) == ["b", "a", "c"]


def test_gdal_options_let_the_environment_win():
    environ = {"GDAL_HTTP_MAX_RETRY": "0", "UNRELATED": "1"}
    options = gdal_options("/vsicurl/https://h/a.tif", environ=environ)
    assert "GDAL_HTTP_MAX_RETRY" not in options
    assert options["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    assert set(options) == set(GDAL_DEFAULTS) - {"GDAL_HTTP_MAX_RETRY"}
    # a local scene's folder is listed, so that its sidecars (.tfw, .aux.xml, .ovr, .msk) are found
    assert gdal_options("/data/a.tif", environ={})["GDAL_DISABLE_READDIR_ON_OPEN"] == "NO"
    assert "GDAL_DISABLE_READDIR_ON_OPEN" not in gdal_options("/data/a.tif", environ={"GDAL_DISABLE_READDIR_ON_OPEN": "YES"})


def test_local_sidecars_are_still_found(tmp_path):
    # a GeoTIFF georeferenced only by a world file beside it, opened inside a remote-settings context
    from geodet.io.sources import gdal_env

    path = tmp_path / "plain.tif"
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8", crs="EPSG:32611") as dst:
        dst.write(np.ones((1, 8, 8), np.uint8))
    (tmp_path / "plain.tfw").write_text("0.5\n0\n0\n-0.5\n100.25\n200.25\n")
    with gdal_env("/vsicurl/https://h/x.tif"), open_dataset(str(path)) as src:
        assert (src.transform.c, src.transform.f) == (100.0, 200.5)


def test_gdal_env_sets_geodet_options():
    from rasterio.env import get_gdal_config

    from geodet.io.sources import gdal_env

    with gdal_env():
        for key, value in gdal_options().items():
            assert str(get_gdal_config(key, normalize=False)) == str(value), key


# ---------------------------------------------------------------------------------- lists and globs


def test_list_file_with_comments_relative_paths_and_duplicates(make_scene_files, tmp_path):
    a = make_scene_files(64, 64, name="a")
    b = make_scene_files(64, 64, name="b")
    sub = tmp_path / "lists"
    sub.mkdir()
    listing = sub / "scenes.txt"
    listing.write_text("# the study area\n\n../a.tif\n   \n  # indented comment\n../b.tif\n../a.tif\n"
                       "https://host/c.tif?sig=1\n")
    refs = resolve_scenes([f"@{listing}", b.path])
    assert refs == [a.path, b.path, "/vsicurl/https://host/c.tif?sig=1"]


def test_globs_sorted_and_errors(make_scene_files, tmp_path):
    for name in ("s2", "s1", "s3"):
        make_scene_files(32, 32, name=name)
    assert [Path(p).name for p in resolve_scenes(str(tmp_path / "s*.tif"))] == ["s1.tif", "s2.tif", "s3.tif"]
    with pytest.raises(GeodetError, match="no file matches"):
        resolve_scenes(str(tmp_path / "none*.tif"))
    with pytest.raises(GeodetError, match="does not exist"):
        resolve_scenes(str(tmp_path / "missing.tif"))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n\n")
    with pytest.raises(GeodetError, match="names no scene"):
        resolve_scenes(f"@{empty}")
    with pytest.raises(GeodetError, match="does not exist"):
        resolve_scenes(f"@{tmp_path / 'nolist.txt'}")
    with pytest.raises(GeodetError, match="local paths only"):
        resolve_scenes("s3://bucket/*.tif")
    with pytest.raises(GeodetError, match="no scene given"):
        resolve_scenes([])


def test_vrt_is_a_scene(make_scene_files, tmp_path):
    s = make_scene_files(64, 64, name="base")
    vrt = tmp_path / "mosaic.vrt"
    with rasterio.open(s.path) as src:
        rasterio.shutil.copy(src, vrt, driver="VRT")
    [ref] = resolve_scenes(str(vrt))
    with open_dataset(ref) as src, rasterio.open(s.path) as ref_src:
        assert np.array_equal(src.read(), ref_src.read())


def test_json_that_is_not_stac(tmp_path):
    plain = tmp_path / "thing.json"
    plain.write_text(json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": None,
                                                                            "properties": {}}]}))
    with pytest.raises(GeodetError, match="is not a STAC"):
        resolve_scenes(str(plain))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(GeodetError, match="not valid JSON"):
        resolve_scenes(str(broken))


# ----------------------------------------------------------------------------------------------- STAC


def _item(item_id: str, assets: dict) -> pystac.Item:
    item = pystac.Item(item_id, geometry=None, bbox=None, datetime=pystac.utils.str_to_datetime("2024-01-01T00:00:00Z"),
                       properties={})
    for key, asset in assets.items():
        item.add_asset(key, asset)
    return item


COG = "image/tiff; application=geotiff; profile=cloud-optimized"


def test_choose_asset_defaults_and_errors():
    visual = {"visual": pystac.Asset("v.tif", media_type=COG), "B04": pystac.Asset("b4.tif", media_type=COG)}
    assert choose_asset(visual, None, "i") == "visual"
    by_role = {"rgb": pystac.Asset("r.tif", media_type=COG, roles=["visual"]),
               "thumb": pystac.Asset("t.png", media_type="image/png", roles=["thumbnail"])}
    assert choose_asset(by_role, None, "i") == "rgb"
    one_tiff = {"image": pystac.Asset("x.tif", media_type=COG, roles=["data"]),
                "meta": pystac.Asset("m.xml", media_type="application/xml", roles=["metadata"])}
    assert choose_asset(one_tiff, None, "i") == "image"
    rgb = {"pan": pystac.Asset("p.tif", media_type=COG, roles=["data"], extra_fields={"eo:bands": [{"name": "pan"}]}),
           "ms": pystac.Asset("m.tif", media_type=COG, roles=["data"],
                              extra_fields={"eo:bands": [{"name": "red"}, {"name": "green"}, {"name": "blue"}]})}
    assert choose_asset(rgb, None, "i") == "ms"
    assert choose_asset(rgb, "pan", "i") == "pan"
    with pytest.raises(GeodetError, match=r"no asset 'nir' \(its assets: ms, pan\)"):
        choose_asset(rgb, "nir", "i")
    bands = {"B02": pystac.Asset("b2.tif", media_type=COG), "B03": pystac.Asset("b3.tif", media_type=COG)}
    with pytest.raises(GeodetError, match=r"choose one with --asset \(its assets: B02, B03\)"):
        choose_asset(bands, None, "item-7")


def test_stac_catalog_walk_and_relative_hrefs(make_scene_files, tmp_path):
    make_scene_files(32, 32, name="a")
    b = make_scene_files(32, 32, name="b")
    catalog = pystac.Catalog("area", "study area")
    sub = pystac.Catalog("north", "north part")
    catalog.add_child(sub)
    catalog.add_item(_item("item-a", {"visual": pystac.Asset("../a.tif", media_type=COG)}))
    sub.add_item(_item("item-b", {"visual": pystac.Asset(os.path.abspath(b.path), media_type=COG)}))
    catalog.normalize_hrefs(str(tmp_path / "stac"))
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    refs = resolve_scenes(str(tmp_path / "stac" / "catalog.json"))
    # item-a's JSON is stac/item-a/item-a.json: "../a.tif" resolves against it
    assert sorted(refs) == sorted([str(tmp_path / "stac" / "a.tif"), os.path.abspath(b.path)])
    assert refs == dedupe(refs)


# ------------------------------------------------------------------------------------------ real HTTP


class RangeHandler(BaseHTTPRequestHandler):
    """Serves files from ``self.server.root``: HEAD, GET, and GET with one ``bytes=a-b`` range (206).

    ``self.server.behaviour`` maps a file name to how the server misbehaves on a GET of it:
    ``"silent"`` (reads the request, answers nothing), ``"stall"`` (headers, then no byte),
    ``"trickle"`` (one byte every 0.1 s), ``"reset"`` (half the body, then a TCP reset), or
    ``("redirect", location)`` (302), or ``("stall_from", offset)`` (the file served as it is, but a
    range starting at ``offset`` or later stalls after its headers). A stalled answer waits until the
    test ends (``server.stop``).
    """

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _misbehave(self, name: str) -> bool:
        how = self.server.behaviour.get(name)
        if how is None:
            return False
        self.server.paths.append(self.path)
        if isinstance(how, tuple) and how[0] == "stall_from":
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            if match is None or int(match.group(1)) < how[1]:
                return False
            self.server.paths.append(self.path)
            start, end = int(match.group(1)), int(match.group(2) or how[1])
            self.send_response(206)  # as asked, but no byte follows the headers
            self.send_header("Content-Range", f"bytes {start}-{end}/{(Path(self.server.root) / name).stat().st_size}")
            self.send_header("Content-Length", str(end - start + 1))
            self.end_headers()
            self.wfile.flush()
            self.server.stop.wait(30)
            self.close_connection = True
            return True
        if isinstance(how, tuple) and how[0] == "redirect":
            self.send_response(302)
            self.send_header("Location", how[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return True
        if how == "silent":
            self.server.stop.wait(30)
            return True
        size = 100_000
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.flush()
        if how == "stall":
            self.server.stop.wait(30)
        elif how == "trickle":
            for _ in range(size):
                if self.server.stop.wait(0.1):
                    break
                try:
                    self.wfile.write(b" ")
                    self.wfile.flush()
                except OSError:  # the client gave up, as it should
                    break
        elif how == "reset":
            import socket
            import struct

            self.wfile.write(b"{" * (size // 2))
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        self.close_connection = True
        return True

    def _target(self):
        name = self.path.split("?", 1)[0].lstrip("/")
        if self.command == "GET" and self._misbehave(name):
            return None
        if self.command == "HEAD" and isinstance(self.server.behaviour.get(name), str):
            self.send_response(200)  # the file's size, as a server does before it misbehaves on the GET
            self.send_header("Content-Length", "100000")
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            return None
        self.server.paths.append(self.path)
        path = Path(self.server.root) / name
        if not name or not path.is_file():
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        return path

    def _validators(self, path: Path) -> None:
        """ETag and Last-Modified, as object storage sends them."""
        from email.utils import formatdate

        st = path.stat()
        self.send_header("ETag", f'"{st.st_mtime_ns:x}-{st.st_size:x}"')
        self.send_header("Last-Modified", formatdate(st.st_mtime, usegmt=True))

    def do_HEAD(self):
        path = self._target()
        if path is None:
            return
        self.send_response(200)
        self.send_header("Content-Length", str(path.stat().st_size))
        self.send_header("Accept-Ranges", "bytes")
        self._validators(path)
        self.end_headers()

    def do_GET(self):
        path = self._target()
        if path is None:
            return
        if self.headers.get("Range") and self.server.fail_ranges > 0:  # a transient failure
            self.server.fail_ranges -= 1
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = path.read_bytes()
        size = len(data)
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if match is None:
            self.send_response(200)
            body = data
        else:
            first, last = match.groups()
            if first == "":
                start, end = max(size - int(last), 0), size - 1
            else:
                start, end = int(first), min(int(last) if last else size - 1, size - 1)
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = data[start:end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.server.requests.append(self.headers.get("Range"))
        self._validators(path)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def http_root(tmp_path, monkeypatch):
    """``(root folder, base URL, server)``: files put in the folder are served on 127.0.0.1."""
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    server.daemon_threads = True
    server.root, server.requests, server.paths, server.fail_ranges = str(root), [], [], 0
    server.behaviour, server.stop = {}, threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}", server
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()


def _write_cog(src_path: str, dst: Path) -> Path:
    with rasterio.open(src_path) as src:
        rasterio.shutil.copy(src, dst, driver="COG", BLOCKSIZE=64, COMPRESS="DEFLATE")
    return dst


def _pixels(ref: str):
    with open_dataset(ref) as src:
        window = rasterio.windows.Window(40, 70, 100, 90)
        return read_raw(src, window, [1, 2, 3])[0], src.profile["driver"], src.crs, src.transform


def test_cog_over_http_reads_the_same_pixels(make_scene_files, http_root):
    root, base, server = http_root
    s = make_scene_files(256, 256, seed=4, name="area")
    cog = _write_cog(s.path, root / "area.tif")
    local = _pixels(str(cog))
    for typed in (f"/vsicurl/{base}/area.tif", f"{base}/area.tif", f"{base}/area.tif?sig=abc"):
        [ref] = resolve_scenes(typed)
        remote = _pixels(ref)
        assert np.array_equal(remote[0], local[0]), typed
        assert remote[1:] == local[1:]
    assert any(r and r.startswith("bytes=") for r in server.requests)  # read by ranges, not whole
    assert {p.split("?")[0] for p in server.paths} == {"/area.tif"}  # no folder listing, no sidecar probes
    # /vsicurl/ inside another virtual file system: a COG stored in a zip on the server
    import zipfile

    with zipfile.ZipFile(root / "bundle.zip", "w", compression=zipfile.ZIP_STORED) as zf:
        zf.write(cog, "inner/area.tif")
    [ref] = resolve_scenes(f"/vsizip//vsicurl/{base}/bundle.zip/inner/area.tif")
    assert np.array_equal(_pixels(ref)[0], local[0])
    assert scene_name(ref) == "area.tif"


def test_transient_http_errors_are_retried(make_scene_files, http_root, monkeypatch):
    # GDAL's own default is no retry; geodet's GDAL_HTTP_MAX_RETRY carries the read through two 503s
    root, base, server = http_root
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.01")  # the user's value wins: a fast test
    s = make_scene_files(128, 128, seed=8, name="flaky")
    cog = _write_cog(s.path, root / "flaky.tif")
    server.fail_ranges = 2
    [ref] = resolve_scenes(f"{base}/flaky.tif")
    assert np.array_equal(_pixels(ref)[0], _pixels(str(cog))[0])
    assert server.fail_ranges == 0


def _item_collection(path: Path, items) -> Path:
    path.write_text(json.dumps(pystac.ItemCollection(items).to_dict()))
    return path


def test_stac_item_collection_points_at_served_cog_and_local_file(make_scene_files, http_root, tmp_path):
    root, base, _ = http_root
    s = make_scene_files(128, 128, seed=5, name="served")
    _write_cog(s.path, root / "served.tif")
    local = make_scene_files(64, 64, seed=6, name="local")
    items = [
        _item("remote", {"visual": pystac.Asset(f"{base}/served.tif", media_type=COG),
                         "thumbnail": pystac.Asset(f"{base}/t.png", media_type="image/png", roles=["thumbnail"])}),
        _item("here", {"image": pystac.Asset("local.tif", media_type=COG, roles=["data"])}),  # relative to the JSON
    ]
    collection = _item_collection(tmp_path / "items.json", items)
    refs = resolve_scenes(str(collection))
    assert refs == [f"/vsicurl/{base}/served.tif", local.path]
    for ref, expected in zip(refs, (s.path, local.path)):
        with open_dataset(ref) as src, rasterio.open(expected) as truth:
            assert np.array_equal(src.read(), truth.read())
    with pytest.raises(GeodetError, match=r"STAC item here has no asset 'visual' \(its assets: image\)"):
        resolve_scenes(str(collection), asset="visual")
    # the ItemCollection itself served over HTTP: relative hrefs resolve against its URL
    _write_cog(local.path, root / "local.tif")
    (root / "items.json").write_text(collection.read_text())
    served = [f"/vsicurl/{base}/served.tif", f"/vsicurl/{base}/local.tif"]
    assert resolve_scenes(f"{base}/items.json") == resolve_scenes(f"/vsicurl/{base}/items.json") == served
    with pytest.raises(GeodetError, match="local files and http"):
        resolve_scenes("s3://bucket/items.json")


def test_detect_cli_on_a_url(http_root, tmp_path, sample_scene):
    root, base, _ = http_root
    with rasterio.open(sample_scene) as src:  # a small window of the sample scene, as a COG
        window = rasterio.windows.Window(0, 0, 192, 192)  # one chip of the default model
        profile = dict(src.profile, width=192, height=192, transform=src.window_transform(window), driver="GTiff")
        small = tmp_path / "small.tif"
        with rasterio.open(small, "w", **profile) as dst:
            dst.write(src.read(window=window))
    _write_cog(str(small), root / "small.tif")
    runner = CliRunner()
    local = runner.invoke(cli, ["detect", str(small), "-o", str(tmp_path / "local.geojson"), "--quiet",
                                "--device", "cpu"], catch_exceptions=False)
    remote = runner.invoke(cli, ["detect", f"{base}/small.tif?token=x", "-o", str(tmp_path / "remote.geojson"),
                                 "--quiet", "--device", "cpu"], catch_exceptions=False)
    assert local.exit_code == 0 and remote.exit_code == 0, remote.output
    import geopandas as gpd

    a, b = gpd.read_file(tmp_path / "local.geojson"), gpd.read_file(tmp_path / "remote.geojson")
    assert len(a) == len(b) > 0
    assert set(b["scene"]) == {"small.tif"}
    assert np.allclose(a["score"], b["score"], atol=1e-6)  # same pixels, same model, same CPU


def test_missing_url_is_one_sentence(http_root, tmp_path, monkeypatch):
    _, base, _ = http_root
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    result = CliRunner().invoke(cli, ["detect", f"{base}/nothing.tif?sig=SECRET", "-o", str(tmp_path / "o.geojson"),
                                      "--quiet"], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if "nothing.tif" in line]
    assert errors and all("SECRET" not in line for line in result.output.splitlines())
    assert "404" in result.output or "not exist" in result.output, result.output
    with pytest.raises(GeodetError, match="nothing.tif"):
        open_dataset(f"{base}/nothing.tif")


def test_tile_cli_on_a_signed_url_names_chips_by_file(make_scene_files, http_root, tmp_path):
    root, base, _ = http_root
    s = make_scene_files(128, 128, seed=7, name="site")
    _write_cog(s.path, root / "site.tif")
    result = CliRunner().invoke(cli, ["tile", f"{base}/site.tif?sig=abc", "--labels", s.labels, "--chip-size", "64",
                                      "--overlap", "0", "-o", str(tmp_path / "tiles")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    chips = sorted(p.name for p in (tmp_path / "tiles" / "chips").iterdir())
    assert chips and all(name.startswith("site_r") and name.endswith(".tif") for name in chips), chips


def test_training_sources_take_lists_and_patterns(make_scene_files, tmp_path):
    from geodet.config import TRAIN_CHIP
    from geodet.learning.training import load_sources

    a = make_scene_files(64, 64, seed=1, name="t1")
    make_scene_files(64, 64, seed=2, name="t2")
    (tmp_path / "train.txt").write_text("# training scenes\nt1.tif\n")
    infos, _, _ = load_sources([f"@{tmp_path / 'train.txt'}", str(tmp_path / "t*.tif")], a.labels, None, TRAIN_CHIP)
    assert [Path(i.path).name for i in infos] == ["t1.tif", "t2.tif"]


def test_reads_in_any_thread_hold_geodet_settings_and_the_environment_wins(make_scene_files, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from rasterio.env import get_gdal_config

    from geodet.io.raster import read_errors

    s = make_scene_files(32, 32, name="th")
    window = rasterio.windows.Window(0, 0, 8, 8)

    def settings():
        with open_dataset(s.path) as src, read_errors(src, window):
            return {k: str(get_gdal_config(k, normalize=False)) for k in ("GDAL_HTTP_MAX_RETRY",
                                                                          "GDAL_DISABLE_READDIR_ON_OPEN")}

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(settings).result() == {"GDAL_HTTP_MAX_RETRY": str(GDAL_DEFAULTS["GDAL_HTTP_MAX_RETRY"]),
                                                  "GDAL_DISABLE_READDIR_ON_OPEN": "NO"}  # a local file
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(settings).result()["GDAL_HTTP_MAX_RETRY"] == "0"  # GDAL reads the variable itself


# ------------------------------------------------------------------------- untrusted catalogs


def _catalog_with_items(folder: Path, hrefs) -> Path:
    """A STAC Catalog (``catalog.json``) in ``folder`` with one item per asset href, items inline
    as item links (``item-<i>.json``)."""
    links = []
    for i, href in enumerate(hrefs):
        item = _item(f"item-{i}", {"visual": pystac.Asset(href, media_type=COG)}).to_dict(include_self_link=False)
        item["links"] = []
        (folder / f"item-{i}.json").write_text(json.dumps(item))
        links.append({"rel": "item", "href": f"./item-{i}.json", "type": "application/geo+json"})
    catalog = {"type": "Catalog", "stac_version": "1.0.0", "id": "cat", "description": "d", "links": links}
    (folder / "catalog.json").write_text(json.dumps(catalog))
    return folder / "catalog.json"


@pytest.mark.parametrize("kind", ["absolute path", "file URL", "vsicurl", "vsis3", "vsizip", "s3 URL"])
def test_remote_catalog_cannot_name_local_files(make_scene_files, http_root, tmp_path, kind):
    root, base, server = http_root
    private = make_scene_files(64, 64, seed=3, name="private")
    (tmp_path / "private.zip").write_bytes(b"PK")  # never opened
    href = {"absolute path": private.path, "file URL": Path(private.path).as_uri(),
            "vsicurl": "/vsicurl/http://169.254.169.254/latest/meta-data/x.tif", "vsis3": "/vsis3/bucket/x.tif",
            "vsizip": f"/vsizip/{tmp_path / 'private.zip'}/x.tif", "s3 URL": "s3://bucket/x.tif"}[kind]
    _catalog_with_items(root, [href])
    with pytest.raises(GeodetError, match=r"catalog.json|item-0.json") as err:
        resolve_scenes(f"{base}/catalog.json")
    message = str(err.value)
    assert "does not follow" in message and "--allow-local-hrefs" in message and "\n" not in message
    # the opt-in follows the href as written; a local catalog always did
    [ref] = resolve_scenes(f"{base}/catalog.json", allow_local_hrefs=True)
    assert ref == to_gdal_path(href)
    local_copy = tmp_path / "local_stac"
    local_copy.mkdir()
    _catalog_with_items(local_copy, [href])
    assert resolve_scenes(str(local_copy / "catalog.json")) == [to_gdal_path(href)]


def test_detect_refuses_a_remote_catalogs_local_scene_unless_allowed(make_scene_files, http_root, tmp_path):
    root, base, _ = http_root
    private = make_scene_files(64, 64, seed=3, name="private")
    _catalog_with_items(root, [private.path])
    out = tmp_path / "out.geojson"
    refused = CliRunner().invoke(cli, ["detect", f"{base}/catalog.json", "-o", str(out), "--quiet", "--device", "cpu"],
                                 catch_exceptions=False)
    assert refused.exit_code == 1 and "does not follow" in refused.output and "Traceback" not in refused.output
    assert not out.exists() and not Path(str(out) + ".geodet-job").exists()
    allowed = CliRunner().invoke(cli, ["detect", f"{base}/catalog.json", "-o", str(out), "--quiet", "--device", "cpu",
                                       "--allow-local-hrefs"], catch_exceptions=False)
    assert allowed.exit_code == 0, allowed.output
    assert out.exists()


def test_remote_catalog_links_resolve_to_urls_of_its_own_kind(make_scene_files, http_root):
    root, base, _ = http_root
    s = make_scene_files(64, 64, seed=5, name="served")
    _write_cog(s.path, root / "served.tif")
    sub = root / "sub"
    sub.mkdir()
    _catalog_with_items(sub, ["../served.tif", f"{base}/served.tif?sig=1"])  # relative, absolute
    catalog = {"type": "Catalog", "stac_version": "1.0.0", "id": "top", "description": "d",
               "links": [{"rel": "child", "href": "sub/catalog.json"}, {"rel": "root", "href": "./catalog.json"}]}
    (root / "catalog.json").write_text(json.dumps(catalog))
    refs = resolve_scenes(f"{base}/catalog.json")
    assert refs == [f"/vsicurl/{base}/served.tif", f"/vsicurl/{base}/served.tif?sig=1"]  # one scene named twice
    # a child link to a local catalog is refused like an asset
    catalog["links"].append({"rel": "child", "href": str(sub / "catalog.json")})
    (root / "catalog.json").write_text(json.dumps(catalog))
    with pytest.raises(GeodetError, match="a local path"):
        resolve_scenes(f"{base}/catalog.json")


def test_remote_href_refusal_rules():
    from geodet.io.sources import remote_href_refusal

    origin = "https://stac.example.com/catalog.json"
    assert remote_href_refusal("https://cdn.example.org/a.tif", origin) is None
    assert remote_href_refusal("http://other.example.net/a.tif", origin) is None  # http(s) is one kind
    for href in ("http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:8080/a.tif", "http://localhost/a.tif",
                 "http://10.1.2.3/a.tif", "http://[::1]/a.tif", "http://metadata.google.internal/computeMetadata/v1/"):
        assert "this machine or its private network" in remote_href_refusal(href, origin), href
    assert remote_href_refusal("http://127.0.0.1:9/a.tif", "http://127.0.0.1:8000/c.json") is None  # a local server's own
    assert "a local path" in remote_href_refusal("/etc/passwd", origin)
    assert "file:// URL" in remote_href_refusal("file:///etc/passwd", origin)
    assert "GDAL virtual path" in remote_href_refusal("/vsis3/bucket/a.tif", origin)
    assert "s3:// URL" in remote_href_refusal("s3://bucket/a.tif", origin)
    assert remote_href_refusal("s3://bucket/b.tif", "s3://bucket/catalog.json") is None
    assert "https:// URL" in remote_href_refusal("https://h/a.tif", "s3://bucket/catalog.json")


@pytest.mark.parametrize("where", ["local", "remote"])
def test_catalog_cycle_is_one_sentence(http_root, tmp_path, where):
    root, base, _ = http_root
    folder = root if where == "remote" else tmp_path
    (folder / "b").mkdir()
    a = {"type": "Catalog", "stac_version": "1.0.0", "id": "a", "description": "d",
         "links": [{"rel": "child", "href": "./b/catalog.json"}]}
    b = {"type": "Catalog", "stac_version": "1.0.0", "id": "b", "description": "d",
         "links": [{"rel": "child", "href": "../catalog.json"}]}
    (folder / "catalog.json").write_text(json.dumps(a))
    (folder / "b" / "catalog.json").write_text(json.dumps(b))
    ref = f"{base}/catalog.json" if where == "remote" else str(folder / "catalog.json")
    with pytest.raises(GeodetError, match="form a cycle"):
        resolve_scenes(ref)


def test_nested_relative_list_resolves_against_its_list(make_scene_files, tmp_path, monkeypatch):
    a = make_scene_files(32, 32, name="a")
    (tmp_path / "lists" / "more").mkdir(parents=True)
    (tmp_path / "lists" / "top.txt").write_text("@more/inner.txt\n")
    (tmp_path / "lists" / "more" / "inner.txt").write_text("../../a.tif\n")
    monkeypatch.chdir(tmp_path / "lists" / "more")  # a working folder where "more/inner.txt" does not exist
    assert resolve_scenes(f"@{tmp_path / 'lists' / 'top.txt'}") == [a.path]


# ------------------------------------------------------------------------------------ bounded waits


def test_gdal_defaults_bound_every_wait():
    from geodet.io.sources import http_bounds

    for key in ("GDAL_HTTP_CONNECTTIMEOUT", "GDAL_HTTP_LOW_SPEED_TIME", "GDAL_HTTP_LOW_SPEED_LIMIT", "GDAL_HTTP_TIMEOUT"):
        assert int(GDAL_DEFAULTS[key]) > 0, key
    assert http_bounds({}) == {"connect": GDAL_DEFAULTS["GDAL_HTTP_CONNECTTIMEOUT"],
                               "low_speed_time": GDAL_DEFAULTS["GDAL_HTTP_LOW_SPEED_TIME"],
                               "low_speed_limit": GDAL_DEFAULTS["GDAL_HTTP_LOW_SPEED_LIMIT"],
                               "total": GDAL_DEFAULTS["GDAL_HTTP_TIMEOUT"]}
    assert http_bounds({"GDAL_HTTP_TIMEOUT": "7"})["total"] == 7  # the environment wins, as for GDAL
    with pytest.raises(GeodetError, match="GDAL_HTTP_TIMEOUT must be a number"):
        http_bounds({"GDAL_HTTP_TIMEOUT": "soon"})


@pytest.fixture
def short_waits(monkeypatch):
    """Bounds of one second (the user's environment wins over GDAL_DEFAULTS), no retries: fast tests."""
    for key, value in {"GDAL_HTTP_CONNECTTIMEOUT": "1", "GDAL_HTTP_LOW_SPEED_TIME": "1",
                       "GDAL_HTTP_LOW_SPEED_LIMIT": "1000", "GDAL_HTTP_TIMEOUT": "3", "GDAL_HTTP_MAX_RETRY": "0"}.items():
        monkeypatch.setenv(key, value)


@pytest.mark.parametrize("how", ["stall", "trickle", "silent"])
def test_a_stalled_or_trickling_server_gives_an_error_in_bounded_time(http_root, short_waits, how):
    import time

    _, base, server = http_root
    server.behaviour["dead.tif"] = how
    t0 = time.monotonic()
    with pytest.raises(GeodetError, match="dead.tif") as err:
        with open_dataset(f"{base}/dead.tif?token=SECRET") as src:
            read_raw(src, rasterio.windows.Window(0, 0, 8, 8), [1])
    seconds = time.monotonic() - t0
    assert seconds < 8, seconds
    assert "SECRET" not in str(err.value)
    print(f"{how}: error after {seconds:.1f} s: {err.value}")


def test_a_server_that_stalls_mid_scene_gives_an_error_in_bounded_time(make_scene_files, http_root, short_waits):
    import time

    root, base, server = http_root
    s = make_scene_files(256, 256, seed=9, name="big")
    with rasterio.open(s.path) as src:  # uncompressed: the far tiles lie beyond GDAL's first 64 kB read
        rasterio.shutil.copy(src, root / "big.tif", driver="COG", BLOCKSIZE=128, COMPRESS="NONE")
    server.behaviour["big.tif"] = ("stall_from", 100_000)
    with open_dataset(f"{base}/big.tif?token=SECRET") as src:
        t0 = time.monotonic()
        with pytest.raises(GeodetError, match=r"big.tif.*reading the window at column 128, row 128") as err:
            read_raw(src, rasterio.windows.Window(128, 128, 128, 128), [1, 2, 3])
    seconds = time.monotonic() - t0
    assert seconds < 8, seconds
    assert "SECRET" not in str(err.value)
    print(f"stall mid-scene: error after {seconds:.1f} s: {err.value}")


@pytest.mark.parametrize("how", ["stall", "trickle", "silent", "reset"])
def test_a_stalled_stac_json_gives_an_error_in_bounded_time(http_root, short_waits, how):
    import time

    _, base, server = http_root
    server.behaviour["items.json"] = how
    t0 = time.monotonic()
    with pytest.raises(GeodetError, match="items.json") as err:
        resolve_scenes(f"{base}/items.json?token=SECRET")
    seconds = time.monotonic() - t0
    assert seconds < 6, seconds
    assert "SECRET" not in str(err.value) and "\n" not in str(err.value)
    print(f"{how}: error after {seconds:.1f} s: {err.value}")


def test_stac_json_redirects_are_followed_to_http_only(make_scene_files, http_root):
    root, base, server = http_root
    s = make_scene_files(64, 64, seed=5, name="served")
    _write_cog(s.path, root / "served.tif")
    (root / "real").mkdir()
    _catalog_with_items(root / "real", ["../served.tif"])
    server.behaviour["moved.json"] = ("redirect", "/real/catalog.json")
    # relative hrefs resolve against where the JSON was read from, after the redirect
    assert resolve_scenes(f"{base}/moved.json") == [f"/vsicurl/{base}/served.tif"]
    server.behaviour["evil.json"] = ("redirect", "file:///etc/passwd")
    with pytest.raises(GeodetError, match=r"evil.json.*file:///etc/passwd.*(not allowed|not an http)"):
        resolve_scenes(f"{base}/evil.json")


# ------------------------------------------------------------------------------------------ secrets


def test_gdal_retry_messages_are_redacted(make_scene_files, http_root, monkeypatch, caplog):
    import logging

    root, base, server = http_root
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.01")
    s = make_scene_files(128, 128, seed=8, name="flaky")
    _write_cog(s.path, root / "flaky.tif")
    server.fail_ranges = 2
    with caplog.at_level(logging.DEBUG):
        [ref] = resolve_scenes(f"{base}/flaky.tif?X-Amz-Signature=SECRET")
        _pixels(ref)
    assert server.fail_ranges == 0
    gdal_lines = [r.getMessage() for r in caplog.records if r.name.startswith("rasterio")]
    assert any("flaky.tif" in line for line in gdal_lines)  # GDAL spoke of the file (its retries, its opens)
    assert "SECRET" not in caplog.text


def test_secrets_stay_out_of_cli_output_and_job_records(http_root, tmp_path, sample_scene, monkeypatch):
    root, base, server = http_root
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.01")
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "1")
    with rasterio.open(sample_scene) as src:  # one chip of the default model
        window = rasterio.windows.Window(0, 0, 192, 192)
        profile = dict(src.profile, width=192, height=192, transform=src.window_transform(window), driver="GTiff")
        with rasterio.open(tmp_path / "small.tif", "w", **profile) as dst:
            dst.write(src.read(window=window))
    _write_cog(str(tmp_path / "small.tif"), root / "small.tif")
    server.fail_ranges = 1
    out = tmp_path / "out.geojson"
    result = CliRunner().invoke(cli, ["-vv", "detect", f"{base}/small.tif?sig=SECRET1",
                                      f"https://user:SECRET3@127.0.0.1:{base.rsplit(':', 1)[1]}/gone.tif?sig=SECRET2",
                                      "-o", str(out), "--quiet", "--device", "cpu"], catch_exceptions=False)
    assert result.exit_code == 1, result.output  # one scene failed, the other written
    assert "gone.tif" in result.output and out.exists()
    job = Path(str(out) + ".geodet-job")
    texts = [result.output, out.read_text()] + [p.read_text(errors="replace") for p in job.rglob("*.json")]
    for text in texts:
        for secret in ("SECRET1", "SECRET2", "SECRET3"):
            assert secret not in text


def _clear_gdal_download_cache() -> None:
    """GDAL's VSICurlClearCache() (rasterio does not expose it), through the libgdal rasterio loaded."""
    import ctypes
    import glob

    libs = glob.glob(os.path.join(os.path.dirname(rasterio.__file__), os.pardir, "rasterio.libs", "libgdal*.so*"))
    if not libs:
        pytest.skip("rasterio's own libgdal is not found here")
    ctypes.CDLL(libs[0]).VSICurlClearCache()


def test_a_changed_remote_scene_is_detected_again(http_root, tmp_path, sample_scene, make_scene_files):
    from geodet.config import DetectConfig
    from geodet.inference.detection import detect
    from geodet.inference.jobs import scene_identity

    root, base, _ = http_root
    first = make_scene_files(192, 192, seed=1, name="first")
    second = make_scene_files(192, 192, seed=2, name="second")
    served = _write_cog(first.path, root / "t.tif")
    [ref] = resolve_scenes(f"{base}/t.tif?sig=SECRET")
    before = scene_identity(ref)
    assert set(before) == {"etag", "last_modified", "size"}
    cfg, job_dir = DetectConfig(device="cpu"), tmp_path / "job"
    detect(ref, config=cfg, job_dir=job_dir)
    assert detect(ref, config=cfg, job_dir=job_dir).attrs["scenes_done_before"] == 1  # unchanged: not run again
    _write_cog(second.path, served)
    os.utime(served, ns=(served.stat().st_atime_ns, served.stat().st_mtime_ns + 10**9))  # a later upload
    assert scene_identity(ref) != before
    _clear_gdal_download_cache()  # a rerun is a new process; this one still holds the old file's ranges
    again = detect(ref, config=cfg, job_dir=job_dir)
    assert again.attrs["scenes_changed"] == [ref] and again.attrs["scenes_done_before"] == 0
    fresh = detect(second.path, config=cfg)
    assert np.allclose(np.sort(again["score"]), np.sort(fresh["score"]))
    assert not any("SECRET" in p.read_text() for p in job_dir.rglob("*.json"))
    assert scene_identity(f"/vsicurl/{base}/gone.tif") == {}  # cannot be told now: the record is trusted

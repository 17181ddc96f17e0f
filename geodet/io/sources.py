"""Scene sources: what the user typed -> GDAL-openable scene references; GDAL's settings for reading them.

One home for two facts:

* **Which inputs name scenes** (:func:`resolve_scenes`): local paths, glob patterns,
  ``@list.txt`` files, ``.vrt`` files, GDAL virtual paths (``/vsicurl/``, ``/vsis3/``,
  ``/vsigs/``, ``/vsiaz/``, and chains such as ``/vsizip//vsicurl/...``), URLs mapped
  onto them (:func:`to_gdal_path`), and STAC Items, ItemCollections, Catalogs and
  Collections (one scene per item, the band asset chosen by :func:`choose_asset`).
* **How GDAL reads them** (:data:`GDAL_DEFAULTS`, :func:`gdal_env`): settings for
  cloud-optimised GeoTIFFs over HTTP and object storage. Every raster open and read
  in geodet runs inside :func:`gdal_env`; the user's own environment variables win.

Pure functions (the URL mapping, the scene name, the asset choice) are apart from the
functions that touch files and the network (:func:`resolve_scenes`, :func:`read_stac`).
"""

from __future__ import annotations

import contextlib
import glob
import http.client
import ipaddress
import json
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import unquote, urljoin, urlsplit

from geodet.errors import GeodetError

log = logging.getLogger(__name__)

#: GDAL block cache (MB) while geodet reads. It bounds memory on striped scenes, whose strips span
#: the whole width (GDAL's default is 5% of RAM).
GDAL_CACHE_MB = 128

#: GDAL's cache of downloaded byte ranges (/vsicurl/, /vsis3/, ...), shared by every open file, in MB.
CURL_CACHE_MB = 64

#: geodet's GDAL configuration while it opens and reads rasters; an environment variable of the
#: same name wins (see :func:`gdal_options`). Each is listed among the /vsicurl/ options of the
#: GDAL 3.10 that rasterio 1.4 bundles (``VSIGetFileSystemOptions``), except GDAL_CACHEMAX (core)
#: and GDAL_INGESTED_BYTES_AT_OPEN (read by the same handler since GDAL 2.3).
GDAL_DEFAULTS: Dict[str, Union[str, int]] = {
    # Opening a remote file must not list its folder (a listing of a bucket prefix may take longer
    # than the read, and sidecars of COGs are rare); for local files see LOCAL_OVERRIDES.
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_CACHEMAX": GDAL_CACHE_MB * 2**20,
    "CPL_VSIL_CURL_CACHE_SIZE": CURL_CACHE_MB * 2**20,
    # A COG's header (IFDs, tile offsets) of a large scene exceeds GDAL's 16 kB first read.
    "GDAL_INGESTED_BYTES_AT_OPEN": 64 * 2**10,
    # Transient HTTP errors (429, 5xx) are retried, the delay (seconds) growing each time; 404 is not.
    # GDAL's defaults are no retry and a 30 s delay.
    "GDAL_HTTP_MAX_RETRY": 5,
    "GDAL_HTTP_RETRY_DELAY": 1,
    # Bounded waits (GDAL's defaults wait forever on a server that stalls or trickles): a connection
    # must open within GDAL_HTTP_CONNECTTIMEOUT s; a transfer slower than GDAL_HTTP_LOW_SPEED_LIMIT
    # bytes/s for GDAL_HTTP_LOW_SPEED_TIME s is dropped; no request lasts over GDAL_HTTP_TIMEOUT s.
    # STAC JSON is fetched under the same bounds (:func:`http_bounds`).
    "GDAL_HTTP_CONNECTTIMEOUT": 15,
    "GDAL_HTTP_LOW_SPEED_TIME": 30,
    "GDAL_HTTP_LOW_SPEED_LIMIT": 1024,
    "GDAL_HTTP_TIMEOUT": 300,
    # A chip spans several COG tiles: adjacent ranges become one request, the others go in parallel.
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIRANGE": "PARALLEL",
}

#: Settings that differ for local files: a local scene's sidecars (a .tfw world file, .aux.xml, .ovr
#: overviews, a .msk mask) are found by listing its folder, as GDAL does by default.
LOCAL_OVERRIDES: Dict[str, Union[str, int]] = {"GDAL_DISABLE_READDIR_ON_OPEN": "NO"}

#: URL scheme -> GDAL virtual file system prefix.
URL_PREFIXES: Dict[str, str] = {
    "http": "/vsicurl/",
    "https": "/vsicurl/",
    "s3": "/vsis3/",
    "gs": "/vsigs/",
    "az": "/vsiaz/",
    "abfs": "/vsiaz/",
    "abfss": "/vsiaz/",
}

#: Glob characters; a local input holding one is a pattern unless a file of that exact name exists.
_GLOB_CHARS = "*?["
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def gdal_options(path: Optional[str] = None, environ: Optional[Mapping[str, str]] = None) -> Dict[str, Union[str, int]]:
    """geodet's GDAL settings for reading ``path``, less those set in ``environ`` (default: ``os.environ``).

    Args:
        path: the file opened or read: a local path gets :data:`LOCAL_OVERRIDES` on top of
            :data:`GDAL_DEFAULTS`; a GDAL virtual path, or None, gets the defaults alone.
        environ: the environment. GDAL falls back to environment variables for any option not
            set explicitly, so leaving these out lets the user's own values win.
    """
    env = os.environ if environ is None else environ
    options = dict(GDAL_DEFAULTS)
    if path is not None and not is_virtual(str(path)):
        options.update(LOCAL_OVERRIDES)
    return {key: value for key, value in options.items() if key not in env}


def gdal_env(path: Optional[str] = None):
    """A ``rasterio.Env`` with :func:`gdal_options` for ``path``: wrap every raster open and read in it.

    Entering one costs some 50 microseconds. In the main thread its settings hold for every
    thread (GDAL's global options) until it exits; in another thread they hold for that thread
    only, so reader threads enter their own, and the local-file overrides keep a remote
    setting of an enclosing context off local files.
    """
    import rasterio
    from rasterio.session import DummySession

    # GDAL finds credentials itself (AWS_*, GOOGLE_*, AZURE_* variables, ~/.aws, instance roles)
    # and an enclosing Env's stay set; without this, rasterio would build a boto3 session from
    # AWS_* variables on every read.
    return rasterio.Env(session=DummySession(), **gdal_options(path))


def is_virtual(ref: str) -> bool:
    """True for a GDAL virtual path (``/vsicurl/...``, ``/vsis3/...``, ``/vsizip/...``): not a plain local file."""
    return str(ref).startswith("/vsi")


def is_url(text: str) -> bool:
    """True for ``scheme://...`` (``https://``, ``s3://``, ``file://``, ...)."""
    return bool(_SCHEME.match(str(text)))


def to_gdal_path(ref: str) -> str:
    """The path GDAL opens for ``ref``: URLs map onto virtual file systems, anything else is unchanged.

    ``http(s)://h/p`` -> ``/vsicurl/http(s)://h/p``; ``s3://b/k`` -> ``/vsis3/b/k``;
    ``gs://b/k`` -> ``/vsigs/b/k``; ``az://c/b`` and ``abfs://c/b`` -> ``/vsiaz/c/b``;
    ``file:///p`` -> ``/p``.

    Raises:
        GeodetError: a URL scheme GDAL cannot read, or an ``abfs://container@account...`` URL
            (GDAL takes the account from ``AZURE_STORAGE_ACCOUNT``, not from the path).
    """
    ref = str(ref)
    match = _SCHEME.match(ref)
    if match is None:
        return ref
    scheme = match.group(1).lower()
    rest = ref[match.end():]
    if scheme == "file":
        return unquote(urlsplit(ref).path)
    if scheme not in URL_PREFIXES:
        known = ", ".join(f"{s}://" for s in URL_PREFIXES)
        raise GeodetError(f"{redact(ref)} is a {scheme}:// URL, which geodet cannot read; use a local path or {known}, file://.")
    if scheme in ("http", "https"):
        return URL_PREFIXES[scheme] + ref
    if scheme.startswith("abfs"):
        container = rest.split("/", 1)[0]
        if "@" in container:
            raise GeodetError(
                f"{redact(ref)} names its storage account in the URL; set AZURE_STORAGE_ACCOUNT to the account "
                "and give the scene as az://CONTAINER/PATH."
            )
    return URL_PREFIXES[scheme] + rest


def file_name(ref: str) -> str:
    """The last path component of a scene reference, without a URL's query or fragment.

    ``/vsicurl/https://host/a/b.tif?sig=x`` -> ``b.tif``; ``/vsis3/bucket/k/c.tif`` -> ``c.tif``;
    ``/vsizip/a.zip/d.tif`` -> ``d.tif``; ``e.tif`` -> ``e.tif``.
    """
    ref = str(ref)
    if "://" in ref:  # a URL, alone or inside /vsicurl/: its query and fragment are not the name
        ref = ref.split("#", 1)[0].split("?", 1)[0]
        return unquote(ref.rstrip("/").rsplit("/", 1)[-1])
    return Path(ref).name


#: A URL anywhere in a text: its scheme, its user-info (``user:password@``) and its query.
_URL_IN_TEXT = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^/\s?#'\"@]*@)?([^\s?#'\"]*)(\?[^\s#'\"]*)?")


def _redact_url(match: "re.Match") -> str:
    scheme, userinfo, rest, query = match.groups()
    return scheme + ("***@" if userinfo else "") + rest + ("?..." if query else "")


#: A query without its URL (GDAL shortens paths in some messages: ``b.tif?token=...``): ``?key=...``.
_QUERY_IN_TEXT = re.compile(r"\?[A-Za-z0-9_.~%-]+=[^\s'\"]*")


def redact(text: str) -> str:
    """``text`` with every URL's query replaced by ``?...`` and its user-info by ``***@``; also a
    ``?key=value...`` query standing alone (GDAL shortens paths in some messages).

    Signed URLs (``?token=``, S3 presigned, Azure SAS) carry credentials in their query, and
    ``https://user:password@host`` in its user-info. Every message, log line and job record that
    names a source goes through this one function, GDAL's own messages included
    (:func:`install_log_redaction`). A local path is unchanged (``/data/a?b.tif`` stays).
    """
    return _QUERY_IN_TEXT.sub("?...", _URL_IN_TEXT.sub(_redact_url, str(text)))


class RedactingFilter(logging.Filter):
    """A logging filter that passes each record's message through :func:`redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is left to logging's own handling
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


#: Loggers that carry GDAL's own messages (rasterio's CPLError handler logs them to ``rasterio._env``).
REDACTED_LOGGERS = ("rasterio", "rasterio._env", "rasterio._err", "rasterio._base", "rasterio._io", "rasterio.env")
_FILTER = RedactingFilter()


def install_log_redaction() -> None:
    """Put :class:`RedactingFilter` on :data:`REDACTED_LOGGERS`, once (done when this module is imported).

    A logging filter acts on the records made by its own logger only, so each is named; geodet's
    own log lines redact what they name where they are made.
    """
    for name in REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


install_log_redaction()


# ---------------------------------------------------------------------------------------------- HTTP


def http_bounds(environ: Optional[Mapping[str, str]] = None) -> Dict[str, float]:
    """The bounds of a remote wait, GDAL's (:data:`GDAL_DEFAULTS`, an environment variable wins):
    ``connect`` s, ``low_speed_time`` s, ``low_speed_limit`` bytes/s, ``total`` s."""
    env = os.environ if environ is None else environ
    names = {"connect": "GDAL_HTTP_CONNECTTIMEOUT", "low_speed_time": "GDAL_HTTP_LOW_SPEED_TIME",
             "low_speed_limit": "GDAL_HTTP_LOW_SPEED_LIMIT", "total": "GDAL_HTTP_TIMEOUT"}
    out = {}
    for key, name in names.items():
        try:
            out[key] = float(env.get(name, GDAL_DEFAULTS[name]))
        except ValueError:
            raise GeodetError(f"{name} must be a number of {'bytes/s' if key == 'low_speed_limit' else 'seconds'}, "
                              f"got {env.get(name)!r}.") from None
    return out


#: The largest STAC JSON document geodet reads (bytes).
MAX_JSON_BYTES = 256 * 2**20


def _http_opener():
    class HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
        """Follow redirects to http(s) only (urllib also follows ftp://)."""

        def redirect_request(self, req, fp, code, msg, headers, newurl):
            if urlsplit(urljoin(req.full_url, newurl)).scheme.lower() not in ("http", "https"):
                raise GeodetError(f"{redact(req.full_url)} redirects to {redact(newurl)}, which is not an http(s) URL.")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    return urllib.request.build_opener(HttpOnlyRedirects())


def http_get(url: str, *, headers: Optional[Mapping[str, str]] = None, max_bytes: int = MAX_JSON_BYTES,
             environ: Optional[Mapping[str, str]] = None):
    """``(body bytes, final URL after redirects, response headers)`` of a GET of an http(s) ``url``,
    within :func:`http_bounds`: the connection and each wait for bytes within ``connect`` s, a
    transfer slower than ``low_speed_limit`` bytes/s over ``low_speed_time`` s dropped, the whole
    request within ``total`` s, at most ``max_bytes`` read.

    Raises:
        GeodetError: the server cannot be reached, answers an HTTP error, is too slow, or the
            body is larger than ``max_bytes``; one sentence naming the URL (redacted).
    """
    bounds = http_bounds(environ)
    start = time.monotonic()
    request = urllib.request.Request(url, headers={"User-Agent": "geodet", **dict(headers or {})})
    name = redact(url)
    try:
        with _http_opener().open(request, timeout=bounds["connect"]) as response:
            chunks, size = [], 0
            window_start, window_bytes = time.monotonic(), 0
            while True:
                chunk = response.read1(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                window_bytes += len(chunk)
                now = time.monotonic()
                if size > max_bytes:
                    raise GeodetError(f"{name} is larger than {max_bytes // 2**20} MB; geodet reads no larger JSON.")
                if now - start > bounds["total"]:
                    raise GeodetError(f"{name} took over {bounds['total']:g} s (GDAL_HTTP_TIMEOUT); the server is too slow.")
                if now - window_start >= bounds["low_speed_time"]:
                    if window_bytes < bounds["low_speed_limit"] * (now - window_start):
                        raise GeodetError(
                            f"{name} sent under {bounds['low_speed_limit']:g} bytes/s for {bounds['low_speed_time']:g} s "
                            "(GDAL_HTTP_LOW_SPEED_LIMIT, GDAL_HTTP_LOW_SPEED_TIME); the server is too slow."
                        )
                    window_start, window_bytes = now, 0
            return b"".join(chunks), response.geturl(), dict(response.headers.items())
    except GeodetError:
        raise
    except urllib.error.HTTPError as exc:
        raise GeodetError(f"{name} could not be read (HTTP {exc.code} {redact(exc.reason)}).") from None
    except (socket.timeout, TimeoutError):
        raise GeodetError(f"{name} sent nothing for {bounds['connect']:g} s (GDAL_HTTP_CONNECTTIMEOUT); "
                          "the server is not answering.") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise GeodetError(f"{name} could not be reached within {bounds['connect']:g} s (GDAL_HTTP_CONNECTTIMEOUT).") from None
        raise GeodetError(f"{name} could not be read ({redact(reason)}).") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:  # a reset, a malformed response, a bad URL
        raise GeodetError(f"{name} could not be read ({redact(exc) or type(exc).__name__}).") from None


# ---------------------------------------------------------------------------------------------- STAC


def _asset_bands(asset) -> int:
    extra = asset.extra_fields
    for key in ("eo:bands", "bands", "raster:bands"):
        if isinstance(extra.get(key), list) and extra[key]:
            return len(extra[key])
    return 0


def _is_tiff_data(asset) -> bool:
    media = (asset.media_type or "").lower()
    if media:
        is_tiff = media.startswith("image/tiff") or "geotiff" in media
    else:
        is_tiff = file_name(asset.href).lower().endswith((".tif", ".tiff"))
    roles = asset.roles or []
    return is_tiff and (not roles or "data" in roles)


def choose_asset(assets: Mapping[str, object], key: Optional[str], item_id: str) -> str:
    """The key of the asset to read from a STAC item.

    Args:
        assets: the item's assets (key -> ``pystac.Asset``).
        key: the asset the user asked for (``--asset``), or None for the default: the asset keyed
            ``visual``, else the one with role ``visual``, else the only GeoTIFF data asset (of
            several, the only one with three bands).
        item_id: the item's id, for messages.

    Raises:
        GeodetError: the asked-for key is missing, or no default fits; the message lists the keys.
    """
    available = ", ".join(sorted(assets)) or "none"
    if key is not None:
        if key not in assets:
            raise GeodetError(f"STAC item {item_id} has no asset {key!r} (its assets: {available}).")
        return key
    if "visual" in assets:
        return "visual"
    for name, asset in assets.items():
        if "visual" in (asset.roles or []):
            return name
    tiffs = [name for name, asset in assets.items() if _is_tiff_data(asset)]
    if len(tiffs) > 1:
        tiffs = [name for name in tiffs if _asset_bands(assets[name]) == 3]
    if len(tiffs) == 1:
        return tiffs[0]
    raise GeodetError(
        f"STAC item {item_id} has no visual or single RGB GeoTIFF asset; choose one with --asset "
        f"(its assets: {available})."
    )


def http_validators(url: str, environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """What identifies the content of the http(s) file ``url``: its ``etag``, ``last_modified`` and
    ``size``, those the server sends (a GET of its first byte, which a URL signed for GET also
    allows, within :func:`http_bounds`); an empty dict when the server cannot be asked."""
    request = urllib.request.Request(url, headers={"User-Agent": "geodet", "Range": "bytes=0-0"})
    try:
        with _http_opener().open(request, timeout=http_bounds(environ)["connect"]) as response:
            headers = response.headers
            total = (headers.get("Content-Range") or "").rsplit("/", 1)[-1]
            size = total if total.isdigit() else (headers.get("Content-Length") if response.status == 200 else None)
            found = {"etag": headers.get("ETag"), "last_modified": headers.get("Last-Modified"), "size": size}
    except (GeodetError, OSError, ValueError, http.client.HTTPException) as exc:
        log.debug("%s: no validators (%s)", redact(url), redact(exc))
        return {}
    return {key: str(value) for key, value in found.items() if value}


#: URL schemes of one kind: a catalog read from a URL of one may link to URLs of the same kind only.
_SCHEME_KINDS = (("http", "https"), ("s3",), ("gs",), ("az", "abfs", "abfss"))

#: Host names of the machine itself or of its cloud's metadata service.
_INTERNAL_NAMES = ("localhost", "metadata", "metadata.google.internal")


def _scheme(ref: str) -> str:
    match = _SCHEME.match(str(ref))
    return match.group(1).lower() if match else ""


def _kind(scheme: str) -> Tuple[str, ...]:
    return next((kind for kind in _SCHEME_KINDS if scheme in kind), (scheme,))


def _is_internal_host(host: Optional[str]) -> bool:
    """True for a loopback, link-local (cloud metadata, 169.254.169.254), private or unspecified
    address, or a name of this machine (``localhost``) or of a cloud metadata service."""
    if not host:
        return False
    host = host.lower().rstrip(".")
    if host in _INTERNAL_NAMES or host.endswith((".localhost", ".internal")):
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return address.is_loopback or address.is_link_local or address.is_private or address.is_unspecified


def remote_href_refusal(ref: str, origin: str) -> Optional[str]:
    """Why ``ref``, named by a catalog read from the URL ``origin``, may not be followed; None when it may.

    A catalog read from a URL may name URLs of the same kind only (http(s) from http(s); the same
    object store's URLs from an object store): no local path, no ``file://`` URL, no GDAL virtual
    path (``/vsicurl/`` would reach any address, ``/vsis3/`` would use this machine's
    credentials), and no address of this machine or its private network (``localhost``, loopback,
    link-local such as the cloud metadata service 169.254.169.254, private ranges) unless the
    catalog itself was read from such an address. Pure.
    """
    scheme, origin_scheme = _scheme(ref), _scheme(origin)
    kind = _kind(origin_scheme)
    if scheme not in kind:
        what = ("a GDAL virtual path" if is_virtual(ref) else "a file:// URL" if scheme == "file"
                else f"a {scheme}:// URL" if scheme else "a local path")
        return f"it is {what}, and a catalog read from {origin_scheme}:// may link to {'/'.join(kind)} URLs only"
    if kind[0] == "http" and _is_internal_host(urlsplit(ref).hostname) and not _is_internal_host(urlsplit(origin).hostname):
        return "it names an address of this machine or its private network, which a catalog on another host may not"
    return None


def _join_href(href: str, base: str, *, allow_local: bool = False) -> str:
    """``href`` resolved against the file or URL ``base`` it was read from (absolute hrefs unchanged).

    From a local ``base`` any href is followed, as written. From a URL ``base`` the result must pass
    :func:`remote_href_refusal`, unless ``allow_local`` (``--allow-local-hrefs``).

    Raises:
        GeodetError: a remote catalog's href that may not be followed; one sentence naming both.
    """
    href = str(href)
    if not is_url(base):
        if is_url(href) or is_virtual(href) or os.path.isabs(href):
            return href
        return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(base)), href))
    if is_url(href) or is_virtual(href) or os.path.isabs(href) or href.startswith("\\"):
        joined = href
    else:
        joined = urljoin(base, href)
    why = None if allow_local else remote_href_refusal(joined, base)
    if why is not None:
        raise GeodetError(
            f"{redact(base)} links to {redact(href)}, which geodet does not follow: {why} "
            "(pass --allow-local-hrefs, or allow_local_hrefs=True, if you trust this catalog)."
        )
    return joined


def _read_json(ref: str) -> Tuple[dict, str]:
    """``(the JSON object at ref, where it was read from)``: a local file, or an http(s) URL read
    within :func:`http_bounds` (the URL after redirects, which relative links resolve against)."""
    if is_url(ref):
        if _scheme(ref) not in ("http", "https"):
            raise GeodetError(f"{redact(ref)}: STAC JSON is read from local files and http(s) URLs only.")
        body, ref, _headers = http_get(ref, headers={"Accept": "application/json, application/geo+json"})
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise GeodetError(f"{redact(ref)} is not UTF-8 JSON.") from None
    else:
        if is_virtual(ref):
            raise GeodetError(f"{redact(ref)}: STAC JSON is read from local files and http(s) URLs only.")
        try:
            with open(ref, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise GeodetError(f"{ref} could not be read ({getattr(exc, 'strerror', None) or exc}).") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise GeodetError(f"{redact(ref)} is not valid JSON ({exc}).") from None
    if not isinstance(data, dict):
        raise GeodetError(f"{redact(ref)} is not a STAC Item, ItemCollection, Catalog or Collection.")
    return data, ref


#: How deep catalogs may nest (child links), a guard against a crafted endless chain.
MAX_CATALOG_DEPTH = 64


def _is_stac(data: dict) -> bool:
    features = data.get("features")
    return "stac_version" in data or (data.get("type") == "FeatureCollection" and isinstance(features, list)
                                      and all(isinstance(f, dict) and "stac_version" in f for f in features))


def _links(data: dict, rels: Sequence[str]) -> List[str]:
    links = data.get("links")
    return [link["href"] for link in (links if isinstance(links, list) else [])
            if isinstance(link, dict) and link.get("rel") in rels and isinstance(link.get("href"), str)]


def _document_ref(ref: str) -> str:
    """Where a linked JSON document is read from: a ``file://`` URL as its local path."""
    return to_gdal_path(ref) if _scheme(ref) == "file" else ref


def _stac_items(data: dict, ref: str, *, allow_local: bool, ancestors: Tuple[str, ...] = (),
                seen: Optional[set] = None) -> List[Tuple[dict, str]]:
    """``(item JSON, base its relative hrefs resolve against)`` for each item of the STAC document
    ``data`` read from ``ref``: the items of an ItemCollection, and of a catalog's item links and
    (recursively) child catalogs. Each link passes :func:`_join_href`'s trust rule; a child link back
    to a catalog that contains it (a cycle) is refused; a catalog reached twice is walked once.
    """
    seen = set() if seen is None else seen
    if not _is_stac(data):
        raise GeodetError(f"{redact(ref)} is not a STAC Item, ItemCollection, Catalog or Collection.")
    kind = data.get("type")
    if kind == "Feature":
        return [(data, ref)]
    if kind == "FeatureCollection":
        out = []
        for feature in data["features"]:
            base = ref
            for self_href in _links(feature, ("self",))[:1]:  # an item's own location, when it may be followed
                with contextlib.suppress(GeodetError):
                    base = _document_ref(_join_href(self_href, ref, allow_local=allow_local))
            out.append((feature, base))
        return out
    if kind not in ("Catalog", "Collection"):
        raise GeodetError(f"{redact(ref)} is not a STAC Item, ItemCollection, Catalog or Collection.")
    if len(ancestors) >= MAX_CATALOG_DEPTH:
        raise GeodetError(f"{redact(ref)} is nested over {MAX_CATALOG_DEPTH} catalogs deep; geodet reads no deeper.")
    out = []
    path = ancestors + (ref,)
    for rel in ("item", "child"):
        for href in _links(data, (rel,)):
            target = _document_ref(_join_href(href, ref, allow_local=allow_local))
            if target in path:
                raise GeodetError(
                    f"{redact(ref)} links to {redact(href)} as its {rel}, which contains it: the catalog's links "
                    "form a cycle."
                )
            if target in seen:
                continue
            seen.add(target)
            child, where = _read_json(target)
            if rel == "item" and child.get("type") != "Feature":
                raise GeodetError(f"{redact(where)}, an item link of {redact(ref)}, is not a STAC Item.")
            out.extend(_stac_items(child, where, allow_local=allow_local, ancestors=path, seen=seen))
    return out


def read_stac(ref: str, asset: Optional[str] = None, *, allow_local_hrefs: bool = False) -> List[str]:
    """One scene reference per item of the STAC Item, ItemCollection, Catalog or Collection at ``ref``.

    Args:
        ref: a local JSON file or an http(s) URL.
        asset: the asset key to read (default: see :func:`choose_asset`).
        allow_local_hrefs: follow local paths, ``file://`` URLs, GDAL virtual paths, other URL
            kinds and internal addresses named by a catalog read from a URL (refused by default:
            :func:`remote_href_refusal`). A local catalog's hrefs are always followed.

    Asset and link hrefs relative to their JSON resolve against it; URLs map through
    :func:`to_gdal_path`. Catalogs are walked through their ``child`` and ``item`` links.

    Raises:
        GeodetError: not STAC, no items, an item without a fitting asset, an href a remote catalog
            may not name, a cycle of child links.
    """
    import pystac

    data, where = _read_json(ref)
    found = _stac_items(data, where if is_url(where) else os.path.abspath(where), allow_local=allow_local_hrefs)
    if not found:
        raise GeodetError(f"{redact(ref)} holds no STAC items.")
    out = []
    for item_data, base in found:
        try:
            item = pystac.Item.from_dict(item_data, preserve_dict=False)
        except Exception as exc:  # pystac's STACError, a missing field, ...
            raise GeodetError(f"{redact(base)} holds an item that is not valid STAC ({redact(exc)}).") from None
        key = choose_asset(item.assets, asset, item.id)
        out.append(to_gdal_path(_join_href(item.assets[key].href, base, allow_local=allow_local_hrefs)))
    return out


# ------------------------------------------------------------------------------------------ resolving


def _is_stac_input(ref: str) -> bool:
    return file_name(ref).lower().endswith(".json")


def _check_local(path: str) -> str:
    if not os.path.exists(path):
        raise GeodetError(f"{path} does not exist.")
    if os.path.isdir(path):
        raise GeodetError(f"{path} is a folder; give its scenes with a pattern such as '{os.path.join(path, '*.tif')}'.")
    return path


def _read_list(list_path: str) -> List[str]:
    """The entries of an ``@list`` file: one per line, blank lines and ``#`` comments skipped;
    relative local paths (of scenes and of nested ``@lists`` alike) made relative to the list file's folder."""
    if not os.path.isfile(list_path):
        raise GeodetError(f"the scene list {list_path} does not exist.")
    folder = os.path.dirname(os.path.abspath(list_path))
    entries = []
    with open(list_path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            nested = line.startswith("@")
            path = os.path.expanduser(line[1:] if nested else line)
            if not (is_url(path) or is_virtual(path) or os.path.isabs(path)):
                line = ("@" if nested else "") + os.path.normpath(os.path.join(folder, path))
            entries.append(line)
    if not entries:
        raise GeodetError(f"the scene list {list_path} names no scene.")
    return entries


def _resolve_one(text: str, asset: Optional[str], depth: int, allow_local: bool = False) -> List[str]:
    if text.startswith("@"):
        if depth > 8:
            raise GeodetError(f"scene lists nest too deeply at {text}.")
        out: List[str] = []
        for entry in _read_list(os.path.expanduser(text[1:])):
            out.extend(_resolve_one(entry, asset, depth + 1, allow_local))
        return out
    if text.lower().startswith("file://"):
        text = to_gdal_path(text)
    if is_url(text) or is_virtual(text):
        if _is_stac_input(text):
            if text.startswith("/vsicurl/"):
                text = text[len("/vsicurl/"):]
            if urlsplit(text).scheme.lower() not in ("http", "https"):
                raise GeodetError(f"{redact(text)}: STAC JSON is read from local files and http(s) URLs only.")
            return read_stac(text, asset, allow_local_hrefs=allow_local)
        if "*" in text:
            raise GeodetError(
                f"{redact(text)}: patterns are expanded for local paths only; list remote scenes in an @list file "
                "or a STAC catalog."
            )
        return [to_gdal_path(text)]
    path = os.path.expanduser(text)
    if any(ch in path for ch in _GLOB_CHARS) and not os.path.exists(path):
        matches = sorted(m for m in glob.glob(path, recursive=True) if not os.path.isdir(m))
        if not matches:
            raise GeodetError(f"no file matches {text}.")
        out = []
        for match in matches:
            out.extend(read_stac(match, asset, allow_local_hrefs=allow_local) if _is_stac_input(match)
                       else [_check_local(match)])
        return out
    _check_local(path)
    if _is_stac_input(path):
        return read_stac(path, asset, allow_local_hrefs=allow_local)
    return [path]


def dedupe(refs: Iterable[str]) -> List[str]:
    """``refs`` in their order, each exact duplicate after the first dropped."""
    return list(dict.fromkeys(refs))


def resolve_scenes(inputs: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]], *, asset: Optional[str] = None,
                   allow_local_hrefs: bool = False) -> List[str]:
    """GDAL-openable scene references from what the user typed, in a stable order without duplicates.

    Args:
        inputs: one or several of: a local path (``.tif``, ``.vrt``, any GDAL raster); a glob
            pattern (sorted matches; ``**`` recurses); ``@list.txt`` (one input per line, blank
            lines and ``#`` comments ignored, relative paths relative to the list); a GDAL
            virtual path; an ``http(s)://``, ``s3://``, ``gs://``, ``az://`` or ``abfs://`` URL
            (:func:`to_gdal_path`); a STAC Item, ItemCollection, Catalog or Collection ``.json``
            (local or http(s); one scene per item).
        asset: the STAC asset key to read (default: see :func:`choose_asset`).
        allow_local_hrefs: follow the local paths, ``file://`` URLs, GDAL virtual paths, other URL
            kinds and internal addresses that a STAC catalog read from a URL names (refused by
            default, :func:`remote_href_refusal`); local catalogs are always followed.

    Returns:
        Scene references in input order (a pattern's matches sorted), first occurrences kept.

    Raises:
        GeodetError: no input, a pattern matching nothing, a missing local file, an empty list
            file, a JSON that is not STAC, an item without a fitting asset, an unknown URL scheme,
            an href that a remote catalog may not name, a cycle of catalog links.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    out: List[str] = []
    for text in inputs:
        out.extend(_resolve_one(os.fspath(text), asset, 0, allow_local_hrefs))
    if not out:
        raise GeodetError("no scene given.")
    refs = dedupe(out)
    if len(refs) < len(out):
        log.info("dropped %d duplicate scene(s)", len(out) - len(refs))
    return refs

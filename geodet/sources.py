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

import glob
import json
import logging
import os
import re
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union
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
        raise GeodetError(f"{ref} is a {scheme}:// URL, which geodet cannot read; use a local path or {known}, file://.")
    if scheme in ("http", "https"):
        return URL_PREFIXES[scheme] + ref
    if scheme.startswith("abfs"):
        container = rest.split("/", 1)[0]
        if "@" in container:
            raise GeodetError(
                f"{ref} names its storage account in the URL; set AZURE_STORAGE_ACCOUNT to the account "
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


def redact(ref: str) -> str:
    """``ref`` with a URL's query replaced by ``?...``: signed URLs carry credentials there, messages must not."""
    ref = str(ref)
    if "://" in ref and "?" in ref:
        return ref.split("?", 1)[0] + "?..."
    return ref


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


def _join_href(href: str, base: str) -> str:
    """``href`` resolved against the file or URL ``base`` it was read from (absolute hrefs unchanged)."""
    if is_url(href) or is_virtual(href) or os.path.isabs(href):
        return href
    if is_url(base):
        return urljoin(base, href)
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(base)), href))


def _read_json(ref: str) -> dict:
    if is_url(ref):
        import pystac

        try:
            text = pystac.StacIO.default().read_text(ref)
        except Exception as exc:  # urllib's HTTPError, URLError, ...
            raise GeodetError(f"{redact(ref)} could not be read ({exc}).") from None
    else:
        with open(ref, encoding="utf-8") as fh:
            text = fh.read()
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise GeodetError(f"{redact(ref)} is not valid JSON ({exc}).") from None
    if not isinstance(data, dict):
        raise GeodetError(f"{redact(ref)} is not a STAC Item, ItemCollection, Catalog or Collection.")
    return data


def _stac_items(data: dict, ref: str) -> List[object]:
    """The items of a STAC JSON document read from ``ref`` (a walk through a catalog's children)."""
    import pystac

    kind = data.get("type")
    if "stac_version" not in data and not (kind == "FeatureCollection" and data.get("features") is not None
                                           and all("stac_version" in f for f in data["features"])):
        raise GeodetError(f"{redact(ref)} is not a STAC Item, ItemCollection, Catalog or Collection.")
    href = ref if is_url(ref) else os.path.abspath(ref)
    try:
        if kind == "Feature":
            return [pystac.Item.from_dict(data, href=href)]
        if kind == "FeatureCollection":
            return list(pystac.ItemCollection.from_dict(data).items)
        if kind in ("Catalog", "Collection"):
            cls = pystac.Collection if kind == "Collection" else pystac.Catalog
            return list(cls.from_file(href).get_items(recursive=True))
    except GeodetError:
        raise
    except Exception as exc:  # pystac's STACError, a broken child link, ...
        raise GeodetError(f"{redact(ref)} could not be read as STAC ({exc}).") from None
    raise GeodetError(f"{redact(ref)} is not a STAC Item, ItemCollection, Catalog or Collection.")


def read_stac(ref: str, asset: Optional[str] = None) -> List[str]:
    """One scene reference per item of the STAC Item, ItemCollection, Catalog or Collection at ``ref``.

    Args:
        ref: a local JSON file or an http(s) URL.
        asset: the asset key to read (default: see :func:`choose_asset`).

    Asset hrefs relative to their JSON resolve against it; URLs map through :func:`to_gdal_path`.

    Raises:
        GeodetError: not STAC, no items, or an item without a fitting asset.
    """
    items = _stac_items(_read_json(ref), ref)
    if not items:
        raise GeodetError(f"{redact(ref)} holds no STAC items.")
    out = []
    for item in items:
        key = choose_asset(item.assets, asset, item.id)
        href = item.assets[key].href
        base = item.get_self_href() or ref
        out.append(to_gdal_path(_join_href(href, base)))
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
    relative local paths made relative to the list file's folder."""
    if not os.path.isfile(list_path):
        raise GeodetError(f"the scene list {list_path} does not exist.")
    folder = os.path.dirname(os.path.abspath(list_path))
    entries = []
    with open(list_path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not (is_url(line) or is_virtual(line) or line.startswith("@") or os.path.isabs(line)):
                line = os.path.normpath(os.path.join(folder, line))
            entries.append(line)
    if not entries:
        raise GeodetError(f"the scene list {list_path} names no scene.")
    return entries


def _resolve_one(text: str, asset: Optional[str], depth: int) -> List[str]:
    if text.startswith("@"):
        if depth > 8:
            raise GeodetError(f"scene lists nest too deeply at {text}.")
        out: List[str] = []
        for entry in _read_list(os.path.expanduser(text[1:])):
            out.extend(_resolve_one(entry, asset, depth + 1))
        return out
    if text.lower().startswith("file://"):
        text = to_gdal_path(text)
    if is_url(text) or is_virtual(text):
        if _is_stac_input(text):
            if text.startswith("/vsicurl/"):
                text = text[len("/vsicurl/"):]
            if urlsplit(text).scheme.lower() not in ("http", "https"):
                raise GeodetError(f"{redact(text)}: STAC JSON is read from local files and http(s) URLs only.")
            return read_stac(text, asset)
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
            out.extend(read_stac(match, asset) if _is_stac_input(match) else [_check_local(match)])
        return out
    _check_local(path)
    if _is_stac_input(path):
        return read_stac(path, asset)
    return [path]


def dedupe(refs: Iterable[str]) -> List[str]:
    """``refs`` in their order, each exact duplicate after the first dropped."""
    return list(dict.fromkeys(refs))


def resolve_scenes(inputs: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]], *, asset: Optional[str] = None) -> List[str]:
    """GDAL-openable scene references from what the user typed, in a stable order without duplicates.

    Args:
        inputs: one or several of: a local path (``.tif``, ``.vrt``, any GDAL raster); a glob
            pattern (sorted matches; ``**`` recurses); ``@list.txt`` (one input per line, blank
            lines and ``#`` comments ignored, relative paths relative to the list); a GDAL
            virtual path; an ``http(s)://``, ``s3://``, ``gs://``, ``az://`` or ``abfs://`` URL
            (:func:`to_gdal_path`); a STAC Item, ItemCollection, Catalog or Collection ``.json``
            (local or http(s); one scene per item).
        asset: the STAC asset key to read (default: see :func:`choose_asset`).

    Returns:
        Scene references in input order (a pattern's matches sorted), first occurrences kept.

    Raises:
        GeodetError: no input, a pattern matching nothing, a missing local file, an empty list
            file, a JSON that is not STAC, an item without a fitting asset, an unknown URL scheme.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    out: List[str] = []
    for text in inputs:
        out.extend(_resolve_one(os.fspath(text), asset, 0))
    if not out:
        raise GeodetError("no scene given.")
    refs = dedupe(out)
    if len(refs) < len(out):
        log.info("dropped %d duplicate scene(s)", len(out) - len(refs))
    return refs

"""Writing detections: one place per output format (GeoJSON, GeoPackage, shapefile, GeoParquet).

The format comes from the file extension (:data:`OUTPUT_DRIVERS`); every
write is atomic and never replaces a file without ``overwrite``
(:mod:`geodet.io.outputs`); the run's metadata (``frame.attrs[METADATA_ATTR]``)
goes where each format has a place for it, and :func:`read_output_metadata`
reads it back. To add or change an output format, this is the one module.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Optional

import geopandas as gpd

from geodet.errors import GeodetError, first_line
from geodet.io.outputs import check_output, publish_file, publish_files, scratch_folder

log = logging.getLogger(__name__)

#: Output formats by file extension: (pyogrio driver, keeps scene CRS).
OUTPUT_DRIVERS = {
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
    ".gpkg": "GPKG",
    ".shp": "ESRI Shapefile",
    ".parquet": "parquet",
}

_SHAPEFILE_SIDECARS = (".shp", ".shx", ".dbf", ".prj", ".cpg")

#: Key of ``frame.attrs`` whose dict (JSON values: what made the output, e.g.
#: :func:`geodet.inference.detector.run_metadata`) :func:`write_vector` writes into the file's metadata:
#: GeoPackage layer metadata (``gpkg_metadata``) and layer description, a GeoParquet
#: key-value entry beside ``geo``, a GeoJSON top-level member; shapefiles have no place for it.
METADATA_ATTR = "geodet"

#: The first GDAL whose GeoJSON driver writes foreign members (``FOREIGN_MEMBERS_COLLECTION``).
_GDAL_GEOJSON_FOREIGN_MEMBERS = (3, 9, 0)


def check_output_path(path: str, *, overwrite: bool = False) -> str:
    """The output driver for ``path``, after checking (before any work) that it can be written.

    Raises:
        GeodetError: unknown extension, a missing or unwritable folder, or the file exists and
            ``overwrite`` is False (see :func:`geodet.io.outputs.check_output`).
    """
    ext = Path(path).suffix.lower()
    if ext not in OUTPUT_DRIVERS:
        raise GeodetError(
            f"cannot tell the output format of {path}: use one of {', '.join(sorted(OUTPUT_DRIVERS))}."
        )
    check_output(path, overwrite=overwrite)
    return OUTPUT_DRIVERS[ext]


def write_vector(frame: gpd.GeoDataFrame, path: str, *, overwrite: bool = False) -> None:
    """Write a GeoDataFrame, format by extension, atomically.

    ``.geojson``/``.json`` are written as RFC 7946 (EPSG:4326 lon/lat);
    ``.gpkg``, ``.shp`` and ``.parquet`` (GeoParquet) keep the frame's CRS.
    An empty frame gives a valid empty file with the frame's columns.
    The dict in ``frame.attrs[METADATA_ATTR]``, when there is one, goes into the file's metadata
    (see :data:`METADATA_ATTR` and :func:`read_output_metadata`).
    """
    driver = check_output_path(path, overwrite=overwrite)
    target = Path(path)
    metadata = frame.attrs.get(METADATA_ATTR) or None
    if driver == "GeoJSON":
        frame = frame.to_crs("EPSG:4326") if frame.crs is not None else frame
    if driver == "ESRI Shapefile":
        check_shapefile_text({c: frame[c] for c in frame.columns if c != frame.geometry.name}, path)
    with _write_errors(target), scratch_folder(target) as tmpdir:
        tmp = tmpdir / target.name
        if driver == "parquet":
            _write_geoparquet(frame, tmp, metadata)
        elif driver == "GeoJSON":
            frame.to_file(
                tmp, driver=driver, engine="pyogrio", RFC7946="YES", WRITE_BBOX="NO", **_geojson_options(metadata)
            )
        elif driver == "GPKG":
            frame.to_file(tmp, driver=driver, engine="pyogrio", **_gpkg_options(metadata))
        else:
            if metadata:
                log.info("%s: a shapefile has no place for metadata; %s not written", path, sorted(metadata))
            frame.to_file(tmp, driver=driver, engine="pyogrio")
        if driver == "ESRI Shapefile":  # the .shp first: it claims the name
            parts = [tmp.with_suffix(ext) for ext in _SHAPEFILE_SIDECARS if tmp.with_suffix(ext).exists()]
            publish_files([(part, target.with_suffix(part.suffix)) for part in parts], overwrite=overwrite)
        else:
            publish_file(tmp, target, overwrite=overwrite)


#: The longest text a shapefile (dBASE) field holds, in bytes.
SHAPEFILE_TEXT_BYTES = 254


def check_shapefile_text(columns, path: str) -> None:
    """Refuse text that a shapefile at ``path`` would cut (a dBASE field holds
    :data:`SHAPEFILE_TEXT_BYTES` bytes); ``columns`` maps a column name to its values.

    Raises:
        GeodetError: a value longer than that, named with its column.
    """
    for column, values in columns.items():
        for value in set(v for v in values if isinstance(v, str)):
            if len(value.encode("utf-8")) > SHAPEFILE_TEXT_BYTES:
                raise GeodetError(
                    f"{path}: a shapefile field holds at most {SHAPEFILE_TEXT_BYTES} bytes, but the {column!r} value "
                    f"{value[:40]!r}... is {len(value.encode('utf-8'))} bytes long; write .gpkg or .parquet, "
                    "which keep it whole."
                )


@contextlib.contextmanager
def _write_errors(target: Path):
    """Turn a writer that fails for its file system (a full disk, a quota, a file size limit, a
    folder that became read-only) into one sentence; nothing was published then."""
    import pyogrio.errors

    writer_errors = (OSError, pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError)
    try:
        yield
    except GeodetError:
        raise
    except writer_errors as exc:
        folder = Path(os.path.abspath(target)).parent
        try:
            free = f"; {shutil.disk_usage(folder).free / 2**20:.0f} MB are free there"
        except OSError:
            free = ""
        reason = getattr(exc, "strerror", None) or first_line(exc)
        raise GeodetError(
            f"writing {target} failed ({reason}{free}); nothing was written: free some space or lift the limit, "
            "then run the same command again."
        ) from None


def _metadata_text(metadata: dict) -> dict:
    """String key/value pairs for GDAL metadata: strings as they are, other values as JSON; None left out."""
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items() if v is not None}


def _metadata_sentence(metadata: dict) -> str:
    """One line for people (a GeoPackage layer description, which QGIS shows as the layer's abstract)."""
    words = [f"geodet {metadata.get('geodet_version', '')}".strip() + " detections"]
    if metadata.get("model_name"):
        words.append(f"model {metadata['model_name']}")
    if metadata.get("model_hash"):
        words.append(f"model hash {metadata['model_hash']}")
    return "; ".join(words)


def _gpkg_options(metadata: Optional[dict]) -> dict:
    """pyogrio arguments that put ``metadata`` into a GeoPackage layer.

    GDAL stores layer metadata as an XML document in ``gpkg_metadata``, referenced from
    ``gpkg_metadata_reference`` by the table (``ogrinfo`` and ``pyogrio.read_info`` list the
    items), and ``DESCRIPTION`` in ``gpkg_contents.description``.
    """
    if not metadata:
        return {}
    return {"layer_metadata": _metadata_text(metadata), "DESCRIPTION": _metadata_sentence(metadata)}


def _geojson_options(metadata: Optional[dict]) -> dict:
    """pyogrio arguments that add ``{"geodet": metadata}`` as a top-level (foreign) member, RFC 7946 section 6.1."""
    import pyogrio

    if not metadata:
        return {}
    if tuple(pyogrio.__gdal_version__) < _GDAL_GEOJSON_FOREIGN_MEMBERS:
        log.warning("GDAL %s writes no GeoJSON foreign members; the output's metadata is left out",
                    pyogrio.__gdal_version_string__)
        return {}
    return {"FOREIGN_MEMBERS_COLLECTION": json.dumps({METADATA_ATTR: metadata})}


def _write_geoparquet(frame: gpd.GeoDataFrame, path: Path, metadata: Optional[dict]) -> None:
    """GeoParquet with ``metadata`` as JSON under the key ``geodet`` of the Parquet key-value metadata."""
    import pyarrow.parquet as pq

    if not metadata:
        frame.to_parquet(path)
        return
    plain = path.with_name(path.name + ".plain")
    frame.to_parquet(plain)  # geopandas writes the "geo" key; ours joins it
    table = pq.read_table(plain)
    keys = dict(table.schema.metadata or {})
    keys[METADATA_ATTR.encode()] = json.dumps(metadata).encode()
    pq.write_table(table.replace_schema_metadata(keys), path)
    plain.unlink()


def read_output_metadata(path) -> Optional[dict]:
    """The metadata :func:`write_vector` wrote into ``path`` (None when there is none, e.g. a shapefile).

    GeoPackage items are GDAL strings: lists and objects (e.g. ``class_names``) are decoded from
    JSON again, the others stay text.
    """
    import pyogrio

    path = os.fspath(path)
    ext = Path(path).suffix.lower()
    if ext == ".parquet":
        import pyarrow.parquet as pq

        raw = (pq.read_schema(path).metadata or {}).get(METADATA_ATTR.encode())
        return json.loads(raw) if raw else None
    if ext in (".geojson", ".json"):
        with open(path, encoding="utf-8") as fh:
            return json.load(fh).get(METADATA_ATTR)
    if ext != ".gpkg":
        return None
    items = pyogrio.read_info(path).get("layer_metadata") or {}
    out = {}
    for key, value in items.items():
        if key == "DESCRIPTION":  # gpkg_contents.description, written from the items
            continue
        try:
            out[key] = json.loads(value) if value[:1] in "[{" else value
        except ValueError:
            out[key] = value
    return out or None

"""Writing detections: each output format, its CRS, the run's metadata, atomic and bounded writes."""

import geopandas as gpd
import pandas as pd
import pytest
import shapely

from geodet.errors import GeodetError
from geodet.io.formats import METADATA_ATTR, read_output_metadata, write_vector
from geodet.io.vector import read_labels


def test_write_vector_formats_and_crs(tmp_path):
    frame = gpd.GeoDataFrame(
        {"class": ["pool"], "score": [0.9], "scene": ["s.tif"]},
        geometry=[shapely.box(500000, 3760000, 500004, 3760004)], crs="EPSG:32611",
    )
    for ext, epsg in ((".geojson", 4326), (".gpkg", 32611), (".shp", 32611), (".parquet", 32611)):
        out = tmp_path / f"d{ext}"
        write_vector(frame, str(out))
        back = gpd.read_parquet(out) if ext == ".parquet" else gpd.read_file(out)
        assert back.crs.to_epsg() == epsg and len(back) == 1
        with pytest.raises(GeodetError, match="already exists"):
            write_vector(frame, str(out))
    assert not list(tmp_path.glob(".geodet-*"))  # no temp leftovers
    with pytest.raises(GeodetError, match="output format"):
        write_vector(frame, str(tmp_path / "d.txt"))


RUN = {"geodet_version": "9.9.9", "model_name": "pools.pt", "model_hash": "0123456789abcdef",
       "class_names": ["car", "pool"]}


def _detections(metadata=RUN):
    frame = gpd.GeoDataFrame(
        {"class": ["pool", "car"], "class_id": [1, 0], "score": [0.9, 0.4], "scene": ["s.tif", "s.tif"]},
        geometry=[shapely.box(500000, 3760000, 500004, 3760004), shapely.box(500010, 3760000, 500014, 3760002)],
        crs="EPSG:32611",
    )
    if metadata is not None:
        frame.attrs[METADATA_ATTR] = metadata
    return frame


@pytest.mark.parametrize("ext", [".gpkg", ".parquet", ".geojson", ".shp"])
def test_write_vector_round_trips_columns_and_metadata(tmp_path, ext):
    import json
    import sqlite3

    import pyarrow.parquet as pq
    import pyogrio

    out = tmp_path / f"d{ext}"
    write_vector(_detections(), str(out))
    back = gpd.read_parquet(out) if ext == ".parquet" else gpd.read_file(out)
    assert list(back.columns) == ["class", "class_id", "score", "scene", "geometry"]
    assert back["class_id"].tolist() == [1, 0] and back["class"].tolist() == ["pool", "car"]
    assert pd.api.types.is_integer_dtype(back["class_id"])
    if ext == ".gpkg":  # GDAL layer metadata in gpkg_metadata, referenced by the table; a description for QGIS
        items = pyogrio.read_info(out)["layer_metadata"]
        assert items["model_hash"] == RUN["model_hash"] and items["geodet_version"] == "9.9.9"
        assert json.loads(items["class_names"]) == RUN["class_names"]
        with sqlite3.connect(out) as db:
            (xml,) = db.execute(
                "SELECT m.metadata FROM gpkg_metadata m JOIN gpkg_metadata_reference r ON r.md_file_id = m.id "
                "WHERE r.reference_scope = 'table' AND r.table_name = 'd'"
            ).fetchone()
            (description,) = db.execute("SELECT description FROM gpkg_contents WHERE table_name = 'd'").fetchone()
        assert RUN["model_hash"] in xml and "pools.pt" in description and RUN["model_hash"] in description
    elif ext == ".parquet":  # a key beside "geo" in the Parquet key-value metadata
        keys = pq.read_schema(out).metadata
        assert b"geo" in keys and json.loads(keys[b"geodet"]) == RUN
    elif ext == ".geojson":  # a top-level foreign member (RFC 7946 section 6.1)
        doc = json.loads(out.read_text())
        assert doc["type"] == "FeatureCollection" and doc["geodet"] == RUN
    else:
        assert sorted(p.suffix for p in tmp_path.iterdir()) == [".cpg", ".dbf", ".prj", ".shp", ".shx"]
    expected = None if ext == ".shp" else RUN
    assert read_output_metadata(out) == expected


@pytest.mark.parametrize("ext", [".gpkg", ".parquet", ".geojson"])
def test_write_vector_without_metadata_and_empty_frame_with_it(tmp_path, ext):
    from geodet.inference.scenes import empty_frame

    write_vector(_detections(metadata=None), str(tmp_path / f"plain{ext}"))
    assert read_output_metadata(tmp_path / f"plain{ext}") is None
    empty = empty_frame("EPSG:32611")
    empty.attrs[METADATA_ATTR] = RUN
    write_vector(empty, str(tmp_path / f"empty{ext}"))
    assert read_output_metadata(tmp_path / f"empty{ext}") == RUN


def test_readers_ignore_class_id(tmp_path):
    from geodet.reports.evaluation import evaluate

    truth = _detections(metadata=None).drop(columns=["class_id", "score", "scene"])
    write_vector(_detections(), str(tmp_path / "d.gpkg"))
    with_id = evaluate(str(tmp_path / "d.gpkg"), truth)
    without = evaluate(_detections().drop(columns=["class_id"]), truth)
    assert with_id["overall"] == without["overall"] and set(with_id["classes"]) == {"car", "pool"}
    labels = read_labels(str(tmp_path / "d.gpkg"))  # detections read back as labels: classes by name
    assert labels.class_field == "class" and labels.class_names == ("car", "pool")


def test_write_empty_frame_keeps_schema(tmp_path):
    from geodet.inference.scenes import empty_frame

    for ext in (".geojson", ".gpkg", ".shp", ".parquet"):
        out = tmp_path / f"empty{ext}"
        write_vector(empty_frame("EPSG:32611"), str(out))
        back = gpd.read_parquet(out) if ext == ".parquet" else gpd.read_file(out)
        assert len(back) == 0
        if ext != ".geojson":  # GeoJSON has no schema without features
            assert {"class", "class_id", "score", "scene"} <= set(back.columns)


@pytest.mark.parametrize("ext", [".geojson", ".gpkg", ".parquet"])
def test_a_full_disk_at_the_write_is_one_sentence(tmp_path, ext):
    """A write that hits the file system's limit (here a real file size limit, RLIMIT_FSIZE, which
    fails writes with EFBIG as a full disk fails them with ENOSPC) is one sentence; nothing is left."""
    import subprocess
    import sys

    target = tmp_path / f"out{ext}"
    code = f"""
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
import geopandas as gpd, numpy as np, shapely
from geodet.errors import GeodetError
from geodet.io.formats import write_vector
n = 20000
frame = gpd.GeoDataFrame({{"class": ["pool"] * n, "score": np.linspace(0, 1, n)}},
                         geometry=shapely.box(np.arange(n), 0, np.arange(n) + 1, 1), crs="EPSG:32611")
resource.setrlimit(resource.RLIMIT_FSIZE, (30000, 30000))
try:
    write_vector(frame, {str(target)!r})
except GeodetError as exc:
    print(exc)
    raise SystemExit(3)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stdout + result.stderr
    message = result.stdout.strip()
    assert message.startswith(f"writing {target} failed") and "\n" not in message, message
    assert not target.exists() and list(tmp_path.iterdir()) == []  # no output, no temporaries


def test_shapefile_refuses_text_it_would_cut(tmp_path):
    frame = gpd.GeoDataFrame({"class": ["pool", "x" * 300], "score": [0.5, 0.6]},
                             geometry=[shapely.box(0, 0, 1, 1)] * 2, crs="EPSG:32611")
    with pytest.raises(GeodetError, match=r"at most 254 bytes.*'class'.*write .gpkg or .parquet"):
        write_vector(frame, str(tmp_path / "out.shp"))
    assert list(tmp_path.iterdir()) == []
    write_vector(frame, str(tmp_path / "out.gpkg"))  # kept whole there

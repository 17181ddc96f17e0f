"""Fixtures: real GeoTIFFs and label files written into tmp_path by the generator."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SCENE = REPO / "sample_data" / "suburb.tif"
SAMPLE_LABELS = REPO / "sample_data" / "pools.geojson"
SAMPLE_POINTS = REPO / "sample_data" / "pools_points.geojson"


@pytest.fixture
def make_scene_files(tmp_path):
    """Factory: write a synthetic scene and its labels; returns a namespace.

    Keyword arguments go to :func:`geodet.testing.synthetic.make_scene` (height,
    width, seed, bands, dtype, difficulty, nodata_region, density) and to
    the writers (crs, pixel_size, rotation_deg, tiled, label_crs, kind,
    label_ext, class_field, name).
    """
    from geodet.testing import synthetic

    def factory(
        height=256, width=256, *, seed=0, bands=3, dtype="uint8", difficulty="easy", nodata_region=False,
        density=1.0, crs="EPSG:32611", pixel_size=0.4, rotation_deg=0.0, tiled=True, label_crs="EPSG:4326",
        kind="polygon", label_ext=".geojson", class_field="class", name="scene", object_size_px=None,
    ):
        scene = synthetic.make_scene(
            height, width, seed=seed, bands=bands, dtype=dtype, difficulty=difficulty,
            nodata_region=nodata_region, density=density, object_size_px=object_size_px,
        )
        path = tmp_path / f"{name}.tif"
        transform = synthetic.write_scene(
            path, scene, crs=crs, pixel_size=pixel_size, rotation_deg=rotation_deg, tiled=tiled
        )
        labels = tmp_path / f"{name}_labels{label_ext}"
        synthetic.write_labels(labels, scene, transform, crs, to_crs=label_crs, kind=kind, class_field=class_field)
        return SimpleNamespace(path=str(path), labels=str(labels), scene=scene, transform=transform, crs=crs)

    return factory


@pytest.fixture(scope="session")
def sample_scene():
    return str(SAMPLE_SCENE)


@pytest.fixture(scope="session")
def sample_labels():
    return str(SAMPLE_LABELS)


def tiny_model_overrides() -> dict:
    """A RetinaNet small enough to train for a few steps on the CPU in seconds."""
    return dict(backbone="resnet18", fpn_channels=32, head_convs=1)


def wait_for(predicate, proc, timeout_s: float = 120.0) -> None:
    """Poll ``predicate`` until true while the subprocess ``proc`` runs (to interrupt it at a known point).

    Fails when ``proc`` ends first or after ``timeout_s``.
    """
    t0 = time.monotonic()
    while not predicate():
        assert proc.poll() is None, "the command finished before it could be interrupted"
        assert time.monotonic() - t0 < timeout_s
        time.sleep(0.01)


# --------------------------------------------------------------------------- ONNX exports (tests/test_onnx_*.py, test_info.py)


@pytest.fixture(scope="module")
def default_onnx(tmp_path_factory):
    """The bundled model exported to ONNX (skips without the onnx extra)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from geodet.inference.detector import default_model_path
    from geodet.modeling.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "default.onnx"
    export_onnx(default_model_path(), out)
    return str(out)


@pytest.fixture(scope="module")
def two_class(tmp_path_factory):
    """``(model.pt, its ONNX export)`` of a tiny 2-class model (tests/onnx_cases.py; skips without onnx)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from geodet.modeling.onnx_export import export_onnx
    from onnx_cases import _two_class_model

    folder = tmp_path_factory.mktemp("two")
    pt = _two_class_model(folder / "two.pt")
    onnx_path = folder / "two.onnx"
    export_onnx(pt, onnx_path)
    return pt, str(onnx_path)

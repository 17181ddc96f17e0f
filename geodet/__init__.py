"""geodet: find small, dense objects in aerial and satellite imagery.

The public API, each a thin layer over the code the CLI uses::

    geodet.tile(imagery, labels, out_dir)          # chips + COCO annotations
    geodet.fit_anchors(boxes_px)                   # anchors fitted to objects
    geodet.train(imagery, labels, "model.pt")      # -> TrainResult(model_path, history)
    geodet.detect("scene.tif", model="model.pt")   # -> GeoDataFrame
    geodet.resolve_scenes(["@list.txt", "s3://b/k.tif"])  # -> GDAL-openable scene references
    geodet.evaluate(pred, truth)                   # -> dict

Heavy dependencies (torch, geopandas) load on first use. The code lives in
subpackages along the data flow (``core`` <- ``io`` <- ``modeling`` <-
``learning`` / ``inference`` <- ``reports``); ARCHITECTURE.md maps them.
"""

from __future__ import annotations

import importlib

from geodet import _legacy
from geodet.errors import GeodetError

__version__ = "0.1.0"

_API = {
    "tile": ("geodet.learning.tiling", "tile"),
    "train": ("geodet.learning.training", "train"),
    "detect": ("geodet.inference.detection", "detect"),
    "resolve_scenes": ("geodet.io.sources", "resolve_scenes"),
    "write_detections": ("geodet.inference.detection", "write_detections"),
    "evaluate": ("geodet.reports.evaluation", "evaluate"),
    "fit_anchors": ("geodet.modeling.anchors", "fit_anchors"),
    "anchor_coverage": ("geodet.modeling.anchors", "anchor_coverage"),
    "load_model": ("geodet.modeling.modelfile", "load_model"),
    "plot": ("geodet.reports.plot", None),
}

__all__ = ["GeodetError", "__version__", *_API]


_legacy.install()  # the 0.1 module paths (geodet.vector, geodet.detection, ...) for one more release


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'geodet' has no attribute {name!r}")
    module_name, attr = _API[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))

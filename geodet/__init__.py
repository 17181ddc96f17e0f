"""geodet: find small, dense objects in aerial and satellite imagery.

The public API, each a thin layer over the code the CLI uses::

    geodet.tile(imagery, labels, out_dir)          # chips + COCO annotations
    geodet.fit_anchors(boxes_px)                   # anchors fitted to objects
    geodet.train(imagery, labels, "model.pt")      # -> TrainResult(model_path, history)
    geodet.detect("scene.tif", model="model.pt")   # -> GeoDataFrame
    geodet.resolve_scenes(["@list.txt", "s3://b/k.tif"])  # -> GDAL-openable scene references
    geodet.evaluate(pred, truth)                   # -> dict

Heavy dependencies (torch, geopandas) load on first use.
"""

from __future__ import annotations

import importlib

from geodet.errors import GeodetError

__version__ = "0.1.0"

_API = {
    "tile": ("geodet.tiling", "tile"),
    "train": ("geodet.training", "train"),
    "detect": ("geodet.detection", "detect"),
    "resolve_scenes": ("geodet.sources", "resolve_scenes"),
    "write_detections": ("geodet.detection", "write_detections"),
    "evaluate": ("geodet.evaluation", "evaluate"),
    "fit_anchors": ("geodet.anchors", "fit_anchors"),
    "anchor_coverage": ("geodet.anchors", "anchor_coverage"),
    "load_model": ("geodet.modelfile", "load_model"),
    "plot": ("geodet.plot", None),
}

__all__ = ["GeodetError", "__version__", *_API]


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

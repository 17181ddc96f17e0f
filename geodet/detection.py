"""Detect objects in scenes and return georeferenced boxes.

``detect(scene, model=...)`` is the Python API behind ``geodet detect``:
tiled, streaming inference (:mod:`geodet.predict`), cross-chip stitching
(:mod:`geodet.stitch`) in scene pixels, then each box's four pixel corners
mapped through the scene's affine.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
import glob
import logging
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import geopandas as gpd
import numpy as np
import pandas as pd

from geodet.boxes import pixel_boxes_to_polygons
from geodet.config import DetectConfig
from geodet.errors import GeodetError
from geodet.raster import open_dataset, scene_info

log = logging.getLogger(__name__)

#: The small model shipped with the package (see ``scripts/make_default_model.py``).
DEFAULT_MODEL = Path(__file__).parent / "weights" / "default.pt"

COLUMNS = ["class", "score", "scene"]


def default_model_path() -> str:
    """Path of the bundled default model."""
    if not DEFAULT_MODEL.exists():
        raise GeodetError("the bundled default model is missing from this installation; pass -m MODEL.")
    return str(DEFAULT_MODEL)


def expand_scenes(scenes: Union[str, Sequence[str]]) -> List[str]:
    """Scene paths from paths and glob patterns, in a stable order."""
    if isinstance(scenes, (str, os.PathLike)):
        scenes = [scenes]
    out: List[str] = []
    for s in scenes:
        s = str(s)
        if any(ch in s for ch in "*?["):
            matches = sorted(glob.glob(s))
            if not matches:
                raise GeodetError(f"no file matches {s}.")
            out.extend(matches)
        else:
            out.append(s)
    if not out:
        raise GeodetError("no scene given.")
    return out


def load(model=None, device: str = "auto"):
    """``(net, meta, torch.device)`` from a path, None (the default model) or a loaded pair."""
    from geodet.device import resolve_device
    from geodet.model import prepare_for_inference
    from geodet.modelfile import load_model

    dev = resolve_device(device)
    if isinstance(model, tuple):
        net, meta = model
        net = copy.deepcopy(net)  # folding batch norms must not change the caller's (trainable) model
    else:
        path = default_model_path() if model is None else str(model)
        net, meta = load_model(path, device="cpu")
    return prepare_for_inference(net, dev), meta, dev


def empty_frame(crs) -> gpd.GeoDataFrame:
    """A detections frame with the schema and no rows."""
    return gpd.GeoDataFrame(
        {"class": pd.Series([], dtype=str), "score": pd.Series([], dtype="float64"), "scene": pd.Series([], dtype=str)},
        geometry=gpd.GeoSeries([], crs=crs),
        crs=crs,
    )


def config_for_model(config: DetectConfig, meta) -> DetectConfig:
    """``config`` with ``bands``, ``chip_size`` and ``overlap`` resolved: each the model's unless set.

    Raises:
        GeodetError: an overlap not smaller than the chip size.
    """
    chip_px = int(config.chip_size or meta.chip_size)
    overlap = int(meta.overlap if config.overlap is None else config.overlap)
    if overlap >= chip_px:
        raise GeodetError(f"the overlap ({overlap} px) must be smaller than the chip size ({chip_px} px).")
    bands = tuple(config.bands) if config.bands is not None else tuple(meta.bands)
    return dataclasses.replace(config, bands=bands, chip_size=chip_px, overlap=overlap)


@dataclass(frozen=True)
class SceneTask:
    """One scene's share of a detection job: what is read, and whose detections are reported.

    A task is the unit of work that runs in-process or as one Dask task.

    Attributes:
        path: the scene as GDAL opens it; its detections carry this scene's name.
        context: how neighbouring scenes of the same mosaic take part (None: the
            scene alone). Filled in by :func:`plan_tasks`.
    """

    path: str
    context: Optional[object] = None


def plan_tasks(paths: Sequence[str]) -> List[SceneTask]:
    """One :class:`SceneTask` per scene path, in the given order."""
    return [SceneTask(str(p)) for p in paths]


@dataclass
class Detector:
    """A model ready for inference, with the settings resolved for it.

    Built once per process (or Dask worker) by :func:`load_detector` and reused
    for every scene. ``model_name`` / ``model_hash`` identify the model file
    (:func:`geodet.modelfile.model_hash`; None for an in-memory model).
    """

    net: object
    meta: object
    device: object
    config: DetectConfig
    model_name: str = "in-memory model"
    model_hash: Optional[str] = None


def load_detector(model=None, config: DetectConfig = DetectConfig()) -> Detector:
    """Load ``model`` (a path, None for the default model, or ``(net, meta)``) for ``config``.

    A ``.onnx`` path (a ``geodet export``) runs through onnxruntime
    (:func:`geodet.export.load_onnx_detector`). Warns when the overlap is small for the model's anchors.
    """
    from geodet.export import is_onnx_path
    from geodet.modelfile import model_hash

    if is_onnx_path(model):
        from geodet.export import load_onnx_detector

        return load_onnx_detector(str(model), config)
    net, meta, device = load(model, config.device)
    run_config = config_for_model(config, meta)
    warn = _overlap_warning(meta, run_config.overlap)
    if warn:
        log.warning(warn)
    if isinstance(model, tuple):
        return Detector(net, meta, device, run_config)
    path = default_model_path() if model is None else str(model)
    return Detector(net, meta, device, run_config, model_name=Path(path).name, model_hash=model_hash(path))


def scene_name(path: str) -> str:
    """The ``scene`` column's value for a scene path."""
    return Path(path).name


def detect_task(task: SceneTask, detector: Detector, *, progress: Optional[Callable[[int, int], None]] = None) -> gpd.GeoDataFrame:
    """Detections of one task, in its scene's CRS (an empty frame with that CRS when none).

    Raises:
        GeodetError: the scene cannot be opened or read, or does not fit the model.
    """
    from geodet.predict import plan_scene, predict_scene

    path = task.path
    # The scene is opened once: its metadata, the check against the model, the optional
    # statistics and the first reader thread share this handle.
    with open_dataset(path) as src:
        info = scene_info(src)
        plan = plan_scene(src, info, detector.config, detector.meta)
        dets = predict_scene(detector.net, src, plan, detector.config, device=detector.device, progress=progress)
    log.info("%s: %d detections from %d chips (%d nodata chips skipped)", path, len(dets.scores), dets.chips, dets.skipped)
    if len(dets.scores) == 0:
        return empty_frame(info.crs)
    return gpd.GeoDataFrame(
        {
            "class": np.asarray(detector.meta.class_names, dtype=object)[dets.labels],
            "score": dets.scores.astype(np.float64),
            "scene": scene_name(path),
        },
        geometry=pixel_boxes_to_polygons(dets.boxes_px, info.transform),
        crs=info.crs,
    )


def combine_frames(frames: Sequence[gpd.GeoDataFrame]) -> gpd.GeoDataFrame:
    """One detections frame from per-scene frames (each in its scene's CRS).

    The result is in the scenes' CRS when they share one, else in EPSG:4326;
    rows are sorted by scene, then by descending score.
    """
    if not frames:
        return empty_frame("EPSG:4326")
    crs_set = {frame.crs.to_string() for frame in frames if frame.crs is not None}
    out_crs = frames[0].crs if len(crs_set) <= 1 else "EPSG:4326"
    if len(crs_set) > 1:
        frames = [frame.to_crs(out_crs) for frame in frames]
    frames = [frame for frame in frames if len(frame)]
    if not frames:
        return empty_frame(out_crs)
    out = pd.concat(frames, ignore_index=True)
    return gpd.GeoDataFrame(out, geometry="geometry", crs=out_crs).sort_values(
        ["scene", "score"], ascending=[True, False], ignore_index=True
    )


def detect(
    scenes: Union[str, Sequence[str]],
    model=None,
    *,
    config: DetectConfig = DetectConfig(),
    bands: Optional[Sequence[int]] = None,
    chip_size: Optional[int] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    on_error: str = "raise",
) -> gpd.GeoDataFrame:
    """Detect objects in one or more scenes.

    Args:
        scenes: GeoTIFF path(s) or glob pattern(s).
        model: a model file path, None for the bundled default model, or a
            ``(net, meta)`` pair from :func:`geodet.modelfile.load_model`.
        config: every inference setting (:class:`geodet.config.DetectConfig`):
            batch size, chip size, overlap, bands, score threshold, NMS IoU,
            device, workers, precision, normalisation.
        bands: shorthand for ``config.bands`` (1-based scene bands; default: the model's).
        chip_size: shorthand for ``config.chip_size`` (default: the model's).
        progress: called with (chips done, chips total) per scene.
        on_error: what a scene that cannot be opened or read (a damaged file,
            wrong bands) does: ``"raise"`` its :class:`GeodetError`, or
            ``"skip"`` it and go on with the others; skipped scenes are listed
            in ``frame.attrs["failed_scenes"]`` (path -> reason) and logged.
            With ``"skip"``, a run where every scene failed still raises.

    Returns:
        GeoDataFrame with columns ``class``, ``score``, ``scene`` and box
        polygons (four pixel corners through the scene's affine) in the
        scene's CRS; when scenes have different CRSs, in EPSG:4326.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if bands is not None:
        config = dataclasses.replace(config, bands=tuple(bands))
    if chip_size is not None:
        config = dataclasses.replace(config, chip_size=chip_size)
    paths = expand_scenes(scenes)
    failed: Dict[str, str] = {}
    detector: Optional[Detector] = None
    frames: List[gpd.GeoDataFrame] = []
    for task in plan_tasks(paths):
        if detector is None:
            detector = load_detector(model, config)
        try:
            frames.append(detect_task(task, detector, progress=progress))
        except GeodetError as exc:
            if on_error == "raise":
                raise
            failed[task.path] = str(exc)
            log.warning("skipped %s: %s", task.path, exc)
    if len(failed) == len(paths):
        raise GeodetError("no scene could be read: " + "; ".join(failed.values()))
    out = combine_frames(frames)
    out.attrs["failed_scenes"] = failed
    return out


def _overlap_warning(meta, overlap_px: int) -> Optional[str]:
    from geodet.stitch import overlap_warning

    anchors = meta.model_config.anchors
    largest = max(anchors.sizes) * max(anchors.scales) * max(np.sqrt(max(anchors.ratios)), np.sqrt(1 / min(anchors.ratios)))
    return overlap_warning(float(largest), overlap_px)


def write_detections(frame: gpd.GeoDataFrame, path: str, *, overwrite: bool = False) -> None:
    """Write detections by extension (.geojson RFC 7946 in EPSG:4326; .gpkg,
    .shp and .parquet in the frame's CRS), atomically."""
    from geodet.vector import write_vector

    write_vector(frame, path, overwrite=overwrite)

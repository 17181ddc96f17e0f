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

    A task is the unit of work that runs in-process or as one Dask task; it
    holds plain values only (paths, numbers, XML-able text), so it pickles to
    a worker on another machine that sees the same scene paths.

    Attributes:
        path: the scene as GDAL opens it; its detections carry this scene's name.
        context: how neighbouring scenes of the same mosaic take part: a
            :class:`geodet.mosaic.MosaicContext` (the mosaic's grid, the
            neighbours read as a halo, who owns shared areas), or None for the
            scene alone. Filled in by :func:`plan_tasks`.
    """

    path: str
    context: Optional[object] = None


#: Scene headers read at once while planning (remote scenes answer slowly, one by one).
PLAN_OPEN_THREADS = 16


def _footprint(path: str):
    """:class:`geodet.mosaic.Footprint` of a scene, or None when it cannot be opened (it then runs alone)."""
    from geodet.mosaic import Footprint

    try:
        with open_dataset(path) as src:
            info = scene_info(src)
    except GeodetError as exc:
        log.debug("%s stays out of any mosaic: %s", path, exc)
        return None
    return Footprint(path, info.crs.to_wkt(), info.transform, info.width, info.height, info.count, info.dtype)


def plan_tasks(paths: Sequence[str], *, mosaic: bool = True) -> List[SceneTask]:
    """One :class:`SceneTask` per scene path, in the given order.

    With ``mosaic`` (``DetectConfig.mosaic``, the default) and several scenes,
    each scene's header is read, scenes of one mosaic are grouped
    (:func:`geodet.mosaic.group_footprints`) and their tasks get a
    :class:`geodet.mosaic.MosaicContext`: each is then detected across its
    shared edges and reports the objects whose centre it owns, so an object on
    a scene edge is reported once, whole. A scene that does not fit a mosaic,
    or cannot be opened, runs alone (its error surfaces when it is detected).
    """
    paths = [str(p) for p in paths]
    if not mosaic or len(paths) < 2:
        return [SceneTask(p) for p in paths]
    from concurrent.futures import ThreadPoolExecutor

    from geodet.mosaic import group_footprints, mosaic_contexts

    threads = min(PLAN_OPEN_THREADS, len(paths))
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="geodet-plan") as pool:
        footprints = list(pool.map(_footprint, paths))
    contexts: Dict[int, object] = {}
    for group in group_footprints(footprints):
        for (index, _rect), ctx in zip(group, mosaic_contexts(footprints, group)):
            contexts[index] = ctx
        names = ", ".join(scene_name(paths[i]) for i, _r in group[:3])
        log.info("mosaic of %d scenes: %s%s", len(group), names, ", ..." if len(group) > 3 else "")
    return [SceneTask(p, contexts.get(i)) for i, p in enumerate(paths)]


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

    Warns when the overlap is small for the model's anchors.
    """
    from geodet.modelfile import model_hash

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

    A task with a mosaic context reads its chips of the mosaic's chip grid
    through a VRT of its neighbourhood and keeps the detections it owns
    (:mod:`geodet.mosaic`); without one, the scene is detected alone.

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
        dets = None
        if task.context is not None:
            dets = _detect_in_mosaic(task.context, plan, detector, progress)
        if dets is None:
            dets = predict_scene(detector.net, src, plan, detector.config, device=detector.device, progress=progress)
            if task.context is not None:  # read alone after all: still report only what it owns
                dets = _owned(dets, task.context, offset_px=task.context.own.rect_px[:2])
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


def _owned(dets, ctx, *, offset_px=(0, 0)):
    """The detections of ``dets`` that ``ctx``'s scene owns, boxes moved to the scene's own pixels.

    ``dets.boxes_px`` are in pixels of a grid whose origin lies at ``offset_px`` in the mosaic grid.
    """
    from geodet.mosaic import box_centres, owned_mask

    ox, oy = offset_px
    boxes_mosaic = dets.boxes_px + np.array([ox, oy, ox, oy], np.float32)
    keep = owned_mask(box_centres(boxes_mosaic), ctx.own.rect_px, ctx.later)
    x0, y0 = ctx.own.rect_px[:2]
    boxes_own = boxes_mosaic[keep] - np.array([x0, y0, x0, y0], np.float32)
    return dataclasses.replace(dets, boxes_px=boxes_own, scores=dets.scores[keep], labels=dets.labels[keep])


def _readable(ref: str) -> bool:
    """Whether a mosaic neighbour opens; one that does not is left out (its part of the halo is nodata)."""
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(ref):
            return True
    except RasterioError as exc:
        log.warning("mosaic neighbour %s cannot be opened (%s); its part of the halo is read as nodata", ref, exc)
        return False


def _detect_in_mosaic(ctx, plan, detector: Detector, progress):
    """Detections (in scene pixels) that the scene of ``ctx`` owns, read across its mosaic's seams.

    Returns None when the mosaic read fails (a neighbour with damaged data): the
    caller then reads the scene alone.
    """
    from rasterio.errors import RasterioError
    from rasterio.io import MemoryFile

    from geodet.mosaic import grid_chip_windows, grow, sources_in_order, vrt_xml
    from geodet.predict import ChipPlan, predict_scene, scaled_chip_px

    config = detector.config
    size_px, overlap_px = scaled_chip_px(config.chip_size, config.overlap, plan.chips.scale)
    # The halo: every object centred in the scene (no larger than the overlap, which stitching
    # already assumes) lies whole in the chips read, and so do the boxes that may replace it.
    region = grow(ctx.own.rect_px, overlap_px)
    windows = grid_chip_windows(ctx.grid_shape, size_px, overlap_px, region)
    sources = [s for s in sources_in_order(ctx) if s is ctx.own or _readable(s.path)]
    mosaic_plan = dataclasses.replace(plan, chips=ChipPlan(windows, plan.chips.chip_px, plan.chips.scale))
    # The VRT text lives in GDAL's in-memory file system while the scene runs, so that the
    # reader threads reopen it by a short name and messages name the scene.
    name = f"{scene_name(ctx.own.path)}.mosaic.vrt"
    try:
        with MemoryFile(vrt_xml(ctx, sources).encode(), filename=name) as mem, mem.open() as vrt:
            dets = predict_scene(detector.net, vrt, mosaic_plan, config, device=detector.device, progress=progress)
    except (GeodetError, RasterioError):
        log.warning(
            "reading %s with its %d mosaic neighbour(s) failed; detecting it alone (objects on its edges may be "
            "missed or cut)", ctx.own.path, len(sources) - 1,
        )
        return None
    return _owned(dets, ctx)


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
    for task in plan_tasks(paths, mosaic=config.mosaic):
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

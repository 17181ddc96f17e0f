"""One scene's detections: the steps a :class:`~geodet.inference.tasks.SceneTask` runs through.

Planning the tasks (scenes grouped into mosaics, :mod:`geodet.core.mosaic`),
one task's detections as a GeoDataFrame (:func:`detect_task`: read, predict,
stitch, keep what the scene owns, map pixel corners through the affine),
large scenes by blocks of chips kept in a job folder, the in-process runner,
and combining per-scene frames.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Sequence

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
from rasterio.errors import RasterioError
from rasterio.io import MemoryFile

from geodet.core.boxes import pixel_boxes_to_polygons
from geodet.core.mosaic import (
    Footprint,
    box_centres,
    grid_chip_windows,
    group_footprints,
    grow,
    mosaic_contexts,
    owned_mask,
    sources_in_order,
    vrt_xml,
)
from geodet.errors import GeodetError
from geodet.inference.detector import Detector, run_metadata, with_metadata
from geodet.inference.predict import (
    ChipDetections,
    ChipPlan,
    chip_blocks,
    plan_scene,
    predict_chips,
    predict_scene,
    scaled_chip_px,
    stitch_chips,
)
from geodet.inference.tasks import OnDone, OnFailed, Runner, SceneTask
from geodet.io.formats import METADATA_ATTR
from geodet.io.raster import open_dataset, scene_info
from geodet.io.sources import file_name, redact

log = logging.getLogger(__name__)

#: The columns of every detections frame (besides ``geometry``): the class name, the model's
#: integer for it (an index into the model's ``class_names``), the score and the scene's file name.
COLUMNS = ["class", "class_id", "score", "scene"]


def empty_frame(crs) -> gpd.GeoDataFrame:
    """A detections frame with the schema (:data:`COLUMNS`) and no rows."""
    return gpd.GeoDataFrame(
        {
            "class": pd.Series([], dtype=str),
            "class_id": pd.Series([], dtype="int64"),
            "score": pd.Series([], dtype="float64"),
            "scene": pd.Series([], dtype=str),
        },
        geometry=gpd.GeoSeries([], crs=crs),
        crs=crs,
    )


#: Scene headers read at once while planning (remote scenes answer slowly, one by one).
PLAN_OPEN_THREADS = 16


def _footprint(path: str):
    """:class:`geodet.core.mosaic.Footprint` of a scene, or None when it cannot be opened (it then runs alone)."""
    try:
        with open_dataset(path) as src:
            info = scene_info(src)
    except GeodetError as exc:
        log.debug("%s stays out of any mosaic: %s", redact(path), redact(exc))
        return None
    return Footprint(path, info.crs.to_wkt(), info.transform, info.width, info.height, info.count, info.dtype)


def plan_tasks(paths: Sequence[str], *, mosaic: bool = True) -> List[SceneTask]:
    """One :class:`SceneTask` per scene path, in the given order.

    With ``mosaic`` (``DetectConfig.mosaic``, the default) and several scenes,
    each scene's header is read, scenes of one mosaic are grouped
    (:func:`geodet.core.mosaic.group_footprints`) and their tasks get a
    :class:`geodet.core.mosaic.MosaicContext`: each is then detected across its
    shared edges and reports the objects whose centre it owns, so an object on
    a scene edge is reported once, whole. A scene that does not fit a mosaic,
    or cannot be opened, runs alone (its error surfaces when it is detected).
    """
    paths = [str(p) for p in paths]
    if not mosaic or len(paths) < 2:
        return [SceneTask(p) for p in paths]
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


def scene_name(path: str) -> str:
    """The ``scene`` column's value for a scene reference: its file name, without a URL's query
    (``/vsicurl/https://host/a/b.tif?sig=...`` -> ``b.tif``)."""
    return file_name(path)


def detect_task(
    task: SceneTask,
    detector: Detector,
    *,
    progress: Optional[Callable[[int, int], None]] = None,
    blocks=None,
) -> gpd.GeoDataFrame:
    """Detections of one task, in its scene's CRS (an empty frame with that CRS when none).

    A task with a mosaic context reads its chips of the mosaic's chip grid
    through a VRT of its neighbourhood and keeps the detections it owns
    (:mod:`geodet.core.mosaic`); without one, the scene is detected alone.

    Args:
        blocks: a :class:`geodet.inference.jobs.BlockStore`: a scene of more chips than its
            ``block_chips`` is predicted block by block, each block kept there and
            taken from there when a rerun finds it (:func:`predict_in_blocks`).

    Raises:
        GeodetError: the scene cannot be opened or read, or does not fit the model.
    """
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
            if blocks is not None and len(plan.chips.windows) > blocks.block_chips:
                dets = predict_in_blocks(detector, src, plan, blocks, progress=progress)
            else:
                dets = predict_scene(detector.net, src, plan, detector.config, device=detector.device, progress=progress)
            if task.context is not None:  # read alone after all: still report only what it owns
                dets = _owned(dets, task.context, offset_px=task.context.own.rect_px[:2])
    log.info("%s: %d detections from %d chips (%d nodata chips skipped)", redact(path), len(dets.scores), dets.chips, dets.skipped)
    if len(dets.scores) == 0:
        return with_metadata(empty_frame(info.crs), run_metadata(detector))
    frame = gpd.GeoDataFrame(
        {
            "class": np.asarray(detector.meta.class_names, dtype=object)[dets.labels],
            "class_id": np.asarray(dets.labels, dtype=np.int64),
            "score": dets.scores.astype(np.float64),
            "scene": scene_name(path),
        },
        geometry=pixel_boxes_to_polygons(dets.boxes_px, info.transform),
        crs=info.crs,
    )
    return with_metadata(frame, run_metadata(detector))


def predict_in_blocks(detector: Detector, src, plan, blocks, *, progress: Optional[Callable[[int, int], None]] = None):
    """A scene's stitched detections (:class:`geodet.inference.predict.SceneDetections`), predicted by blocks of chips.

    Blocks found in ``blocks`` (a :class:`geodet.inference.jobs.BlockStore`) are taken as they are;
    the others are predicted (:func:`geodet.inference.predict.predict_chips`) and kept there. The
    stitch runs once over all blocks, so the result is that of an uninterrupted run.
    """
    n_chips = len(plan.chips.windows)
    parts = []
    resumed = 0
    for index, chips in enumerate(chip_blocks(n_chips, blocks.block_chips)):
        raw = blocks.load(index, n_chips)
        if raw is None:
            offset = chips.start
            step = (lambda done, _total, offset=offset: progress(offset + done, n_chips)) if progress else None
            raw = predict_chips(detector.net, src, plan, detector.config, indices=chips, device=detector.device,
                                progress=step)
            blocks.save(index, n_chips, raw)
        else:
            resumed += 1
            if progress:
                progress(chips.stop, n_chips)
        parts.append(raw)
    if resumed:
        log.info("%s: %d of %d chip blocks taken from an earlier run", redact(src.name), resumed, len(parts))
    return stitch_chips(ChipDetections.concat(parts), plan, (src.height, src.width), detector.config)


def in_process_runner(detector: Detector, progress: Optional[Callable[[int, int], None]] = None, job=None) -> Runner:
    """The default :data:`Runner`: tasks one after another in this process, with ``detector``.

    Args:
        detector: the loaded model (:func:`load_detector`).
        progress: called with (chips done, chips total) per scene.
        job: a :class:`geodet.inference.jobs.Job` whose chip-block checkpoints large scenes use.
    """

    def run(tasks: Sequence[SceneTask], on_done: OnDone, on_failed: OnFailed) -> None:
        for task in tasks:
            t0 = time.perf_counter()
            try:
                frame = detect_task(task, detector, progress=progress, blocks=job.blocks(task) if job else None)
            except GeodetError as exc:
                on_failed(task, str(exc))
                continue
            on_done(task, frame, time.perf_counter() - t0)

    return run


def _owned(dets, ctx, *, offset_px=(0, 0)):
    """The detections of ``dets`` that ``ctx``'s scene owns, boxes moved to the scene's own pixels.

    ``dets.boxes_px`` are in pixels of a grid whose origin lies at ``offset_px`` in the mosaic grid.
    """
    ox, oy = offset_px
    boxes_mosaic = dets.boxes_px + np.array([ox, oy, ox, oy], np.float32)
    keep = owned_mask(box_centres(boxes_mosaic), ctx.own.rect_px, ctx.later)
    x0, y0 = ctx.own.rect_px[:2]
    boxes_own = boxes_mosaic[keep] - np.array([x0, y0, x0, y0], np.float32)
    return dataclasses.replace(dets, boxes_px=boxes_own, scores=dets.scores[keep], labels=dets.labels[keep])


def _readable(ref: str) -> bool:
    """Whether a mosaic neighbour opens; one that does not is left out (its part of the halo is nodata)."""
    try:
        with rasterio.open(ref):
            return True
    except RasterioError as exc:
        log.warning("mosaic neighbour %s cannot be opened (%s); its part of the halo is read as nodata", redact(ref),
                    redact(exc))
        return False


def _detect_in_mosaic(ctx, plan, detector: Detector, progress):
    """Detections (in scene pixels) that the scene of ``ctx`` owns, read across its mosaic's seams.

    Returns None when the mosaic read fails (a neighbour with damaged data): the
    caller then reads the scene alone.
    """

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
            "missed or cut)", redact(ctx.own.path), len(sources) - 1,
        )
        return None
    return _owned(dets, ctx)


def combine_frames(frames: Sequence[gpd.GeoDataFrame]) -> gpd.GeoDataFrame:
    """One detections frame from per-scene frames (each in its scene's CRS).

    The result is in the scenes' CRS when they share one, else in EPSG:4326;
    rows are sorted by scene, then by descending score. The run's metadata
    (:func:`run_metadata`) is kept when every frame carries the same.
    """
    if not frames:
        return empty_frame("EPSG:4326")
    metadata = [frame.attrs.get(METADATA_ATTR) for frame in frames]
    shared = metadata[0] if all(m == metadata[0] for m in metadata) else None
    crs_set = {frame.crs.to_string() for frame in frames if frame.crs is not None}
    out_crs = frames[0].crs if len(crs_set) <= 1 else "EPSG:4326"
    if len(crs_set) > 1:
        frames = [frame.to_crs(out_crs) for frame in frames]
    frames = [frame for frame in frames if len(frame)]
    if not frames:
        return with_metadata(empty_frame(out_crs), shared)
    out = pd.concat(frames, ignore_index=True)
    out = gpd.GeoDataFrame(out, geometry="geometry", crs=out_crs).sort_values(
        ["scene", "score"], ascending=[True, False], ignore_index=True
    )
    out.attrs.pop(METADATA_ATTR, None)
    return with_metadata(out, shared)

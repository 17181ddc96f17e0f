"""Detect objects in scenes and return georeferenced boxes.

``detect(scene, model=...)`` is the Python API behind ``geodet detect``:
tiled, streaming inference (:mod:`geodet.inference.predict`), cross-chip stitching
(:mod:`geodet.core.stitch`) in scene pixels, then each box's four pixel corners
mapped through the scene's affine.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
import logging
import os
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import geopandas as gpd
import numpy as np
import pandas as pd

from geodet.core.boxes import pixel_boxes_to_polygons
from geodet.config import DetectConfig, JobConfig
from geodet.errors import GeodetError
from geodet.io.raster import open_dataset, scene_info
from geodet.io.sources import file_name, redact, resolve_scenes

log = logging.getLogger(__name__)

#: The small model shipped with the package (see ``scripts/make_default_model.py``).
DEFAULT_MODEL = Path(__file__).parents[1] / "weights" / "default.pt"

#: The columns of every detections frame (besides ``geometry``): the class name, the model's
#: integer for it (an index into the model's ``class_names``), the score and the scene's file name.
COLUMNS = ["class", "class_id", "score", "scene"]


def default_model_path() -> str:
    """Path of the bundled default model."""
    if not DEFAULT_MODEL.exists():
        raise GeodetError("the bundled default model is missing from this installation; pass -m MODEL.")
    return str(DEFAULT_MODEL)


def load(model=None, device: str = "auto"):
    """``(net, meta, torch.device)`` from a path, None (the default model) or a loaded pair."""
    from geodet.modeling.device import resolve_device
    from geodet.modeling.model import prepare_for_inference
    from geodet.modeling.modelfile import load_model

    dev = resolve_device(device)
    if isinstance(model, tuple):
        net, meta = model
        net = copy.deepcopy(net)  # folding batch norms must not change the caller's (trainable) model
    else:
        path = default_model_path() if model is None else str(model)
        net, meta = load_model(path, device="cpu")
    return prepare_for_inference(net, dev), meta, dev


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
            :class:`geodet.core.mosaic.MosaicContext` (the mosaic's grid, the
            neighbours read as a halo, who owns shared areas), or None for the
            scene alone. Filled in by :func:`plan_tasks`.
    """

    path: str
    context: Optional[object] = None


#: Failed scenes logged one by one during a run; after these, one line says that more failed (so
#: 10,000 unreadable scenes do not print 10,000 warnings). Every failure stays in ``failed_scenes``.
FAILURES_LOGGED = 20

#: Scene headers read at once while planning (remote scenes answer slowly, one by one).
PLAN_OPEN_THREADS = 16


def _footprint(path: str):
    """:class:`geodet.core.mosaic.Footprint` of a scene, or None when it cannot be opened (it then runs alone)."""
    from geodet.core.mosaic import Footprint

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
    from concurrent.futures import ThreadPoolExecutor

    from geodet.core.mosaic import group_footprints, mosaic_contexts

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
    (:func:`geodet.modeling.modelfile.model_hash`; None for an in-memory model).
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
    (:func:`geodet.modeling.onnx_export.load_onnx_detector`). Warns when the overlap is small for the model's anchors.
    """
    from geodet.modeling.onnx_export import is_onnx_path
    from geodet.modeling.modelfile import model_hash

    if is_onnx_path(model):
        from geodet.modeling.onnx_export import load_onnx_detector

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


def run_metadata(detector: Detector) -> Dict[str, object]:
    """What the outputs of a run say about their making (JSON values).

    ``geodet_version``, ``model_name`` and ``model_hash`` (None for an in-memory model), and
    ``class_names`` (``class_id`` indexes it). Detection frames carry it in
    ``frame.attrs[geodet.io.formats.METADATA_ATTR]``; :func:`geodet.io.formats.write_vector` writes it
    into each format's metadata.
    """
    return _metadata(detector.model_name, detector.model_hash, detector.meta.class_names)


def model_file_metadata(model=None) -> Optional[Dict[str, object]]:
    """:func:`run_metadata` of a model file (None: the bundled model) without loading its network;
    None for an in-memory ``(net, meta)`` model. For frames that lost their ``attrs`` on the way
    (a job's parts read back from GeoParquet)."""
    from geodet.modeling.onnx_export import is_onnx_path, read_onnx_metadata
    from geodet.modeling.modelfile import model_hash, read_model_file

    if isinstance(model, tuple):
        return None
    path = default_model_path() if model is None else str(model)
    if is_onnx_path(path):  # an export names the model file it was made from, as its Detector does
        data = read_onnx_metadata(path)
        return _metadata(str(data.get("geodet_model_name", Path(path).name)), data.get("geodet_model_hash"),
                         data["geodet_class_names"])
    class_names = read_model_file(path)["class_names"]  # first: its one sentence for a missing or bad file
    return _metadata(Path(path).name, model_hash(path), class_names)


def check_model_file(model=None) -> None:
    """Check a model file (None: the bundled one) as loading it would, without building its network:
    a ``.pt`` file's contents (:func:`geodet.modeling.modelfile.read_model_file`), an ONNX export's metadata
    and graph (:func:`geodet.modeling.onnx_export.check_onnx_file`). An in-memory model passes.

    Raises:
        GeodetError: the file would be refused when loaded.
    """
    from geodet.modeling.onnx_export import check_onnx_file, is_onnx_path

    if isinstance(model, tuple):
        return
    path = default_model_path() if model is None else str(model)
    if is_onnx_path(path):
        check_onnx_file(path)
    else:
        model_file_metadata(path)


def model_file_hash(model=None) -> Optional[str]:
    """:func:`geodet.modeling.modelfile.model_hash` of the bytes of a model file, ``.pt`` or ``.onnx`` (None:
    the bundled model); None for an in-memory ``(net, meta)`` model. A job's model identity: an
    export and its source are different files and may differ in the last bits."""
    from geodet.modeling.modelfile import model_hash

    if isinstance(model, tuple):
        return None
    return model_hash(default_model_path() if model is None else str(model))


def _metadata(model_name: str, hash_hex: Optional[str], class_names: Sequence[str]) -> Dict[str, object]:
    from geodet import __version__

    return {
        "geodet_version": __version__,
        "model_name": model_name,
        "model_hash": hash_hex,
        "class_names": [str(name) for name in class_names],
    }


def with_metadata(frame: gpd.GeoDataFrame, metadata: Optional[Dict[str, object]]) -> gpd.GeoDataFrame:
    """``frame`` with ``metadata`` in ``frame.attrs[METADATA_ATTR]`` (None: left as it is); returns ``frame``."""
    from geodet.io.formats import METADATA_ATTR

    if metadata is not None:
        frame.attrs[METADATA_ATTR] = copy.deepcopy(metadata)
    return frame


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
    from geodet.inference.predict import plan_scene, predict_scene

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
    from geodet.inference.predict import ChipDetections, chip_blocks, predict_chips, stitch_chips

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


#: Called by a runner when a task finished: ``(task, its detections frame, seconds)``.
OnDone = Callable[[SceneTask, gpd.GeoDataFrame, float], None]
#: Called by a runner when a task failed: ``(task, one-sentence reason)``; it may raise to stop the run.
OnFailed = Callable[[SceneTask, str], None]
#: Runs tasks somewhere (in this process, on a Dask cluster) and reports each task exactly once,
#: to ``on_done`` or ``on_failed``, from the calling process.
Runner = Callable[[Sequence[SceneTask], OnDone, OnFailed], None]


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
    from geodet.core.mosaic import box_centres, owned_mask

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
        log.warning("mosaic neighbour %s cannot be opened (%s); its part of the halo is read as nodata", redact(ref),
                    redact(exc))
        return False


def _detect_in_mosaic(ctx, plan, detector: Detector, progress):
    """Detections (in scene pixels) that the scene of ``ctx`` owns, read across its mosaic's seams.

    Returns None when the mosaic read fails (a neighbour with damaged data): the
    caller then reads the scene alone.
    """
    from rasterio.errors import RasterioError
    from rasterio.io import MemoryFile

    from geodet.core.mosaic import grid_chip_windows, grow, sources_in_order, vrt_xml
    from geodet.inference.predict import ChipPlan, predict_scene, scaled_chip_px

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
    from geodet.io.formats import METADATA_ATTR

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


def detect(
    scenes: Union[str, Sequence[str]],
    model=None,
    *,
    config: DetectConfig = DetectConfig(),
    bands: Optional[Sequence[int]] = None,
    chip_size: Optional[int] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    on_error: str = "raise",
    asset: Optional[str] = None,
    client=None,
    job_dir: Optional[Union[str, os.PathLike]] = None,
    job_config: JobConfig = JobConfig(),
    runner: Optional[Runner] = None,
    allow_local_hrefs: bool = False,
) -> gpd.GeoDataFrame:
    """Detect objects in one or more scenes.

    Plans one task per scene, skips the tasks a job folder holds as done, hands
    the others to a runner (``runner(pending, on_done, on_failed)``), and
    combines the per-scene frames.

    Args:
        scenes: what :func:`geodet.io.sources.resolve_scenes` takes: GeoTIFF or VRT path(s), glob
            pattern(s), ``@list.txt``, GDAL virtual paths, http(s)/s3/gs/az URLs, STAC JSON.
        model: a model file path, None for the bundled default model, or a
            ``(net, meta)`` pair from :func:`geodet.modeling.modelfile.load_model`.
        config: every inference setting (:class:`geodet.config.DetectConfig`):
            batch size, chip size, overlap, bands, score threshold, NMS IoU,
            device, workers, precision, normalisation.
        bands: shorthand for ``config.bands`` (1-based scene bands; default: the model's).
        chip_size: shorthand for ``config.chip_size`` (default: the model's).
        progress: called with (chips done, chips total) per scene (in-process runner).
        on_error: what a scene that cannot be opened or read (a damaged file,
            wrong bands) does: ``"raise"`` its :class:`GeodetError`, or
            ``"skip"`` it and go on with the others; skipped scenes are listed
            in ``frame.attrs["failed_scenes"]`` (path -> reason) and logged.
            With ``"skip"``, a run where every scene failed still raises.
        asset: the STAC asset key to read from STAC inputs (default: the visual/RGB one).
        allow_local_hrefs: follow the local paths, ``file://`` URLs and GDAL virtual paths that a
            STAC catalog read from a URL names (refused by default,
            :func:`geodet.io.sources.remote_href_refusal`).
        client: a :class:`distributed.Client`: each scene is one task on its
            cluster (:func:`geodet.inference.cluster.dask_runner`; needs a model file,
            ``progress`` is not called); None runs in this process.
        job_dir: a job folder (:mod:`geodet.inference.jobs`) that keeps every finished
            scene and chip block, so that the same call after a crash resumes:
            scenes done there are not run again (their count is in
            ``frame.attrs["scenes_done_before"]``) and the result is read from its
            parts. A scene changed since it was finished there (its size and modification
            time, its ETag...: :func:`geodet.inference.jobs.scene_identity`) is detected again and listed in
            ``frame.attrs["scenes_changed"]``. Needs a model file. None (the default): no job, nothing kept.
            The folder is left for the caller (:func:`geodet.inference.jobs.remove_job`).
        job_config: block size of chip checkpoints (with ``job_dir``).
        runner: where the tasks run (:data:`Runner`); default
            :func:`in_process_runner` with the model loaded here.

    Returns:
        GeoDataFrame with columns ``class``, ``class_id`` (the model's
        integer for the class), ``score``, ``scene`` and box polygons (four
        pixel corners through the scene's affine) in the scene's CRS; when
        scenes have different CRSs, in EPSG:4326. ``frame.attrs["geodet"]``
        holds the run's metadata (:func:`run_metadata`), which
        :func:`write_detections` writes into the file.
    """
    from geodet.inference.jobs import JobGone, detection_settings, open_job

    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if bands is not None:
        config = dataclasses.replace(config, bands=tuple(bands))
    if chip_size is not None:
        config = dataclasses.replace(config, chip_size=chip_size)
    tasks = plan_tasks(resolve_scenes(scenes, asset=asset, allow_local_hrefs=allow_local_hrefs), mosaic=config.mosaic)
    job = None
    pending = list(tasks)
    # A job's parts come back from GeoParquet without ``attrs``: the model file's metadata, read
    # here (its one sentence for a missing or bad file), gives the result its metadata.
    file_metadata = model_file_metadata(model) if job_dir is not None else None
    detector = None
    if job_dir is not None:
        # The model is checked whole before the job folder is made, so that a refused model leaves
        # no folder that would refuse the corrected command.
        if runner is None and client is None:
            detector = load_detector(model, config)
        else:
            check_model_file(model)
        job = open_job(job_dir, model_hash=model_file_hash(model),
                       settings=detection_settings(config), config=job_config)
        pending, done_before = job.split(tasks)
        if done_before:
            log.info("%d of %d scene(s) were finished by an earlier run", len(done_before), len(tasks))
    frames: Dict[str, gpd.GeoDataFrame] = {}
    failed: Dict[str, str] = {}

    def on_done(task: SceneTask, frame: gpd.GeoDataFrame, seconds: float) -> None:
        failed.pop(task.path, None)
        if job is not None:
            job.record_done(task, frame, seconds)
        else:
            frames[task.path] = frame

    def on_failed(task: SceneTask, reason: str) -> None:
        reason = redact(reason)
        if job is not None:
            job.record_failed(task, reason)
        failed[task.path] = reason
        if on_error == "raise":
            raise GeodetError(reason)
        if len(failed) <= FAILURES_LOGGED:
            log.warning("skipped %s: %s", redact(task.path), reason)
        if len(failed) == FAILURES_LOGGED:
            log.warning("more than %d scenes failed; the others are not logged one by one (frame.attrs"
                        "['failed_scenes'] lists them all)", FAILURES_LOGGED)

    if pending:
        if runner is None and client is not None:
            from geodet.inference.cluster import dask_runner

            runner = dask_runner(client, model, config)
        if runner is None:
            runner = in_process_runner(detector or load_detector(model, config), progress=progress, job=job)
        runner(pending, on_done, on_failed)
    if job is not None:
        if not job.folder.is_dir():
            raise JobGone(f"{job.folder} was removed by another run of the same job meanwhile.")
        finished = [task for task in tasks if job.is_done(task)]
        collected = [job.frame(task) for task in finished]
    else:
        finished = [task for task in tasks if task.path in frames]
        collected = [frames[task.path] for task in finished]
    done_paths = {task.path for task in finished}
    for task in tasks:
        if task.path not in done_paths and task.path not in failed:
            failed[task.path] = "the runner reported no result for this scene."
    if not finished:
        raise GeodetError("no scene could be read: " + "; ".join(failed.values()))
    out = combine_frames(collected)
    from geodet.io.formats import METADATA_ATTR

    if METADATA_ATTR not in out.attrs:
        with_metadata(out, file_metadata if file_metadata is not None else model_file_metadata(model))
    out.attrs["failed_scenes"] = failed
    out.attrs["scenes_done_before"] = len(tasks) - len(pending)
    out.attrs["scenes_changed"] = list(job.changed) if job is not None else []
    return out


def check_job_output(output: Union[str, os.PathLike], *, overwrite: bool = False) -> bool:
    """Check before any work that ``output`` can be written by a detection job.

    An existing ``output`` is refused unless ``overwrite`` or the job folder
    beside it wrote it as a partial output (a rerun then replaces it).

    Returns:
        whether an existing ``output`` may be replaced.

    Raises:
        GeodetError: the folder cannot be written, ``output`` exists, or it lies inside a job folder.
    """
    from geodet.inference.jobs import JOB_SUFFIX, job_dir_for, job_owns_output
    from geodet.io.formats import check_output_path

    for folder in Path(os.path.abspath(output)).parents:
        if folder.name.endswith(JOB_SUFFIX):
            raise GeodetError(f"{output} lies inside the job folder {folder}, which geodet manages and removes; "
                              "write the output elsewhere.")
    replace = overwrite or job_owns_output(job_dir_for(output), output)
    check_output_path(str(output), overwrite=replace)
    return replace


def detect_to_file(
    scenes: Union[str, Sequence[str]],
    output: Union[str, os.PathLike],
    model=None,
    *,
    config: DetectConfig = DetectConfig(),
    job_config: JobConfig = JobConfig(),
    overwrite: bool = False,
    progress: Optional[Callable[[int, int], None]] = None,
    runner: Optional[Runner] = None,
    client=None,
    allow_local_hrefs: bool = False,
) -> gpd.GeoDataFrame:
    """Detect objects in scenes and write them to ``output``, resumably: what ``geodet detect`` runs.

    The work is kept in the job folder ``<output>.geodet-job/``
    (:func:`geodet.inference.jobs.job_dir_for`) while it runs. When every scene is done,
    ``output`` is written atomically from the parts and the job folder removed,
    so running a finished command again says that ``output`` already exists.
    When some scenes failed, ``output`` is written from the others and the job
    folder kept: the same command again retries the failed scenes and replaces
    that partial ``output``. ``overwrite`` starts over (the old job folder is
    deleted) and replaces an existing ``output``.

    Returns:
        the frame written, with ``attrs["failed_scenes"]`` and ``attrs["scenes_done_before"]``.

    Raises:
        GeodetError: the output cannot be written, the job folder belongs to another
            model or settings, or no scene could be read.
    """
    from geodet.inference.jobs import JobGone, job_dir_for, mark_partial_output, remove_job
    from geodet.io.formats import check_output_path

    job_dir = job_dir_for(output)
    replace = check_job_output(output, overwrite=overwrite)
    if str(output).lower().endswith(".shp"):  # before any work: class names a shapefile would cut
        from geodet.io.formats import check_shapefile_text

        metadata = model_file_metadata(model)
        check_shapefile_text({"class": metadata["class_names"] if metadata else []}, str(output))
    if overwrite:
        remove_job(job_dir)
    try:
        frame = detect(scenes, model, config=config, progress=progress, on_error="skip", job_dir=job_dir,
                       job_config=job_config, runner=runner, client=client, allow_local_hrefs=allow_local_hrefs)
    except JobGone:
        check_output_path(str(output), overwrite=replace)  # another run finished it: "already exists"
        raise
    write_detections(frame, str(output), overwrite=replace)
    if frame.attrs["failed_scenes"]:
        mark_partial_output(job_dir, output)
    else:
        remove_job(job_dir)
    return frame


def _overlap_warning(meta, overlap_px: int) -> Optional[str]:
    from geodet.core.stitch import overlap_warning

    anchors = meta.model_config.anchors
    largest = max(anchors.sizes) * max(anchors.scales) * max(np.sqrt(max(anchors.ratios)), np.sqrt(1 / min(anchors.ratios)))
    return overlap_warning(float(largest) / float(meta.model_config.input_scale), overlap_px)  # in scene px


def write_detections(frame: gpd.GeoDataFrame, path: str, *, overwrite: bool = False) -> None:
    """Write detections by extension (.geojson RFC 7946 in EPSG:4326; .gpkg,
    .shp and .parquet in the frame's CRS), atomically, with the run's metadata
    (``frame.attrs["geodet"]``) where the format has a place for it."""
    from geodet.io.formats import write_vector

    write_vector(frame, path, overwrite=overwrite)

"""Detect objects in scenes and return georeferenced boxes.

``detect(scene, model=...)`` is the Python API behind ``geodet detect``:
tiled, streaming inference (:mod:`geodet.inference.predict`), cross-chip stitching
(:mod:`geodet.core.stitch`) in scene pixels, then each box's four pixel corners
mapped through the scene's affine.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import geopandas as gpd

from geodet.config import DetectConfig, JobConfig
from geodet.errors import ConfigError, GeodetError
from geodet.inference.cluster import dask_runner
from geodet.inference.detector import (
    check_model_file,
    load_detector,
    model_file_hash,
    model_file_metadata,
    with_metadata,
)
from geodet.inference.jobs import (
    JOB_SUFFIX,
    JobGone,
    detection_settings,
    job_dir_for,
    job_owns_output,
    mark_partial_output,
    open_job,
    remove_job,
)
from geodet.inference.scenes import combine_frames, in_process_runner, plan_tasks
from geodet.inference.tasks import Runner, SceneTask
from geodet.io.formats import METADATA_ATTR, check_output_path, check_shapefile_text, write_vector
from geodet.io.sources import redact, resolve_scenes

log = logging.getLogger(__name__)


#: Failed scenes logged one by one during a run; after these, one line says that more failed (so
#: 10,000 unreadable scenes do not print 10,000 warnings). Every failure stays in ``failed_scenes``.
FAILURES_LOGGED = 20


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
    if on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    config = _with_shorthands(config, bands=bands, chip_size=chip_size)
    tasks = plan_tasks(resolve_scenes(scenes, asset=asset, allow_local_hrefs=allow_local_hrefs), mosaic=config.mosaic)
    # A job's parts come back from GeoParquet without ``attrs``: the model file's metadata, read
    # here (its one sentence for a missing or bad file), gives the result its metadata.
    file_metadata = model_file_metadata(model) if job_dir is not None else None
    job, detector, pending = None, None, list(tasks)
    if job_dir is not None:
        job, detector = _open_detection_job(job_dir, model, config, job_config,
                                            load_here=runner is None and client is None)
        pending = _pending_tasks(job, tasks)
    outcomes = SceneOutcomes(job, on_error)
    if pending:
        if runner is None:
            runner = _default_runner(model, config, client=client, detector=detector, progress=progress, job=job)
        runner(pending, outcomes.done, outcomes.failed)
    out = combine_frames(outcomes.frames_of(tasks))
    if METADATA_ATTR not in out.attrs:
        with_metadata(out, file_metadata if file_metadata is not None else model_file_metadata(model))
    out.attrs["failed_scenes"] = outcomes.failed_scenes
    out.attrs["scenes_done_before"] = len(tasks) - len(pending)
    out.attrs["scenes_changed"] = list(job.changed) if job is not None else []
    return out


def _with_shorthands(config: DetectConfig, *, bands: Optional[Sequence[int]], chip_size: Optional[int]) -> DetectConfig:
    """``config`` with :func:`detect`'s ``bands`` and ``chip_size`` shorthands applied (None: left as is)."""
    if bands is not None:
        config = dataclasses.replace(config, bands=tuple(bands))
    if chip_size is not None:
        config = dataclasses.replace(config, chip_size=chip_size)
    return config


def _open_detection_job(job_dir, model, config: DetectConfig, job_config: JobConfig, *, load_here: bool):
    """``(job, detector)``: the job folder of a run, opened after its model was checked whole.

    The model is checked (or, with ``load_here``, loaded: the detector is returned for the in-process
    runner, else None) before the folder is made, so that a refused model leaves no folder that would
    refuse the corrected command.
    """
    detector = load_detector(model, config) if load_here else None
    if not load_here:
        check_model_file(model)
    job = open_job(job_dir, model_hash=model_file_hash(model), settings=detection_settings(config), config=job_config)
    return job, detector


def _pending_tasks(job, tasks: Sequence[SceneTask]) -> List[SceneTask]:
    """The tasks that ``job`` does not hold as done."""
    pending, done_before = job.split(tasks)
    if done_before:
        log.info("%d of %d scene(s) were finished by an earlier run", len(done_before), len(tasks))
    return pending


def _default_runner(model, config: DetectConfig, *, client, detector, progress, job) -> Runner:
    """The runner of a run that names none: a Dask cluster's (``client``) or this process's."""
    if client is not None:
        return dask_runner(client, model, config)
    return in_process_runner(detector or load_detector(model, config), progress=progress, job=job)


class SceneOutcomes:
    """What becomes of each scene of a run: the ``on_done`` / ``on_failed`` a runner reports to.

    Finished frames go to the job folder (``job``) or are kept here; failures are kept
    (``failed_scenes``: path -> one-sentence reason), logged up to :data:`FAILURES_LOGGED`,
    and raised at once when ``on_error`` is ``"raise"``.
    """

    def __init__(self, job, on_error: str):
        self.job, self.on_error = job, on_error
        self.frames: Dict[str, gpd.GeoDataFrame] = {}
        self.failed_scenes: Dict[str, str] = {}

    def done(self, task: SceneTask, frame: gpd.GeoDataFrame, seconds: float) -> None:
        self.failed_scenes.pop(task.path, None)
        if self.job is not None:
            self.job.record_done(task, frame, seconds)
        else:
            self.frames[task.path] = frame

    def failed(self, task: SceneTask, reason: str) -> None:
        reason = redact(reason)
        if self.job is not None:
            self.job.record_failed(task, reason)
        self.failed_scenes[task.path] = reason
        if self.on_error == "raise":
            raise GeodetError(reason)
        if len(self.failed_scenes) <= FAILURES_LOGGED:
            log.warning("skipped %s: %s", redact(task.path), reason)
        if len(self.failed_scenes) == FAILURES_LOGGED:
            log.warning("more than %d scenes failed; the others are not logged one by one (frame.attrs"
                        "['failed_scenes'] lists them all)", FAILURES_LOGGED)

    def frames_of(self, tasks: Sequence[SceneTask]) -> List[gpd.GeoDataFrame]:
        """The finished tasks' frames, in task order; a task with no report counts as failed.

        Raises:
            JobGone: another run of the same job removed its folder meanwhile.
            GeodetError: no scene finished.
        """
        job = self.job
        if job is not None and not job.folder.is_dir():
            raise JobGone(f"{job.folder} was removed by another run of the same job meanwhile.")
        finished = [task for task in tasks if (job.is_done(task) if job is not None else task.path in self.frames)]
        done_paths = {task.path for task in finished}
        for task in tasks:
            if task.path not in done_paths and task.path not in self.failed_scenes:
                self.failed_scenes[task.path] = "the runner reported no result for this scene."
        if not finished:
            raise GeodetError("no scene could be read: " + "; ".join(self.failed_scenes.values()))
        return [job.frame(task) if job is not None else self.frames[task.path] for task in finished]


def check_job_output(output: Union[str, os.PathLike], *, overwrite: bool = False) -> bool:
    """Check before any work that ``output`` can be written by a detection job.

    An existing ``output`` is refused unless ``overwrite`` or the job folder
    beside it wrote it as a partial output (a rerun then replaces it).

    Returns:
        whether an existing ``output`` may be replaced.

    Raises:
        GeodetError: the folder cannot be written, ``output`` exists, or it lies inside a job folder.
    """
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
    job_dir = job_dir_for(output)
    replace = check_job_output(output, overwrite=overwrite)
    if str(output).lower().endswith(".shp"):  # before any work: class names a shapefile would cut
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


def write_detections(frame: gpd.GeoDataFrame, path: str, *, overwrite: bool = False) -> None:
    """Write detections by extension (.geojson RFC 7946 in EPSG:4326; .gpkg,
    .shp and .parquet in the frame's CRS), atomically, with the run's metadata
    (``frame.attrs["geodet"]``) where the format has a place for it."""
    write_vector(frame, path, overwrite=overwrite)

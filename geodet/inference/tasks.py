"""A scene as the unit of detection work, and the interface of whatever runs the work.

:class:`SceneTask` is what runs in this process or as one Dask task;
a :data:`Runner` runs tasks somewhere (:func:`geodet.inference.scenes.in_process_runner`,
:func:`geodet.inference.cluster.dask_runner`) and reports each one to
:data:`OnDone` or :data:`OnFailed`. Plain values only, so that the job folder
(:mod:`geodet.inference.jobs`), the cluster and ``detect`` share them without
importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import geopandas as gpd


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


#: Called by a runner when a task finished: ``(task, its detections frame, seconds)``.
OnDone = Callable[[SceneTask, gpd.GeoDataFrame, float], None]


#: Called by a runner when a task failed: ``(task, one-sentence reason)``; it may raise to stop the run.
OnFailed = Callable[[SceneTask, str], None]


#: Runs tasks somewhere (in this process, on a Dask cluster) and reports each task exactly once,
#: to ``on_done`` or ``on_failed``, from the calling process.
Runner = Callable[[Sequence[SceneTask], OnDone, OnFailed], None]

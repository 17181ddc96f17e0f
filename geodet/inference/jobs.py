"""A detection job that survives failure: the job folder, its manifest, resume.

A job over many scenes (or one very large scene) keeps its work in a folder
beside the output, ``<output>.geodet-job/`` (:func:`job_dir_for`)::

    pools.gpkg.geodet-job/
      job.json                 model hash, settings that change detections, geodet version
      scenes/<key>.json        one record per scene: status done/failed, detections, seconds, reason,
                               what identified the scene's content (size and mtime, ETag...), its part's hash
      parts/<key>.parquet      one GeoParquet part per finished scene (its detections)
      blocks/<key>/<i>.npz     raw per-chip detections of finished chip blocks of an unfinished scene
      output.json              present only after a partial output was written (some scenes failed)

Every file is written whole through :mod:`geodet.io.outputs` (staged beside its
name, then renamed), so a kill -9 leaves either the old file or the new one,
and the temporaries of dead processes are swept when the job is opened. No
file is shared between scenes: a scene's record is the commit point, written
after its part, so two processes (a client and Dask's retry of a task, or
two runs of one command) can finish the same scene without corrupting
anything; the last identical record wins.

Running the same command again skips scenes whose record says done, retries
failed ones and resumes a large scene from its finished blocks. A scene whose
content changed since its record was written (:func:`scene_identity`), or
whose part no longer matches its record's hash, is detected again, and a
warning says so. A folder made
by another model or with other detection settings is refused with one
sentence (start over with ``--overwrite``). Pure bookkeeping: nothing here
runs a model or imports Dask, so the in-process runner and the cluster runner
share it (:data:`geodet.inference.tasks.Runner`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import geopandas as gpd
import numpy as np

from geodet import __version__
from geodet.config import DetectConfig, JobConfig
from geodet.errors import GeodetError
from geodet.inference.predict import ChipDetections
from geodet.inference.tasks import SceneTask
from geodet.io.outputs import TEMP_TAG, PathLike, remove_path, check_writable, staged_file, sweep_stale, temp_path
from geodet.io.raster import open_raster
from geodet.io.sources import http_validators, is_virtual, redact

log = logging.getLogger(__name__)

#: Suffix of the job folder: ``pools.gpkg`` -> ``pools.gpkg.geodet-job``.
JOB_SUFFIX = ".geodet-job"

#: :class:`DetectConfig` fields that change the detections; the others (batch size, reader
#: threads, device) change only speed, so a job may resume with other values of them.
#: (``mosaic`` is one: a scene of a mosaic reports what it owns, read with its neighbours.)
DETECTION_SETTINGS = (
    "chip_size", "overlap", "bands", "score_threshold", "nms_iou", "precision", "normalisation", "mosaic",
    "tta",
)

#: Version of the job folder's layout.
LAYOUT = 1

DONE, FAILED = "done", "failed"

#: The entries of a job folder that geodet writes; :func:`remove_job` leaves any other alone.
JOB_ENTRIES = ("job.json", "scenes", "parts", "blocks", "output.json")


class JobGone(GeodetError):
    """The job folder was removed while this run wrote to it: another run of the same command
    finished the job (or started it over)."""


@contextlib.contextmanager
def _in_job(folder: Path) -> Iterator[None]:
    """Turn a write that fails because the job folder vanished into :class:`JobGone`, and one
    that fails otherwise (a read-only folder, a full disk) into one sentence."""
    try:
        yield
    except FileNotFoundError:
        if folder.is_dir():
            raise
        raise JobGone(f"{folder} was removed by another run of the same job meanwhile.") from None
    except OSError as exc:
        raise GeodetError(f"the job folder {folder} cannot be written ({exc.strerror or exc}); make room or "
                          "make it writable, then run the same command again.") from None


def job_dir_for(output: PathLike) -> Path:
    """The job folder of an output file: ``<output>.geodet-job`` beside it."""
    return Path(str(output) + JOB_SUFFIX)


def scene_ref(path: str) -> str:
    """The scene reference a job identifies a scene by: absolute for a local file, as given otherwise."""
    return os.path.abspath(path) if os.path.exists(path) else str(path)


def task_key(task: "SceneTask") -> str:
    """A file-name-safe key of a task, stable across runs: ``<scene stem>-<12 hex of SHA-256 of its ref>``."""
    ref = scene_ref(task.path)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(ref.rstrip("/")).stem)[:40] or "scene"
    return f"{stem}-{hashlib.sha256(ref.encode('utf-8')).hexdigest()[:12]}"


def scene_identity(path: str) -> Dict[str, object]:
    """What identifies a scene's content now, so that a rerun tells a changed scene from the one a
    record was made of: ``size`` and ``mtime_ns`` of a local file; the ``etag``, ``last_modified``
    and ``size`` an http(s) server sends (:func:`geodet.io.sources.http_validators`); for any other GDAL
    virtual path (``/vsis3/``, ``/vsizip/``...), a ``header`` hash of its size, bands, types,
    georeferencing, tags and overviews and of its first block of band 1. Empty when it cannot be
    told now (the scene cannot be reached): the record is then trusted.
    """
    ref = str(path)
    if not is_virtual(ref):
        try:
            st = os.stat(ref)
        except OSError:
            return {}
        return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}
    if ref.startswith("/vsicurl/") and ref[len("/vsicurl/"):].lower().startswith(("http://", "https://")):
        return dict(http_validators(ref[len("/vsicurl/"):]))
    from rasterio.windows import Window


    try:
        with open_raster(ref) as src:
            window = Window(0, 0, min(src.width, 256), min(src.height, 256))
            header = [sorted((k, str(v)) for k, v in src.profile.items()), sorted(src.tags().items()),
                      src.overviews(1), int(src.checksum(1, window=window))]
    except Exception as exc:  # noqa: BLE001 - unreachable now: its run says why
        log.debug("%s: no identity (%s)", redact(ref), redact(exc))
        return {}
    return {"header": hashlib.sha256(json.dumps(header, default=str).encode()).hexdigest()[:16]}


def _identity_token(identity: Dict[str, object]) -> str:
    return settings_hash(identity) if identity else ""


def _digest(path: Path) -> str:
    """16 hex digits of SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def detection_settings(config: DetectConfig) -> Dict[str, object]:
    """The settings of ``config`` that change detections, JSON-safe (None: the model's own value)."""
    out: Dict[str, object] = {}
    for name in DETECTION_SETTINGS:
        value = getattr(config, name)
        out[name] = list(value) if isinstance(value, tuple) else value
    return out


def settings_hash(settings: Dict[str, object]) -> str:
    """16 hex digits of SHA-256 of the settings' canonical JSON."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _version() -> str:
    return __version__


@dataclass
class SceneRecord:
    """One scene's line of the manifest (``scenes/<key>.json``).

    Attributes:
        scene: the scene reference (:func:`scene_ref`), redacted (:func:`geodet.io.sources.redact`: a
            signed URL's query is not kept).
        key: :func:`task_key`.
        status: ``"done"`` or ``"failed"``.
        detections: rows of its part (done).
        seconds: wall time of the scene.
        reason: why it failed (failed).
        model_hash, settings_hash, version: what made it.
        identity: what identified the scene's content (:func:`scene_identity`) before it ran.
        part_sha256: 16 hex digits of SHA-256 of its part (done).
        finished: Unix time the record was written.
        host, pid: who wrote it.
    """

    scene: str
    key: str
    status: str
    detections: int = 0
    seconds: float = 0.0
    reason: str = ""
    model_hash: str = ""
    settings_hash: str = ""
    version: str = ""
    identity: Dict[str, object] = field(default_factory=dict)
    part_sha256: str = ""
    finished: float = field(default_factory=time.time)
    host: str = field(default_factory=lambda: os.uname().nodename)
    pid: int = field(default_factory=os.getpid)


def _write_json(path: Path, data: dict, *, overwrite: bool) -> None:
    with staged_file(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignored %s, which cannot be read (%s)", path, exc)
        return None


class BlockStore:
    """The finished chip blocks of one scene (``blocks/<key>/<i>.npz``).

    A block file holds the raw per-chip detections of chips
    ``[i * block_chips, (i + 1) * block_chips)`` and the plan it belongs to
    (chip count, block size, the scene's identity token); a file of another plan, or of the
    scene's earlier content, is ignored.
    """

    def __init__(self, folder: Path, block_chips: int, identity: str = ""):
        self.folder, self.block_chips, self.identity = Path(folder), int(block_chips), str(identity)

    def _path(self, index: int) -> Path:
        return self.folder / f"{index:06d}.npz"

    def load(self, index: int, n_chips: int) -> Optional["ChipDetections"]:
        """Block ``index`` of a scene of ``n_chips`` chips, or None when not finished."""
        path = self._path(index)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if int(z["n_chips"]) != n_chips or int(z["block_chips"]) != self.block_chips:
                    return None
                if (str(z["identity"]) if "identity" in z.files else "") != self.identity:
                    return None
                return ChipDetections(z["boxes_px"], z["scores"], z["labels"], z["chip_index"],
                                      int(z["chips"]), int(z["skipped"]))
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignored %s, which cannot be read (%s)", path, exc)
            return None

    def save(self, index: int, n_chips: int, dets: "ChipDetections") -> None:
        """Keep block ``index`` (written whole, replacing any earlier copy).

        Raises:
            JobGone: the job folder was removed meanwhile.
        """
        with _in_job(self.folder.parent.parent):
            self.folder.mkdir(exist_ok=True)  # inside blocks/ of the job folder, never recreating that
            with staged_file(self._path(index), overwrite=True) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, boxes_px=dets.boxes_px, scores=dets.scores, labels=dets.labels,
                         chip_index=dets.chip_index, chips=dets.chips, skipped=dets.skipped,
                         n_chips=n_chips, block_chips=self.block_chips, identity=self.identity)

    def clear(self) -> None:
        remove_path(self.folder)


class Job:
    """An open job folder (:func:`open_job`): what is done, and where each result goes.

    ``record_done`` and ``record_failed`` have the runner contract's
    ``OnDone`` / ``OnFailed`` signatures (:data:`geodet.inference.tasks.Runner`).
    """

    def __init__(self, folder: Path, *, model_hash: str, settings: Dict[str, object], config: JobConfig = JobConfig()):
        self.folder = Path(folder)
        self.model_hash = model_hash
        self.settings = settings
        self.settings_hash = settings_hash(settings)
        self.config = config
        self._identities: Dict[str, Dict[str, object]] = {}
        #: Scenes found changed since an earlier run finished them (:meth:`split`), run again.
        self.changed: List[str] = []

    # ------------------------------------------------------------------ paths
    def _record_path(self, task: "SceneTask") -> Path:
        return self.folder / "scenes" / f"{task_key(task)}.json"

    def part_path(self, task: "SceneTask") -> Path:
        """Where the task's detections (GeoParquet) go."""
        return self.folder / "parts" / f"{task_key(task)}.parquet"

    def blocks(self, task: "SceneTask") -> BlockStore:
        """The chip-block checkpoints of a task (of its scene's content as it is now)."""
        return BlockStore(self.folder / "blocks" / task_key(task), self.config.block_chips,
                          _identity_token(self.identity(task)))

    def identity(self, task: "SceneTask") -> Dict[str, object]:
        """:func:`scene_identity` of the task's scene, found once per run (before it runs)."""
        key = task_key(task)
        if key not in self._identities:
            self._identities[key] = scene_identity(task.path)
        return self._identities[key]

    # ------------------------------------------------------------------ reading
    def record(self, task: "SceneTask") -> Optional[SceneRecord]:
        """The task's manifest record, or None when it has none (or one made by another model/settings)."""
        data = _read_json(self._record_path(task))
        if not data:
            return None
        try:
            rec = SceneRecord(**data)
        except TypeError:
            return None
        if rec.model_hash != self.model_hash or rec.settings_hash != self.settings_hash:
            return None
        return rec

    def is_done(self, task: "SceneTask", *, say: bool = False) -> bool:
        """Whether the task is finished: its record says done, its scene is unchanged since
        (:func:`scene_identity`; unknown now counts as unchanged) and its part is whole (its hash).
        ``say``: warn about a changed scene (noted in :attr:`changed`) or a damaged part."""
        rec = self.record(task)
        part = self.part_path(task)
        if rec is None or rec.status != DONE or not part.exists():
            return False
        now = self.identity(task)
        if now and rec.identity != now:
            if say:
                log.warning("%s changed since an earlier run finished it (%s); detecting it again",
                            redact(task.path), _differences(rec.identity, now))
                self.changed.append(task.path)
            return False
        try:
            whole = not rec.part_sha256 or _digest(part) == rec.part_sha256
        except OSError:
            whole = False
        if not whole and say:
            log.warning("the part of %s in %s is damaged or unreadable; detecting the scene again",
                        redact(task.path), self.folder)
        return whole

    def split(self, tasks: Sequence["SceneTask"]) -> Tuple[List["SceneTask"], List["SceneTask"]]:
        """``(pending, done)``: the tasks still to run (new, failed before, changed since, or with a
        damaged part), and those finished. Each scene's identity is found here, before any runs."""
        with ThreadPoolExecutor(max_workers=16, thread_name_prefix="geodet-identity") as pool:
            for task, identity in zip(tasks, pool.map(lambda t: scene_identity(t.path), tasks)):
                self._identities[task_key(task)] = identity
        pending, done = [], []
        for task in tasks:
            (done if self.is_done(task, say=True) else pending).append(task)
        return pending, done

    def failures(self, tasks: Sequence["SceneTask"]) -> Dict[str, str]:
        """Scene path -> reason of the tasks whose record says failed."""
        out = {}
        for task in tasks:
            rec = self.record(task)
            if rec is not None and rec.status == FAILED:
                out[task.path] = rec.reason
        return out

    def frame(self, task: "SceneTask") -> "gpd.GeoDataFrame":
        """The finished task's detections, read back from its part."""
        with _in_job(self.folder):
            try:
                return gpd.read_parquet(self.part_path(task))
            except (OSError, ValueError) as exc:
                if isinstance(exc, FileNotFoundError):
                    raise
                raise GeodetError(f"the part of {redact(task.path)} in {self.folder} cannot be read "
                                  f"({redact(exc)}); run the same command again to detect that scene again.") from None

    # ------------------------------------------------------------------ writing
    def _record(self, task: "SceneTask", status: str, **fields) -> None:
        rec = SceneRecord(redact(scene_ref(task.path)), task_key(task), status, model_hash=self.model_hash,
                          settings_hash=self.settings_hash, version=_version(), identity=self.identity(task), **fields)
        with _in_job(self.folder):
            _write_json(self._record_path(task), asdict(rec), overwrite=True)

    def record_done(self, task: "SceneTask", frame: "gpd.GeoDataFrame", seconds: float) -> None:
        """Keep a finished scene: its part first, then its record (the commit), then drop its blocks.

        Raises:
            JobGone: the job folder was removed meanwhile.
        """
        with _in_job(self.folder), staged_file(self.part_path(task), overwrite=True) as tmp:
            frame.to_parquet(tmp)
            digest = _digest(tmp)
        self._record(task, DONE, detections=int(len(frame)), seconds=round(float(seconds), 3), part_sha256=digest)
        self.blocks(task).clear()
        log.info("%s: done, %d detections in %.1f s", redact(task.path), len(frame), seconds)

    def record_failed(self, task: "SceneTask", reason: str) -> None:
        """Note a failed scene (kept blocks stay for the retry); a done record is never replaced."""
        if self.is_done(task):
            return
        self._record(task, FAILED, reason=redact(reason))
        log.debug("%s failed: %s", redact(task.path), redact(reason))  # the caller reports it

    def remove(self) -> None:
        """Delete the job folder (after its output was written whole)."""
        remove_job(self.folder)


def mark_partial_output(folder: PathLike, output: PathLike) -> None:
    """Note in job folder ``folder`` that ``output`` was written from some scenes only (others
    failed), so that the rerun may replace it (:func:`job_owns_output`)."""
    st = os.stat(output)
    _write_json(Path(folder) / "output.json",
                {"output": os.path.abspath(output), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino},
                overwrite=True)


def job_owns_output(folder: PathLike, output: PathLike) -> bool:
    """``output`` is the partial output that the job in ``folder`` wrote, unchanged since."""
    folder = Path(folder)
    if not (folder / "output.json").exists():
        return False
    data = _read_json(folder / "output.json")
    try:
        st = os.stat(output)
    except OSError:
        return False
    return bool(data) and data.get("output") == os.path.abspath(output) and (
        data.get("size"), data.get("mtime_ns"), data.get("inode")) == (st.st_size, st.st_mtime_ns, st.st_ino)


def remove_job(folder: PathLike) -> None:
    """Delete a job folder: renamed aside first, so no half-deleted folder is ever taken for a job.

    A folder that also holds entries geodet did not write (not in :data:`JOB_ENTRIES`) keeps them:
    only geodet's entries are deleted (``job.json`` first, so it is no job folder meanwhile), and a
    warning names the folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in JOB_ENTRIES and TEMP_TAG not in p.name)
    if foreign:
        for name in JOB_ENTRIES:
            remove_path(folder / name)
        log.warning("kept %s, which holds files geodet did not write (%s%s); geodet's own files in it were removed",
                    folder, ", ".join(foreign[:5]), ", ..." if len(foreign) > 5 else "")
        return
    aside = temp_path(folder)
    os.rename(folder, aside)
    remove_path(aside)


def _differences(old: Dict[str, object], new: Dict[str, object]) -> str:
    names = sorted(set(old) | set(new))
    return ", ".join(f"{n} {old.get(n)!r} now {new.get(n)!r}" for n in names if old.get(n) != new.get(n))


def open_job(
    folder: PathLike,
    *,
    model_hash: Optional[str],
    settings: Dict[str, object],
    config: JobConfig = JobConfig(),
    overwrite: bool = False,
) -> Job:
    """Open (or create) the job folder ``folder`` for a model and settings.

    Args:
        folder: the job folder (:func:`job_dir_for`).
        model_hash: :func:`geodet.modeling.modelfile.model_hash` of the model file.
        settings: :func:`detection_settings` of the run.
        config: block size of checkpoints.
        overwrite: delete an existing job folder first (start over).

    Raises:
        GeodetError: an in-memory model (no hash), or the folder holds a job of another model or
            other settings, or is no job folder.
    """
    folder = Path(folder)
    if model_hash is None:
        raise GeodetError("a resumable job needs a model file; save the model and pass its path.")
    if overwrite:
        remove_job(folder)
    if folder.exists() and not folder.is_dir():
        raise GeodetError(f"{folder} is in the way of the job folder; remove it or pass --overwrite.")
    manifest = {"layout": LAYOUT, "model_hash": model_hash, "settings": settings,
                "settings_hash": settings_hash(settings), "version": _version(), "created": time.time()}
    path = folder / "job.json"
    try:
        sweep_stale(folder.parent)
        for sub in ("", "scenes", "parts", "blocks"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            sweep_stale(folder / sub)
            check_writable(folder / sub)
        for block_dir in (folder / "blocks").iterdir():
            if block_dir.is_dir():
                sweep_stale(block_dir)
        if not path.exists():
            try:
                _write_json(path, manifest, overwrite=False)
            except GeodetError:  # another process created it meanwhile: check theirs, below
                pass
    except GeodetError as exc:
        raise GeodetError(f"the job folder {folder} cannot be used: {exc}") from None
    except OSError as exc:
        raise GeodetError(f"the job folder {folder} cannot be used ({exc.strerror or exc}).") from None
    found = _read_json(path)
    if not isinstance(found, dict) or "model_hash" not in found:
        raise GeodetError(f"{folder} is not a geodet job folder that can be read; remove it or pass --overwrite.")
    if found["model_hash"] != model_hash:
        raise GeodetError(
            f"{folder} holds a job started with another model (hash {found['model_hash']}, this one is "
            f"{model_hash}); run it with that model, or start over with --overwrite."
        )
    if found.get("settings_hash") != manifest["settings_hash"]:
        raise GeodetError(
            f"{folder} holds a job started with other settings ({_differences(found.get('settings', {}), settings)}); "
            "run it with those, or start over with --overwrite."
        )
    if found.get("version") != manifest["version"]:
        log.warning("%s was started by geodet %s; this is %s", folder, found.get("version"), manifest["version"])
    return Job(folder, model_hash=model_hash, settings=settings, config=config)

"""Fan detection out over a Dask cluster: one scene per task, one loaded model per worker.

The only module of geodet that imports Dask (``dask.distributed``, the optional
extra ``geodet[cluster]``). :func:`predict.predict_scene` and
:func:`detection.detect_task` stay unaware of it: a worker runs exactly what
the in-process path runs, one :class:`~geodet.inference.tasks.SceneTask` at a time.

Where the cluster comes from (:func:`open_client`):

- ``--cluster local:N``: a :class:`distributed.LocalCluster` of N worker
  processes on this machine, one Dask thread each (a scene is one task),
  no dashboard, each worker's memory limited by
  :attr:`ClusterConfig.memory_limit <geodet.config.ClusterConfig>`.
- ``--scheduler tcp://HOST:8786``: a cluster someone already runs
  (``dask scheduler`` + ``dask worker``, dask-jobqueue, dask-kubernetes...).
  Its workers need geodet installed (the same version); they need NOT see
  the client's files.
- The Python API takes any :class:`distributed.Client`.

How the model reaches the workers: the client reads the model file's bytes
once and registers them as a worker plugin (:class:`ModelFilePlugin`, named
after :func:`geodet.modeling.modelfile.model_hash`). The scheduler hands the plugin to
every worker, also to workers that join or restart later (a nanny restarting
a killed worker), and the plugin writes the file into the worker's own
scratch folder. Shipping bytes rather than a path is what lets workers on
other machines, which cannot see the client's disk, run the job. Each worker
process then loads the model once, on its first scene, and keeps it (one
detector per process, keyed by model hash, settings, device and threads).
The plugin stays registered after the job so that a second job with the same
model reuses it; its bytes are held by the scheduler until it stops.

Devices and threads: with ``device`` ``auto`` or ``cuda``, a worker on a GPU
machine takes ``cuda:(slot % GPU count)`` (the slot is the worker's place
among the workers of its machine when the job starts, e.g.
``dask worker --nworkers 8`` on an 8-GPU machine; a worker that sees one GPU,
e.g. through ``CUDA_VISIBLE_DEVICES``, takes it). A worker limits torch to its
share of its machine's cores: cores // workers on that machine.
Memory per worker stays bounded as in-process: the streaming predict path.

Failure: a :class:`~geodet.errors.GeodetError` in a scene (a damaged or
unreadable file) is a failed scene, reported at once and never retried; a
worker that dies mid-scene has its scene re-run elsewhere by the scheduler; a
scene that keeps killing its workers (``allowed-failures``) fails. Any other
exception is retried :attr:`ClusterConfig.retries` times and then, being a
bug, raised with its traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import time
import uuid
import zlib
from pathlib import Path
from typing import Dict, Iterator, Mapping, Optional, Sequence, Tuple

from geodet.config import ClusterConfig, DetectConfig
from geodet.errors import GeodetError
from geodet.inference.detector import Detector, config_for_model, default_model_path, load_detector
from geodet.inference.scenes import detect_task, scene_name
from geodet.inference.tasks import OnDone, OnFailed, Runner, SceneTask
from geodet.modeling.modelfile import load_model, model_hash

log = logging.getLogger(__name__)

_LOCAL_SPEC = re.compile(r"^local:(\d+)$")
_SCHEDULER_SCHEMES = ("tcp", "tls")
_PLUGIN_PREFIX = "geodet-model-"


# --------------------------------------------------------------------- specs (pure)


def parse_cluster_spec(spec: str) -> int:
    """Worker processes asked for by ``--cluster local:N``.

    Raises:
        GeodetError: anything but ``local:N`` with N >= 1.
    """
    match = _LOCAL_SPEC.match(str(spec).strip())
    if not match or int(match.group(1)) < 1:
        raise GeodetError(f"--cluster must be local:N with N >= 1 worker processes (e.g. local:4), got {spec!r}.")
    return int(match.group(1))


def parse_scheduler_address(address: str) -> str:
    """A Dask scheduler address as ``tcp://HOST:PORT`` (``HOST:PORT`` is taken as tcp).

    Raises:
        GeodetError: not ``[tcp|tls]://HOST:PORT``.
    """
    text = str(address).strip()
    if "://" not in text:
        text = "tcp://" + text
    scheme, _, rest = text.partition("://")
    host, sep, port = rest.rpartition(":")
    if scheme not in _SCHEDULER_SCHEMES or not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise GeodetError(f"--scheduler must be tcp://HOST:PORT (e.g. tcp://10.0.0.5:8786), got {address!r}.")
    return f"{scheme}://{host}:{port}"


def worker_index(name: object) -> int:
    """A stable number for a worker: its name when that is a number (LocalCluster: 0..N-1), else a hash of it."""
    if isinstance(name, int):
        return name
    text = str(name)
    return int(text) if text.isdigit() else zlib.crc32(text.encode())


def worker_slot(address: str, name: object, host_workers: Sequence[str]) -> int:
    """A worker's place among the workers of its machine: its position in ``host_workers`` (their addresses,
    sorted), so that the G workers of a G-GPU machine take G different GPUs; a worker that joined later
    (not in the list) falls back to :func:`worker_index` of its name."""
    if address in host_workers:
        return list(host_workers).index(address)
    return worker_index(name)


def worker_device(requested: str, index: int, cuda_devices: int) -> str:
    """The device a worker runs on: ``auto``/``cuda`` with GPUs -> ``cuda:(index % cuda_devices)``.

    ``auto`` without a GPU is ``cpu``; an explicit ``cpu`` or ``cuda:K`` is kept;
    ``cuda`` without a GPU is kept, so that loading refuses it in one sentence.
    """
    if requested in ("auto", "cuda") and cuda_devices > 0:
        return f"cuda:{index % cuda_devices}"
    if requested == "auto":
        return "cpu"
    return requested


def threads_per_worker(cpus: int, workers_on_host: int) -> int:
    """Torch threads of one worker: its share of the host's cores, at least 1."""
    return max(1, int(cpus) // max(1, int(workers_on_host)))


# --------------------------------------------------------------------- connecting


def _require_dask():
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise GeodetError("running on a Dask cluster needs the optional extra: pip install 'geodet[cluster]'.") from None
    return distributed


def _follow_geodet_log_level() -> None:
    """Dask's own messages (workers starting, joining, closing) only as verbose as the caller's logging.

    Dask sets its loggers to INFO; under ``geodet detect`` (root at WARNING unless -v) they would
    print a dozen lines per run.
    """
    root_level = logging.getLogger().getEffectiveLevel()
    dask_logger = logging.getLogger("distributed")
    if dask_logger.getEffectiveLevel() < root_level:
        dask_logger.setLevel(root_level)


@contextlib.contextmanager
def open_client(
    cluster: Optional[str] = None,
    scheduler: Optional[str] = None,
    *,
    config: ClusterConfig = ClusterConfig(),
) -> Iterator[Optional[object]]:
    """A :class:`distributed.Client` for ``--cluster local:N`` or ``--scheduler ADDRESS``; None for neither.

    A local cluster is started here and shut down on exit; a scheduler's
    cluster is only disconnected from.

    Raises:
        GeodetError: both given, a bad spec or address, a scheduler that does
            not answer within ``config.connect_timeout_s``, Dask not installed.
    """
    if cluster and scheduler:
        raise GeodetError("give either --cluster or --scheduler, not both.")
    if not cluster and not scheduler:
        yield None
        return
    if cluster:
        n_workers = parse_cluster_spec(cluster)
        distributed = _require_dask()
        _follow_geodet_log_level()
        with distributed.LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=config.memory_limit,
            dashboard_address=None,  # no dashboard; its health endpoints on a free local port, never a clash:
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        ) as local, distributed.Client(local, set_as_default=False) as client:
            log.info("started a local Dask cluster of %d worker processes at %s", n_workers, local.scheduler_address)
            yield client
        return
    address = parse_scheduler_address(scheduler)
    distributed = _require_dask()
    _follow_geodet_log_level()
    try:
        client = distributed.Client(address, timeout=config.connect_timeout_s, set_as_default=False)
    except (OSError, TimeoutError):
        raise GeodetError(
            f"no Dask scheduler answered at {address} within {config.connect_timeout_s:g} s."
        ) from None
    with client:
        yield client


# --------------------------------------------------------------------- worker side

try:  # the plugin base class, when Dask is there (geodet imports without it)
    from distributed.diagnostics.plugin import WorkerPlugin as _WorkerPluginBase
except ImportError:  # pragma: no cover - exercised only without the extra
    _WorkerPluginBase = object

#: On each worker process: model hash -> path of the model file the plugin wrote.
_MODEL_FILES: Dict[str, str] = {}
#: On each worker process: the one detector kept loaded, with its key.
_DETECTOR: Dict[tuple, Detector] = {}


class ModelFilePlugin(_WorkerPluginBase):
    """Carries a model file's bytes to every worker, present and future, and writes them to its scratch folder.

    Attributes:
        model_bytes: the model file.
        model_hash: :func:`geodet.modeling.modelfile.model_hash` of those bytes (the file's name on the worker).
    """

    idempotent = True  # registering the same model again is a no-op

    def __init__(self, model_bytes: bytes, model_hash: str):
        self.model_bytes = model_bytes
        self.model_hash = model_hash

    def setup(self, worker) -> None:
        path = Path(worker.local_directory) / f"geodet-model-{self.model_hash}.pt"
        if not path.exists():
            tmp = path.with_suffix(".part")
            tmp.write_bytes(self.model_bytes)
            os.replace(tmp, path)
        _MODEL_FILES[self.model_hash] = str(path)

    def teardown(self, worker) -> None:
        path = _MODEL_FILES.pop(self.model_hash, None)
        for key in [k for k in _DETECTOR if k[0] == self.model_hash]:
            del _DETECTOR[key]
        if path:
            Path(path).unlink(missing_ok=True)


def _worker_detector(
    model_hash: str, model_name: str, config: DetectConfig, hosts: Mapping[str, Sequence[str]]
) -> Detector:
    """This worker's loaded detector for the model (loaded on the first scene, then kept)."""
    import torch
    from distributed import get_worker
    from distributed.comm import get_address_host

    worker = get_worker()
    cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    host_workers = hosts.get(get_address_host(worker.address), ())
    device = worker_device(config.device, worker_slot(worker.address, worker.name, host_workers), cuda_devices)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = threads_per_worker(cpus, len(host_workers))
    key = (model_hash, config, device, threads)
    if key not in _DETECTOR:
        path = _MODEL_FILES.get(model_hash)
        if path is None:
            raise RuntimeError(f"model {model_hash} was not delivered to worker {worker.name}")
        _DETECTOR.clear()  # one model held per worker
        torch.set_num_threads(threads)
        detector = load_detector(path, _with_device(config, device))
        detector.model_name = model_name
        _DETECTOR[key] = detector
        log.info("worker %s: loaded %s on %s with %d torch threads", worker.name, model_name, device, threads)
    return _DETECTOR[key]


def _with_device(config: DetectConfig, device: str) -> DetectConfig:
    return dataclasses.replace(config, device=device)


def _detect_on_worker(
    task: SceneTask, model_hash: str, model_name: str, config: DetectConfig, hosts: Mapping[str, Sequence[str]]
) -> Tuple[str, object, float]:
    """One scene on a worker: ``("done", frame, seconds)`` or ``("failed", reason, seconds)``.

    A GeodetError is returned, not raised, so that Dask does not retry a damaged scene.
    """
    start = time.perf_counter()
    try:
        detector = _worker_detector(model_hash, model_name, config, hosts)
        start = time.perf_counter()
        frame = detect_task(task, detector)
    except GeodetError as exc:
        return "failed", str(exc), time.perf_counter() - start
    return "done", frame, time.perf_counter() - start


# --------------------------------------------------------------------- client side


def workers_by_host(client) -> Dict[str, Tuple[str, ...]]:
    """The addresses of the client's workers now, per machine, sorted: ``{host: (address, ...)}``."""
    from distributed.comm import get_address_host

    by_host: Dict[str, list] = {}
    for address in client.scheduler_info().get("workers", {}):
        by_host.setdefault(get_address_host(address), []).append(address)
    return {host: tuple(sorted(addresses)) for host, addresses in by_host.items()}


def _model_path(model) -> str:
    if isinstance(model, tuple):
        raise GeodetError(
            "a Dask cluster runs a model file: save the model (geodet.modeling.modelfile.save_model) and pass its path."
        )
    return default_model_path() if model is None else str(model)


def dask_runner(
    client,
    model=None,
    config: DetectConfig = DetectConfig(),
    *,
    cluster_config: ClusterConfig = ClusterConfig(),
) -> Runner:
    """A :data:`Runner` that detects each scene as one task on ``client``'s cluster.

    The model file is checked here, on the client (a bad file or settings fail
    before any scene is sent), and its bytes are registered with the cluster
    (:class:`ModelFilePlugin`). The runner submits one task per scene
    (``pure=False``: every run computes) and calls ``on_done(task, frame,
    seconds)`` or ``on_failed(task, reason)`` in the calling process as each
    scene ends, in the order they end, so the caller can write each part as it
    comes: a client killed mid-job loses only the scenes still running.
    Every scene ends exactly once, also when a worker dies mid-job.

    Args:
        client: a :class:`distributed.Client`.
        model: a model file path, or None for the bundled default model.
        config: inference settings; ``device`` is resolved per worker
            (:func:`worker_device`).
        cluster_config: retries of unexpected errors.

    Raises:
        GeodetError: a missing or bad model file, settings that do not fit it,
            an in-memory ``(net, meta)`` model.
    """
    _require_dask()
    path = _model_path(model)
    _, meta = load_model(path, device="cpu")
    config_for_model(config, meta)  # refuse bad settings here, not once per scene
    digest = model_hash(path)
    name = Path(path).name
    client.register_plugin(ModelFilePlugin(Path(path).read_bytes(), digest), name=_PLUGIN_PREFIX + digest)

    def run(tasks: Sequence[SceneTask], on_done: OnDone, on_failed: OnFailed) -> None:
        from distributed import KilledWorker, as_completed

        hosts = workers_by_host(client)
        job = uuid.uuid4().hex[:8]
        pending = {}
        for i, task in enumerate(tasks):
            future = client.submit(
                _detect_on_worker, task, digest, name, config, hosts,
                key=f"geodet-detect-{job}-{i}-{scene_name(task.path)}",
                pure=False, retries=cluster_config.retries,
            )
            pending[future] = task
        try:
            for future in as_completed(list(pending), loop=client.loop):
                task = pending.pop(future)
                if future.status == "error":
                    exc = future.exception()
                    if isinstance(exc, KilledWorker):
                        on_failed(task, "its worker died every time it ran it (out of memory?)")
                        continue
                    future.result()  # a bug: raise it with its traceback
                status, value, seconds = future.result()
                future.release()
                if status == "done":
                    on_done(task, value, seconds)
                else:
                    on_failed(task, value)
        finally:
            if pending:
                client.cancel(list(pending))

    return run

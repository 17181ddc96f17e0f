"""geodet.inference.cluster: scenes as Dask tasks on real local clusters (worker processes, a scheduler subprocess)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("distributed")

from geodet.inference.cluster import (  # noqa: E402
    dask_runner,
    open_client,
    parse_cluster_spec,
    parse_scheduler_address,
    threads_per_worker,
    worker_device,
    worker_index,
    worker_slot,
)
from geodet.config import ClusterConfig, DetectConfig  # noqa: E402
from geodet.inference.detection import detect  # noqa: E402
from geodet.inference.detector import default_model_path
from geodet.inference.scenes import combine_frames, plan_tasks
from geodet.errors import GeodetError  # noqa: E402
from geodet_cli.main import cli  # noqa: E402

#: float32 everywhere: workers run 1 torch thread, this process 2, and only the order of float sums may differ.
CONFIG = DetectConfig(precision="float32", score_threshold=0.3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_same_detections(got, want):
    """Same rows, scores and boxes up to float32 summation-order noise (1e-4 in scores, 1e-3 m in corners)."""
    assert len(got) == len(want) > 0
    assert got.crs == want.crs
    keys = ["scene", "class"]
    got = got.sort_values(keys + ["score"], ignore_index=True)
    want = want.sort_values(keys + ["score"], ignore_index=True)
    assert (got[keys].to_numpy() == want[keys].to_numpy()).all()
    np.testing.assert_allclose(got.score.to_numpy(), want.score.to_numpy(), atol=1e-4)
    np.testing.assert_allclose(got.geometry.bounds.to_numpy(), want.geometry.bounds.to_numpy(), atol=1e-3)


# ------------------------------------------------------------------ specs: pure


def test_specs_and_placement_rules():
    assert parse_cluster_spec("local:3") == 3
    for bad in ("local:0", "local", "local:x", "3", "remote:2"):
        with pytest.raises(GeodetError, match="local:N"):
            parse_cluster_spec(bad)
    assert parse_scheduler_address("tcp://10.0.0.5:8786") == "tcp://10.0.0.5:8786"
    assert parse_scheduler_address("node7:8786") == "tcp://node7:8786"
    for bad in ("tcp://host", "http://host:8786", "host:port", "tcp://:8786", "tcp://h:70000"):
        with pytest.raises(GeodetError, match="tcp://HOST:PORT"):
            parse_scheduler_address(bad)
    assert worker_index(3) == 3 and worker_index("2") == 2
    node = ("tcp://10.0.0.1:4001", "tcp://10.0.0.1:4002", "tcp://10.0.0.1:4003")
    assert [worker_slot(a, a, node) for a in node] == [0, 1, 2]  # one GPU each on a 3-GPU machine
    assert worker_slot("tcp://10.0.0.1:4999", 5, node) == 5  # joined later: its name
    assert worker_index("tcp://10.0.0.1:4000") == worker_index("tcp://10.0.0.1:4000")  # stable
    assert [worker_device("auto", i, 4) for i in (0, 5)] == ["cuda:0", "cuda:1"]
    assert worker_device("cuda", 7, 1) == "cuda:0"
    assert worker_device("auto", 7, 0) == "cpu"
    assert worker_device("cpu", 1, 8) == "cpu" and worker_device("cuda:2", 0, 8) == "cuda:2"
    assert worker_device("cuda", 0, 0) == "cuda"  # refused in one sentence when the worker loads the model
    assert threads_per_worker(16, 4) == 4 and threads_per_worker(2, 3) == 1 and threads_per_worker(8, 0) == 8
    for bad in (dict(retries=-1), dict(retries=1.5), dict(connect_timeout_s=0)):
        with pytest.raises(GeodetError):
            ClusterConfig(**bad)


def test_bad_specs_and_absent_scheduler_are_one_sentence(make_scene_files, tmp_path):
    with pytest.raises(GeodetError, match="not both"):
        with open_client("local:2", "tcp://127.0.0.1:8786"):
            pass
    start = time.perf_counter()
    with pytest.raises(GeodetError, match="no Dask scheduler answered"):
        with open_client(scheduler=f"tcp://127.0.0.1:{_free_port()}", config=ClusterConfig(connect_timeout_s=1)):
            pass
    assert time.perf_counter() - start < 30
    s = make_scene_files(128, 128)
    res = CliRunner().invoke(cli, ["detect", s.path, "-o", str(tmp_path / "o.parquet"), "--cluster", "local:0"])
    assert res.exit_code == 1 and "local:N" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o.parquet").exists()


# ------------------------------------------------------------------ one LocalCluster for the API tests


@pytest.fixture(scope="module")
def client():
    with open_client("local:2") as c:
        yield c


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Six small scenes (one chip each) and their in-process detections."""
    from geodet.testing import synthetic

    folder = tmp_path_factory.mktemp("scenes")
    paths = []
    for i in range(6):
        path = folder / f"tile_{i}.tif"
        synthetic.write_scene(path, synthetic.make_scene(256, 256, seed=10 + i))
        paths.append(str(path))
    return paths, detect(paths, config=CONFIG)


def test_cluster_equals_in_process(client, scenes):
    paths, want = scenes
    got = detect(paths, config=CONFIG, client=client)
    _assert_same_detections(got, want)
    assert set(got.scene) == {os.path.basename(p) for p in paths}
    assert len(client.run(os.getpid)) == 2  # the work ran on 2 worker processes
    loaded = client.run(_loaded_detectors)
    assert list(loaded.values()) == [1, 1]  # each worker loaded the model once and keeps it
    got_again = detect(paths, config=CONFIG, client=client)
    assert client.run(_loaded_detectors) == loaded and len(got_again) == len(got)


def _loaded_detectors() -> int:
    import geodet.inference.cluster

    return len(geodet.inference.cluster._DETECTOR)


def test_in_memory_model_is_refused(client, scenes):
    from geodet.modeling.modelfile import load_model

    with pytest.raises(GeodetError, match="model file"):
        detect(scenes[0][:1], model=load_model(default_model_path()), client=client)


def _damaged_scene(make_scene_files, tmp_path):
    """A tiled GeoTIFF whose header opens but whose data blocks are cut off (as tests/test_faults.py)."""
    import rasterio.shutil

    s = make_scene_files(256, 256, seed=4, name="whole")
    cog = tmp_path / "whole_cog.tif"
    rasterio.shutil.copy(s.path, cog, driver="COG", blocksize=128)
    data = cog.read_bytes()
    path = tmp_path / "damaged.tif"
    path.write_bytes(data[: len(data) * 2 // 5])
    return str(path)


def test_cli_reports_damaged_scene_and_writes_the_rest(client, scenes, make_scene_files, tmp_path):
    """``geodet detect --scheduler`` (here: the fixture's local cluster): a damaged scene fails alone, never retried."""
    import geopandas as gpd

    paths, want = scenes
    damaged = _damaged_scene(make_scene_files, tmp_path)
    out = tmp_path / "dets.parquet"
    res = CliRunner().invoke(cli, ["detect", *paths[:3], damaged, "-o", str(out), "--precision", "float32",
                                   "--scheduler", client.scheduler.address])
    assert res.exit_code == 1, res.output
    assert "1 of 4 scene(s) failed" in res.output and "damaged.tif" in res.output and "Traceback" not in res.output
    _assert_same_detections(gpd.read_parquet(out), want[want.scene.isin([os.path.basename(p) for p in paths[:3]])])
    with pytest.raises(GeodetError, match="damaged.tif"):  # the API's default, on_error="raise"
        detect([paths[0], damaged], config=CONFIG, client=client)


def test_killed_worker_still_completes_every_scene_once(client, scenes):
    """SIGKILL of a worker process after the first result: its scene runs again elsewhere, each scene ends once."""
    paths, want = scenes
    pids_before = set(client.run(os.getpid).values())
    done, failed, killed = [], [], []

    def on_done(task, frame, seconds):
        done.append((task.path, frame))
        if not killed:
            victim = sorted(pids_before)[0]
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    runner = dask_runner(client, None, CONFIG)
    runner(plan_tasks(paths), on_done, lambda task, reason: failed.append((task.path, reason)))
    assert killed and not failed
    assert sorted(path for path, _ in done) == sorted(paths)  # every scene exactly once
    _assert_same_detections(combine_frames([frame for _, frame in done]), want)
    deadline = time.time() + 60
    while time.time() < deadline and len(client.run(os.getpid)) < 2:  # the nanny brings a fresh worker back
        time.sleep(0.5)
    assert killed[0] not in set(client.run(os.getpid).values())


# ------------------------------------------------------------------ the multi-machine path


def _start(args, **kw):
    return subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


@pytest.mark.slow
def test_cli_scheduler_with_separate_scheduler_and_worker_processes(scenes, tmp_path):
    """The multi-machine path on one machine: `dask scheduler` and `dask worker` started apart, used through --scheduler."""
    import geopandas as gpd

    paths, want = scenes
    info = tmp_path / "scheduler.json"
    workdir = tmp_path / "worker"  # the worker's own scratch: the model file arrives there as bytes
    procs = [_start(["distributed.cli.dask_scheduler", "--port", "0", "--no-dashboard", "--scheduler-file", str(info)])]
    try:
        deadline = time.time() + 60
        while not info.exists() and time.time() < deadline:
            time.sleep(0.2)
        address = json.loads(info.read_text())["address"]
        procs.append(_start(["distributed.cli.dask_worker", address, "--nthreads", "1", "--no-dashboard",
                             "--local-directory", str(workdir)]))
        out = tmp_path / "dets.parquet"
        res = CliRunner().invoke(cli, ["detect", *paths, "-o", str(out), "--precision", "float32",
                                       "--scheduler", address])
        assert res.exit_code == 0, res.output
        _assert_same_detections(gpd.read_parquet(out), want)
        assert list(workdir.rglob("geodet-model-*.pt"))  # the model came as bytes, not as the client's path
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

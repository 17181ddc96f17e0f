"""Faults a user meets: races, damaged files, unwritable folders, kill -9, hostile model files.

Each test pins one promise of the README's "Guarantees" section. Real files and real processes:
the races run several OS processes at once, the interruptions send SIGKILL to a real
``geodet`` process.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.shutil
import torch
from click.testing import CliRunner
from shapely.geometry import box

from conftest import tiny_model_overrides, wait_for
from geodet.config import ChipConfig, TrainConfig
from geodet.errors import GeodetError
from geodet.io.outputs import TEMP_TAG, check_output, staged_file, sweep_stale
from geodet.io.vector import read_labels
from geodet.io.formats import write_vector
from geodet_cli.main import cli

GEODET = [sys.executable, "-m", "geodet_cli.main"]


def run_cli(*args):
    """Run a command in-process; an unexpected exception fails the test (no traceback reaches users)."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def one_sentence_error(result, *phrases) -> str:
    """The command failed with one line of error naming ``phrases``, and no traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1, result.output
    for phrase in phrases:
        assert phrase in error[0], result.output
    return error[0]


def temporaries(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if TEMP_TAG in p.name)


@pytest.fixture
def scene(make_scene_files):
    return make_scene_files(256, 256, seed=3, name="good")


@pytest.fixture
def damaged(make_scene_files, tmp_path):
    """A tiled GeoTIFF whose header is intact but whose data blocks are cut off (a half-downloaded COG)."""
    s = make_scene_files(512, 512, seed=4, name="whole", nodata_region=True)  # masks need the pixels
    cog = tmp_path / "whole_cog.tif"
    rasterio.shutil.copy(s.path, cog, driver="COG", blocksize=128)  # header first, then the data blocks
    data = cog.read_bytes()
    path = tmp_path / "damaged.tif"
    path.write_bytes(data[: len(data) * 2 // 5])
    with rasterio.open(path) as src:  # the premise: it opens, and fails only when read
        assert src.shape == (512, 512)
    return path


# ------------------------------------------------------------------ 1. races never lose output


def _write_frame(path, n, barrier, results):
    frame = gpd.GeoDataFrame({"writer": [n] * (n + 1)}, geometry=[box(0, 0, 1, 1)] * (n + 1), crs="EPSG:32611")
    check_output(path)  # every writer passes the early check...
    barrier.wait()      # ...then all publish at once
    try:
        write_vector(frame, path)
        results.put((n, "ok"))
    except GeodetError as exc:
        results.put((n, str(exc)))


@pytest.mark.parametrize("ext", [".geojson", ".gpkg", ".shp"])
def test_racing_writers_one_wins_nothing_is_lost(tmp_path, ext):
    ctx = multiprocessing.get_context("fork")
    for trial in range(3):
        path = tmp_path / f"same{trial}{ext}"
        barrier, results = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_write_frame, args=(str(path), n, barrier, results)) for n in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        outcome = dict(results.get(timeout=5) for _ in procs)
        winners = [n for n, msg in outcome.items() if msg == "ok"]
        assert len(winners) == 1, outcome  # exactly one run says it wrote the file...
        assert all("already exists" in msg for n, msg in outcome.items() if n != winners[0])
        written = gpd.read_file(path)
        assert set(written["writer"]) == {winners[0]} and len(written) == winners[0] + 1  # ...and it holds that run
        assert temporaries(tmp_path) == []


def test_two_detect_commands_on_one_output(scene, tmp_path):
    out = tmp_path / "same.geojson"
    cmd = [*GEODET, "detect", scene.path, "-o", str(out), "--quiet"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(300), *p.communicate()) for p in procs]
    ok = [r for r in results if r[0] == 0]
    assert len(ok) == 1, results  # never both "wrote ... to same.geojson"
    loser = next(r for r in results if r[0] != 0)
    assert "already exists" in loser[2] and "Traceback" not in loser[2]
    n = int(ok[0][1].split()[1])  # "wrote N detections ..."
    assert len(gpd.read_file(out)) == n


def test_staged_file_removed_on_error_and_kept_on_success(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with staged_file(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with staged_file(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole" and temporaries(tmp_path) == []
    mode = target.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # as open() would make it, not mkstemp's 0600


# ------------------------------------------------------------------ 2. damaged imagery: one sentence


def test_detect_on_damaged_scene_names_file_and_window(damaged, tmp_path):
    out = tmp_path / "d.geojson"
    error = one_sentence_error(run_cli("detect", damaged, "-o", out, "--quiet"), "damaged.tif", "window at column")
    assert "IReadBlock" in error  # GDAL's own reason names the block
    assert not out.exists() and temporaries(tmp_path) == []


def test_tile_on_damaged_scene_leaves_nothing(damaged, scene, tmp_path):
    out = tmp_path / "tiles"
    one_sentence_error(run_cli("tile", damaged, "--labels", scene.labels, "--chip-size", 128, "-o", out),
                       "damaged.tif", "window at column")
    assert not out.exists() and temporaries(tmp_path) == []


def test_a_damaged_scene_does_not_cost_the_others(damaged, scene, tmp_path):
    out = tmp_path / "many.gpkg"
    res = CliRunner().invoke(cli, ["detect", scene.path, str(damaged), "-o", str(out), "--quiet"],
                             catch_exceptions=False)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "1 of 2 scene(s) failed" in res.output and "damaged.tif" in res.output
    written = gpd.read_file(out)
    assert len(written) > 0 and set(written["scene"]) == {"good.tif"}  # the good scene's work is kept

    tiles = tmp_path / "tiles"
    res = CliRunner().invoke(cli, ["tile", scene.path, str(damaged), "--labels", scene.labels, "--chip-size", "128",
                                   "-o", str(tiles)], catch_exceptions=False)
    assert res.exit_code == 1 and "damaged.tif" in res.output and "Traceback" not in res.output
    names = [p.name for p in (tiles / "chips").iterdir()]
    assert names and all(n.startswith("good_") for n in names)  # no half-tiled chips of the damaged scene


def test_evaluate_and_train_on_damaged_scene(damaged, scene, tmp_path):
    truth = tmp_path / "whole_labels.geojson"  # the damaged scene's own labels, spread over lost blocks
    dets = tmp_path / "dets.gpkg"
    write_vector(gpd.read_file(truth).assign(score=0.9), str(dets))
    one_sentence_error(run_cli("evaluate", dets, truth, "--imagery", damaged), "damaged.tif", "window at column")
    one_sentence_error(run_cli("train", "--imagery", damaged, "--labels", scene.labels, "-o", tmp_path / "m.pt",
                               "--quiet"), "damaged.tif")
    assert not (tmp_path / "m.pt").exists()


# ------------------------------------------------------------------ 3. unwritable folders fail before any work


def unwritable_folders(tmp_path):
    folders = [Path("/proc/self")]  # refuses new files even to root
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        folders.append(ro)
    return folders


def test_unwritable_output_folder_is_refused_before_work(tmp_path, scene):
    for folder in unwritable_folders(tmp_path):
        # the scene does not exist: the output is checked first, so its error is the one reported
        one_sentence_error(run_cli("detect", tmp_path / "missing.tif", "-o", folder / "out.geojson"),
                           f"cannot write to the folder {folder}")
        one_sentence_error(run_cli("detect", scene.path, "-o", tmp_path / "ok.geojson", "--quicklook",
                                   folder / "q.png"), f"cannot write to the folder {folder}")
        one_sentence_error(run_cli("tile", tmp_path / "missing.tif", "--labels", scene.labels, "-o", folder / "t"),
                           f"cannot write to the folder {folder}")
        one_sentence_error(run_cli("train", "--imagery", tmp_path / "missing.tif", "--labels", scene.labels,
                                   "-o", folder / "m.pt"), f"cannot write to the folder {folder}")
    assert not (tmp_path / "ok.geojson").exists()


def test_evaluate_plot_is_not_replaced_without_overwrite(scene, tmp_path):
    dets = tmp_path / "dets.gpkg"
    write_vector(gpd.read_file(scene.labels).assign(score=0.9), str(dets))
    png = tmp_path / "pr.png"
    png.write_bytes(b"precious")
    one_sentence_error(run_cli("evaluate", dets, scene.labels, "--plot", png), "pr.png already exists")
    assert png.read_bytes() == b"precious"
    assert run_cli("evaluate", dets, scene.labels, "--plot", png, "--overwrite").exit_code == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------ 4. interruption: nothing half-written, no debris


def test_kill_9_of_tile_leaves_debris_that_the_next_run_removes(make_scene_files, tmp_path):
    s = make_scene_files(1024, 1024, seed=5, name="big")
    out = tmp_path / "tiles"
    cmd = [*GEODET, "tile", s.path, "--labels", s.labels, "--chip-size", "64", "--overlap", "0", "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: any((p / "chips").is_dir() and any((p / "chips").iterdir())
                          for p in tmp_path.iterdir() if TEMP_TAG in p.name), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and len(temporaries(tmp_path)) == 1  # partial chips, hidden beside the output

    umask = os.umask(0o022)
    try:
        res = run_cli("tile", s.path, "--labels", s.labels, "--chip-size", 256, "-o", out)
    finally:
        os.umask(umask)
    assert res.exit_code == 0, res.output
    assert temporaries(tmp_path) == []  # the dead run's folder is gone
    assert out.stat().st_mode & 0o777 == 0o755  # the umask's mode, not mkdtemp's 0700


def test_sweep_removes_only_dead_processes_temporaries(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    from geodet.io.outputs import _host

    stale = tmp_path / f".out.gpkg{TEMP_TAG}{_host()}-{dead_pid}-abcd1234"
    stale.mkdir()
    live = tmp_path / f".out.gpkg{TEMP_TAG}{_host()}-{os.getpid()}-abcd1234"
    live.write_bytes(b"")
    other_host = tmp_path / f".out.gpkg{TEMP_TAG}elsewhere-{dead_pid}-abcd1234"
    other_host.write_bytes(b"")
    assert sweep_stale(tmp_path) == 1
    assert not stale.exists() and live.exists() and other_host.exists()


def test_kill_9_of_detect_keeps_the_old_output(make_scene_files, tmp_path):
    s = make_scene_files(1024, 1024, seed=6, name="big")
    out = tmp_path / "pools.geojson"
    out.write_text('{"type": "FeatureCollection", "features": []}')
    before = out.read_bytes()
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen([*GEODET, "detect", s.path, "-o", str(out), "--overwrite", "--batch-size", "1"],
                                stdout=subprocess.DEVNULL, stderr=err)
        wait_for(lambda: "detect:" in log.read_text(), proc)  # the progress bar: chips are being read
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert out.read_bytes() == before and temporaries(tmp_path) == []


def test_kill_9_of_train_keeps_a_loadable_model(scene, tmp_path):
    from geodet.modeling.modelfile import load_model
    from geodet.learning.training import train

    out = tmp_path / "m.pt"
    kw = dict(chip=ChipConfig(size=128, overlap=32), model=tiny_model_overrides(), anchors="coco")
    train([scene.path], scene.labels, str(out), config=TrainConfig(epochs=1, batch_size=4), **kw)
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen([*GEODET, "train", "--imagery", scene.path, "--labels", scene.labels, "-o", str(out),
                                 "--overwrite", "--chip-size", "128", "--overlap", "32", "--epochs", "1000",
                                 "--batch-size", "2"], stdout=subprocess.DEVNULL, stderr=err)
        wait_for(lambda: "epoch 2/" in log.read_text(), proc)  # killed mid-run, after a save
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    load_model(out)  # never half-written: the old file or a whole new one
    load_model(tmp_path / "m.last.pt")
    sweep_stale(tmp_path)
    assert temporaries(tmp_path) == []


def test_resume_reproduces_the_uninterrupted_run(scene, tmp_path):
    from geodet.learning.training import train

    kw = dict(chip=ChipConfig(size=128, overlap=32), model=tiny_model_overrides(), anchors="coco")
    whole = train([scene.path], scene.labels, str(tmp_path / "a.pt"), config=TrainConfig(epochs=2, batch_size=4), **kw)
    train([scene.path], scene.labels, str(tmp_path / "b.pt"), config=TrainConfig(epochs=1, batch_size=4), **kw)
    resumed = train([scene.path], scene.labels, str(tmp_path / "b.pt"), config=TrainConfig(epochs=2, batch_size=4),
                    resume=True, **kw)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]  # exactly
    a = torch.load(tmp_path / "a.last.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b.last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ 5. class names as written


@pytest.mark.parametrize("ext", [".geojson", ".gpkg"])
def test_integer_class_field_with_nulls_keeps_integer_names(scene, tmp_path, ext):
    frame = gpd.read_file(scene.labels)
    codes = [1, 2, None] * (len(frame) // 3) + [1] * (len(frame) % 3)
    path = tmp_path / f"coded{ext}"
    frame.assign(code=pd_series(codes)).to_file(path)
    assert gpd.read_file(path)["code"].dtype.kind == "f"  # the premise: pandas reads the column as float
    labels = read_labels(str(path), class_field="code")
    assert labels.class_names == ("1", "2")


def pd_series(values):
    import pandas as pd

    return pd.Series(values, dtype="Int64")


# ------------------------------------------------------------------ 6. hostile model files


class Payload:
    """Unpickling this object would create a file: the proof that code ran."""

    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def payload(tmp_path):
    Payload.marker = tmp_path / "code-ran"
    return Payload()


def hostile_refused(result, marker, name):
    error = one_sentence_error(result, name, "holds Python code or objects that geodet will not load")
    assert "weights_only" not in result.output and "arbitrary code" not in result.output  # never torch's advice
    assert not marker.exists()
    return error


def test_hostile_model_file_through_m(payload, scene, tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"format": "geodet-model", "state_dict": {"w": payload}}, evil)
    hostile_refused(run_cli("detect", scene.path, "-m", evil, "-o", tmp_path / "o.geojson"), Payload.marker, "evil.pt")


def test_hostile_checkpoint_through_resume(payload, scene, tmp_path):
    torch.save({"format": "geodet-model", "extra": payload}, tmp_path / "m.last.pt")
    hostile_refused(run_cli("train", "--imagery", scene.path, "--labels", scene.labels, "-o", tmp_path / "m.pt",
                            "--resume", "--quiet"), Payload.marker, "m.last.pt")


def test_hostile_backbone_weights(payload, scene, tmp_path):
    evil = tmp_path / "resnet18.pth"
    torch.save({"conv1.weight": payload}, evil)
    hostile_refused(run_cli("train", "--imagery", scene.path, "--labels", scene.labels, "-o", tmp_path / "m.pt",
                            "--backbone-weights", evil, "--quiet"), Payload.marker, "resnet18.pth")


def test_garbage_model_file_is_called_corrupt_not_hostile(scene, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    one_sentence_error(run_cli("detect", scene.path, "-m", junk, "-o", tmp_path / "o.geojson"),
                       "junk.pt is not a readable model file")


def test_many_unreadable_scenes_give_a_bounded_report(make_scene_files, tmp_path, caplog):
    """60 unreadable scenes and a good one: the good one is written, and the report lists 20 failures
    and counts the others, instead of three lines per scene."""
    import logging

    good = make_scene_files(192, 192, seed=1, name="good")
    for i in range(60):
        (tmp_path / f"bad{i:02d}.tif").write_bytes(b"II*\x00 not really a tiff")
    out = tmp_path / "out.geojson"
    with caplog.at_level(logging.WARNING):
        result = run_cli("detect", good.path, str(tmp_path / "bad*.tif"), "-o", out, "--quiet", "--device", "cpu")
    assert result.exit_code == 1 and out.exists()
    lines = result.output.splitlines()
    assert "60 of 61 scene(s) failed and were left out:" in lines
    assert sum(line.startswith("  ") and "bad" in line for line in lines) == 20
    assert any("... and 40 more" in line for line in lines)
    assert len(lines) < 30, result.output
    logged = [r for r in caplog.records if r.levelno >= logging.WARNING and "bad" in r.getMessage()]
    assert len(logged) <= 21, len(logged)  # 20 one by one, then one line that says more failed

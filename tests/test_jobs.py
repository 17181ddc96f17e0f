"""The resumable job (geodet/inference/jobs.py and the detect path through it): real scenes, the bundled
model, real ``geodet detect`` processes killed with SIGKILL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from click.testing import CliRunner
from geopandas.testing import assert_geodataframe_equal

from conftest import wait_for

from geodet.config import DetectConfig, JobConfig
from geodet.inference.detection import detect
from geodet.inference.detector import load_detector
from geodet.inference.scenes import in_process_runner
from geodet.inference.tasks import SceneTask
from geodet.errors import GeodetError
from geodet.inference.jobs import (
    BlockStore,
    JobGone,
    detection_settings,
    job_dir_for,
    open_job,
    remove_job,
    settings_hash,
    task_key,
)
from geodet.io.outputs import TEMP_TAG
from geodet.inference.predict import ChipDetections
from geodet_cli.main import cli

GEODET = [sys.executable, "-m", "geodet_cli.main"]


def run_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def read(path) -> gpd.GeoDataFrame:
    return gpd.read_parquet(path)


def kill_when(cmd, predicate, log: Path):
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_for(predicate, proc)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()


@pytest.fixture
def scenes(make_scene_files):
    return [make_scene_files(384, 384, seed=i, name=f"s{i}").path for i in range(3)]  # 4 chips each


# ---------------------------------------------------------------- bookkeeping, no model


def test_task_key_is_stable_safe_and_distinct(tmp_path):
    a = SceneTask(str(tmp_path / "a b?.tif"))
    assert task_key(a) == task_key(SceneTask(str(tmp_path / "a b?.tif")))
    assert task_key(a).startswith("a_b_-") and "/" not in task_key(a)
    assert task_key(a) != task_key(SceneTask(str(tmp_path / "sub" / "a b?.tif")))
    url = SceneTask("/vsicurl/https://example.com/tiles/t1.tif")
    assert task_key(url).startswith("t1-")


def test_settings_hash_ignores_speed_settings():
    base = detection_settings(DetectConfig())
    assert settings_hash(base) == settings_hash(detection_settings(DetectConfig(batch_size=64, workers=8, device="cpu")))
    assert settings_hash(base) != settings_hash(detection_settings(DetectConfig(score_threshold=0.5)))


def test_job_refuses_another_model_or_other_settings(tmp_path):
    folder = tmp_path / "out.gpkg.geodet-job"
    settings = detection_settings(DetectConfig())
    open_job(folder, model_hash="a" * 16, settings=settings)
    with pytest.raises(GeodetError, match="another model .*--overwrite"):
        open_job(folder, model_hash="b" * 16, settings=settings)
    with pytest.raises(GeodetError, match=r"other settings \(score_threshold 0.3 now 0.5\).*--overwrite"):
        open_job(folder, model_hash="a" * 16, settings=detection_settings(DetectConfig(score_threshold=0.5)))
    # test-time flips give other detections: a job cannot switch them on halfway
    with pytest.raises(GeodetError, match=r"other settings \(tta False now True\).*--overwrite"):
        open_job(folder, model_hash="a" * 16, settings=detection_settings(DetectConfig(tta=True)))
    job = open_job(folder, model_hash="b" * 16, settings=settings, overwrite=True)  # starts over
    assert json.loads((folder / "job.json").read_text())["model_hash"] == job.model_hash == "b" * 16


def test_records_done_and_failed(tmp_path):
    job = open_job(tmp_path / "j", model_hash="a" * 16, settings={})
    a, b = SceneTask(str(tmp_path / "a.tif")), SceneTask(str(tmp_path / "b.tif"))
    frame = gpd.GeoDataFrame({"class": ["pool"], "score": [0.9], "scene": ["a.tif"]},
                             geometry=gpd.points_from_xy([1.0], [2.0]), crs="EPSG:32611")
    job.record_done(a, frame, 1.5)
    job.record_failed(b, "b.tif cannot be read.")
    job.record_failed(a, "late failure of a retry")  # never replaces a done record
    assert job.split([a, b]) == ([b], [a])
    assert job.failures([a, b]) == {b.path: "b.tif cannot be read."}
    assert_geodataframe_equal(job.frame(a), frame)
    rec = json.loads((tmp_path / "j" / "scenes" / f"{task_key(a)}.json").read_text())
    assert (rec["status"], rec["detections"], rec["seconds"], rec["model_hash"]) == ("done", 1, 1.5, "a" * 16)
    assert not [p for p in (tmp_path / "j").rglob("*") if TEMP_TAG in p.name]
    # a job whose folder another run removed (it finished the job) says so, and nothing is recreated
    remove_job(job.folder)
    with pytest.raises(JobGone):
        job.record_done(b, frame, 1.0)
    with pytest.raises(JobGone):
        job.blocks(b).save(0, 10, ChipDetections.empty())
    assert not job.folder.exists()


def test_block_store_round_trip_and_other_plans(tmp_path):
    (tmp_path / "blocks").mkdir()
    store = BlockStore(tmp_path / "blocks" / "k", block_chips=4)
    dets = ChipDetections(np.array([[1, 2, 3, 4]], np.float32), np.array([0.5], np.float32), np.array([0]),
                          np.array([2]), chips=4, skipped=0)
    assert store.load(0, n_chips=10) is None
    store.save(0, 10, dets)
    back = store.load(0, n_chips=10)
    assert np.array_equal(back.boxes_px, dets.boxes_px) and back.chip_index.tolist() == [2] and back.chips == 4
    assert store.load(0, n_chips=12) is None  # another scene plan
    assert BlockStore(store.folder, block_chips=5).load(0, n_chips=10) is None  # another block size


# ---------------------------------------------------------------- the API


class Interrupted(Exception):
    """Stands for a crash in the middle of a scene."""


def test_blocks_resumed_in_process_equal_the_whole_scene(make_scene_files, tmp_path, caplog):
    s = make_scene_files(640, 640, seed=4, name="big")  # 9 chips of the bundled model
    cfg = DetectConfig(batch_size=1, device="cpu")  # one chip per forward pass: blocks batch chips alike
    whole = detect(s.path, config=cfg)
    job_dir, blocks = tmp_path / "job", JobConfig(block_chips=4)  # chips 0-3, 4-7, 8

    def crash_in_block_3(done, total):
        if done > 8:
            raise Interrupted

    with pytest.raises(Interrupted):
        detect(s.path, config=cfg, job_dir=job_dir, job_config=blocks, progress=crash_in_block_3)
    kept = sorted(p.name for p in (job_dir / "blocks").rglob("*.npz"))
    assert kept == ["000000.npz", "000001.npz"]
    with caplog.at_level("INFO", logger="geodet.inference.scenes"):
        resumed = detect(s.path, config=cfg, job_dir=job_dir, job_config=blocks)
    assert "2 of 3 chip blocks taken from an earlier run" in caplog.text
    assert_geodataframe_equal(resumed, whole)
    assert not any((job_dir / "blocks").iterdir())  # a scene's blocks go once it is done


def test_a_runner_reports_in_any_order_and_twice_and_each_scene_counts_once(scenes, tmp_path):
    cfg = DetectConfig(device="cpu")
    plain = detect(scenes, config=cfg)
    local = in_process_runner(load_detector(None, cfg))

    def unruly(tasks, on_done, on_failed):  # like a cluster: any order, and a retried task reported twice
        def twice(task, frame, seconds):
            on_done(task, frame, seconds)
            on_done(task, frame, seconds)

        local(list(reversed(tasks)), twice, on_failed)

    assert_geodataframe_equal(detect(scenes, config=cfg, runner=unruly), plain)
    assert_geodataframe_equal(detect(scenes, config=cfg, runner=unruly, job_dir=tmp_path / "job"), plain)

    def loses_one(tasks, on_done, on_failed):
        local(tasks[1:], on_done, on_failed)

    frame = detect(scenes, config=cfg, runner=loses_one, on_error="skip")
    assert frame.attrs["failed_scenes"] == {scenes[0]: "the runner reported no result for this scene."}


def test_in_memory_model_cannot_keep_a_job(scenes, tmp_path):
    from geodet.modeling.modelfile import load_model

    from geodet.inference.detector import default_model_path

    with pytest.raises(GeodetError, match="needs a model file"):
        detect(scenes[0], model=load_model(default_model_path()), job_dir=tmp_path / "job")


# ---------------------------------------------------------------- the command, killed and rerun


def test_kill_9_between_scenes_then_the_same_command_completes(make_scene_files, tmp_path):
    paths = [make_scene_files(384, 384, seed=i, name=f"t{i}").path for i in range(4)]  # 4 chips each
    ref = tmp_path / "ref.parquet"
    assert run_cli("detect", *paths, "-o", ref, "--quiet").exit_code == 0
    out = tmp_path / "out.parquet"
    parts = job_dir_for(out) / "parts"
    cmd = [*GEODET, "detect", *paths, "-o", str(out), "--quiet", "--batch-size", "1"]
    kill_when(cmd, lambda: parts.is_dir() and any(p.suffix == ".parquet" for p in parts.iterdir()), tmp_path / "e")
    assert not out.exists()
    records = [json.loads(p.read_text()) for p in (job_dir_for(out) / "scenes").glob("*.json")]
    done_before = sum(r["status"] == "done" for r in records)  # a part without its record is not done
    assert done_before >= 1 or len(list(parts.glob("*.parquet"))) == 1
    res = run_cli("detect", *paths, "-o", out, "--quiet")
    assert res.exit_code == 0, res.output
    # killed between a scene's part and its record, no scene counts as done (and none is announced)
    assert (f"{done_before} of them finished by an earlier run" in res.output) == (done_before > 0)
    assert_geodataframe_equal(read(out), read(ref))  # every scene once, as the uninterrupted run
    assert not job_dir_for(out).exists() and not [p for p in tmp_path.iterdir() if TEMP_TAG in p.name]
    res = run_cli("detect", *paths, "-o", out, "--quiet")  # a finished command run again
    assert res.exit_code == 1 and "already exists" in res.output


def test_kill_9_mid_scene_resumes_from_its_blocks(make_scene_files, tmp_path, caplog):
    s = make_scene_files(640, 640, seed=6, name="big")  # 9 chips of the bundled model
    args = [s.path, "--quiet", "--batch-size", "1", "--checkpoint-chips", "2"]
    ref = tmp_path / "ref.parquet"
    assert run_cli("detect", *args, "-o", ref).exit_code == 0
    out = tmp_path / "out.parquet"
    blocks = job_dir_for(out) / "blocks"

    def two_blocks():
        return blocks.is_dir() and sum(1 for p in blocks.rglob("*.npz") if TEMP_TAG not in p.name) >= 2

    kill_when([*GEODET, "detect", *args, "-o", str(out)], two_blocks, tmp_path / "e")
    kept = sorted(p.name for p in blocks.rglob("*.npz") if TEMP_TAG not in p.name)
    assert len(kept) >= 2 and not out.exists()
    from geodet.inference.detection import detect_to_file

    with caplog.at_level("INFO", logger="geodet.inference.scenes"):
        frame = detect_to_file([s.path], out, config=DetectConfig(batch_size=1), job_config=JobConfig(block_chips=2))
    assert f"{len(kept)} of 5 chip blocks taken from an earlier run" in caplog.text
    assert_geodataframe_equal(read(out), read(ref))
    assert len(frame) == len(read(ref)) and not job_dir_for(out).exists()


def test_failed_scene_is_kept_for_the_rerun(scenes, tmp_path):
    bad = Path(scenes[1])
    good_bytes = bad.read_bytes()
    bad.write_bytes(b"II*\x00 not really a tiff")
    out = tmp_path / "out.parquet"
    res = run_cli("detect", *scenes, "-o", out, "--quiet")
    assert res.exit_code == 1 and "1 of 3 scene(s) failed" in res.output and "run the same command again" in res.output
    partial = read(out)
    assert sorted(set(partial["scene"])) == ["s0.tif", "s2.tif"]  # the others are written
    records = [json.loads(p.read_text()) for p in (job_dir_for(out) / "scenes").iterdir()]
    assert sorted(r["status"] for r in records) == ["done", "done", "failed"]
    bad.write_bytes(good_bytes)  # the file is fixed
    res = run_cli("detect", *scenes, "-o", out, "--quiet")
    assert res.exit_code == 0, res.output
    assert "2 of them finished by an earlier run" in res.output
    whole = read(out)
    assert sorted(set(whole["scene"])) == ["s0.tif", "s1.tif", "s2.tif"]
    assert_geodataframe_equal(whole[whole["scene"] != "s1.tif"].reset_index(drop=True), partial)
    assert not job_dir_for(out).exists()


def test_another_models_job_gives_one_sentence_and_overwrite_starts_over(scenes, tmp_path):
    out = tmp_path / "out.parquet"
    open_job(job_dir_for(out), model_hash="0" * 16, settings=detection_settings(DetectConfig()))
    res = run_cli("detect", *scenes, "-o", out, "--quiet")
    assert res.exit_code == 1 and "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "another model" in errors[0] and "--overwrite" in errors[0]
    res = run_cli("detect", *scenes, "-o", out, "--quiet", "--overwrite")
    assert res.exit_code == 0, res.output
    assert "earlier run" not in res.output and len(set(read(out)["scene"])) == 3
    assert not job_dir_for(out).exists()


def test_resumed_output_keeps_the_run_metadata(scenes, tmp_path):
    from geodet.inference.detection import detect_to_file
    from geodet.inference.detector import default_model_path
    from geodet.modeling.modelfile import model_hash
    from geodet.io.formats import read_output_metadata

    out = tmp_path / "out.gpkg"
    detect_to_file(scenes[:2], out)
    meta = read_output_metadata(out)
    assert meta["model_hash"] == model_hash(default_model_path())
    assert meta["class_names"] and meta["geodet_version"]


# ---------------------------------------------------------------- jobs that cannot go stale


@pytest.fixture
def small_scenes(make_scene_files):
    return [make_scene_files(192, 192, seed=i, name=f"m{i}").path for i in range(2)]  # one chip each


def test_a_replaced_scene_is_detected_again_and_said_so(small_scenes, make_scene_files, tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00 not really a tiff")  # keeps the job folder after the first run
    out = tmp_path / "out.parquet"
    args = ("detect", *small_scenes, bad, "-o", out, "--quiet", "--no-mosaic", "--device", "cpu")
    assert run_cli(*args).exit_code == 1
    first = read(out)
    make_scene_files(192, 192, seed=11, name="m0")  # the same path, other content
    res = run_cli(*args)
    assert res.exit_code == 1
    assert "1 of them finished by an earlier run" in res.output
    assert "1 changed since an earlier run and detected again" in res.output, res.output
    again = read(out)
    fresh = detect(small_scenes[0], config=DetectConfig(device="cpu", mosaic=False))
    assert np.allclose(np.sort(again.loc[again["scene"] == "m0.tif", "score"]), np.sort(fresh["score"]))
    assert_geodataframe_equal(again[again["scene"] == "m1.tif"].reset_index(drop=True),
                              first[first["scene"] == "m1.tif"].reset_index(drop=True))
    record = json.loads(next((job_dir_for(out) / "scenes").glob("m0-*.json")).read_text())
    assert set(record["identity"]) == {"size", "mtime_ns"} and record["part_sha256"]


def test_a_damaged_part_or_record_is_redone(small_scenes, tmp_path, caplog):
    cfg = DetectConfig(device="cpu", mosaic=False)
    job_dir = tmp_path / "job"
    first = detect(small_scenes, config=cfg, job_dir=job_dir)
    tasks = [SceneTask(p) for p in small_scenes]
    part = job_dir / "parts" / f"{task_key(tasks[0])}.parquet"
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])  # a truncated part
    (job_dir / "scenes" / f"{task_key(tasks[1])}.json").write_text("{ not json")  # a damaged record
    with caplog.at_level("WARNING"):
        again = detect(small_scenes, config=cfg, job_dir=job_dir)
    assert "damaged or unreadable; detecting the scene again" in caplog.text
    assert again.attrs["scenes_done_before"] == 0
    assert_geodataframe_equal(again, first)


def test_blocks_of_other_content_are_not_taken(tmp_path):
    (tmp_path / "blocks").mkdir()
    dets = ChipDetections(np.array([[1, 2, 3, 4]], np.float32), np.array([0.5], np.float32), np.array([0]),
                          np.array([2]), chips=4, skipped=0)
    BlockStore(tmp_path / "blocks" / "k", block_chips=4, identity="before").save(0, 10, dets)
    assert BlockStore(tmp_path / "blocks" / "k", block_chips=4, identity="before").load(0, n_chips=10) is not None
    assert BlockStore(tmp_path / "blocks" / "k", block_chips=4, identity="after").load(0, n_chips=10) is None


def test_output_inside_a_job_folder_is_refused(small_scenes, tmp_path):
    inside = tmp_path / "out.gpkg.geodet-job" / "sub"
    inside.mkdir(parents=True)
    res = run_cli("detect", small_scenes[0], "-o", inside / "x.geojson", "--quiet")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "lies inside the job folder" in res.output and res.output.count("\n") == 1


def test_files_the_user_put_in_a_job_folder_are_kept(small_scenes, tmp_path, caplog):
    from geodet.inference.detection import detect_to_file

    out = tmp_path / "out.geojson"
    folder = job_dir_for(out)
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with caplog.at_level("WARNING"):
        detect_to_file(small_scenes, out, config=DetectConfig(device="cpu"))
    assert out.exists() and (folder / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]  # geodet's own files are gone
    assert "holds files geodet did not write (notes.txt)" in caplog.text


def test_an_unwritable_job_folder_is_one_sentence(small_scenes, tmp_path):
    out = tmp_path / "out.geojson"
    folder = job_dir_for(out)
    folder.mkdir()
    (folder / "scenes").symlink_to("/proc/self")  # refuses new files even to root
    res = run_cli("detect", small_scenes[0], "-o", out, "--quiet")
    assert res.exit_code == 1 and "Traceback" not in res.output and res.output.count("\n") == 1, res.output
    assert f"the job folder {folder} cannot be used" in res.output

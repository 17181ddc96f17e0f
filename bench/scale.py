#!/usr/bin/env python
"""Scale-out figures: many scenes detected serially, on a local Dask cluster, and on separately started workers.

Every run is the user's command, ``geodet detect SCENES... -o out.parquet``, in
a subprocess timed by wall clock (process start, model load and, for
``--cluster``, the cluster's start included):

    serial       in-process, the default
    local:2      ``--cluster local:2`` (a LocalCluster of 2 worker processes)
    scheduler    ``--scheduler ADDRESS`` against one ``dask scheduler`` and
                 ``--dask-workers`` separately started ``dask worker`` processes (the
                 multi-machine path, here on one machine); the workers are up
                 and warm before the clock starts, as a running cluster is
    worker-kill  as ``scheduler``, with one worker process killed by SIGKILL
                 ``--kill-at`` of the way into the job (its nanny restarts it);
                 checked: every scene in the output exactly once
    client-kill  kill -9 of the client ``--kill-at`` of the way into a serial
                 run, then the same command again (it resumes from the job
                 folder); reported: seconds of work lost = time until the kill +
                 rerun time - uninterrupted time. Needs the job folder
                 (``geodet.inference.jobs``); skipped with a message without it.

"Exactly once" is checked against the serial run: the same scenes, the same
number of detections per scene.

Scenes are synthetic (``geodet.testing.synthetic``), seeds 0..N-1, laid out on
a grid with gaps so that no two scenes touch (no cross-scene seams), tiled
GeoTIFFs written once into ``--workdir`` and reused. The model is the bundled
default (``-m`` to change).

Examples::

    python bench/scale.py                                  # 16 scenes of 4096 px (the lead's figures)
    nice -n 19 python bench/scale.py --scenes 8 --size 1024  # a small check
    python bench/scale.py --modes serial,local:2 --json scale.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MODES = ("serial", "local:2", "scheduler", "worker-kill", "client-kill")
#: Gap between neighbouring synthetic scenes, in pixels (so that no two touch).
GAP_PX = 64
PIXEL_SIZE_M = 0.4


def write_scenes(folder: Path, n: int, size: int) -> List[str]:
    """``n`` synthetic scenes of ``size`` x ``size`` px on a grid with gaps; reused when already written."""
    from geodet.testing import synthetic

    folder.mkdir(parents=True, exist_ok=True)
    per_row = max(1, int(round(n ** 0.5)))
    step_m = (size + GAP_PX) * PIXEL_SIZE_M
    paths = []
    for i in range(n):
        path = folder / f"scene_{size}_{i:03d}.tif"
        if not path.exists():
            scene = synthetic.make_scene(size, size, seed=i)
            origin = (500000.0 + (i % per_row) * step_m, 3760000.0 - (i // per_row) * step_m)
            tmp = path.with_suffix(".part.tif")
            synthetic.write_scene(tmp, scene, origin=origin, pixel_size=PIXEL_SIZE_M)
            os.replace(tmp, path)
        paths.append(str(path))
    return paths


def chips_of(paths: List[str], model: Optional[str]) -> int:
    """Chips the model's grid cuts the scenes into (its chip size and overlap)."""
    import rasterio

    from geodet.inference.detector import default_model_path
    from geodet.modeling.modelfile import load_model
    from geodet.core.windows import chip_windows

    _, meta = load_model(model or default_model_path())
    total = 0
    for path in paths:
        with rasterio.open(path) as src:
            total += len(chip_windows(src.height, src.width, meta.chip_size, meta.overlap))
    return total


def detect_command(paths: List[str], out: Path, model: Optional[str], extra: List[str]) -> List[str]:
    cmd = [sys.executable, "-m", "geodet_cli.main", "detect", *paths, "-o", str(out), "--quiet", "--overwrite"]
    if model:
        cmd += ["-m", model]
    return cmd + extra


def run_timed(cmd: List[str], *, kill_after_s: Optional[float] = None, on_tick=None) -> dict:
    """Run ``cmd``; wall seconds, return code; SIGKILL it after ``kill_after_s`` when given."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = False
    while proc.poll() is None:
        elapsed = time.perf_counter() - start
        if on_tick is not None:
            on_tick(elapsed)
        if kill_after_s is not None and elapsed >= kill_after_s and not killed:
            proc.kill()
            killed = True
        time.sleep(0.05)
    output = proc.stdout.read()
    return {"wall_s": time.perf_counter() - start, "rc": proc.returncode, "killed": killed, "output": output[-2000:]}


def read_output(path: Path) -> dict:
    """Per-scene detection counts of an output, and how many of its rows repeat another row exactly.

    A scene detected twice and written twice shows as repeated rows (same scene,
    class, score and box); stitching never leaves two identical boxes.
    """
    import geopandas as gpd

    frame = gpd.read_parquet(path)
    keys = frame[["scene", "class", "score"]].copy()
    keys[["x0", "y0", "x1", "y1"]] = frame.geometry.bounds.to_numpy()
    counts = {str(k): int(v) for k, v in frame["scene"].value_counts().items()}
    return {"counts": counts, "repeated_rows": int(keys.duplicated().sum())}


class SchedulerAndWorkers:
    """One ``dask scheduler`` and ``n`` ``dask worker`` processes (1 thread each), started apart from the client."""

    def __init__(self, n: int, workdir: Path):
        self.n, self.workdir, self.procs = n, workdir, []
        self.address = ""

    def __enter__(self):
        info = self.workdir / "scheduler.json"
        info.unlink(missing_ok=True)
        self._start(["distributed.cli.dask_scheduler", "--port", "0", "--no-dashboard", "--scheduler-file", str(info)])
        deadline = time.time() + 120
        while not info.exists() and time.time() < deadline:
            time.sleep(0.2)
        self.address = json.loads(info.read_text())["address"]
        for i in range(self.n):
            self._start(["distributed.cli.dask_worker", self.address, "--nthreads", "1", "--no-dashboard",
                         "--name", str(i), "--local-directory", str(self.workdir / f"worker_{i}")])
        self.wait_for_workers()
        self.warm()
        return self

    def _start(self, args: List[str]) -> None:
        self.procs.append(subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL))

    def client(self):
        from distributed import Client

        return Client(self.address, timeout=30, set_as_default=False)

    def wait_for_workers(self, timeout_s: float = 180) -> None:
        with self.client() as c:
            c.wait_for_workers(self.n, timeout=timeout_s)

    def warm(self) -> None:
        """Import geodet and torch on every worker, as a long-running cluster would have."""
        with self.client() as c:
            c.run(lambda: __import__("geodet.inference.detection") and __import__("torch") and None)

    def worker_pids(self) -> List[int]:
        with self.client() as c:
            return sorted(c.run(os.getpid).values())

    def __exit__(self, *exc):
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", type=int, default=16, help="number of scenes (default 16)")
    p.add_argument("--size", type=int, default=4096, help="scene side in px (default 4096)")
    p.add_argument("--dask-workers", type=int, default=2,
                   help="dask worker processes of the scheduler modes (default 2)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}")
    p.add_argument("--kill-at", type=float, default=0.5, help="share of the serial time at which a kill lands (0.5)")
    p.add_argument("-m", "--model", default=None, help="model file (default: the bundled model)")
    p.add_argument("--workdir", default=None, help="folder for scenes and outputs (default: a temporary folder)")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - set(MODES)
    if unknown:
        p.error(f"unknown mode(s): {', '.join(sorted(unknown))}")
    if "serial" not in modes:
        modes.insert(0, "serial")  # the reference of every check

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="geodet_scale_"))
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    paths = write_scenes(workdir / "scenes", args.scenes, args.size)
    n_chips = chips_of(paths, args.model)
    megapixels = args.scenes * args.size ** 2 / 1e6
    print(f"{args.scenes} scenes of {args.size}^2 px ({n_chips} chips, {megapixels:.0f} MP) in {workdir}; "
          f"scenes ready in {time.perf_counter() - t0:.0f} s; {os.cpu_count()} CPUs")

    results: Dict[str, dict] = {}
    reference: Dict[str, int] = {}

    def record(mode: str, res: dict, out: Path, note: str = "") -> None:
        res = dict(res, note=note)
        if out.exists() and not res["killed"]:
            found = read_output(out)
            res["detections"] = sum(found["counts"].values())
            # every scene the serial run found objects in, none of them twice; the counts themselves may
            # differ by a near-threshold box where workers run other torch thread counts than the serial run
            res["exactly_once"] = set(found["counts"]) == set(reference or found["counts"]) and not found["repeated_rows"]
        res["scenes_per_s"] = args.scenes / res["wall_s"]
        res["chips_per_s"] = n_chips / res["wall_s"]
        res["mp_per_s"] = megapixels / res["wall_s"]
        results[mode] = res
        once = {True: "yes", False: "NO"}.get(res.get("exactly_once"), "-")
        print(f"{mode:<12} {res['wall_s']:8.1f} s  {res['scenes_per_s']:7.3f} scenes/s  {res['chips_per_s']:7.1f} "
              f"chips/s  {res['mp_per_s']:6.2f} MP/s  rc {res['rc']}  detections {res.get('detections', '-')}  "
              f"exactly once {once}  {note}", flush=True)
        if res["rc"] not in (0, None) and not res["killed"]:
            print(res["output"], file=sys.stderr)

    out = workdir / "serial.parquet"
    record("serial", run_timed(detect_command(paths, out, args.model, [])), out)
    reference.update(read_output(out)["counts"])
    serial_s = results["serial"]["wall_s"]

    if "local:2" in modes:
        out = workdir / "local2.parquet"
        record("local:2", run_timed(detect_command(paths, out, args.model, ["--cluster", "local:2"])), out,
               "cluster start included")

    if "scheduler" in modes or "worker-kill" in modes:
        with SchedulerAndWorkers(args.dask_workers, workdir) as cluster:
            extra = ["--scheduler", cluster.address]
            if "scheduler" in modes:
                out = workdir / "scheduler.parquet"
                record("scheduler", run_timed(detect_command(paths, out, args.model, extra)), out,
                       f"{args.dask_workers} dask worker processes, started and warm beforehand")
            if "worker-kill" in modes:
                out = workdir / "worker_kill.parquet"
                victims = cluster.worker_pids()[:1]
                kill_at = args.kill_at * results.get("scheduler", results["serial"])["wall_s"]
                killed: List[int] = []

                def tick(elapsed: float) -> None:
                    if not killed and elapsed >= kill_at:
                        os.kill(victims[0], signal.SIGKILL)
                        killed.append(victims[0])

                record("worker-kill", run_timed(detect_command(paths, out, args.model, extra), on_tick=tick), out,
                       f"worker pid {victims[0]} SIGKILLed at {kill_at:.1f} s" if killed else "job ended before the kill")

    if "client-kill" in modes:
        if importlib.util.find_spec("geodet.inference.jobs") is None:
            print("client-kill  skipped: this checkout has no job folder (geodet.inference.jobs), so a rerun cannot resume")
        else:
            out = workdir / "client_kill.parquet"
            for leftover in workdir.glob("client_kill*"):  # a fresh job: no output or job folder of an earlier run
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
            cmd = detect_command(paths, out, args.model, [])
            cmd.remove("--overwrite")  # the rerun must resume, not start over
            kill_at = args.kill_at * serial_s
            first = run_timed(cmd, kill_after_s=kill_at)
            rerun = run_timed(cmd)
            lost = first["wall_s"] + rerun["wall_s"] - serial_s
            both = dict(rerun, wall_s=first["wall_s"] + rerun["wall_s"], lost_s=lost, rerun_s=rerun["wall_s"])
            record("client-kill", both, out, f"client killed at {first['wall_s']:.1f} s, rerun {rerun['wall_s']:.1f} s: "
                   f"work lost {lost:.1f} s (both runs together against the serial run)")

    if args.json:
        Path(args.json).write_text(json.dumps(
            {"scenes": args.scenes, "size": args.size, "chips": n_chips, "cpus": os.cpu_count(), "results": results},
            indent=2))
    bad = [m for m, r in results.items() if r.get("exactly_once") is False]
    if bad:
        print(f"NOT exactly once: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

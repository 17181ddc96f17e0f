#!/usr/bin/env python
"""Detection throughput: geodet against the loops a user would write, and DeepForest.

Variants a-e run the same RetinaNet ResNet-50-FPN weights (random, seeded) on
the same chips of the same scene, one variant after another, each in a fresh
subprocess so that its peak RSS is its own:

    a  geodet end to end: ``geodet.detect`` with a model file, then
       ``geodet.inference.detection.write_detections`` to GeoJSON.
    b  naive loop: rasterio windowed reads, one chip at a time through
       ``torchvision.models.detection.retinanet_resnet50_fpn`` (its default
       transform resizes a 512 px chip to 800 px and normalises with ImageNet
       statistics), ``batched_nms`` over the scene at the end.
    c  the same naive loop, ``--batch-size`` chips per forward pass.
    d  geodet's network alone on chips already in memory (no I/O, no merge):
       the floor.
    e  DeepForest ``predict_tile`` (its own RetinaNet class, the same weights),
       run by the DeepForest virtualenv's python given with
       ``--deepforest-python``; skipped without it.
    f  as (a) with geodet's default ModelConfig (ResNet-18, FPN 64 channels,
       P3-P7 with COCO anchors) and default DetectConfig (batch 8, 2 reader
       threads).
    g  as (f) with the levels and anchors ``fit_anchors`` picks for 15-50 px
       objects (P2-P4; ``--fitted-levels``): the P2 head dominates its cost.

Examples::

    python bench/detect_throughput.py --quick
    python bench/detect_throughput.py --deepforest-python /tmp/dfvenv/bin/python
    python bench/detect_throughput.py --device cuda --size 8192
    python bench/detect_throughput.py --memory-scaling

``--memory-scaling`` runs ``geodet.detect`` with a small ResNet-18 model on a
3000 x 3000 and a 12000 x 12000 scene (striped and tiled GeoTIFFs) and reports
the peak RSS of each run.

Megapixels/s are scene megapixels divided by wall time; chips/s counts the
chips of the scene (one chip grid for a-d, f, g; DeepForest's own grid for e).
CPU seconds (user + system, all threads) are reported beside wall time: other
load on a shared machine stretches wall time more. ``--repeat N`` runs N
rounds over the variants and keeps each variant's fastest run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from throughput_models import VARIANT_MODEL, make_memory_model, make_models, write_noise_scene  # noqa: E402
from throughput_variants import run_child  # noqa: E402

#: Variant (e), run by DeepForest's virtualenv python.
DEEPFOREST_BASELINE = Path(__file__).resolve().parent / "deepforest_baseline.py"

VARIANTS = {
    "a": "geodet detect, end to end",
    "b": "naive loop, 1 chip/forward",
    "c": "naive loop, batched",
    "d": "geodet network only (floor)",
    "e": "DeepForest predict_tile",
    "f": "geodet detect, default model",
    "g": "geodet detect, default, fitted",
}

# --------------------------------------------------------------------------- parent side


def _child_command(args, variant: str, scene: str, paths: Dict[str, str], result: Path) -> List[str]:
    model = paths.get(variant) or paths[VARIANT_MODEL[variant]]
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--variant", {"f": "a", "g": "a"}.get(variant, variant),
        "--scene", scene, "--model", model, "--tv-state", paths.get("tv_state", ""), "--workdir", str(args.workdir),
        "--result", str(result), "--chip-size", str(args.chip_size), "--overlap", str(args.overlap),
        "--threads", str(args.threads), "--batch-size", str(args.batch_size), "--device", args.device,
        "--score-threshold", str(args.score_threshold), "--nms-iou", str(args.nms_iou),
        "--max-preload", str(args.max_preload), "--precision", args.precision,
    ]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    if args.memory_scaling:
        cmd.append("--rss-trace")
    if variant in ("f", "g"):
        cmd.append("--default-detect-config")
    if args.profile and variant in ("a", "f", "g"):
        cmd.append("--profile")
    return cmd


def run_variant(args, variant: str, scene: str, paths: Dict[str, str], env: Optional[dict] = None) -> Optional[dict]:
    """Run one variant in a subprocess; its figures, or None when it failed."""
    result = Path(args.workdir) / f"result_{variant}_{int(time.time() * 1000)}.json"
    if variant == "e":
        cmd = [
            args.deepforest_python, str(DEEPFOREST_BASELINE), "--scene", scene, "--state", paths["tv_state"], "--result", str(result),
            "--device", args.device, "--strategy", args.deepforest_strategy, "--patch-size", str(args.chip_size),
            "--overlap", str(args.overlap), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
        ]
    else:
        cmd = _child_command(args, variant, scene, paths, result)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=args.workdir, env=env)
    if proc.returncode != 0 or not result.exists():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        print(f"  variant {variant} failed (exit {proc.returncode}):\n{tail}", file=sys.stderr)
        return None
    figures = json.loads(result.read_text())
    figures["process_s"] = time.perf_counter() - t0
    return figures


def _derive(fig: dict) -> dict:
    mp = fig["height"] * fig["width"] / 1e6
    fig["scene_mp"] = mp
    fig["mp_per_s"] = mp / fig["wall_s"]
    fig["chips_per_s"] = fig["chips"] / fig["wall_s"]
    return fig


def print_table(results: Dict[str, dict], args) -> None:
    head = (
        f"{'variant':<34} {'wall s':>7} {'cpu s':>7} {'chips':>6} {'chips/s':>8} {'MP/s':>7} {'input px':>9} "
        f"{'peak RSS MB':>12}"
    )
    print(head)
    print("-" * len(head))
    for key, name in VARIANTS.items():
        fig = results.get(key)
        label = f"({key}) {name}"
        if fig is None:
            print(f"{label:<34} {'skipped':>7}")
            continue
        print(
            f"{label:<34} {fig['wall_s']:7.1f} {fig['cpu_s']:7.1f} {fig['chips']:6d} {fig['chips_per_s']:8.3f} "
            f"{fig['mp_per_s']:7.3f} {fig['input_px']:>9} {fig['peak_rss_mb']:12.0f}"
        )
    a = results.get("a")
    if a:
        print()
        for key in "bcde":
            other = results.get(key)
            if other:
                print(
                    f"geodet (a) / ({key}) megapixels/s: {a['mp_per_s'] / other['mp_per_s']:.2f}x by wall time, "
                    f"{other['cpu_s'] / a['cpu_s'] * a['scene_mp'] / other['scene_mp']:.2f}x by CPU time"
                )
        if results.get("d"):
            d = results["d"]
            print(f"end to end / pure forward (a)/(d): {a['wall_s'] / d['wall_s']:.2f} by wall time, "
                  f"{a['cpu_s'] / d['cpu_s']:.2f} by CPU time")
    e = results.get("e")
    for key in "fg":
        if e and results.get(key):
            print(f"geodet default ({key}) / DeepForest (e) megapixels/s: {results[key]['mp_per_s'] / e['mp_per_s']:.2f}x "
                  f"by wall time, {e['cpu_s'] / results[key]['cpu_s']:.2f}x by CPU time")
    d = results.get("d")
    if d and d.get("stages_s"):
        total = d["wall_s"]
        parts = ", ".join(f"{k} {v:.1f}s ({100 * v / total:.0f}%)" for k, v in d["stages_s"].items())
        print(f"floor (d) by stage: {parts}")


def run_throughput(args) -> dict:
    workdir = Path(args.workdir)
    if args.scene:
        scene = str(Path(args.scene).resolve())
    else:
        scene = str(workdir / f"noise_{args.size}.tif")
        if not Path(scene).exists():
            write_noise_scene(Path(scene), args.size, args.size)
    paths = make_models(workdir, Path(scene), args)
    print(
        f"scene {scene}; chip {args.chip_size} px, overlap {args.overlap} px, batch {args.batch_size}, "
        f"{args.threads} torch threads, device {args.device}{', dense detections' if args.dense else ''}",
        flush=True,
    )
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    runs: Dict[str, List[dict]] = {}
    for round_ in range(args.repeat):  # round robin, so that other load on the machine hits every variant alike
        for key in args.variants:
            if key == "e" and not args.deepforest_python:
                if round_ == 0:
                    print("(e) skipped: no --deepforest-python given", flush=True)
                continue
            print(f"running ({key}) {VARIANTS[key]} ...", flush=True)
            fig = run_variant(args, key, scene, paths)
            if fig is None:
                continue
            fig["load_after"] = os.getloadavg()[0]
            runs.setdefault(key, []).append(fig)
            print(
                f"  {fig['wall_s']:.1f} s wall, {fig['cpu_s']:.1f} s CPU, peak RSS {fig['peak_rss_mb']:.0f} MB, "
                f"load average {fig['load_after']:.2f}",
                flush=True,
            )
    results: Dict[str, dict] = {}
    for key, figs in runs.items():  # the fastest run of each variant: load from elsewhere only slows a run down
        best = min(figs, key=lambda f: f["wall_s"])
        results[key] = _derive(dict(best, peak_rss_mb=max(f["peak_rss_mb"] for f in figs),
                                    all_wall_s=[round(f["wall_s"], 1) for f in figs]))
    print()
    print_table(results, args)
    for prof in sorted(workdir.glob("profile_*.txt")) if args.profile else ():
        print(f"cProfile: {prof}")
    return {"scene": scene, "results": results}


def run_memory_scaling(args) -> dict:
    workdir = Path(args.workdir)
    sizes = (3000, 12000) if not args.quick else (1000, 3000)
    scenes = {}
    for layout in args.layouts:
        for size in sizes:
            path = workdir / f"noise_{size}_{layout}.tif"
            if not path.exists():
                print(f"writing {path.name} ...", flush=True)
                write_noise_scene(path, size, size, layout=layout)
            scenes[(layout, size)] = str(path)
    model = make_memory_model(workdir, Path(next(iter(scenes.values()))), args)
    env = dict(os.environ)
    if args.gdal_cachemax is not None:
        env["GDAL_CACHEMAX"] = str(args.gdal_cachemax)
    rows = []
    for (layout, size), scene in scenes.items():
        print(f"running geodet detect on {Path(scene).name} ...", flush=True)
        fig = run_variant(args, "a", scene, {"a": model}, env=env)
        if fig is None:
            continue
        fig = _derive(fig)
        fig.update(layout=layout, size=size)
        rows.append(fig)
        print(f"  {fig['wall_s']:.1f} s, peak RSS {fig['peak_rss_mb']:.0f} MB", flush=True)
    print()
    print(f"{'scene':<22} {'wall s':>8} {'chips':>6} {'MP/s':>7} {'peak RSS MB':>12} {'after imports MB':>17}  "
          "RSS MB at 25/50/75/100% of the run")
    for fig in rows:
        name = f"{fig['size']}x{fig['size']} {fig['layout']}"
        trace = fig.get("rss_trace_mb") or [float("nan")]
        quarters = "/".join(f"{trace[min(len(trace) - 1, int(q * len(trace)))]:.0f}" for q in (0.25, 0.5, 0.75, 1.0))
        print(f"{name:<22} {fig['wall_s']:8.1f} {fig['chips']:6d} {fig['mp_per_s']:7.2f} {fig['peak_rss_mb']:12.0f} "
              f"{fig['rss_after_imports_mb']:17.0f}  {quarters}")
    for layout in args.layouts:
        small = next((f for f in rows if f["layout"] == layout and f["size"] == sizes[0]), None)
        big = next((f for f in rows if f["layout"] == layout and f["size"] == sizes[1]), None)
        if small and big:
            print(f"{layout}: {sizes[1]} px scene peak RSS - {sizes[0]} px scene peak RSS = "
                  f"{big['peak_rss_mb'] - small['peak_rss_mb']:+.0f} MB (target < +300 MB)")
    return {"memory_scaling": rows, "gdal_cachemax": args.gdal_cachemax}


def parse_args(argv=None):
    from geodet.config import PRECISIONS  # a light module: dataclasses only

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scene", help="GeoTIFF to run on (default: a noise scene of --size px is written)")
    p.add_argument("--size", type=int, help="side of the generated scene in px (default 2048 on CPU, 8192 on CUDA)")
    p.add_argument("--chip-size", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1), help="torch.set_num_threads")
    p.add_argument("--workers", type=int, help="geodet reader threads (default: DetectConfig's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="geodet's forward-pass precision, for (a), (d), (f), (g) (DetectConfig.precision)")
    p.add_argument("--score-threshold", type=float, default=0.3)
    p.add_argument("--nms-iou", type=float, default=0.5)
    p.add_argument("--variants", default="abcdefg", help="which of a-g to run, e.g. 'ad'")
    p.add_argument("--fitted-levels", default="2,3,4", help="pyramid levels of the (g) model")
    p.add_argument("--deepforest-python", help="python of a virtualenv with deepforest installed; enables (e)")
    p.add_argument("--deepforest-strategy", default="single", choices=["single", "window", "batch"],
                   help="predict_tile dataloader_strategy (default: DeepForest's own default)")
    p.add_argument("--dense", action="store_true", help="bias the classifier so every chip returns its maximum detections")
    p.add_argument("--quick", action="store_true", help="small scene for a smoke run")
    p.add_argument("--repeat", type=int, default=1, help="rounds over the variants; each variant's fastest run is reported")
    p.add_argument("--memory-scaling", action="store_true", help="peak RSS of geodet detect on 3000 vs 12000 px scenes")
    p.add_argument("--layouts", default="striped,tiled", help="GeoTIFF layouts for --memory-scaling")
    p.add_argument("--gdal-cachemax", type=int, help="GDAL_CACHEMAX (MB) in the --memory-scaling runs")
    p.add_argument("--profile", action="store_true", help="cProfile variant (a); report written to the work folder")
    p.add_argument("--workdir", help="folder for scenes, models and results (default: a temporary folder)")
    p.add_argument("--json", help="also write every figure to this JSON file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-preload", type=int, default=256, help="(d): distinct chips held in memory, reused cyclically")
    # child-process options
    p.add_argument("--variant", choices=list("abcd"), help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--rss-trace", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--default-detect-config", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tv-state", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.size is None:
        args.size = 960 if args.quick else (8192 if args.device.startswith("cuda") else 2048)
    bad = set(args.variants) - set(VARIANTS)
    if bad:
        p.error(f"unknown variant(s) {''.join(sorted(bad))}; choose from {''.join(VARIANTS)}")
    args.variants = [v for v in VARIANTS if v in args.variants]
    args.fitted_levels = tuple(int(v) for v in args.fitted_levels.split(","))
    args.layouts = [s.strip() for s in args.layouts.split(",") if s.strip()]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.variant:
        run_child(args)
        return 0
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="geodet-bench-")
        args.workdir = tmp.name
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    args.workdir = str(Path(args.workdir).resolve())
    if args.deepforest_python and not Path(args.deepforest_python).exists():
        print(f"(e) skipped: {args.deepforest_python} does not exist", file=sys.stderr)
        args.deepforest_python = None
    try:
        report = run_memory_scaling(args) if args.memory_scaling else run_throughput(args)
        report["machine"] = {"cpus": os.cpu_count(), "device": args.device, "threads": args.threads}
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

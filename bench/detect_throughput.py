#!/usr/bin/env python
"""Detection throughput: geodet against the loops a user would write, and DeepForest.

Variants a-e run the same RetinaNet ResNet-50-FPN weights (random, seeded) on
the same chips of the same scene, one variant after another, each in a fresh
subprocess so that its peak RSS is its own:

    a  geodet end to end: ``geodet.detect`` with a model file, then
       ``geodet.detection.write_detections`` to GeoJSON.
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
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

VARIANTS = {
    "a": "geodet detect, end to end",
    "b": "naive loop, 1 chip/forward",
    "c": "naive loop, batched",
    "d": "geodet network only (floor)",
    "e": "DeepForest predict_tile",
    "f": "geodet detect, default model",
    "g": "geodet detect, default, fitted",
}

#: The geodet model file each variant runs (b, c and e run its torchvision copy).
VARIANT_MODEL = {"a": "r50", "b": "r50", "c": "r50", "d": "r50", "e": "r50", "f": "default", "g": "fitted"}

#: Class-logit bias of ``--dense`` models: every anchor scores ~0.88, so every
#: chip returns its maximum number of detections (stress on NMS and stitching).
DENSE_BIAS = 2.0


# --------------------------------------------------------------------------- measuring


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (VmHWM, else ru_maxrss)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """Current resident set size of this process in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_s() -> float:
    """CPU seconds (user + system, all threads) this process has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class RssTrace:
    """Samples this process's RSS (MiB) every ``every_s`` seconds in a daemon thread."""

    def __init__(self, every_s: float = 1.0) -> None:
        import threading

        self.samples: List[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._thread.start()

    def _run(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.samples.append(round(rss_mb(), 1))

    def stop(self) -> List[float]:
        self._stop.set()
        self._thread.join()
        return self.samples


class Clock:
    """Wall-clock timer that waits for queued CUDA work before reading the clock."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def now(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def span(self):
        """``(wall s, cpu s)`` now; subtract two spans for the time between them."""
        return self.now(), cpu_s()


# --------------------------------------------------------------------------- scenes and model


def write_noise_scene(
    path: Path,
    height: int,
    width: int,
    *,
    bands: int = 3,
    layout: str = "tiled",
    block: int = 256,
    chunk_rows: int = 512,
    pixel_size: float = 0.4,
    seed: int = 0,
) -> Path:
    """Write a uint8 GeoTIFF of uniform noise, ``chunk_rows`` rows at a time.

    Args:
        layout: ``"tiled"`` (``block`` x ``block`` tiles) or ``"striped"``
            (GDAL's default strips).

    The whole scene is never held in memory; throughput does not depend on
    the content of the pixels (the weights are random).
    """
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    profile = dict(
        driver="GTiff",
        height=height,
        width=width,
        count=bands,
        dtype="uint8",
        crs="EPSG:32611",
        transform=from_origin(500000.0, 4000000.0, pixel_size, pixel_size),
    )
    if layout == "tiled":
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    elif layout != "striped":
        raise ValueError(f"layout must be tiled or striped, got {layout!r}")
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        for row in range(0, height, chunk_rows):
            rows = min(chunk_rows, height - row)
            dst.write(rng.integers(0, 256, (bands, rows, width), dtype=np.uint8), window=Window(0, row, width, rows))
    os.replace(tmp, path)
    return path


def geodet_to_torchvision(state: Dict) -> Dict:
    """Rename a geodet RetinaNet state dict (levels P3-P7) to torchvision's
    ``retinanet_resnet50_fpn`` names; the tensors are shared, not copied."""
    renames = (
        ("backbone.fpn.extra_blocks.convs.0.", "backbone.fpn.extra_blocks.p6."),
        ("backbone.fpn.extra_blocks.convs.1.", "backbone.fpn.extra_blocks.p7."),
        ("head.cls_tower.", "head.classification_head.conv."),
        ("head.cls_logits.", "head.classification_head.cls_logits."),
        ("head.box_tower.", "head.regression_head.conv."),
        ("head.bbox_reg.", "head.regression_head.bbox_reg."),
    )
    out = {}
    for key, value in state.items():
        for old, new in renames:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def _save(path: Path, net, cfg, info, args) -> str:
    from geodet.modelfile import save_model

    save_model(
        path,
        net,
        model_config=cfg,
        class_names=["object"],
        bands=list(range(1, info.count + 1)),
        band_mean=[127.5] * info.count,
        band_std=[73.9] * info.count,
        chip_size=args.chip_size,
        overlap=args.overlap,
        gsd=info.gsd,
        dtype=info.dtype,
    )
    return str(path)


def _build(cfg, args):
    import torch

    from geodet.model import build_model

    torch.manual_seed(args.seed)
    net = build_model(cfg).eval()
    if args.dense:
        with torch.no_grad():
            net.head.cls_logits.bias.fill_(DENSE_BIAS)
    return net


def make_models(workdir: Path, scene: Path, args) -> Dict[str, str]:
    """Save the seeded random models as geodet model files and the ResNet-50-FPN,
    under torchvision's names, as a plain state dict; return their paths."""
    import torch
    import torchvision

    from geodet.config import AnchorConfig, ModelConfig
    from geodet.raster import open_scene

    info = open_scene(str(scene))
    paths = {}
    if any(VARIANT_MODEL[v] == "r50" for v in args.variants):
        cfg = ModelConfig(backbone_depth=50, fpn_channels=256, num_classes=1, in_channels=info.count)
        net = _build(cfg, args)
        paths["r50"] = _save(workdir / "r50_fpn.pt", net, cfg, info, args)
        tv_state = geodet_to_torchvision(net.state_dict())
        tv_net = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=1)
        tv_net.load_state_dict(tv_state, strict=True)  # proves the two networks are the same
        paths["tv_state"] = str(workdir / "r50_fpn_torchvision.pt")
        torch.save(tv_state, paths["tv_state"])
    if "f" in args.variants:
        cfg = ModelConfig(in_channels=info.count)
        paths["default"] = _save(workdir / "default.pt", _build(cfg, args), cfg, info, args)
    if "g" in args.variants:
        levels = args.fitted_levels
        anchors = AnchorConfig(sizes=tuple(4.0 * 2 ** lv for lv in levels), scales=(1.0,), ratios=(1.0,))
        cfg = ModelConfig(in_channels=info.count, levels=levels, anchors=anchors)
        paths["fitted"] = _save(workdir / "default_fitted.pt", _build(cfg, args), cfg, info, args)
    return paths


def make_memory_model(workdir: Path, scene: Path, args) -> str:
    """A small ResNet-18 geodet model file for the memory-scaling runs."""
    from geodet.config import AnchorConfig, ModelConfig
    from geodet.raster import open_scene

    cfg = ModelConfig(
        backbone_depth=18, fpn_channels=32, head_convs=1, levels=(3, 4, 5), anchors=AnchorConfig(sizes=(16.0, 32.0, 64.0))
    )
    return _save(workdir / "r18_tiny.pt", _build(cfg, args), cfg, open_scene(str(scene)), args)


# --------------------------------------------------------------------------- variants (child side)


def _scene_windows(scene: str, chip: int, overlap: int):
    import rasterio

    from geodet.windows import chip_windows

    with rasterio.open(scene) as src:
        return chip_windows(src.height, src.width, chip, overlap), src.height, src.width


def variant_a(args) -> dict:
    """geodet.detect with the model file, then write_detections to GeoJSON."""
    import geodet
    import geodet.model  # noqa: F401 - imported before the clock starts, as (b) and (c) import torchvision
    import geodet.predict  # noqa: F401
    import geodet.stitch  # noqa: F401
    from geodet.config import DetectConfig
    from geodet.detection import write_detections

    windows, h, w = _scene_windows(args.scene, args.chip_size, args.overlap)
    if args.default_detect_config:  # (f), (g): geodet's defaults (batch size, reader threads, model's overlap)
        cfg = DetectConfig(device=args.device, score_threshold=args.score_threshold, precision=args.precision)
    else:
        kwargs = {} if args.workers is None else {"workers": args.workers}
        cfg = DetectConfig(
            batch_size=args.batch_size, overlap=args.overlap, device=args.device, score_threshold=args.score_threshold,
            precision=args.precision, **kwargs,
        )
    out = Path(args.workdir) / f"detections_{os.getpid()}.geojson"
    clock = Clock(args.device)

    def work():
        frame = geodet.detect(args.scene, model=args.model, config=cfg, chip_size=args.chip_size)
        write_detections(frame, str(out), overwrite=True)
        return frame

    trace = RssTrace() if args.rss_trace else None
    t0, c0 = clock.span()
    if args.profile:
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        frame = prof.runcall(work)
        t1, c1 = clock.span()
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(40)
        prof_path = Path(args.workdir) / f"profile_{Path(args.model).stem}.txt"
        prof_path.write_text(text.getvalue())
    else:
        frame = work()
        t1, c1 = clock.span()
    out.unlink(missing_ok=True)
    extra = {"rss_trace_mb": trace.stop()} if trace else {}
    return dict(**extra, wall_s=t1 - t0, cpu_s=c1 - c0, chips=len(windows), height=h, width=w, input_px=_padded(args.chip_size),
                detections=len(frame), workers=cfg.workers, batch_size=cfg.batch_size)


def _padded(chip: int, multiple: int = 32) -> str:
    side = -(-chip // multiple) * multiple
    return f"{side}x{side}"


def _naive(args, batch_size: int) -> dict:
    """The loop a user writes with rasterio and torchvision's RetinaNet."""
    import rasterio
    import torch
    import torchvision
    from torchvision.ops import batched_nms

    windows, h, w = _scene_windows(args.scene, args.chip_size, args.overlap)
    device = torch.device(args.device)
    clock = Clock(args.device)
    t0, c0 = clock.span()
    net = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=1)
    net.load_state_dict(torch.load(args.tv_state, map_location="cpu", weights_only=True))
    net.eval().to(device)
    input_px = None
    boxes_all, scores_all, labels_all = [], [], []
    with rasterio.open(args.scene) as src, torch.inference_mode():
        for start in range(0, len(windows), batch_size):
            batch = windows[start:start + batch_size]
            images = [torch.from_numpy(src.read(window=win)).to(device).float().div_(255.0) for win in batch]
            if input_px is None:
                padded = net.transform(images)[0].tensors
                input_px = f"{padded.shape[-1]}x{padded.shape[-2]}"
            for win, out in zip(batch, net(images)):
                keep = out["scores"] >= args.score_threshold
                offset = torch.tensor([win.col_off, win.row_off] * 2, dtype=torch.float32, device=device)
                boxes_all.append(out["boxes"][keep] + offset)
                scores_all.append(out["scores"][keep])
                labels_all.append(out["labels"][keep])
        boxes = torch.cat(boxes_all)
        keep = batched_nms(boxes, torch.cat(scores_all), torch.cat(labels_all), args.nms_iou)
        n_det = int(keep.numel())
    t1, c1 = clock.span()
    return dict(wall_s=t1 - t0, cpu_s=c1 - c0, chips=len(windows), height=h, width=w, input_px=input_px, detections=n_det)


def variant_b(args) -> dict:
    return _naive(args, 1)


def variant_c(args) -> dict:
    return _naive(args, args.batch_size)


def _stage_timers(net, clock: Clock) -> Dict[str, float]:
    """Add up wall time per stage of a torchvision RetinaNet through hooks."""
    totals: Dict[str, float] = {}
    starts: Dict[str, float] = {}
    stages = {"resnet": net.backbone.body, "fpn": net.backbone.fpn, "head": net.head, "anchors": net.anchor_generator}
    for name, module in stages.items():
        totals[name] = 0.0

        def pre(_m, _inp, name=name):
            starts[name] = clock.now()

        def post(_m, _inp, _out, name=name):
            totals[name] += clock.now() - starts[name]

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)
    totals["postprocess"] = 0.0
    original = net.postprocess_detections

    def timed_postprocess(*a, **k):
        t = clock.now()
        result = original(*a, **k)
        totals["postprocess"] += clock.now() - t
        return result

    net.postprocess_detections = timed_postprocess
    return totals


def variant_d(args) -> dict:
    """geodet's network alone on chips already read and normalised in memory."""
    import numpy as np
    import rasterio
    import torch

    from geodet.model import prepare_for_inference
    from geodet.modelfile import load_model
    from geodet.raster import read_chip, sample_band_stats

    windows, h, w = _scene_windows(args.scene, args.chip_size, args.overlap)
    device = torch.device(args.device)
    net, meta = load_model(args.model)
    net = prepare_for_inference(net, device)  # the very network geodet.detect runs
    bands = list(meta.bands)
    distinct = windows[: args.max_preload]
    with rasterio.open(args.scene) as src:
        stats = sample_band_stats(src, bands)
        chips = [read_chip(src, win, bands, stats, args.chip_size)[0] for win in distinct]
    batches = []
    for start in range(0, len(windows), args.batch_size):
        idx = [i % len(chips) for i in range(start, min(start + args.batch_size, len(windows)))]
        batch = torch.from_numpy(np.stack([chips[i] for i in idx])).to(device)
        batch = batch.contiguous(memory_format=torch.channels_last)
        batches.append(batch)
    from geodet.predict import autocast_dtype

    amp_dtype = autocast_dtype(device, args.precision)  # as geodet.detect runs it
    use_amp = amp_dtype is not None
    clock = Clock(args.device)
    stages = _stage_timers(net, clock)
    t0, c0 = clock.span()
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
        for batch in batches:
            net(batch)
    t1, c1 = clock.span()
    return dict(wall_s=t1 - t0, cpu_s=c1 - c0, chips=len(windows), height=h, width=w, input_px=_padded(args.chip_size),
                stages_s={k: round(v, 3) for k, v in stages.items()})


# DeepForest runs in its own virtualenv: this program is written to the work
# folder and run with that venv's python.
DEEPFOREST_RUNNER = r'''
import argparse, json, os, resource, sys, time, warnings
os.environ.setdefault("HF_HUB_OFFLINE", "1")
p = argparse.ArgumentParser()
for name in ("--scene", "--state", "--result", "--device", "--strategy"):
    p.add_argument(name, required=True)
for name in ("--patch-size", "--overlap", "--batch-size", "--threads"):
    p.add_argument(name, type=int, required=True)
a = p.parse_args()

def peak_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

import torch
torch.set_num_threads(a.threads)
import torchvision.models.detection as tvd
import slidingwindow
import deepforest
from deepforest import main as df_main
from deepforest.models import retinanet as df_retinanet

# DeepForest's RetinaNetHub builds torchvision's retinanet_resnet50_fpn, whose
# default ImageNet backbone weights would be downloaded: build it without any.
original = tvd.retinanet_resnet50_fpn
tvd.retinanet_resnet50_fpn = lambda *args, weights=None, **kw: original(weights=None, weights_backbone=None, **kw)
try:
    net = df_retinanet.RetinaNetHub(backbone_weights=None, num_classes=1, nms_thresh=0.05, score_thresh=0.1,
                                    label_dict={"object": 0})
finally:
    tvd.retinanet_resnet50_fpn = original
net.load_state_dict(torch.load(a.state, map_location="cpu", weights_only=True), strict=True)
cuda = a.device.startswith("cuda")
model = df_main.deepforest(model=net, config_args={
    "model": {"name": None}, "num_classes": 1, "label_dict": {"object": 0},
    "batch_size": a.batch_size, "workers": 0, "accelerator": "gpu" if cuda else "cpu", "devices": 1,
})
model.set_labels({"object": 0})
model.create_trainer(enable_progress_bar=False, logger=False, enable_model_summary=False)
import rasterio
with rasterio.open(a.scene) as src:
    height, width = src.height, src.width
windows = slidingwindow.generateForSize(height, width, slidingwindow.DimOrder.ChannelHeightWidth,
                                        a.patch_size, a.overlap / a.patch_size)
padded = net.transform([torch.zeros(3, a.patch_size, a.patch_size)])[0].tensors
rss_before = peak_rss_mb()
if cuda:
    torch.cuda.synchronize()
def cpu_s():
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime
t0, c0 = time.perf_counter(), cpu_s()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    result = model.predict_tile(path=a.scene, patch_size=a.patch_size, patch_overlap=a.overlap / a.patch_size,
                                dataloader_strategy=a.strategy)
if cuda:
    torch.cuda.synchronize()
t1, c1 = time.perf_counter(), cpu_s()
json.dump(dict(wall_s=t1 - t0, cpu_s=c1 - c0, chips=len(windows), height=height, width=width,
               input_px=f"{padded.shape[-1]}x{padded.shape[-2]}",
               detections=0 if result is None else len(result), peak_rss_mb=peak_rss_mb(),
               rss_after_setup_mb=rss_before, version=deepforest.__version__, strategy=a.strategy),
          open(a.result, "w"))
'''


def run_child(args) -> None:
    """Run one variant in this process and write its figures as JSON.

    torch and torchvision are imported before any clock starts (importing
    torchvision.ops pulls in torch._dynamo: seconds that every variant pays).
    """
    import torch
    import torchvision.models.detection  # noqa: F401

    torch.set_num_threads(args.threads)
    rss_setup = rss_mb()
    fn = {"a": variant_a, "b": variant_b, "c": variant_c, "d": variant_d}[args.variant]
    result = fn(args)
    result.update(peak_rss_mb=peak_rss_mb(), rss_after_imports_mb=rss_setup, threads=torch.get_num_threads())
    Path(args.result).write_text(json.dumps(result))


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
        runner = Path(args.workdir) / "deepforest_runner.py"
        runner.write_text(DEEPFOREST_RUNNER)
        cmd = [
            args.deepforest_python, str(runner), "--scene", scene, "--state", paths["tv_state"], "--result", str(result),
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

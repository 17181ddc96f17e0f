"""The throughput variants that run in a child process of ``detect_throughput.py``.

(a) geodet end to end, (b)/(c) the naive rasterio + torchvision loop, one chip or a batch
per forward pass, (d) geodet's network alone on chips in memory; (f) and (g) are (a) with
other models. (e), DeepForest, runs in its own virtualenv: ``deepforest_baseline.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict

from measure import Clock, RssTrace, peak_rss_mb, rss_mb


def _scene_windows(scene: str, chip: int, overlap: int):
    import rasterio

    from geodet.core.windows import chip_windows

    with rasterio.open(scene) as src:
        return chip_windows(src.height, src.width, chip, overlap), src.height, src.width


def variant_a(args) -> dict:
    """geodet.detect with the model file, then write_detections to GeoJSON."""
    import geodet
    import geodet.modeling.model  # noqa: F401 - imported before the clock starts, as (b) and (c) import torchvision
    import geodet.inference.predict  # noqa: F401
    import geodet.core.stitch  # noqa: F401
    from geodet.config import DetectConfig
    from geodet.inference.detection import write_detections

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

    from geodet.modeling.model import prepare_for_inference
    from geodet.modeling.modelfile import load_model
    from geodet.io.raster import read_chip, sample_band_stats

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
    from geodet.inference.predict import autocast_dtype

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

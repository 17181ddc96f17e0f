#!/usr/bin/env python
"""Variant (e) of ``detect_throughput.py``: DeepForest ``predict_tile`` on a scene, timed.

Runs in DeepForest's own virtualenv: ``detect_throughput.py --deepforest-python
/tmp/dfvenv/bin/python`` runs this file with that python. It needs deepforest, torch,
torchvision, slidingwindow and rasterio there, nothing from geodet; from this folder it
uses only ``measure.py`` (standard library). The network is DeepForest's own RetinaNet
class loaded with the same ResNet-50-FPN weights as variants (a)-(d) (a torchvision state
dict, ``--state``); the figures are written as JSON to ``--result``.

Example (what ``detect_throughput.py`` runs)::

    /tmp/dfvenv/bin/python bench/deepforest_baseline.py --scene noise_2048.tif \\
        --state r50_fpn_torchvision.pt --result e.json --device cpu --strategy single \\
        --patch-size 512 --overlap 64 --batch-size 4 --threads 2
"""

import argparse
import json
import os
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before deepforest imports huggingface_hub

from measure import cpu_s, peak_rss_mb  # noqa: E402

LABELS = {"object": 0}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("--scene", "--state", "--result", "--device", "--strategy"):
        p.add_argument(name, required=True)
    for name in ("--patch-size", "--overlap", "--batch-size", "--threads"):
        p.add_argument(name, type=int, required=True)
    return p.parse_args(argv)


def build_network(state_path: str):
    """DeepForest's RetinaNetHub with the given torchvision ResNet-50-FPN weights, no download."""
    import torch
    import torchvision.models.detection as tvd
    from deepforest.models import retinanet as df_retinanet

    # RetinaNetHub builds torchvision's retinanet_resnet50_fpn, whose default
    # ImageNet backbone weights would be downloaded: build it without any.
    original = tvd.retinanet_resnet50_fpn
    tvd.retinanet_resnet50_fpn = lambda *args, weights=None, **kw: original(weights=None, weights_backbone=None, **kw)
    try:
        net = df_retinanet.RetinaNetHub(backbone_weights=None, num_classes=1, nms_thresh=0.05, score_thresh=0.1,
                                        label_dict=LABELS)
    finally:
        tvd.retinanet_resnet50_fpn = original
    net.load_state_dict(torch.load(state_path, map_location="cpu", weights_only=True), strict=True)
    return net


def main(argv=None) -> None:
    a = parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    import rasterio
    import slidingwindow
    import deepforest
    from deepforest import main as df_main

    net = build_network(a.state)
    cuda = a.device.startswith("cuda")
    model = df_main.deepforest(model=net, config_args={
        "model": {"name": None}, "num_classes": 1, "label_dict": LABELS,
        "batch_size": a.batch_size, "workers": 0, "accelerator": "gpu" if cuda else "cpu", "devices": 1,
    })
    model.set_labels(LABELS)
    model.create_trainer(enable_progress_bar=False, logger=False, enable_model_summary=False)
    with rasterio.open(a.scene) as src:
        height, width = src.height, src.width
    windows = slidingwindow.generateForSize(height, width, slidingwindow.DimOrder.ChannelHeightWidth,
                                            a.patch_size, a.overlap / a.patch_size)
    padded = net.transform([torch.zeros(3, a.patch_size, a.patch_size)])[0].tensors
    rss_before = peak_rss_mb()
    if cuda:
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), cpu_s()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = model.predict_tile(path=a.scene, patch_size=a.patch_size, patch_overlap=a.overlap / a.patch_size,
                                    dataloader_strategy=a.strategy)
    if cuda:
        torch.cuda.synchronize()
    t1, c1 = time.perf_counter(), cpu_s()
    with open(a.result, "w") as f:
        json.dump(dict(wall_s=t1 - t0, cpu_s=c1 - c0, chips=len(windows), height=height, width=width,
                       input_px=f"{padded.shape[-1]}x{padded.shape[-2]}",
                       detections=0 if result is None else len(result), peak_rss_mb=peak_rss_mb(),
                       rss_after_setup_mb=rss_before, version=deepforest.__version__, strategy=a.strategy), f)


if __name__ == "__main__":
    main()

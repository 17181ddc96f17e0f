"""Scenes and seeded random models for ``detect_throughput.py``.

A uint8 noise GeoTIFF written in row chunks, and the geodet model files (and the
torchvision copy of the ResNet-50-FPN) that the throughput variants run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict

#: The geodet model file each variant runs (b, c and e run its torchvision copy).
VARIANT_MODEL = {"a": "r50", "b": "r50", "c": "r50", "d": "r50", "e": "r50", "f": "default", "g": "fitted"}

#: Class-logit bias of ``--dense`` models: every anchor scores ~0.88, so every
#: chip returns its maximum number of detections (stress on NMS and stitching).
DENSE_BIAS = 2.0


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
    from geodet.modeling.modelfile import save_model

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

    from geodet.modeling.model import build_model

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
    from geodet.io.raster import open_scene

    info = open_scene(str(scene))
    paths = {}
    if any(VARIANT_MODEL[v] == "r50" for v in args.variants):
        cfg = ModelConfig(backbone="resnet50", fpn_channels=256, num_classes=1, in_channels=info.count)
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
    from geodet.io.raster import open_scene

    cfg = ModelConfig(
        backbone="resnet18", fpn_channels=32, head_convs=1, levels=(3, 4, 5), anchors=AnchorConfig(sizes=(16.0, 32.0, 64.0))
    )
    return _save(workdir / "r18_tiny.pt", _build(cfg, args), cfg, open_scene(str(scene)), args)

"""What a model file or an ONNX export says about its model (``geodet info``).

:func:`describe` returns a JSON-safe ``dict``; :func:`format_info` renders it as text.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from geodet.config import to_dict
from geodet.errors import GeodetError
from geodet.modeling.modelfile import meta_from_dict, model_hash, read_model_file
from geodet.modeling.onnx_export import is_onnx_path, read_onnx_metadata


def _training_summary(history: Sequence[dict]) -> Dict[str, Any]:
    """Epochs, chips seen, training time and the best epoch (by validation mAP50) of a training history."""
    history = [h for h in history if isinstance(h, dict)]
    if not history:
        return {}
    validated = [h for h in history if "val_map50" in h]
    best = max(validated, key=lambda h: h["val_map50"]) if validated else None
    out: Dict[str, Any] = {
        "epochs": int(history[-1].get("epoch", len(history))),
        "chips_seen": int(sum(h["chips"] for h in history)) if all("chips" in h for h in history) else None,
        "seconds": float(sum(h.get("seconds", 0.0) for h in history)),
        "final_loss": history[-1].get("loss"),
    }
    if best is not None:
        out["best_epoch"] = int(best["epoch"])
        out["val_map50"] = float(best["val_map50"])
        if "val_map" in best:
            out["val_map"] = float(best["val_map"])
        out["val_ap50_per_class"] = {str(k): float(v) for k, v in (best.get("val_ap50") or {}).items()}
    return out


def _backbone_name(cfg: Dict[str, Any]) -> str:
    """The backbone of a stored model config, and what it started from (older files name a ResNet depth)."""
    name = cfg.get("backbone") or f"resnet{cfg['backbone_depth']}"
    start = cfg.get("backbone_weights")
    return f"{name} ({'ImageNet' if start == 'imagenet' else 'from ' + os.path.basename(start) if start else 'random init'})"


def _model_part(cfg, class_names, bands, band_mean, band_std, chip_size, overlap, gsd, dtype) -> Dict[str, Any]:
    anchors = cfg["anchors"]
    return {
        "classes": list(class_names),
        "bands": list(bands),
        "band_mean": list(band_mean),
        "band_std": list(band_std),
        "pixel_size_m": gsd,
        "chip_size_px": chip_size,
        "overlap_px": overlap,
        "raster_dtype": dtype,
        "architecture": f"RetinaNet {_backbone_name(cfg)} FPN, levels P{cfg['levels'][0]}-P{cfg['levels'][-1]}",
        "anchors": {"sizes_px": list(anchors["sizes"]), "scales": list(anchors["scales"]),
                    "ratios": list(anchors["ratios"]), "levels": list(cfg["levels"])},
        "assigner": cfg["assigner"],
    }


def describe(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """A JSON-safe description of a geodet model file (``.pt``) or ONNX export (``.onnx``).

    Keys: ``file``, ``kind`` (``"model"`` / ``"onnx"``), ``classes``, ``bands``,
    ``pixel_size_m``, ``chip_size_px``, ``overlap_px``, ``anchors``,
    ``assigner``, ``training`` (:func:`_training_summary`), ``geodet_version``
    (that wrote the model), ``model_hash``; an export adds ``exported_by``,
    ``input``, ``output`` and ``metadata`` (every ``metadata_props`` entry but the history).

    Raises:
        GeodetError: a missing, damaged or foreign file.
    """
    file = Path(path)
    if is_onnx_path(file):
        data = read_onnx_metadata(file)
        try:
            out = {"file": str(file), "kind": "onnx", **_model_part(
                data["geodet_model_config"], data["geodet_class_names"], data["geodet_bands"],
                data["geodet_band_mean"], data["geodet_band_std"], data["geodet_chip_size"],
                data["geodet_overlap"], data["geodet_gsd_m"], data["geodet_dtype"])}
        except (KeyError, TypeError, IndexError):
            raise GeodetError(f"{file.name} is a damaged geodet export: its metadata is incomplete.") from None
        out.update(
            training=_training_summary(data.get("geodet_history") or []),
            geodet_version=data.get("geodet_model_geodet_version"),
            model_hash=data.get("geodet_model_hash"),
            model_name=data.get("geodet_model_name"),
            exported_by=data.get("geodet_version"),
            input=data.get("geodet_input"),
            output=data.get("geodet_output"),
            metadata={k: v for k, v in data.items() if k != "geodet_history"},
        )
        return out
    meta = meta_from_dict(read_model_file(file), file.name)
    out = {"file": str(file), "kind": "model", **_model_part(
        to_dict(meta.model_config), meta.class_names, meta.bands, meta.band_mean, meta.band_std,
        meta.chip_size, meta.overlap, meta.gsd, meta.dtype)}
    out.update(
        training=_training_summary(meta.extra.get("history") or []),
        backbone_init=meta.extra.get("backbone_init"),
        geodet_version=meta.geodet_version,
        model_hash=model_hash(file),
    )
    return out


def _fmt(values: Sequence[float], digits: int = 2) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


def format_info(info: Dict[str, Any]) -> str:
    """The text of ``geodet info``: one fact per line."""
    lines: List[str] = [f"{info['file']} ({'ONNX export' if info['kind'] == 'onnx' else 'geodet model file'})"]
    add = lines.append
    add(f"  classes:        {', '.join(f'{i} {c}' for i, c in enumerate(info['classes']))}")
    add(f"  bands:          {', '.join(map(str, info['bands']))} ({info['raster_dtype']})")
    add(f"  normalisation:  mean {_fmt(info['band_mean'])}; std {_fmt(info['band_std'])}")
    add(f"  pixel size:     {info['pixel_size_m']:.3f} m")
    add(f"  chips:          {info['chip_size_px']} px, overlap {info['overlap_px']} px")
    add(f"  network:        {info['architecture']}")
    init = info.get("backbone_init") or {}
    if init.get("package"):
        add(f"  started from:   {init['file']} of {init['package']} {init['version']} (sha256 {init['sha256'][:16]})")
    a = info["anchors"]
    add(f"  anchors:        sizes {_fmt(a['sizes_px'], 1)} px, scales {_fmt(a['scales'])}, ratios {_fmt(a['ratios'])}")
    add(f"  assigner:       {info['assigner']}")
    t = info.get("training") or {}
    if t:
        chips = "" if t.get("chips_seen") is None else f", {t['chips_seen']} chips"
        loss = "" if t.get("final_loss") is None else f", final loss {t['final_loss']:.4f}"
        add(f"  training:       {t['epochs']} epochs{chips}, {t['seconds'] / 60:.1f} min{loss}")
        if "val_map50" in t:
            add(f"  best epoch:     {t['best_epoch']}: val mAP50 {t['val_map50']:.3f}")
            for name, ap in t.get("val_ap50_per_class", {}).items():
                add(f"    AP50 {name}: {ap:.3f}")
    else:
        add("  training:       no history stored")
    add(f"  geodet version: {info['geodet_version']}")
    add(f"  model hash:     {info['model_hash']}")
    if info["kind"] == "onnx":
        m = info["metadata"]
        add(f"  exported by:    geodet {info['exported_by']} from {info['model_name']}")
        add(f"  input:          {info['input']}")
        add(f"  output:         {info['output']}")
        add(f"  Deepness:       {m.get('model_type')} / {m.get('det_type')}, tiles {m.get('tile_size', m.get('tiles_size'))} px, "
            f"overlap {m.get('tiles_overlap')} %, resolution {m.get('resolution')} cm/px, "
            f"det_conf {m.get('det_conf')}, det_iou_thresh {m.get('det_iou_thresh')}")
    return "\n".join(lines)

"""ONNX export of a geodet model, its metadata, and the onnxruntime runner.

``export_onnx(model.pt, out.onnx)`` writes the folded inference network
(:func:`geodet.modeling.model.prepare_for_inference`) as one ONNX graph:

* input ``images``: ``float32 [B, C, S, S]``, the scene's raw pixel values
  (digital numbers) of the model's bands, in the model's band order, divided
  by :data:`INPUT_SCALE` (255), i.e. 0-1 for 8-bit RGB. The graph multiplies
  by 255 and normalises with the model file's ``band_mean`` / ``band_std``, so
  the QGIS Deepness plugin (which feeds ``uint8 RGB / 255``) and geodet's own
  runner feed the same thing. ``S`` is the model's chip size rounded up to
  :data:`geodet.modeling.anchors.PAD_MULTIPLE_PX`; ``B`` is dynamic.
* output ``detections``: ``float32 [B, N, 5 + K]``, one row per anchor (the
  anchors of an ``S`` px chip are baked into the graph): ``cx, cy, w, h``
  (the decoded box in chip pixels, clipped to the chip), an objectness equal
  to the best class score, then the ``K`` sigmoid class scores. That is the
  layout of Deepness' ``YOLO_v5_or_v7_default`` detector type: it keeps rows
  whose column 4 reaches ``det_conf``, converts ``xywh`` to ``xyxy``, runs
  NMS at ``det_iou_thresh`` and takes the class as the argmax of columns 5+.

Every value of ``metadata_props`` is JSON (Deepness ``json.loads`` each one):
Deepness' keys (:func:`deepness_metadata`) and geodet's own ``geodet_*`` keys
(:func:`geodet_metadata`), from which :func:`meta_from_onnx` rebuilds the
:class:`geodet.modeling.modelfile.ModelMeta` that detection needs.

:class:`OnnxNet` runs an export through onnxruntime behind the interface
:func:`geodet.inference.predict.predict_scene` uses for the torch network: called with
a ``[B, C, H, W]`` batch of normalised chips it returns one
``{"boxes", "scores", "labels"}`` dict per chip, selected exactly as
torchvision's RetinaNet does (score threshold, top-k per pyramid level,
class-wise NMS, detections per chip).
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

from geodet import __version__
from geodet.config import DetectConfig, ModelConfig, from_dict, to_dict
from geodet.errors import GeodetError
from geodet.io.outputs import check_output, staged_file
from geodet.modeling.anchors import PAD_MULTIPLE_PX
from geodet.modeling.model import prepare_for_inference
from geodet.modeling.modelfile import ModelMeta, load_model, model_hash

log = logging.getLogger(__name__)

#: The graph's input is raw pixel values divided by this (Deepness feeds uint8 RGB / 255).
INPUT_SCALE = 255.0
#: The ONNX opset written.
OPSET = 17
#: Value of ``geodet_format`` in an export's metadata.
ONNX_FORMAT_NAME = "geodet-onnx"
ONNX_FORMAT_VERSION = 1
#: The Deepness detector type whose output layout the export has.
DEEPNESS_DETECTOR_TYPE = "YOLO_v5_or_v7_default"
#: Names of the graph's input and output.
INPUT_NAME, OUTPUT_NAME = "images", "detections"
#: Columns of an output row before the class scores: cx, cy, w, h, objectness.
BOX_COLUMNS = 5

PathLike = Union[str, os.PathLike]


def is_onnx_path(path: Optional[PathLike]) -> bool:
    """Whether ``path`` names an ONNX file (by its extension)."""
    return path is not None and not isinstance(path, tuple) and str(path).lower().endswith(".onnx")


# --------------------------------------------------------------------------- the graph


def input_size_px(chip_px: int) -> int:
    return int(math.ceil(chip_px / PAD_MULTIPLE_PX) * PAD_MULTIPLE_PX)


def chip_anchors(net, size_px: int):
    """Anchors of an ``size_px`` square chip: ``(float32 [M, 4] xyxy chip px, anchors per level)``.

    Level-major, in the order of the head's outputs.
    """
    import torch
    from torchvision.models.detection.image_list import ImageList

    param = next(net.parameters())
    dummy = torch.zeros((1, net.config.in_channels, size_px, size_px), dtype=param.dtype, device=param.device)
    with torch.inference_mode():
        features = list(net.backbone(dummy).values())
        anchors = net.anchor_generator(ImageList(dummy, [(size_px, size_px)]), features)[0]
    per_level = [int(f.shape[-2] * f.shape[-1]) * net.anchor_generator.num_anchors_per_location()[0] for f in features]
    return anchors.float().cpu(), per_level


def _export_module(net, meta, size_px: int):
    """The torch module that is exported: normalisation, network, decoding, Deepness layout."""
    import torch
    from torch import nn

    scale = float(net.config.input_scale)  # chips resampled inside the network (ModelConfig.input_scale)
    anchors, per_level = chip_anchors(net, int(round(size_px * scale)))

    class DeepnessLayout(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = net.backbone
            self.head = net.head
            c = len(meta.band_mean)
            self.register_buffer("mean", torch.tensor(meta.band_mean, dtype=torch.float32).view(1, c, 1, 1))
            self.register_buffer("std", torch.tensor(meta.band_std, dtype=torch.float32).view(1, c, 1, 1))
            self.register_buffer("anchors", anchors)
            self.clip = float(meta.chip_size)
            self.xform_clip = float(net.head.box_coder.bbox_xform_clip)

        def forward(self, images):
            x = (images * INPUT_SCALE - self.mean) / self.std
            if scale != 1.0:
                x = torch.nn.functional.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
            out = self.head(list(self.backbone(x).values()))
            deltas, scores = out["bbox_regression"], torch.sigmoid(out["cls_logits"])
            widths = self.anchors[:, 2] - self.anchors[:, 0]
            heights = self.anchors[:, 3] - self.anchors[:, 1]
            ctr_x = self.anchors[:, 0] + 0.5 * widths
            ctr_y = self.anchors[:, 1] + 0.5 * heights
            dw = torch.clamp(deltas[..., 2], max=self.xform_clip)
            dh = torch.clamp(deltas[..., 3], max=self.xform_clip)
            px = deltas[..., 0] * widths + ctr_x
            py = deltas[..., 1] * heights + ctr_y
            half_w = 0.5 * (torch.exp(dw) * widths)
            half_h = 0.5 * (torch.exp(dh) * heights)
            # back to chip pixels from the network's (resampled) pixels
            x1 = torch.clamp((px - half_w) / scale, 0.0, self.clip)
            y1 = torch.clamp((py - half_h) / scale, 0.0, self.clip)
            x2 = torch.clamp((px + half_w) / scale, 0.0, self.clip)
            y2 = torch.clamp((py + half_h) / scale, 0.0, self.clip)
            boxes = torch.stack(((x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1, y2 - y1), dim=-1)
            objectness = scores.max(dim=-1, keepdim=True).values
            return torch.cat((boxes, objectness, scores), dim=-1)

    return DeepnessLayout().eval(), per_level


# --------------------------------------------------------------------------- metadata


def deepness_metadata(meta, config: DetectConfig = DetectConfig()) -> Dict[str, Any]:
    """The metadata keys the QGIS Deepness plugin reads for a detector (values before JSON).

    ``resolution`` in cm per pixel, ``tiles_overlap`` in percent of the tile;
    ``tile_size`` is the key Deepness reads (its "Load default parameters"); ``tiles_size``
    repeats it for readers of exports made before (``geodet info`` of older versions).
    """
    size_px = input_size_px(meta.chip_size)
    return {
        "model_type": "Detector",
        "det_type": DEEPNESS_DETECTOR_TYPE,
        "class_names": {str(i): name for i, name in enumerate(meta.class_names)},
        "resolution": round(float(meta.gsd) * 100.0, 4),
        "tiles_size": size_px,
        "tile_size": size_px,
        "tiles_overlap": int(round(100.0 * meta.overlap / size_px)),
        "det_conf": float(config.score_threshold),
        "det_iou_thresh": float(config.nms_iou),
        "standardization_mean": [0.0] * len(meta.bands),
        "standardization_std": [1.0] * len(meta.bands),
    }


def geodet_metadata(meta, *, model_name: str, model_hash: str, per_level: Sequence[int],
                    config: DetectConfig = DetectConfig()) -> Dict[str, Any]:
    """geodet's description of an export (values before JSON): the model file's, and the input contract."""
    return {
        "geodet_format": ONNX_FORMAT_NAME,
        "geodet_format_version": ONNX_FORMAT_VERSION,
        "geodet_version": __version__,
        "geodet_model_name": model_name,
        "geodet_model_hash": model_hash,
        "geodet_model_geodet_version": meta.geodet_version,
        "geodet_model_config": to_dict(meta.model_config),
        "geodet_class_names": list(meta.class_names),
        "geodet_bands": list(meta.bands),
        "geodet_band_mean": list(meta.band_mean),
        "geodet_band_std": list(meta.band_std),
        "geodet_chip_size": int(meta.chip_size),
        "geodet_overlap": int(meta.overlap),
        "geodet_gsd_m": float(meta.gsd),
        "geodet_dtype": meta.dtype,
        "geodet_score_threshold": float(config.score_threshold),
        "geodet_nms_iou": float(config.nms_iou),
        "geodet_anchors_per_level": [int(n) for n in per_level],
        "geodet_input": (
            f"float32 [B, {len(meta.bands)}, S, S]: raw pixel values of scene bands {list(meta.bands)} "
            f"divided by {INPUT_SCALE:g}; the graph normalises with geodet_band_mean / geodet_band_std"
        ),
        "geodet_output": (
            "float32 [B, N, 5 + K]: cx, cy, w, h (chip px), objectness (= best class score), K class scores"
        ),
        "geodet_input_scale": INPUT_SCALE,
        "geodet_history": list(meta.extra.get("history") or []),
    }


def _metadata_map(path: Path) -> Dict[str, str]:
    """``metadata_props`` of an ONNX file as strings, read without external data.

    Raises:
        GeodetError: a missing, unreadable or non-ONNX file.
    """
    import onnx

    if not path.is_file():
        raise GeodetError(f"the ONNX file {path} does not exist.")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - every failure is one sentence
        raise GeodetError(f"{path} is not a readable ONNX file: it is corrupt, truncated or of another kind.") from None
    return {p.key: p.value for p in model.metadata_props}


def read_onnx_metadata(path: PathLike) -> Dict[str, Any]:
    """The JSON-decoded ``metadata_props`` of a geodet ONNX export.

    Raises:
        GeodetError: not an ONNX file, not a geodet export, or metadata that is not JSON.
    """
    file = Path(path)
    raw = _metadata_map(file)
    if "geodet_format" not in raw:
        raise GeodetError(f"{file.name} is an ONNX file but not a geodet export (it has no geodet metadata).")
    try:
        out = {key: json.loads(value) for key, value in raw.items()}
    except ValueError:
        raise GeodetError(f"{file.name} is a damaged geodet export: its metadata is not JSON.") from None
    if out["geodet_format"] != ONNX_FORMAT_NAME or not isinstance(out.get("geodet_format_version"), int):
        raise GeodetError(f"{file.name} is not a geodet export.")
    if out["geodet_format_version"] > ONNX_FORMAT_VERSION:
        raise GeodetError(
            f"{file.name} has geodet export format version {out['geodet_format_version']}; this geodet "
            f"{__version__} reads up to version {ONNX_FORMAT_VERSION}, so upgrade geodet."
        )
    return out


def meta_from_onnx(path: PathLike):
    """The :class:`geodet.modeling.modelfile.ModelMeta` an export was made from (without its training history).

    Raises:
        GeodetError: see :func:`read_onnx_metadata`; missing or malformed geodet keys.
    """
    data = read_onnx_metadata(path)
    name = Path(path).name
    try:
        return ModelMeta(
            model_config=from_dict(ModelConfig, dict(data["geodet_model_config"])),
            class_names=tuple(str(c) for c in data["geodet_class_names"]),
            bands=tuple(int(b) for b in data["geodet_bands"]),
            band_mean=tuple(float(v) for v in data["geodet_band_mean"]),
            band_std=tuple(float(v) for v in data["geodet_band_std"]),
            chip_size=int(data["geodet_chip_size"]),
            overlap=int(data["geodet_overlap"]),
            gsd=float(data["geodet_gsd_m"]),
            dtype=str(data["geodet_dtype"]),
            geodet_version=str(data.get("geodet_model_geodet_version", "unknown")),
            extra={"anchors_per_level": [int(n) for n in data["geodet_anchors_per_level"]]},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise GeodetError(f"{name} is a damaged geodet export: its metadata lacks or garbles {exc}.") from None


# --------------------------------------------------------------------------- export


def export_onnx(model: PathLike, out: PathLike, *, overwrite: bool = False, opset: int = OPSET,
                config: DetectConfig = DetectConfig()) -> Path:
    """Export a geodet model file to ONNX with its metadata, atomically (:mod:`geodet.io.outputs`).

    Args:
        model: a geodet model file (``.pt``).
        out: the ONNX file to write.
        overwrite: replace an existing ``out``.
        opset: ONNX opset (at least 17).
        config: ``score_threshold`` and ``nms_iou`` written as the defaults
            of the export (geodet's and Deepness').

    Returns:
        ``out`` as a Path.

    Raises:
        GeodetError: an unreadable model file, ``out`` exists without
            ``overwrite``, or its folder cannot be written.
    """
    import onnx
    import torch


    if opset < 17:
        raise GeodetError(f"the ONNX opset must be at least 17, got {opset}.")
    target = check_output(out, overwrite=overwrite)
    net, meta = load_model(model, device="cpu")
    net = prepare_for_inference(net, torch.device("cpu")).to(memory_format=torch.contiguous_format)
    size_px = input_size_px(meta.chip_size)
    module, per_level = _export_module(net, meta, size_px)
    dummy = torch.zeros((1, meta.model_config.in_channels, size_px, size_px))
    with staged_file(target, overwrite=overwrite) as tmp:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter: fixed shapes, no guards
            torch.onnx.export(
                module, (dummy,), str(tmp), opset_version=opset, dynamo=False,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
        graph = onnx.load(str(tmp))
        props = {**deepness_metadata(meta, config),
                 **geodet_metadata(meta, model_name=Path(model).name, model_hash=model_hash(model),
                                   per_level=per_level, config=config)}
        del graph.metadata_props[:]
        for key, value in props.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, json.dumps(value)
        graph.doc_string = f"geodet {__version__} export of {Path(model).name}"
        onnx.save(graph, str(tmp))
    log.info("exported %s to %s", model, target)
    return target


# --------------------------------------------------------------------------- onnxruntime



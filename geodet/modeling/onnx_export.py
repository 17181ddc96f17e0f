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
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

import geodet
from geodet.config import DetectConfig, ModelConfig, from_dict, to_dict
from geodet.errors import GeodetError

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


def _input_size_px(chip_px: int) -> int:
    from geodet.modeling.anchors import PAD_MULTIPLE_PX

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
    size_px = _input_size_px(meta.chip_size)
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
        "geodet_version": geodet.__version__,
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
            f"{geodet.__version__} reads up to version {ONNX_FORMAT_VERSION}, so upgrade geodet."
        )
    return out


def meta_from_onnx(path: PathLike):
    """The :class:`geodet.modeling.modelfile.ModelMeta` an export was made from (without its training history).

    Raises:
        GeodetError: see :func:`read_onnx_metadata`; missing or malformed geodet keys.
    """
    from geodet.modeling.modelfile import ModelMeta

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

    from geodet.modeling.model import prepare_for_inference
    from geodet.modeling.modelfile import load_model, model_hash
    from geodet.io.outputs import check_output, staged_file

    if opset < 17:
        raise GeodetError(f"the ONNX opset must be at least 17, got {opset}.")
    target = check_output(out, overwrite=overwrite)
    net, meta = load_model(model, device="cpu")
    net = prepare_for_inference(net, torch.device("cpu")).to(memory_format=torch.contiguous_format)
    size_px = _input_size_px(meta.chip_size)
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
        graph.doc_string = f"geodet {geodet.__version__} export of {Path(model).name}"
        onnx.save(graph, str(tmp))
    log.info("exported %s to %s", model, target)
    return target


# --------------------------------------------------------------------------- onnxruntime


def _providers(device: str) -> List[str]:
    """CUDA when asked for or available (``device`` auto/cuda), else the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device != "cpu" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise GeodetError("--device cuda was asked for but onnxruntime has no CUDA execution provider here.")
    return ["CPUExecutionProvider"]


def _attribute_tensors(nodes) -> Iterator[Any]:
    """Every tensor held by the attributes of ``nodes`` (a Constant's value, any tensor or sparse
    tensor attribute), and every tensor of their subgraphs (the branches of If, the bodies of Loop
    and Scan), recursively."""
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            sparse = ([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []) + list(attr.sparse_tensors)
            for tensor in sparse:
                yield tensor.values
                yield tensor.indices
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for graph in attr.graphs:
                yield from _graph_tensors(graph)


def _graph_tensors(graph) -> Iterator[Any]:
    """Every tensor of an ONNX graph: initializers, sparse initializers, and node attributes with
    their subgraphs (:func:`_attribute_tensors`)."""
    yield from graph.initializer
    for tensor in graph.sparse_initializer:
        yield tensor.values
        yield tensor.indices
    yield from _attribute_tensors(graph.node)


def model_tensors(model) -> Iterator[Any]:
    """Every ``TensorProto`` of an ONNX model: its graph's (:func:`_graph_tensors`) and its local
    functions' node attributes."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        yield from _attribute_tensors(function.node)


def _check_no_external_data(model, name: str) -> None:
    """Refuse an ONNX model any of whose tensors (:func:`model_tensors`) lives in another file: an
    initializer, a Constant node's value, a tensor in a subgraph or a function. A geodet export never
    has one, and onnxruntime would read the file its path names."""
    import onnx

    for tensor in model_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            where = f" (tensor {tensor.name!r})" if tensor.name else ""
            raise GeodetError(f"{name} keeps tensor data in external files{where}, which a geodet export never does.")


def _dims(value_info) -> List[Any]:
    """A graph input's or output's shape: ints for fixed sizes, names (or None) for symbolic ones."""
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in shape.dim]


def _fits(dims: Sequence[Any], want: Sequence[int]) -> bool:
    """Whether a shape fits ``want``: as many dimensions, each fixed one equal (symbolic ones fit)."""
    return len(dims) == len(want) and all(not isinstance(d, int) or d == w for d, w in zip(dims, want))


def _check_contract(model, meta, name: str) -> None:
    """Refuse a graph whose input or output does not have the shape its metadata promises:
    input ``[B, C, S, S]`` (C bands, S the export's chip side), output ``[B, N, 5 + K]`` (N anchors,
    K classes)."""
    graph = model.graph
    inputs = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    size_px = _input_size_px(meta.chip_size)
    want_in = [meta.model_config.in_channels, size_px, size_px]
    want_out = [sum(meta.extra["anchors_per_level"]), BOX_COLUMNS + len(meta.class_names)]
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME or not _fits(_dims(inputs[0])[1:], want_in):
        found = ", ".join(f"{i.name} {_dims(i)}" for i in inputs) or "none"
        raise GeodetError(
            f"{name} does not match its own metadata: the graph's input should be {INPUT_NAME} [batch, "
            f"{', '.join(map(str, want_in))}] but is {found}."
        )
    outputs = list(graph.output)
    if not outputs or outputs[0].name != OUTPUT_NAME or not _fits(_dims(outputs[0])[1:], want_out):
        found = ", ".join(f"{o.name} {_dims(o)}" for o in outputs) or "none"
        raise GeodetError(
            f"{name} does not match its own metadata: the graph's output should be {OUTPUT_NAME} [batch, "
            f"{', '.join(map(str, want_out))}] (anchors, 5 + classes) but is {found}."
        )


def check_onnx_file(path: PathLike, meta=None):
    """Check an ONNX file as :class:`OnnxNet` would before onnxruntime opens it: a geodet export
    (:func:`meta_from_onnx`) with no tensor in external files (:func:`_check_no_external_data`) and a
    graph whose input and output fit its metadata (:func:`_check_contract`). Returns its
    :class:`geodet.modeling.modelfile.ModelMeta`.

    Raises:
        GeodetError: one sentence on what is wrong.
    """
    import onnx

    file = Path(path)
    meta = meta_from_onnx(file) if meta is None else meta
    try:
        model = onnx.load(str(file), load_external_data=False)
    except Exception:  # noqa: BLE001 - every failure is one sentence
        raise GeodetError(f"{file} is not a readable ONNX file: it is corrupt, truncated or of another kind.") from None
    _check_no_external_data(model, file.name)
    _check_contract(model, meta, file.name)
    return meta


class OnnxNet:
    """An ONNX export run by onnxruntime, called like the torch network.

    ``net(images)`` with ``images`` a float ``[B, C, H, W]`` tensor of chips
    normalised with any per-band statistics ``stats`` (those of the plan;
    :meth:`set_stats`, default: the model's) returns one
    ``{"boxes": [n, 4] xyxy chip px, "scores": [n], "labels": [n]}`` per chip.

    The chips are mapped back to the graph's input (``raw / 255``) with the
    model's statistics so that the graph's own normalisation restores them:
    ``x = (chip * std + mean) / 255``.
    """

    def __init__(self, path: PathLike, meta, *, device: str = "auto"):
        import onnxruntime as ort

        file = Path(path)
        check_onnx_file(file, meta)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(file), sess_options=options, providers=_providers(device))
        except GeodetError:
            raise
        except Exception:  # noqa: BLE001
            raise GeodetError(f"onnxruntime cannot run {file.name}: the graph is damaged or not a geodet export.") from None
        self.meta = meta
        self.config: ModelConfig = meta.model_config
        self.size_px = _input_size_px(meta.chip_size)
        self.per_level = list(meta.extra["anchors_per_level"])
        self.mean = np.asarray(meta.band_mean, np.float32).reshape(1, -1, 1, 1)
        self.std = np.asarray(meta.band_std, np.float32).reshape(1, -1, 1, 1)
        self.providers = self.session.get_providers()

    def raw_input(self, chips: np.ndarray) -> np.ndarray:
        """Normalised chips ``float32 [B, C, h, w]`` -> the graph input ``[B, C, S, S]`` (raw / 255, zero-padded)."""
        x = (chips * self.std + self.mean) / np.float32(INPUT_SCALE)
        b, c, h, w = x.shape
        if (h, w) != (self.size_px, self.size_px):
            if h > self.size_px or w > self.size_px:
                raise GeodetError(
                    f"the ONNX model takes chips of at most {self.size_px} px but got {h} x {w}; "
                    "leave --chip-size at the model's."
                )
            # padding is 0 in normalised units, as the torch model's zero padding
            padded = np.broadcast_to(self.mean / np.float32(INPUT_SCALE), (b, c, self.size_px, self.size_px)).copy()
            padded[:, :, :h, :w] = x
            x = padded
        return np.ascontiguousarray(x, dtype=np.float32)

    def run_raw(self, x: np.ndarray) -> np.ndarray:
        """The graph's output ``float32 [B, N, 5 + K]`` for its input ``x`` (raw / 255).

        Raises:
            GeodetError: the graph's output has another layout (its shape was symbolic in the file).
        """
        out = self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        want = (len(x), sum(self.per_level), BOX_COLUMNS + len(self.meta.class_names))
        if tuple(out.shape) != want:
            raise GeodetError(
                f"the ONNX model's output has shape {list(out.shape)}, not [batch, anchors, 5 + classes] = "
                f"{list(want)} as its metadata says; it is not a geodet export in the Deepness YOLOv5 layout."
            )
        return out

    def __call__(self, images) -> List[Dict[str, Any]]:
        import torch

        chips = images.detach().float().cpu().contiguous().numpy()
        rows = self.run_raw(self.raw_input(chips))
        return [select_detections(torch.from_numpy(r), self.per_level, self.config) for r in rows]


def rows_to_xyxy(rows):
    """``[N, >=4]`` rows ``cx, cy, w, h, ...`` -> ``[N, 4]`` xyxy (numpy or torch)."""
    cx, cy, w, h = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
    stack = np.stack if isinstance(rows, np.ndarray) else __import__("torch").stack
    return stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), 1)


def select_detections(rows, per_level: Sequence[int], cfg: ModelConfig) -> Dict[str, Any]:
    """One chip's detections from its output rows, as torchvision's RetinaNet selects them.

    Per pyramid level: class scores above ``cfg.score_thresh``, the best
    ``cfg.topk_candidates``; then class-wise NMS at ``cfg.nms_iou`` and the
    best ``cfg.detections_per_chip``.

    Args:
        rows: ``float32 [N, 5 + K]`` (:data:`OUTPUT_NAME` of one chip), level-major.
        per_level: anchors (rows) per pyramid level.
    """
    import torch
    from torchvision.ops import batched_nms

    boxes_all, scores_all, labels_all = [], [], []
    start = 0
    for count in per_level:
        level = rows[start:start + count]
        start += count
        num_classes = level.shape[1] - BOX_COLUMNS
        scores = level[:, BOX_COLUMNS:].flatten()
        keep = scores > cfg.score_thresh
        idx = torch.where(keep)[0]
        scores = scores[keep]
        scores, order = scores.topk(min(cfg.topk_candidates, int(idx.numel())))
        idx = idx[order]
        anchor_idx = torch.div(idx, num_classes, rounding_mode="floor")
        boxes_all.append(rows_to_xyxy(level[anchor_idx]))
        scores_all.append(scores)
        labels_all.append(idx % num_classes)
    boxes, scores, labels = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all)
    keep = batched_nms(boxes, scores, labels, cfg.nms_iou)[: cfg.detections_per_chip]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


def load_onnx(path: PathLike, device: str = "auto") -> Tuple[OnnxNet, Any]:
    """``(OnnxNet, ModelMeta)`` of a geodet ONNX export.

    Raises:
        GeodetError: missing or damaged file, not a geodet export, onnxruntime missing.
    """
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise GeodetError("running an ONNX model needs onnxruntime: pip install 'geodet[onnx]'.") from None
    meta = meta_from_onnx(path)
    return OnnxNet(path, meta, device=device), meta


def load_onnx_detector(path: PathLike, config: DetectConfig = DetectConfig()):
    """A :class:`geodet.inference.detection.Detector` running a geodet ONNX export through onnxruntime.

    The chip size is the export's (its anchors are baked for it); the model's
    name and hash are those of the model file the export was made from.

    Raises:
        GeodetError: see :func:`load_onnx`; a ``chip_size`` other than the export's.
    """
    import torch

    from geodet.inference.detection import Detector, _overlap_warning, config_for_model

    net, meta = load_onnx(path, config.device)
    if config.chip_size is not None and int(config.chip_size) != meta.chip_size:
        raise GeodetError(
            f"{Path(path).name} is an ONNX export for {meta.chip_size} px chips; it cannot run on "
            f"{config.chip_size} px chips (leave --chip-size out)."
        )
    run_config = config_for_model(config, meta)
    warn = _overlap_warning(meta, run_config.overlap)
    if warn:
        log.warning(warn)
    data = read_onnx_metadata(path)
    log.info("%s runs on onnxruntime (%s)", Path(path).name, ", ".join(net.providers))
    return Detector(net, meta, torch.device("cpu"), run_config,
                    model_name=str(data.get("geodet_model_name", Path(path).name)),
                    model_hash=data.get("geodet_model_hash"))

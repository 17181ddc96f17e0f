"""Running a geodet ONNX export through onnxruntime, behind the network interface of
:func:`geodet.inference.predict.predict_scene`.

:class:`OnnxNet`, called with a ``[B, C, H, W]`` batch of normalised chips,
returns one ``{"boxes", "scores", "labels"}`` dict per chip, selected exactly
as torchvision's RetinaNet does (score threshold, top-k per pyramid level,
class-wise NMS, detections per chip). :func:`check_onnx_file` refuses, before
onnxruntime opens it, a file that is not a geodet export, keeps tensors in
external files, or whose graph disagrees with its metadata. The file format
itself (graph layout, metadata) is :mod:`geodet.modeling.onnx_export`'s.
onnxruntime and onnx are optional (``pip install 'geodet[onnx]'``) and loaded
when used.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import numpy as np

from geodet.config import ModelConfig
from geodet.errors import GeodetError
from geodet.modeling.onnx_export import (
    BOX_COLUMNS,
    INPUT_NAME,
    INPUT_SCALE,
    OUTPUT_NAME,
    PathLike,
    input_size_px,
    meta_from_onnx,
)

log = logging.getLogger(__name__)

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
    size_px = input_size_px(meta.chip_size)
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
        self.size_px = input_size_px(meta.chip_size)
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

    Per pyramid level: class scores above ``cfg.chip_score_threshold``, the best
    ``cfg.topk_candidates``; then class-wise NMS at ``cfg.chip_nms_iou`` and the
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
        keep = scores > cfg.chip_score_threshold
        idx = torch.where(keep)[0]
        scores = scores[keep]
        scores, order = scores.topk(min(cfg.topk_candidates, int(idx.numel())))
        idx = idx[order]
        anchor_idx = torch.div(idx, num_classes, rounding_mode="floor")
        boxes_all.append(rows_to_xyxy(level[anchor_idx]))
        scores_all.append(scores)
        labels_all.append(idx % num_classes)
    boxes, scores, labels = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all)
    keep = batched_nms(boxes, scores, labels, cfg.chip_nms_iou)[: cfg.detections_per_chip]
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

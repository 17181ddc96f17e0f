"""A model loaded for detection, with its settings resolved, and what its outputs say about it.

:func:`load_detector` loads a model file (``.pt``, or an ONNX export run through
onnxruntime, :mod:`geodet.inference.onnx_runtime`) once per process or Dask
worker; :func:`run_metadata` and :func:`model_file_metadata` are the metadata
that every output of the run carries (:data:`geodet.io.formats.METADATA_ATTR`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

import geopandas as gpd
import numpy as np
import torch

from geodet import __version__
from geodet.config import DetectConfig
from geodet.core.stitch import overlap_warning
from geodet.errors import GeodetError
from geodet.inference.onnx_runtime import check_onnx_file, load_onnx
from geodet.inference.tta import FlipTTA
from geodet.io.formats import METADATA_ATTR
from geodet.modeling.device import resolve_device
from geodet.modeling.model import prepare_for_inference
from geodet.modeling.modelfile import load_model, model_hash, read_model_file
from geodet.modeling.onnx_export import PathLike, is_onnx_path, read_onnx_metadata

log = logging.getLogger(__name__)

#: The small model shipped with the package (see ``scripts/make_default_model.py``).
DEFAULT_MODEL = Path(__file__).parents[1] / "weights" / "default.pt"


def default_model_path() -> str:
    """Path of the bundled default model."""
    if not DEFAULT_MODEL.exists():
        raise GeodetError("the bundled default model is missing from this installation; pass -m MODEL.")
    return str(DEFAULT_MODEL)


def load(model=None, device: str = "auto"):
    """``(net, meta, torch.device)`` from a path, None (the default model) or a loaded pair."""
    dev = resolve_device(device)
    if isinstance(model, tuple):
        net, meta = model
        net = copy.deepcopy(net)  # folding batch norms must not change the caller's (trainable) model
    else:
        path = default_model_path() if model is None else str(model)
        net, meta = load_model(path, device="cpu")
    return prepare_for_inference(net, dev), meta, dev


def config_for_model(config: DetectConfig, meta) -> DetectConfig:
    """``config`` with ``bands``, ``chip_size`` and ``overlap`` resolved: each the model's unless set.

    Raises:
        GeodetError: an overlap not smaller than the chip size.
    """
    chip_px = int(config.chip_size or meta.chip_size)
    overlap = int(meta.overlap if config.overlap is None else config.overlap)
    if overlap >= chip_px:
        raise GeodetError(f"the overlap ({overlap} px) must be smaller than the chip size ({chip_px} px).")
    bands = tuple(config.bands) if config.bands is not None else tuple(meta.bands)
    return dataclasses.replace(config, bands=bands, chip_size=chip_px, overlap=overlap)


@dataclass
class Detector:
    """A model ready for inference, with the settings resolved for it.

    Built once per process (or Dask worker) by :func:`load_detector` and reused
    for every scene. ``model_name`` / ``model_hash`` identify the model file
    (:func:`geodet.modeling.modelfile.model_hash`; None for an in-memory model).
    """

    net: object
    meta: object
    device: object
    config: DetectConfig
    model_name: str = "in-memory model"
    model_hash: Optional[str] = None


def load_detector(model=None, config: DetectConfig = DetectConfig()) -> Detector:
    """Load ``model`` (a path, None for the default model, or ``(net, meta)``) for ``config``.

    A ``.onnx`` path (a ``geodet export``) runs through onnxruntime
    (:func:`load_onnx_detector`). Warns when the overlap is small for the model's anchors.
    """
    if is_onnx_path(model):
        return load_onnx_detector(str(model), config)
    net, meta, device = load(model, config.device)
    run_config = config_for_model(config, meta)
    warn = model_overlap_warning(meta, run_config.overlap)
    if warn:
        log.warning(warn)
    net = with_tta(net, meta, run_config)
    if isinstance(model, tuple):
        return Detector(net, meta, device, run_config)
    path = default_model_path() if model is None else str(model)
    return Detector(net, meta, device, run_config, model_name=Path(path).name, model_hash=model_hash(path))


def load_onnx_detector(path: PathLike, config: DetectConfig = DetectConfig()):
    """A :class:`Detector` running a geodet ONNX export through onnxruntime.

    The chip size is the export's (its anchors are baked for it); the model's
    name and hash are those of the model file the export was made from.

    Raises:
        GeodetError: see :func:`geodet.inference.onnx_runtime.load_onnx`; a ``chip_size`` other than the export's.
    """
    net, meta = load_onnx(path, config.device)
    if config.chip_size is not None and int(config.chip_size) != meta.chip_size:
        raise GeodetError(
            f"{Path(path).name} is an ONNX export for {meta.chip_size} px chips; it cannot run on "
            f"{config.chip_size} px chips (leave --chip-size out)."
        )
    run_config = config_for_model(config, meta)
    warn = model_overlap_warning(meta, run_config.overlap)
    if warn:
        log.warning(warn)
    net = with_tta(net, meta, run_config)
    data = read_onnx_metadata(path)
    log.info("%s runs on onnxruntime (%s)", Path(path).name, ", ".join(net.providers))
    return Detector(net, meta, torch.device("cpu"), run_config,
                    model_name=str(data.get("geodet_model_name", Path(path).name)),
                    model_hash=data.get("geodet_model_hash"))


def with_tta(net, meta, config: DetectConfig):
    """``net``, or with ``config.tta`` the :class:`geodet.inference.tta.FlipTTA` of it, merging
    the flips at the model's own per-chip NMS IoU and detection cap."""
    if not config.tta:
        return net
    cfg = meta.model_config
    return FlipTTA(net, cfg.chip_nms_iou, cfg.detections_per_chip)


def model_overlap_warning(meta, overlap_px: int) -> Optional[str]:
    """:func:`geodet.core.stitch.overlap_warning` for the largest anchor of ``meta``'s model, in scene pixels."""
    anchors = meta.model_config.anchors
    largest = max(anchors.sizes) * max(anchors.scales) * max(np.sqrt(max(anchors.ratios)), np.sqrt(1 / min(anchors.ratios)))
    return overlap_warning(float(largest) / float(meta.model_config.input_scale), overlap_px)  # in scene px


def run_metadata(detector: Detector) -> Dict[str, object]:
    """What the outputs of a run say about their making (JSON values).

    ``geodet_version``, ``model_name`` and ``model_hash`` (None for an in-memory model), and
    ``class_names`` (``class_id`` indexes it). Detection frames carry it in
    ``frame.attrs[geodet.io.formats.METADATA_ATTR]``; :func:`geodet.io.formats.write_vector` writes it
    into each format's metadata.
    """
    return _metadata(detector.model_name, detector.model_hash, detector.meta.class_names)


def model_file_metadata(model=None) -> Optional[Dict[str, object]]:
    """:func:`run_metadata` of a model file (None: the bundled model) without loading its network;
    None for an in-memory ``(net, meta)`` model. For frames that lost their ``attrs`` on the way
    (a job's parts read back from GeoParquet)."""
    if isinstance(model, tuple):
        return None
    path = default_model_path() if model is None else str(model)
    if is_onnx_path(path):  # an export names the model file it was made from, as its Detector does
        data = read_onnx_metadata(path)
        return _metadata(str(data.get("geodet_model_name", Path(path).name)), data.get("geodet_model_hash"),
                         data["geodet_class_names"])
    class_names = read_model_file(path)["class_names"]  # first: its one sentence for a missing or bad file
    return _metadata(Path(path).name, model_hash(path), class_names)


def check_model_file(model=None) -> None:
    """Check a model file (None: the bundled one) as loading it would, without building its network:
    a ``.pt`` file's contents (:func:`geodet.modeling.modelfile.read_model_file`), an ONNX export's metadata
    and graph (:func:`geodet.inference.onnx_runtime.check_onnx_file`). An in-memory model passes.

    Raises:
        GeodetError: the file would be refused when loaded.
    """
    if isinstance(model, tuple):
        return
    path = default_model_path() if model is None else str(model)
    if is_onnx_path(path):
        check_onnx_file(path)
    else:
        model_file_metadata(path)


def model_file_hash(model=None) -> Optional[str]:
    """:func:`geodet.modeling.modelfile.model_hash` of the bytes of a model file, ``.pt`` or ``.onnx`` (None:
    the bundled model); None for an in-memory ``(net, meta)`` model. A job's model identity: an
    export and its source are different files and may differ in the last bits."""
    if isinstance(model, tuple):
        return None
    return model_hash(default_model_path() if model is None else str(model))


def _metadata(model_name: str, hash_hex: Optional[str], class_names: Sequence[str]) -> Dict[str, object]:
    return {
        "geodet_version": __version__,
        "model_name": model_name,
        "model_hash": hash_hex,
        "class_names": [str(name) for name in class_names],
    }


def with_metadata(frame: gpd.GeoDataFrame, metadata: Optional[Dict[str, object]]) -> gpd.GeoDataFrame:
    """``frame`` with ``metadata`` in ``frame.attrs[METADATA_ATTR]`` (None: left as it is); returns ``frame``."""
    if metadata is not None:
        frame.attrs[METADATA_ATTR] = copy.deepcopy(metadata)
    return frame

"""Scene -> batches of chips -> model -> detections in scene pixels.

:func:`plan_scene` checks an open scene against the model and decides how it
is read (:class:`ScenePlan`: bands, normalisation statistics, chip windows);
:func:`predict_scene` runs that plan: :func:`predict_chips` turns chip windows
into raw per-chip detections (a resumable job runs it block by block and keeps
each block), :func:`stitch_chips` merges them across chips. Chips are read by a pool of reader
threads (each with its own rasterio handle, the first reusing the caller's)
a bounded number of chips ahead of the model, so reading overlaps compute and
memory is bounded by the chips in flight, not the scene size. Model outputs
leave torch once per chip; stitching works on numpy arrays.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from rasterio.windows import Window

from geodet.config import DetectConfig
from geodet.core.stitch import merge_detections_np
from geodet.core.windows import chip_windows, window_bounds_px
from geodet.errors import GeodetError
from geodet.io.raster import BandStats, SceneInfo, gsd_metres, open_raster, read_chip, sample_band_stats
from geodet.io.sources import gdal_env, redact
from geodet.modeling.device import autocast_dtype
from geodet.modeling.modelfile import ModelMeta

log = logging.getLogger(__name__)

#: Resample a scene when its pixel size differs from the model's by more than this factor.
GSD_TOLERANCE = 1.5


@dataclass(frozen=True)
class ChipPlan:
    """How a scene is cut for a model.

    Attributes:
        windows: windows in scene pixels.
        chip_px: chip side the model sees.
        scale: scene pixels per model pixel (1.0 = native resolution).
    """

    windows: List[Window]
    chip_px: int
    scale: float


@dataclass
class SceneDetections:
    """Detections of one scene.

    Attributes:
        boxes_px: float32 [N, 4] xyxy scene pixels.
        scores: float32 [N].
        labels: int64 [N] class indices.
        chips: chips run through the model.
        skipped: nodata-only chips skipped.
    """

    boxes_px: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    chips: int
    skipped: int


def plan_chips(info: SceneInfo, chip_px: int, overlap_px: int, scene_gsd_m: float, model_gsd_m: Optional[float]) -> ChipPlan:
    """Chip windows for a scene, resampled when its pixel size differs from the model's.

    A scene whose ground sample distance differs from the model's by more
    than :data:`GSD_TOLERANCE` is read at the model's pixel size: windows of
    ``chip_px * scale`` scene pixels are resampled to ``chip_px``.
    """
    scale = 1.0
    if model_gsd_m and scene_gsd_m > 0:
        ratio = model_gsd_m / scene_gsd_m
        if ratio > GSD_TOLERANCE or ratio < 1 / GSD_TOLERANCE:
            scale = ratio
    size, overlap = scaled_chip_px(chip_px, overlap_px, scale)
    return ChipPlan(chip_windows(info.height, info.width, size, overlap), chip_px, scale)


def scaled_chip_px(chip_px: int, overlap_px: int, scale: float) -> Tuple[int, int]:
    """``(chip side, overlap)`` in scene pixels of ``chip_px`` / ``overlap_px`` model pixels read at ``scale``."""
    size = max(8, int(round(chip_px * scale)))
    return size, min(size - 1, int(round(overlap_px * scale)))


def _out_shape(window: Window, plan: ChipPlan) -> Optional[Tuple[int, int]]:
    if plan.scale == 1.0:
        return None
    return (
        max(1, min(plan.chip_px, int(round(window.height / plan.scale)))),
        max(1, min(plan.chip_px, int(round(window.width / plan.scale)))),
    )


@dataclass(frozen=True)
class ScenePlan:
    """How one scene becomes model input: which bands, normalised how, cut where.

    Attributes:
        chips: windows and scale (:func:`plan_chips`).
        bands: 1-based scene bands read, in model channel order.
        stats: per-band normalisation statistics (the model's or the scene's,
            see ``DetectConfig.normalisation``).
    """

    chips: ChipPlan
    bands: Tuple[int, ...]
    stats: BandStats


class ChipReader:
    """Read normalised chips of one scene ahead of the consumer, in order.

    Each reader thread reads through its own rasterio handle: the first one
    through ``src``, the scene the caller already opened (and closes), the
    others through handles they open and this reader closes. The caller must
    not use ``src`` while the reader runs.

    Args:
        src: the open scene.
        plan: bands, statistics, windows and scale.
        workers: reader threads (>= 1).
        prefetch: chips in flight at most.
        indices: indices into ``plan.chips.windows`` to read, in order (default: all).
    """

    def __init__(self, src, plan: ScenePlan, *, workers: int = 2, prefetch: int = 16,
                 indices: Optional[Sequence[int]] = None):
        self.src, self.plan = src, plan
        self.indices = list(range(len(plan.chips.windows)) if indices is None else indices)
        self.workers = max(1, workers)
        self.prefetch = max(1, prefetch)
        self._local = threading.local()
        self._shared_taken = False
        self._opened: list = []
        self._lock = threading.Lock()

    def _src(self):
        src = getattr(self._local, "src", None)
        if src is None:
            with self._lock:
                if not self._shared_taken:
                    self._shared_taken, src = True, self.src
            if src is None:
                src = open_raster(self.src.name)
                with self._lock:
                    self._opened.append(src)
            self._local.src = src
        return src

    def _read(self, index: int):
        chips = self.plan.chips
        window = chips.windows[index]
        chip, valid = read_chip(
            self._src(), window, self.plan.bands, self.plan.stats, chips.chip_px, out_shape=_out_shape(window, chips)
        )
        return index, chip, valid

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[Tuple[int, np.ndarray, np.ndarray]]:
        """Yield ``(window index, chip float32 [C, S, S], valid bool [S, S])`` for the indices, in order."""
        n = len(self.indices)
        try:
            with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="geodet-read") as pool:
                pending: deque = deque()
                nxt = 0
                try:
                    while nxt < n or pending:
                        while nxt < n and len(pending) < self.prefetch:
                            pending.append(pool.submit(self._read, self.indices[nxt]))
                            nxt += 1
                        yield pending.popleft().result()
                finally:
                    for f in pending:
                        f.cancel()
        finally:
            for src in self._opened:
                src.close()
            self._opened.clear()


def check_scene_for_model(info: SceneInfo, bands: Sequence[int], n_model_bands: int) -> None:
    """One clear sentence when a scene cannot feed the model.

    Args:
        info: the scene.
        bands: 1-based scene bands chosen as the model's input.
        n_model_bands: input bands of the model (``ModelConfig.in_channels``).
    """
    if info.count < max(bands):
        raise GeodetError(
            f"the model expects {n_model_bands} band(s) ({', '.join(map(str, bands))}) but {info.path} has "
            f"{info.count}; pick the scene's bands with --bands."
        )
    if len(bands) != n_model_bands:
        raise GeodetError(
            f"the model expects {n_model_bands} band(s) but {len(bands)} were chosen for {info.path} "
            f"({', '.join(map(str, bands))}); pick {n_model_bands} with --bands."
        )
    kind = np.dtype(info.dtype).kind
    if kind not in "uif":
        raise GeodetError(f"{redact(info.path)} has {info.dtype} pixels; geodet reads integer or floating-point imagery.")


def normalisation_stats(src, info: SceneInfo, bands: Sequence[int], meta: ModelMeta, normalisation: str) -> BandStats:
    """The statistics chips of this scene are normalised with.

    ``"auto"`` (the default): the model's statistics for a scene of the training
    scenes' pixel type, the scene's own for any other (a uint16 or float32 copy
    of a uint8 scene: standardising by its own statistics undoes any linear
    rescaling of the values, so the model sees the chips it would see in uint8).
    ``"model"``: the model file's ``band_mean`` / ``band_std``, which the model
    was trained on; a warning when the scene's pixel type differs from the
    training scenes' (a uint16 scene under uint8 statistics lands far off).
    ``"scene"``: sampled from the scene (:func:`geodet.io.raster.sample_band_stats`).
    """
    same_dtype = np.dtype(info.dtype) == np.dtype(meta.dtype)
    if normalisation == "auto":
        normalisation = "model" if same_dtype else "scene"
        if not same_dtype:
            log.info("%s has %s pixels, the model's training scenes %s: normalising with the scene's own "
                     "statistics", info.path, info.dtype, meta.dtype)
    if normalisation == "scene":
        return sample_band_stats(src, bands)
    if normalisation != "model":
        raise ValueError(f"unknown normalisation {normalisation!r}")
    if not same_dtype:
        log.warning(
            "%s has %s pixels but the model was trained on %s pixels, so the model's normalisation "
            "statistics may not fit it; consider --normalisation scene.",
            redact(info.path), info.dtype, meta.dtype,
        )
    return BandStats(mean=tuple(meta.band_mean), std=tuple(meta.band_std))


def plan_scene(src, info: SceneInfo, config: DetectConfig, meta: ModelMeta) -> ScenePlan:
    """Check that a scene can feed the model and plan how it is read.

    Args:
        src: the open scene (read only for ``normalisation="scene"``).
        info: its metadata (:func:`geodet.io.raster.scene_info`).
        config: settings resolved for the model: ``bands``, ``chip_size`` and
            ``overlap`` set (:func:`geodet.inference.detector.config_for_model`).
        meta: the model's description.

    Raises:
        GeodetError: the scene lacks the bands, the wrong number of bands was
            chosen, or its pixels are not numbers.
    """
    bands = tuple(config.bands)
    check_scene_for_model(info, bands, meta.model_config.in_channels)
    stats = normalisation_stats(src, info, bands, meta, config.normalisation)
    chips = plan_chips(info, config.chip_size, config.overlap, gsd_metres(info), meta.gsd)
    if chips.scale != 1.0:
        log.info("%s: pixel size differs from the model's; reading at %.3fx", redact(info.path), chips.scale)
    return ScenePlan(chips, bands, stats)


@dataclass
class ChipDetections:
    """Raw detections of some chips of one scene, before the cross-chip stitch.

    Attributes:
        boxes_px: float32 [N, 4] xyxy scene pixels.
        scores: float32 [N].
        labels: int64 [N] class indices.
        chip_index: int64 [N] index into ``ScenePlan.chips.windows`` of the chip each came from.
        chips: chips run through the model.
        skipped: nodata-only chips skipped.
    """

    boxes_px: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    chip_index: np.ndarray
    chips: int
    skipped: int

    @classmethod
    def empty(cls, chips: int = 0, skipped: int = 0) -> "ChipDetections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64),
                   chips, skipped)

    @classmethod
    def concat(cls, parts: Sequence["ChipDetections"]) -> "ChipDetections":
        """The detections of several parts, in the given order (chips run and skipped summed)."""
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.boxes_px for p in parts]).astype(np.float32, copy=False),
            np.concatenate([p.scores for p in parts]).astype(np.float32, copy=False),
            np.concatenate([p.labels for p in parts]).astype(np.int64, copy=False),
            np.concatenate([p.chip_index for p in parts]).astype(np.int64, copy=False),
            sum(p.chips for p in parts),
            sum(p.skipped for p in parts),
        )


def chip_blocks(n_chips: int, block_chips: int) -> List[range]:
    """Consecutive blocks of at most ``block_chips`` chip indices covering ``range(n_chips)``."""
    block_chips = max(1, int(block_chips))
    return [range(start, min(start + block_chips, n_chips)) for start in range(0, n_chips, block_chips)]


def predict_chips(
    net: torch.nn.Module,
    src,
    plan: ScenePlan,
    config: DetectConfig,
    *,
    indices: Optional[Sequence[int]] = None,
    device: torch.device = torch.device("cpu"),
    progress: Optional[Callable[[int, int], None]] = None,
) -> ChipDetections:
    """Raw per-chip detections of the chips ``indices`` (default: all), in scene pixels.

    Model outputs leave torch once per chip as numpy arrays; detections
    centred on nodata or padding are dropped; nothing is merged across chips
    (that is :func:`stitch_chips`). Detections come in chip order.

    Args:
        net: a model from :func:`geodet.modeling.model.build_model` in eval mode on ``device``.
        src: the open scene (rasterio dataset); the caller closes it.
        plan: bands, statistics and chip windows (:func:`plan_scene`).
        config: ``batch_size``, ``workers``, ``score_threshold`` and
            ``precision`` (:class:`geodet.config.DetectConfig`, :func:`autocast_dtype`).
        indices: indices into ``plan.chips.windows``, in the order run.
        device: where ``net`` runs.
        progress: called with (chips done, chips in ``indices``).
    """
    chips = plan.chips
    batch_size = config.batch_size
    reader = ChipReader(src, plan, workers=config.workers, prefetch=max(2 * batch_size, 4), indices=indices)
    amp_dtype = autocast_dtype(device, config.precision)
    use_amp = amp_dtype is not None
    if use_amp:
        log.info("%s: forward pass under %s autocast on %s", redact(src.name), str(amp_dtype).replace("torch.", ""), device.type)

    boxes_all: List[np.ndarray] = []
    scores_all: List[np.ndarray] = []
    labels_all: List[np.ndarray] = []
    chip_idx_all: List[np.ndarray] = []
    batch: List[Tuple[int, np.ndarray, np.ndarray]] = []
    done = skipped = 0
    total = len(reader)
    scale = np.float32(chips.scale)  # as torch multiplies float32 boxes by a Python float

    def run(batch):
        images = torch.from_numpy(np.stack([b[1] for b in batch])).to(device, non_blocking=True)
        images = images.contiguous(memory_format=torch.channels_last)
        outputs = net(images)  # under inference_mode and autocast (entered once, below)
        for (index, _chip, valid), out in zip(batch, outputs):
            keep = out["scores"] >= config.score_threshold
            boxes = out["boxes"][keep].float().cpu().numpy()
            if len(boxes) == 0:
                continue
            scores = out["scores"][keep].float().cpu().numpy()
            labels = out["labels"][keep].cpu().numpy()
            # drop detections centred on nodata / padding
            cx = ((boxes[:, 0] + boxes[:, 2]) / 2).astype(np.int64).clip(0, valid.shape[1] - 1)
            cy = ((boxes[:, 1] + boxes[:, 3]) / 2).astype(np.int64).clip(0, valid.shape[0] - 1)
            on_data = valid[cy, cx]
            boxes, scores, labels = boxes[on_data], scores[on_data], labels[on_data]
            x1, y1, _, _ = window_bounds_px(chips.windows[index])
            boxes = boxes * scale + np.array([x1, y1, x1, y1], np.float32)
            boxes_all.append(boxes)
            scores_all.append(scores)
            labels_all.append(labels)
            chip_idx_all.append(np.full(len(boxes), index, np.int64))

    # one inference-mode and autocast region for all the chips, not one per batch
    with gdal_env(src.name), torch.inference_mode(), torch.autocast(
        device.type, dtype=amp_dtype, enabled=use_amp
    ):
        for item in reader:
            done += 1
            if not item[2].any():
                skipped += 1
            else:
                batch.append(item)
                if len(batch) == batch_size:
                    run(batch)
                    batch = []
            if progress:
                progress(done, total)
        if batch:
            run(batch)

    chips_run = total - skipped
    if not boxes_all:
        return ChipDetections.empty(chips_run, skipped)
    return ChipDetections(
        np.concatenate(boxes_all),
        np.concatenate(scores_all),
        np.concatenate(labels_all).astype(np.int64, copy=False),
        np.concatenate(chip_idx_all),
        chips_run,
        skipped,
    )


def stitch_chips(raw: ChipDetections, plan: ScenePlan, scene_hw: Tuple[int, int], config: DetectConfig) -> SceneDetections:
    """Merge raw per-chip detections across the chips of a scene (:func:`geodet.core.stitch.merge_detections_np`).

    Args:
        raw: detections of the scene's chips (:func:`predict_chips`, one call or
            several concatenated in chip order).
        plan: the plan they were predicted with (its chip windows).
        scene_hw: ``(height, width)`` of the scene in pixels.
        config: ``nms_iou``.
    """
    if len(raw.scores) == 0:
        empty = np.zeros((0, 4), np.float32)
        return SceneDetections(empty, np.zeros(0, np.float32), np.zeros(0, np.int64), raw.chips, raw.skipped)
    chip_boxes = np.array([window_bounds_px(w) for w in plan.chips.windows], np.float64)
    keep = merge_detections_np(
        raw.boxes_px, raw.scores, raw.labels, raw.chip_index, chip_boxes, tuple(scene_hw), nms_iou=config.nms_iou
    )
    return SceneDetections(raw.boxes_px[keep], raw.scores[keep], raw.labels[keep], raw.chips, raw.skipped)


def predict_scene(
    net: torch.nn.Module,
    src,
    plan: ScenePlan,
    config: DetectConfig,
    *,
    device: torch.device = torch.device("cpu"),
    progress: Optional[Callable[[int, int], None]] = None,
) -> SceneDetections:
    """Detect objects in one scene; boxes in scene pixels, merged across chips.

    The composition of :func:`predict_chips` over every chip and :func:`stitch_chips`.

    Args:
        net: a model from :func:`geodet.modeling.model.build_model` in eval mode on ``device``.
        src: the open scene (rasterio dataset); the caller closes it.
        plan: bands, statistics and chip windows (:func:`plan_scene`).
        config: ``batch_size``, ``workers``, ``score_threshold``, ``nms_iou``
            and ``precision`` (:class:`geodet.config.DetectConfig`, :func:`autocast_dtype`).
        device: where ``net`` runs.
        progress: called with (chips done, chips total).
    """
    raw = predict_chips(net, src, plan, config, device=device, progress=progress)
    return stitch_chips(raw, plan, (src.height, src.width), config)

"""Scene -> batches of chips -> model -> detections in scene pixels.

Chips are read by a pool of reader threads (each with its own rasterio
handle) a bounded number of chips ahead of the model, so reading overlaps
compute and memory is bounded by the chips in flight, not the scene size.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from geodet.errors import GeodetError
from geodet.raster import GDAL_CACHE_MB, BandStats, SceneInfo, gsd_metres, open_dataset, read_chip, sample_band_stats, scene_info
from geodet.windows import chip_windows

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
    size = max(8, int(round(chip_px * scale)))
    overlap = min(size - 1, int(round(overlap_px * scale)))
    return ChipPlan(chip_windows(info.height, info.width, size, overlap), chip_px, scale)


def _out_shape(window: Window, plan: ChipPlan) -> Optional[Tuple[int, int]]:
    if plan.scale == 1.0:
        return None
    return (
        max(1, min(plan.chip_px, int(round(window.height / plan.scale)))),
        max(1, min(plan.chip_px, int(round(window.width / plan.scale)))),
    )


class ChipReader:
    """Read normalised chips of one scene ahead of the consumer, in order.

    Args:
        path: the scene.
        bands: 1-based bands.
        stats: normalisation statistics.
        plan: windows and scale.
        workers: reader threads (>= 1).
        prefetch: chips in flight at most.
    """

    def __init__(self, path: str, bands: Sequence[int], stats: BandStats, plan: ChipPlan, *, workers: int = 2, prefetch: int = 16):
        self.path, self.bands, self.stats, self.plan = path, tuple(bands), stats, plan
        self.workers = max(1, workers)
        self.prefetch = max(1, prefetch)
        self._local = threading.local()
        self._handles: list = []
        self._lock = threading.Lock()

    def _src(self):
        src = getattr(self._local, "src", None)
        if src is None:
            src = rasterio.open(self.path)
            self._local.src = src
            with self._lock:
                self._handles.append(src)
        return src

    def _read(self, index: int):
        window = self.plan.windows[index]
        chip, valid = read_chip(
            self._src(), window, self.bands, self.stats, self.plan.chip_px, out_shape=_out_shape(window, self.plan)
        )
        return index, chip, valid

    def __iter__(self) -> Iterator[Tuple[int, np.ndarray, np.ndarray]]:
        """Yield ``(window index, chip float32 [C, S, S], valid bool [S, S])``."""
        n = len(self.plan.windows)
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="geodet-read") as pool:
            pending: deque = deque()
            nxt = 0
            try:
                while nxt < n or pending:
                    while nxt < n and len(pending) < self.prefetch:
                        pending.append(pool.submit(self._read, nxt))
                        nxt += 1
                    yield pending.popleft().result()
            finally:
                for f in pending:
                    f.cancel()
        for src in self._handles:
            src.close()
        self._handles.clear()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # private probes: absent from some torch releases
        return False


def autocast_dtype(device: torch.device, precision: str = "auto") -> Optional[torch.dtype]:
    """The autocast dtype of the forward pass, or None for plain float32.

    ``auto``: bf16 on CUDA (fp16 where the GPU lacks bf16); on the CPU bf16
    only where it is native, since emulated bf16 is slower than float32.
    Boxes and scores leave the model in float32 either way.
    """
    if precision == "float32":
        return None
    if precision == "bfloat16":
        return torch.bfloat16
    if precision == "float16":
        return torch.float16
    if precision != "auto":
        raise ValueError(f"unknown precision {precision!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def check_scene_for_model(info: SceneInfo, bands: Sequence[int], n_model_bands: int) -> None:
    """One clear sentence when a scene cannot feed the model."""
    if info.count < max(bands):
        raise GeodetError(
            f"the model expects {n_model_bands} band(s) ({', '.join(map(str, bands))}) but {info.path} has "
            f"{info.count}; pick the scene's bands with --bands."
        )
    if len(bands) != n_model_bands:
        raise GeodetError(
            f"the model expects {n_model_bands} band(s) but {len(bands)} were chosen for {info.path}."
        )
    kind = np.dtype(info.dtype).kind
    if kind not in "uif":
        raise GeodetError(f"{info.path} has {info.dtype} pixels; geodet reads integer or floating-point imagery.")


def predict_scene(
    net: torch.nn.Module,
    path: str,
    *,
    bands: Sequence[int],
    chip_px: int,
    overlap_px: int,
    model_gsd_m: Optional[float] = None,
    device: torch.device = torch.device("cpu"),
    batch_size: int = 8,
    workers: int = 2,
    score_threshold: float = 0.3,
    nms_iou: float = 0.5,
    precision: str = "auto",
    progress: Optional[Callable[[int, int], None]] = None,
) -> SceneDetections:
    """Detect objects in one scene; boxes in scene pixels, merged across chips.

    Args:
        net: a model from :func:`geodet.model.build_model` in eval mode on ``device``.
        path: the scene.
        bands: 1-based bands fed to the model.
        chip_px, overlap_px: chip side and overlap in model pixels.
        model_gsd_m: the model's training pixel size in metres (None: never resample).
        batch_size: chips per forward pass.
        workers: reader threads.
        score_threshold: minimum score kept.
        nms_iou: IoU of the cross-chip class-wise NMS.
        precision: see :class:`geodet.config.DetectConfig` (:func:`autocast_dtype`).
        progress: called with (chips done, chips total).
    """
    from geodet.stitch import merge_detections

    with open_dataset(path) as src:
        info = scene_info(src)
        check_scene_for_model(info, bands, len(bands))
        stats = sample_band_stats(src, bands)
    plan = plan_chips(info, chip_px, overlap_px, gsd_metres(info), model_gsd_m)
    if plan.scale != 1.0:
        log.info("%s: pixel size differs from the model's; reading at %.3fx", path, plan.scale)
    reader = ChipReader(path, bands, stats, plan, workers=workers, prefetch=max(2 * batch_size, 4))
    amp_dtype = autocast_dtype(device, precision)
    use_amp = amp_dtype is not None
    if use_amp:
        log.info("%s: forward pass under %s autocast on %s", path, str(amp_dtype).replace("torch.", ""), device.type)

    boxes_all: List[torch.Tensor] = []
    scores_all: List[torch.Tensor] = []
    labels_all: List[torch.Tensor] = []
    chip_idx_all: List[torch.Tensor] = []
    batch: List[Tuple[int, np.ndarray, np.ndarray]] = []
    done = skipped = 0
    total = len(plan.windows)

    def run(batch):
        images = torch.from_numpy(np.stack([b[1] for b in batch])).to(device, non_blocking=True)
        images = images.contiguous(memory_format=torch.channels_last)
        outputs = net(images)  # under inference_mode and autocast (entered once, below)
        for (index, _chip, valid), out in zip(batch, outputs):
            keep = out["scores"] >= score_threshold
            boxes = out["boxes"][keep].float().cpu()
            if len(boxes) == 0:
                continue
            scores = out["scores"][keep].float().cpu()
            labels = out["labels"][keep].cpu()
            # drop detections centred on nodata / padding
            cx = ((boxes[:, 0] + boxes[:, 2]) / 2).long().clamp(0, valid.shape[1] - 1)
            cy = ((boxes[:, 1] + boxes[:, 3]) / 2).long().clamp(0, valid.shape[0] - 1)
            on_data = torch.from_numpy(valid)[cy, cx]
            boxes, scores, labels = boxes[on_data], scores[on_data], labels[on_data]
            window = plan.windows[index]
            boxes = boxes * plan.scale + torch.tensor(
                [window.col_off, window.row_off, window.col_off, window.row_off], dtype=torch.float32
            )
            boxes_all.append(boxes)
            scores_all.append(scores)
            labels_all.append(labels)
            chip_idx_all.append(torch.full((len(boxes),), index, dtype=torch.int64))

    # one inference-mode and autocast region for the whole scene, not one per batch
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 2**20), torch.inference_mode(), torch.autocast(
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
        empty = np.zeros((0, 4), np.float32)
        return SceneDetections(empty, np.zeros(0, np.float32), np.zeros(0, np.int64), chips_run, skipped)
    boxes = torch.cat(boxes_all)
    scores = torch.cat(scores_all)
    labels = torch.cat(labels_all)
    chip_idx = torch.cat(chip_idx_all)
    chip_boxes = torch.tensor(
        [[w.col_off, w.row_off, w.col_off + w.width, w.row_off + w.height] for w in plan.windows], dtype=torch.float32
    )
    keep = merge_detections(boxes, scores, labels, chip_idx, chip_boxes, (info.height, info.width), nms_iou=nms_iou)
    return SceneDetections(
        boxes[keep].numpy(), scores[keep].numpy(), labels[keep].numpy().astype(np.int64), chips_run, skipped
    )

"""Training chips straight from scenes: spatial split, class-aware sampling, augmentation.

A :class:`ChipDataset` maps an index to ``(image float32 [C, S, S],
{"boxes": float32 [N, 4] xyxy chip px, "labels": int64 [N]})``. Chips are
read from the GeoTIFFs with windowed reads (no export step).

The train/validation split is by spatial blocks: each scene is cut into
square blocks, whole blocks go to validation, and chips are laid inside
blocks, so no training chip overlaps a validation chip.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from rasterio.windows import Window

from geodet.core.boxes import clip_boxes_to_window
from geodet.config import AugmentConfig
from geodet.io.raster import BandStats, open_raster, read_chip
from geodet.core.windows import chip_offsets, window_bounds_px

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SceneSource:
    """One training scene: where to read it and its labels in scene pixels.

    Attributes:
        path: GeoTIFF path.
        bands: 1-based bands to read.
        stats: per-band normalisation statistics of this scene.
        boxes_px: float64 [N, 4] xyxy scene pixels.
        class_ids: int64 [N].
        height, width: scene size in pixels.
    """

    path: str
    bands: Tuple[int, ...]
    stats: BandStats
    boxes_px: np.ndarray
    class_ids: np.ndarray
    height: int
    width: int


@dataclass(frozen=True)
class Block:
    """A rectangle of one scene (pixels) that belongs wholly to one split."""

    scene: int
    col_off: int
    row_off: int
    width: int
    height: int


def spatial_blocks(sources: Sequence[SceneSource], block_px: int) -> List[Block]:
    """Cut every scene into non-overlapping blocks of at most ``block_px``."""
    blocks = []
    for i, s in enumerate(sources):
        for row in range(0, s.height, block_px):
            for col in range(0, s.width, block_px):
                blocks.append(Block(i, col, row, min(block_px, s.width - col), min(block_px, s.height - row)))
    return blocks


def split_blocks(
    blocks: Sequence[Block], val_fraction: float, seed: int
) -> Tuple[List[Block], List[Block]]:
    """Random split of blocks into (train, validation), at least one of each
    when there are two or more blocks and ``val_fraction > 0``."""
    if val_fraction <= 0 or len(blocks) < 2:
        return list(blocks), []
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(blocks))
    n_val = min(len(blocks) - 1, max(1, int(round(val_fraction * len(blocks)))))
    val_idx = set(order[:n_val].tolist())
    train = [b for i, b in enumerate(blocks) if i not in val_idx]
    val = [b for i, b in enumerate(blocks) if i in val_idx]
    return train, val


def choose_block_px(sources: Sequence[SceneSource], chip_px: int, val_fraction: float) -> int:
    """Block side: two chips when that still leaves enough blocks to split, else one."""
    for factor in (4, 2, 1):
        block = chip_px * factor
        n = sum(math.ceil(s.height / block) * math.ceil(s.width / block) for s in sources)
        if val_fraction <= 0 or n * min(val_fraction, 0.5) >= 2 or factor == 1:
            return block
    return chip_px


def block_windows(block: Block, chip_px: int, overlap_px: int) -> List[Window]:
    """Chip windows laid inside one block (scene pixel offsets)."""
    rows = chip_offsets(block.height, chip_px, overlap_px)
    cols = chip_offsets(block.width, chip_px, overlap_px)
    h, w = min(chip_px, block.height), min(chip_px, block.width)
    return [Window(block.col_off + c, block.row_off + r, w, h) for r in rows for c in cols]


class ChipDataset(torch.utils.data.Dataset):
    """Chips of scenes with their boxes, for training or validation.

    Args:
        sources: the scenes.
        blocks: the blocks of this split.
        chip_px: chip side.
        overlap_px: overlap of the chip grid inside each block.
        min_visible: keep a box cut by the chip edge when this fraction is inside.
        negative_ratio: chips without boxes kept per chip with boxes.
        augment: random chip jitter (shift of each window inside its block)
            and :func:`augment_chip` with ``augmentation``.
        augmentation: what the augmentation does.
        seed: seed of the sampling and augmentation.

    An item is addressed by its index, or by the ``(index, copy, epoch)`` key
    of :class:`RepeatFactorSampler`: each copy of a chip drawn in one epoch
    gets an augmentation of its own, and the epoch travels with the key so
    persistent worker processes see it.
    """

    def __init__(
        self,
        sources: Sequence[SceneSource],
        blocks: Sequence[Block],
        chip_px: int,
        overlap_px: int,
        *,
        min_visible: float = 0.5,
        negative_ratio: float = 0.25,
        augment: bool = False,
        augmentation: AugmentConfig = AugmentConfig(),
        seed: int = 0,
    ) -> None:
        self.sources = list(sources)
        self.chip_px = chip_px
        self.min_visible = min_visible
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self._handles: Dict[Tuple[int, int], object] = {}
        self.augmentation = augmentation
        positives, negatives, positive_classes = [], [], []
        for block in blocks:
            src = self.sources[block.scene]
            for window in block_windows(block, chip_px, overlap_px):
                _, keep = clip_boxes_to_window(src.boxes_px, window_bounds_px(window), min_visible=min_visible)
                if len(keep):
                    positives.append((block, window))
                    positive_classes.append(np.asarray(src.class_ids[keep], np.int64))
                else:
                    negatives.append((block, window))
        rng = np.random.default_rng(seed)
        n_neg = min(len(negatives), int(math.ceil(negative_ratio * max(len(positives), 1))))
        picks = rng.choice(len(negatives), size=n_neg, replace=False) if n_neg else []
        self.items: List[Tuple[Block, Window]] = positives + [negatives[i] for i in sorted(picks)]
        #: class ids of the boxes in each item's (unjittered) window: int64 [N_i]
        self.item_class_ids: List[np.ndarray] = positive_classes + [np.zeros(0, np.int64)] * n_neg
        self.positives = len(positives)
        self.negatives = n_neg

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draw (call before each epoch)."""
        self.epoch = epoch

    def _dataset(self, scene: int):
        key = (os.getpid(), scene)
        handle = self._handles.get(key)
        if handle is None:
            handle = open_raster(self.sources[scene].path)
            self._handles[key] = handle
        return handle

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def window_of(self, index: int, rng: Optional[np.random.Generator] = None) -> Window:
        """The window read for item ``index`` (jittered inside its block when augmenting)."""
        block, window = self.items[index]
        if rng is None:
            return window
        max_dx = block.col_off + block.width - (window.col_off + window.width)
        min_dx = block.col_off - window.col_off
        max_dy = block.row_off + block.height - (window.row_off + window.height)
        min_dy = block.row_off - window.row_off
        span = self.chip_px // 4
        dx = int(rng.integers(max(min_dx, -span), min(max_dx, span) + 1))
        dy = int(rng.integers(max(min_dy, -span), min(max_dy, span) + 1))
        return Window(window.col_off + dx, window.row_off + dy, window.width, window.height)

    def __getitem__(self, key: Union[int, Tuple[int, int, int]]):
        if isinstance(key, tuple):
            index, copy, epoch = (int(v) for v in key)
        else:
            index, copy, epoch = int(key), 0, self.epoch
        block, _ = self.items[index]
        src = self.sources[block.scene]
        rng = np.random.default_rng((self.seed, epoch, index, copy)) if self.augment else None
        window = self.window_of(index, rng)
        chip, _valid = read_chip(self._dataset(block.scene), window, src.bands, src.stats, self.chip_px)
        boxes, keep = clip_boxes_to_window(src.boxes_px, window_bounds_px(window), min_visible=self.min_visible)
        labels = src.class_ids[keep]
        if rng is not None:
            chip, boxes, kept = augment_chip(chip, boxes, rng, self.augmentation, min_visible=self.min_visible)
            labels = labels[kept]
        target = {
            "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(labels, dtype=torch.int64),
        }
        return torch.from_numpy(np.ascontiguousarray(chip)), target


def repeat_factors(chip_class_ids: Sequence[np.ndarray], thresh: float) -> np.ndarray:
    """Repeat factor of each chip for class-aware sampling (LVIS, Gupta et al. 2019).

    For each class c, ``f(c)`` is the fraction of chips holding c and
    ``r(c) = max(1, sqrt(thresh / f(c)))``; a chip's factor is the largest
    ``r(c)`` of its classes, 1 for a chip without objects.

    Args:
        chip_class_ids: per chip, the class ids of its boxes (int [N_i], repeats allowed).
        thresh: the threshold t; ``0`` gives every chip the factor 1.

    Returns:
        float64 [N] repeat factors, each >= 1.
    """
    n = len(chip_class_ids)
    present = [np.unique(np.asarray(c, np.int64)) for c in chip_class_ids]
    if n == 0 or thresh <= 0:
        return np.ones(n)
    classes, counts = np.unique(np.concatenate(present + [np.zeros(0, np.int64)]), return_counts=True)
    per_class = dict(zip(classes.tolist(), np.maximum(1.0, np.sqrt(thresh / (counts / n))).tolist()))
    return np.array([max((per_class[c] for c in p.tolist()), default=1.0) for p in present], np.float64)


def epoch_draw(factors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One epoch's chips under repeat factors, in random order.

    Chip ``i`` appears ``floor(r_i)`` times plus once more with probability
    ``r_i - floor(r_i)`` (stochastic rounding).

    Returns:
        int64 [M, 2]: (chip index, copy number 0..) per draw.
    """
    factors = np.asarray(factors, np.float64).reshape(-1)
    whole = np.floor(factors)
    counts = (whole + (rng.random(len(factors)) < factors - whole)).astype(np.int64)
    index = np.repeat(np.arange(len(factors)), counts)
    copy = np.arange(len(index)) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.stack([index, copy], axis=1)[rng.permutation(len(index))]


class RepeatFactorSampler(torch.utils.data.Sampler):
    """Shuffled epochs of a :class:`ChipDataset` with repeat-factor sampling.

    Yields ``(index, copy, epoch)`` keys; the draw of epoch ``e`` depends only
    on ``(seed, e)``, so a resumed run draws what the uninterrupted one did.
    Call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, factors: np.ndarray, seed: int) -> None:
        self.factors = np.asarray(factors, np.float64)
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._draw = epoch_draw(self.factors, np.random.default_rng((self.seed, epoch)))

    def expected_len(self) -> float:
        """Mean number of draws per epoch (the sum of the factors)."""
        return float(self.factors.sum())

    def __len__(self) -> int:
        return len(self._draw)

    def __iter__(self) -> Iterator[Tuple[int, int, int]]:
        for index, copy in self._draw.tolist():
            yield (index, copy, self.epoch)


def dihedral(chip: np.ndarray, boxes_px: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """The ``k``-th (0..7) of the 8 symmetries of a square chip.

    ``k >= 4`` flips left-right first; then ``k % 4`` rotations by 90 degrees
    counter-clockwise (``np.rot90``: pixel edge point (x, y) -> (y, S - x)).

    Args:
        chip: [C, S, S].
        boxes_px: [N, 4] xyxy chip pixels.

    Returns:
        (chip [C, S, S] (a view), boxes [N, 4] xyxy chip pixels).
    """
    size = chip.shape[-1]
    b = np.asarray(boxes_px, np.float64).reshape(-1, 4).copy()
    if k >= 4:
        chip = chip[:, :, ::-1]
        b[:, [0, 2]] = size - b[:, [2, 0]]
    for _ in range(k % 4):
        chip = np.rot90(chip, 1, axes=(1, 2))
        b = np.stack([b[:, 1], size - b[:, 2], b[:, 3], size - b[:, 0]], axis=1)
    return chip, b


def _linear_taps(n_out: int, n_in: int, scale: float, shift: float):
    """Bilinear taps along one axis for ``x_out = scale * x_in + shift`` (pixel edges).

    Returns ``(i0 [n_out], i1 [n_out], w1 float32 [n_out])``: indices into the
    input padded by one zero pixel at each end (samples beyond it read a zero
    pad) and the weight of ``i1``.
    """
    p = (np.arange(n_out) + 0.5 - shift) / scale - 0.5  # input pixel-centre index of each sample
    first = np.floor(p)
    w1 = (p - first).astype(np.float32)
    first = first.astype(np.int64)
    return np.clip(first + 1, 0, n_in + 1), np.clip(first + 2, 0, n_in + 1), w1


def rescale(
    chip: np.ndarray, boxes_px: np.ndarray, scale: float, shift_px: Tuple[float, float]
) -> Tuple[np.ndarray, np.ndarray]:
    """Zoom a chip: pixel-edge point (x, y) -> (scale * x + dx, scale * y + dy).

    Separable bilinear resampling into a chip of the same size (the result of
    ``torch.nn.functional.grid_sample`` with ``align_corners=False``, in numpy);
    what falls outside the source is 0 (the band mean in normalised units).

    Args:
        chip: float32 [C, H, W].
        boxes_px: [N, 4] xyxy chip pixels.
        scale: zoom factor (> 1 enlarges).
        shift_px: (dx, dy) in output pixels.

    Returns:
        (chip float32 [C, H, W], boxes [N, 4] xyxy output pixels, not clipped).
    """
    _, h, w = chip.shape
    dx, dy = shift_px
    padded = np.pad(np.asarray(chip, np.float32), ((0, 0), (1, 1), (1, 1)))
    c0, c1, wc = _linear_taps(w, w, scale, dx)
    cols = padded[:, :, c0] * (1 - wc) + padded[:, :, c1] * wc
    r0, r1, wr = _linear_taps(h, h, scale, dy)
    out = cols[:, r0, :] * (1 - wr)[:, None] + cols[:, r1, :] * wr[:, None]
    b = np.asarray(boxes_px, np.float64).reshape(-1, 4) * scale + np.array([dx, dy, dx, dy])
    return out, b


def jitter_colour(chip: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Contrast about the chip's band means, then per-band gain and offset and a brightness offset."""
    c = chip.shape[0]
    mean = chip.mean(axis=(1, 2), keepdims=True, dtype=np.float64)
    contrast = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
    gain = rng.uniform(1 - cfg.band_gain, 1 + cfg.band_gain, size=(c, 1, 1))
    offset = rng.uniform(-cfg.band_gain, cfg.band_gain, size=(c, 1, 1)) + rng.uniform(-cfg.brightness, cfg.brightness)
    # one multiply-add per pixel: x -> a x + b per band
    a = contrast * gain
    b = (1 - contrast) * mean * gain + offset
    return chip * a.astype(np.float32) + b.astype(np.float32)


def gaussian_blur(chip: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of each band (reflected edges); [C, H, W] -> [C, H, W]."""
    if sigma <= 0:
        return chip
    r = max(1, min(int(math.ceil(2.5 * sigma)), min(chip.shape[1:]) - 1))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k = (k / k.sum()).astype(np.float32)
    h, w = chip.shape[1:]
    p = np.pad(chip, ((0, 0), (0, 0), (r, r)), mode="reflect")
    out = sum(k[i] * p[:, :, i:i + w] for i in range(2 * r + 1))
    p = np.pad(out, ((0, 0), (r, r), (0, 0)), mode="reflect")
    return sum(k[i] * p[:, i:i + h, :] for i in range(2 * r + 1)).astype(np.float32)


def augment_chip(
    chip: np.ndarray,
    boxes_px: np.ndarray,
    rng: np.random.Generator,
    cfg: AugmentConfig = AugmentConfig(),
    *,
    min_visible: float = 0.5,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Overhead-imagery augmentation of a square chip and its boxes.

    In order, each with its probability in ``cfg``: one of the 8 dihedral
    transforms, scale jitter (boxes mapped exactly, then clipped to the chip;
    a box less than ``min_visible`` inside is dropped), contrast / brightness
    / per-band colour jitter, Gaussian blur, Gaussian noise.

    Args:
        chip: float32 [C, S, S] (normalised bands).
        boxes_px: [N, 4] xyxy chip pixels.
        rng: the random draw.
        cfg: probabilities and magnitudes.

    Returns:
        (chip float32 [C, S, S], boxes float64 [M, 4] xyxy chip pixels,
        keep int64 [M] indices into ``boxes_px``).
    """
    b = np.asarray(boxes_px, np.float64).reshape(-1, 4)
    keep = np.arange(len(b))
    if cfg.dihedral:
        chip, b = dihedral(chip, b, int(rng.integers(0, 8)))
    if rng.random() < cfg.scale_p:
        lo, hi = cfg.scale_range
        scale = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        _, h, w = chip.shape
        dx = rng.uniform(min(0.0, w - scale * w), max(0.0, w - scale * w))
        dy = rng.uniform(min(0.0, h - scale * h), max(0.0, h - scale * h))
        chip, b = rescale(chip, b, scale, (dx, dy))
        b, keep = clip_boxes_to_window(b, (0, 0, w, h), min_visible=min_visible)
    chip = np.asarray(chip, np.float32)
    if rng.random() < cfg.colour_p:
        chip = jitter_colour(chip, rng, cfg)
    if rng.random() < cfg.blur_p:
        chip = gaussian_blur(chip, float(rng.uniform(*cfg.blur_sigma)))
    if rng.random() < cfg.noise_p:
        sd = rng.uniform(0.0, cfg.noise_std)
        chip = chip + rng.standard_normal(chip.shape, dtype=np.float32) * np.float32(sd)
    return np.ascontiguousarray(chip, dtype=np.float32), b, np.asarray(keep, np.int64)


def collate(batch):
    """Stack images to [B, C, S, S]; keep targets as a list of dicts."""
    images = torch.stack([item[0] for item in batch])
    targets = [item[1] for item in batch]
    return images, targets

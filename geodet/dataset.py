"""Training chips straight from scenes: spatial split, sampling, augmentation.

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
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from geodet.boxes import clip_boxes_to_window
from geodet.raster import BandStats, read_chip
from geodet.windows import chip_offsets, window_bounds_px

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
        augment: random flips, 90 degree rotations, radiometric jitter and
            chip jitter (random shift of each window inside its block).
        seed: seed of the sampling and augmentation.
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
        seed: int = 0,
    ) -> None:
        self.sources = list(sources)
        self.chip_px = chip_px
        self.min_visible = min_visible
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self._handles: Dict[Tuple[int, int], object] = {}
        positives, negatives = [], []
        for block in blocks:
            src = self.sources[block.scene]
            for window in block_windows(block, chip_px, overlap_px):
                _, keep = clip_boxes_to_window(src.boxes_px, window_bounds_px(window), min_visible=min_visible)
                (positives if len(keep) else negatives).append((block, window))
        rng = np.random.default_rng(seed)
        n_neg = min(len(negatives), int(math.ceil(negative_ratio * max(len(positives), 1))))
        picks = rng.choice(len(negatives), size=n_neg, replace=False) if n_neg else []
        self.items: List[Tuple[Block, Window]] = positives + [negatives[i] for i in sorted(picks)]
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
            handle = rasterio.open(self.sources[scene].path)
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

    def __getitem__(self, index: int):
        block, _ = self.items[index]
        src = self.sources[block.scene]
        rng = np.random.default_rng((self.seed, self.epoch, index)) if self.augment else None
        window = self.window_of(index, rng)
        chip, _valid = read_chip(self._dataset(block.scene), window, src.bands, src.stats, self.chip_px)
        boxes, keep = clip_boxes_to_window(src.boxes_px, window_bounds_px(window), min_visible=self.min_visible)
        labels = src.class_ids[keep]
        if rng is not None:
            chip, boxes = augment_chip(chip, boxes, rng)
        target = {
            "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(labels, dtype=torch.int64),
        }
        return torch.from_numpy(np.ascontiguousarray(chip)), target


def augment_chip(
    chip: np.ndarray, boxes_px: np.ndarray, rng: np.random.Generator
) -> Tuple[np.ndarray, np.ndarray]:
    """Overhead-imagery augmentation of a square chip and its boxes.

    Random horizontal/vertical flips, a random number of 90 degree rotations,
    and mild per-band gain/offset jitter (in normalised units).

    Args:
        chip: float32 [C, S, S].
        boxes_px: [N, 4] xyxy chip pixels.
    """
    size = chip.shape[-1]
    b = np.asarray(boxes_px, np.float64).reshape(-1, 4).copy()
    if rng.random() < 0.5:  # horizontal flip
        chip = chip[:, :, ::-1]
        b[:, [0, 2]] = size - b[:, [2, 0]]
    if rng.random() < 0.5:  # vertical flip
        chip = chip[:, ::-1, :]
        b[:, [1, 3]] = size - b[:, [3, 1]]
    k = int(rng.integers(0, 4))
    for _ in range(k):  # rotate 90 degrees counter-clockwise: (x, y) -> (y, S - x)
        chip = np.rot90(chip, 1, axes=(1, 2))
        b = np.stack([b[:, 1], size - b[:, 2], b[:, 3], size - b[:, 0]], axis=1)
    c = chip.shape[0]
    gain = rng.uniform(0.9, 1.1, size=(c, 1, 1)).astype(np.float32)
    offset = rng.uniform(-0.1, 0.1, size=(c, 1, 1)).astype(np.float32)
    chip = chip * gain + offset
    return np.ascontiguousarray(chip, dtype=np.float32), b


def collate(batch):
    """Stack images to [B, C, S, S]; keep targets as a list of dicts."""
    images = torch.stack([item[0] for item in batch])
    targets = [item[1] for item in batch]
    return images, targets

"""Export georeferenced chips and COCO annotations from scenes and labels.

This is the inspection path for training data: every chip is a GeoTIFF with
its own transform and CRS, and ``annotations.json`` holds the boxes in chip
pixels. Training itself reads scenes directly (see :mod:`geodet.dataset`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
import rasterio

from geodet.boxes import clip_boxes_to_window
from geodet.config import ChipConfig
from geodet.errors import GeodetError
from geodet.raster import open_dataset, read_raw, resolve_bands, scene_info
from geodet.vector import check_labels_inside, labels_for_scene, read_labels
from geodet.windows import chip_transform, chip_windows, window_bounds_px

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileSummary:
    """What :func:`tile` wrote.

    Attributes:
        out_dir: the output folder.
        chips: chips written.
        skipped_nodata: chips skipped because they held only nodata.
        annotations: boxes written.
        labels_inside: labels that intersect the imagery.
        labels_total: labels in the file.
        class_names: the categories, in COCO id order (id = index + 1).
    """

    out_dir: str
    chips: int
    skipped_nodata: int
    annotations: int
    labels_inside: int
    labels_total: int
    class_names: tuple


def prepare_out_dir(out_dir: str, *, overwrite: bool) -> None:
    """Refuse a non-empty existing output folder unless ``overwrite``."""
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise GeodetError(f"{out_dir} exists and is not a folder.")
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise GeodetError(f"{out_dir} exists and is not empty; choose another folder or pass --overwrite.")
    if not path.parent.exists():
        raise GeodetError(f"the folder {path.parent} does not exist.")


def tile(
    imagery: Sequence[str],
    labels: str,
    out_dir: str,
    *,
    class_field: Optional[str] = None,
    chip: ChipConfig = ChipConfig(),
    overwrite: bool = False,
    progress: Optional[Callable[[int], None]] = None,
) -> TileSummary:
    """Cut scenes into georeferenced chips and write COCO annotations.

    Args:
        imagery: GeoTIFF paths.
        labels: a vector file of objects (polygons or points).
        out_dir: output folder; gets ``chips/*.tif`` and ``annotations.json``.
        class_field: the labels' class column (see :func:`geodet.vector.read_labels`).
        chip: chip size, overlap, bands, minimum visible fraction, point size.
        overwrite: replace a non-empty ``out_dir``.
        progress: called with the number of the scene's chips done after each chip.

    Everything is written into a temporary folder beside ``out_dir`` and
    moved into place at the end, so a failure leaves nothing half-written.
    """
    if not imagery:
        raise GeodetError("no imagery given.")
    prepare_out_dir(out_dir, overwrite=overwrite)
    infos = []
    for path in imagery:
        with open_dataset(path) as src:
            infos.append(scene_info(src))
    label_set = read_labels(labels, class_field=class_field)
    per_scene = [labels_for_scene(label_set, info, point_size_m=chip.point_size_m) for info in infos]
    check_labels_inside(label_set, per_scene, imagery)

    target = Path(out_dir).resolve()
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        (work / "chips").mkdir()
        coco = {
            "info": {"description": "geodet tile export", "labels": str(labels)},
            "images": [],
            "annotations": [],
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(label_set.class_names)],
        }
        skipped = 0
        for info, scene_labels in zip(infos, per_scene):
            bands = resolve_bands(info, chip.bands)
            skipped += _tile_scene(info, bands, scene_labels, chip, work, coco, progress)
        with open(work / "annotations.json", "w") as fh:
            json.dump(coco, fh)
        _swap_into_place(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return TileSummary(
        out_dir=str(target),
        chips=len(coco["images"]),
        skipped_nodata=skipped,
        annotations=len(coco["annotations"]),
        labels_inside=sum(len(s.boxes_px) for s in per_scene),
        labels_total=len(label_set.frame),
        class_names=label_set.class_names,
    )


def _tile_scene(info, bands, scene_labels, chip: ChipConfig, work: Path, coco: dict, progress) -> int:
    """Write one scene's chips and annotations; returns the nodata-only chips skipped."""
    stem = Path(info.path).stem
    skipped = 0
    windows = chip_windows(info.height, info.width, chip.size, chip.overlap)
    with rasterio.open(info.path) as src:
        for done, window in enumerate(windows, start=1):
            raw, valid = read_raw(src, window, bands)  # one read serves the check and the chip
            if not valid.any():
                skipped += 1
                if progress:
                    progress(done)
                continue
            name = f"chips/{stem}_r{int(window.row_off)}_c{int(window.col_off)}.tif"
            _write_chip(raw, info, window, chip.size, work / name)
            image_id = len(coco["images"]) + 1
            coco["images"].append(
                {
                    "id": image_id,
                    "file_name": name,
                    "width": chip.size,
                    "height": chip.size,
                    "scene": info.path,
                    "window": [int(window.col_off), int(window.row_off), int(window.width), int(window.height)],
                }
            )
            boxes, keep = clip_boxes_to_window(
                scene_labels.boxes_px, window_bounds_px(window), min_visible=chip.min_visible
            )
            for box, k in zip(boxes, keep):
                w, h = float(box[2] - box[0]), float(box[3] - box[1])
                coco["annotations"].append(
                    {
                        "id": len(coco["annotations"]) + 1,
                        "image_id": image_id,
                        "bbox": [round(float(box[0]), 3), round(float(box[1]), 3), round(w, 3), round(h, 3)],
                        "area": round(w * h, 3),
                        "category_id": int(scene_labels.class_ids[k]) + 1,
                        "iscrowd": 0,
                    }
                )
            if progress:
                progress(done)
    return skipped


def _write_chip(data: np.ndarray, info, window, size: int, path: Path) -> None:
    """Write one chip's raw pixels ``[C, h, w]``, padded with nodata (or 0) to ``size``."""
    bands = range(data.shape[0])
    fill = info.nodata if info.nodata is not None else 0
    if data.shape[1:] != (size, size):
        padded = np.full((len(bands), size, size), fill, dtype=data.dtype)
        padded[:, : data.shape[1], : data.shape[2]] = data
        data = padded
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": len(bands),
        "dtype": data.dtype.name,
        "crs": info.crs,
        "transform": chip_transform(window, info.transform),
        "nodata": info.nodata,
        "compress": "deflate",
    }
    if size % 16 == 0:
        profile.update(tiled=True, blockxsize=min(size, 256), blockysize=min(size, 256))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def _swap_into_place(work: Path, target: Path) -> None:
    old: List[Path] = []
    if target.exists():
        aside = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, aside)
        old.append(aside)
    os.replace(work, target)
    for path in old:
        shutil.rmtree(path, ignore_errors=True)

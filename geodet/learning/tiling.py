"""Export georeferenced chips and COCO annotations from scenes and labels.

This is the inspection path for training data: every chip is a GeoTIFF with
its own transform and CRS, and ``annotations.json`` holds the boxes in chip
pixels. Training itself reads scenes directly (see :mod:`geodet.learning.dataset`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import rasterio

from geodet.core.boxes import clip_boxes_to_window
from geodet.config import ChipConfig
from geodet.errors import GeodetError
from geodet.io.outputs import check_output, staged_folder
from geodet.io.raster import open_dataset, open_raster, read_raw, resolve_bands, scene_info
from geodet.io.sources import file_name, redact, resolve_scenes
from geodet.io.vector import check_labels_inside, labels_for_scene, read_labels
from geodet.core.windows import chip_transform, chip_windows, window_bounds_px

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
        failed: scenes left out because they could not be read: path -> reason.
        scenes: scenes asked for (after resolving patterns, lists and STAC inputs).
    """

    out_dir: str
    chips: int
    skipped_nodata: int
    annotations: int
    labels_inside: int
    labels_total: int
    class_names: tuple
    failed: Dict[str, str] = field(default_factory=dict)
    scenes: int = 0


def tile(
    imagery: Sequence[str],
    labels: str,
    out_dir: str,
    *,
    class_field: Optional[str] = None,
    chip: ChipConfig = ChipConfig(),
    overwrite: bool = False,
    progress: Optional[Callable[[int], None]] = None,
    asset: Optional[str] = None,
    allow_local_hrefs: bool = False,
) -> TileSummary:
    """Cut scenes into georeferenced chips and write COCO annotations.

    Args:
        imagery: scenes, as :func:`geodet.io.sources.resolve_scenes` takes them (paths, globs,
            ``@list.txt``, URLs, GDAL virtual paths, STAC JSON).
        labels: a vector file of objects (polygons or points).
        out_dir: output folder; gets ``chips/*.tif`` and ``annotations.json``.
        class_field: the labels' class column (see :func:`geodet.io.vector.read_labels`).
        chip: chip size, overlap, bands, minimum visible fraction, point size.
        overwrite: replace a non-empty ``out_dir``.
        progress: called with the number of the scene's chips done after each chip.
        asset: the STAC asset key read from STAC inputs (default: the visual/RGB one).
        allow_local_hrefs: follow local hrefs of remote STAC catalogs
            (:func:`geodet.io.sources.resolve_scenes`).

    Everything is written into a temporary folder beside ``out_dir`` and
    moved into place at the end, so a failure leaves nothing half-written.
    A scene that cannot be opened or read (damaged file) is left out, with its
    chips, and named in ``TileSummary.failed``; the others are still written.

    Raises:
        GeodetError: bad labels or settings, or no scene could be tiled.
    """
    if not imagery:
        raise GeodetError("no imagery given.")
    check_output(out_dir, overwrite=overwrite, folder=True)  # before any work
    imagery = resolve_scenes(imagery, asset=asset, allow_local_hrefs=allow_local_hrefs)
    failed: Dict[str, str] = {}
    infos = []
    for path in imagery:
        try:
            with open_dataset(path) as src:
                infos.append(scene_info(src))
        except GeodetError as exc:
            _scene_failed(failed, path, exc, len(imagery))
    label_set = read_labels(labels, class_field=class_field)
    per_scene = [labels_for_scene(label_set, info, point_size_m=chip.point_size_m) for info in infos]
    check_labels_inside(label_set, per_scene, [info.path for info in infos])

    coco = {
        "info": {"description": "geodet tile export", "labels": str(labels)},
        "images": [],
        "annotations": [],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(label_set.class_names)],
    }
    skipped = 0
    with staged_folder(out_dir, overwrite=overwrite) as work:
        (work / "chips").mkdir()
        for info, scene_labels in zip(infos, per_scene):
            marks = len(coco["images"]), len(coco["annotations"])
            try:
                bands = resolve_bands(info, chip.bands)
                skipped += _tile_scene(info, bands, scene_labels, chip, work, coco, progress)
            except GeodetError as exc:
                _scene_failed(failed, info.path, exc, len(imagery))
                for image in coco["images"][marks[0]:]:  # this scene's chips go with it
                    (work / image["file_name"]).unlink(missing_ok=True)
                del coco["images"][marks[0]:], coco["annotations"][marks[1]:]
        if failed and len(failed) == len(imagery):
            raise GeodetError("no scene could be tiled: " + "; ".join(failed.values()))
        with open(work / "annotations.json", "w") as fh:
            json.dump(coco, fh)
    return TileSummary(
        out_dir=str(Path(out_dir).resolve()),
        chips=len(coco["images"]),
        skipped_nodata=skipped,
        annotations=len(coco["annotations"]),
        labels_inside=sum(len(s.boxes_px) for s in per_scene),
        labels_total=len(label_set.frame),
        class_names=label_set.class_names,
        failed=failed,
        scenes=len(imagery),
    )


def _scene_failed(failed: Dict[str, str], path: str, exc: GeodetError, n_scenes: int) -> None:
    """Record a scene that could not be tiled; with one scene there is nothing else to do."""
    if n_scenes == 1:
        raise exc
    failed[str(path)] = str(exc)
    log.warning("skipped %s: %s", redact(path), redact(exc))


def _tile_scene(info, bands, scene_labels, chip: ChipConfig, work: Path, coco: dict, progress) -> int:
    """Write one scene's chips and annotations; returns the nodata-only chips skipped."""
    stem = Path(file_name(info.path)).stem
    skipped = 0
    windows = chip_windows(info.height, info.width, chip.size, chip.overlap)
    with open_raster(info.path) as src:
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

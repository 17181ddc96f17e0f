"""Spatial train/test parts of a real labelled scene, for the accuracy benchmark.

The scene is cut into vertical strips (windows over its full height). Each
part is written as its own GeoTIFF by windowed reads and writes, block of
rows by block of rows, with the window's affine; the whole scene is never in
memory. Labels go to the part that holds their box centre, so a crown that
straddles a cut is labelled in one part only (``geodet evaluate --imagery``
counts truth the same way: by its centre on the imagery).

Two layouts:
    holdout: train on the west two thirds, test on the east third;
    cv:      three strips; fold k tests on strip k and trains on the other two
             (adjacent training strips are merged into one part).

    python bench/real_data.py --out /tmp/real [--data ../shared/data/real_trees] [--layout holdout|cv]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
from rasterio.windows import Window

REPO = Path(__file__).resolve().parents[1]
#: Default data folder: ``../shared/data/real_trees`` relative to the repository root.
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "real_trees"
SCENE_NAME, LABELS_NAME, CLASS_FIELD = "scene.tif", "crowns.gpkg", "kind"
#: Other sites (never trained on): ``sites/NAME.tif`` with ``sites/NAME_crowns.gpkg``.
SITES_DIR, SITE_LABELS_SUFFIX = "sites", "_crowns.gpkg"
ROWS_PER_BLOCK = 256  # rows read and written at a time


# --------------------------------------------------------------------------- pure window arithmetic
def strip_windows(width: int, height: int, n: int) -> List[Window]:
    """``n`` vertical strips covering a ``height x width`` px scene, west to east.

    Column edges are ``round(i * width / n)``: widths differ by at most 1 px.
    """
    if n < 1 or width < n:
        raise ValueError(f"cannot cut {width} px into {n} strips")
    edges = [round(i * width / n) for i in range(n + 1)]
    return [Window(edges[i], 0, edges[i + 1] - edges[i], height) for i in range(n)]


def merge_adjacent(windows: Sequence[Window]) -> List[Window]:
    """Merge strips (same rows) that touch west-east into one window each; sorted west to east."""
    out: List[Window] = []
    for w in sorted(windows, key=lambda w: w.col_off):
        last = out[-1] if out else None
        if last is not None and last.col_off + last.width == w.col_off and (last.row_off, last.height) == (
            w.row_off,
            w.height,
        ):
            out[-1] = Window(last.col_off, last.row_off, last.width + w.width, last.height)
        else:
            out.append(w)
    return out


@dataclass(frozen=True)
class Fold:
    """One train/test split of a scene: ``train`` windows (west to east) and one ``test`` window."""

    name: str
    train: Tuple[Window, ...]
    test: Window


def holdout_fold(width: int, height: int) -> Fold:
    """Train on the west two thirds (strips 0 and 1 of 3), test on the east third."""
    strips = strip_windows(width, height, 3)
    return Fold("holdout-east", tuple(merge_adjacent(strips[:2])), strips[2])


def cv_folds(width: int, height: int, n: int = 3) -> List[Fold]:
    """``n`` folds over ``n`` vertical strips: fold k tests on strip k, trains on the rest."""
    strips = strip_windows(width, height, n)
    return [
        Fold(f"fold{k}", tuple(merge_adjacent([s for i, s in enumerate(strips) if i != k])), strips[k])
        for k in range(n)
    ]


def box_centres_px(bounds_world: np.ndarray, transform) -> np.ndarray:
    """Box centres ``[N, 2]`` (col, row) in scene pixels from world bounds ``[N, 4]`` xyxy.

    ``transform`` is the scene's pixel-corner -> world affine; the world bounds
    must be in the scene's CRS.
    """
    b = np.asarray(bounds_world, np.float64).reshape(-1, 4)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    inv = ~transform
    return np.column_stack([inv.a * cx + inv.b * cy + inv.c, inv.d * cx + inv.e * cy + inv.f])


def window_index(centres_px: np.ndarray, windows: Sequence[Window]) -> np.ndarray:
    """Index ``[N]`` of the window holding each centre ``[N, 2]`` (col, row); -1 for none.

    Windows are half-open: ``col_off <= col < col_off + width`` (likewise rows),
    so a centre on a shared edge belongs to the eastern (southern) window.
    """
    c = np.asarray(centres_px, np.float64).reshape(-1, 2)
    out = np.full(len(c), -1, np.int64)
    for i, w in enumerate(windows):
        inside = (
            (c[:, 0] >= w.col_off)
            & (c[:, 0] < w.col_off + w.width)
            & (c[:, 1] >= w.row_off)
            & (c[:, 1] < w.row_off + w.height)
        )
        out[inside & (out < 0)] = i
    return out


# --------------------------------------------------------------------------- I/O at the edges
def write_part(scene: Path, window: Window, out: Path, rows_per_block: int = ROWS_PER_BLOCK) -> Path:
    """Copy ``window`` of ``scene`` to the GeoTIFF ``out``, ``rows_per_block`` rows at a time."""
    import rasterio
    from rasterio.windows import transform as window_transform

    with rasterio.open(scene) as src:
        profile = src.profile.copy()
        profile.update(
            driver="GTiff",
            width=int(window.width),
            height=int(window.height),
            transform=window_transform(window, src.transform),
            tiled=True,
            blockxsize=256,
            blockysize=256,
            compress="deflate",
        )
        with rasterio.open(out, "w", **profile) as dst:
            for r in range(0, int(window.height), rows_per_block):
                h = min(rows_per_block, int(window.height) - r)
                block = src.read(window=Window(window.col_off, window.row_off + r, window.width, h))
                dst.write(block, window=Window(0, r, window.width, h))
    return out


def scene_grid(scene: Path):
    """``(width, height, transform, crs)`` of a GeoTIFF, from its header only."""
    import rasterio

    with rasterio.open(scene) as src:
        return src.width, src.height, src.transform, src.crs


def label_centres(labels: Path, transform, crs) -> Tuple[object, np.ndarray]:
    """``(frame, centres_px [N, 2])``: the label file and its box centres in scene pixels."""
    import geopandas as gpd

    frame = gpd.read_file(labels)
    bounds = frame.to_crs(crs).geometry.bounds.to_numpy()
    return frame, box_centres_px(bounds, transform)


def write_fold(data_dir: Path, fold: Fold, out_dir: Path) -> dict:
    """Write a fold's parts and label files under ``out_dir``; returns their paths and counts.

    Returns ``{"name", "train": [tif, ...], "train_labels", "test", "test_labels",
    "n_train", "n_test", "class_field"}``; labels keep the source file's CRS and fields.
    """
    scene, labels = Path(data_dir) / SCENE_NAME, Path(data_dir) / LABELS_NAME
    width, height, transform, crs = scene_grid(scene)
    frame, centres = label_centres(labels, transform, crs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_tifs = [str(write_part(scene, w, out_dir / f"{fold.name}_train{i}.tif")) for i, w in enumerate(fold.train)]
    test_tif = str(write_part(scene, fold.test, out_dir / f"{fold.name}_test.tif"))
    in_train = window_index(centres, fold.train) >= 0
    in_test = window_index(centres, [fold.test]) >= 0
    train_labels, test_labels = out_dir / f"{fold.name}_train.gpkg", out_dir / f"{fold.name}_test.gpkg"
    frame[in_train].to_file(train_labels, driver="GPKG")
    frame[in_test].to_file(test_labels, driver="GPKG")
    return {
        "name": fold.name,
        "train": train_tifs,
        "train_labels": str(train_labels),
        "test": test_tif,
        "test_labels": str(test_labels),
        "n_train": int(in_train.sum()),
        "n_test": int(in_test.sum()),
        "class_field": CLASS_FIELD,
    }


def write_layout(data_dir: Path, out_dir: Path, layout: str) -> List[dict]:
    """All folds of ``layout`` ("holdout" or "cv") written under ``out_dir``."""
    data_dir = Path(data_dir)
    scene = data_dir / SCENE_NAME
    if not scene.exists() or not (data_dir / LABELS_NAME).exists():
        raise SystemExit(f"real data not found: {data_dir} needs {SCENE_NAME} and {LABELS_NAME} (see --real-data)")
    width, height, _, _ = scene_grid(scene)
    folds = [holdout_fold(width, height)] if layout == "holdout" else cv_folds(width, height)
    return [write_fold(data_dir, f, Path(out_dir) / f.name) for f in folds]


def site_tests(data_dir: Path) -> List[dict]:
    """The other sites' scenes and crowns: ``[{"name", "tif", "labels"}]``, sorted by name."""
    sites = Path(data_dir) / SITES_DIR
    out = []
    for tif in sorted(sites.glob("*.tif")):
        labels = tif.with_name(tif.stem + SITE_LABELS_SUFFIX)
        if labels.exists():
            out.append({"name": tif.stem, "tif": str(tif), "labels": str(labels)})
    if not out:
        raise SystemExit(f"no site found: {sites} needs NAME.tif with NAME{SITE_LABELS_SUFFIX}")
    return out


def whole_scene(data_dir: Path) -> dict:
    """The whole scene as one training part (for the cross-site benchmark): paths and crown count."""
    import geopandas as gpd

    data_dir = Path(data_dir)
    labels = data_dir / LABELS_NAME
    return {"name": "whole", "train": [str(data_dir / SCENE_NAME)], "train_labels": str(labels),
            "n_train": len(gpd.read_file(labels)), "class_field": CLASS_FIELD}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR, help="folder with scene.tif and crowns.gpkg")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--layout", choices=["holdout", "cv"], default="holdout")
    args = ap.parse_args()
    print(json.dumps(write_layout(args.data, args.out, args.layout), indent=2))


if __name__ == "__main__":
    main()

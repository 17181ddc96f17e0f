"""Train/test scene pairs for the benchmarks (shared by the bench scripts)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from geodet.testing import synthetic  # noqa: E402


def write_pair(folder: Path, *, size: int, difficulty: str, pixel_size: float, seeds=(1, 2)) -> dict:
    """Write train and test scenes with their labels (EPSG:4326 GeoJSON).

    Returns ``{"train": (tif, labels), "test": (tif, labels)}``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, seed in zip(("train", "test"), seeds):
        scene = synthetic.make_scene(size, size, seed=seed, difficulty=difficulty)
        tif = folder / f"{difficulty}_{split}.tif"
        transform = synthetic.write_scene(tif, scene, pixel_size=pixel_size)
        labels = folder / f"{difficulty}_{split}.geojson"
        synthetic.write_labels(labels, scene, transform, "EPSG:32611")
        out[split] = (str(tif), str(labels))
    return out


#: First seed of the held-out draws: tuning looks only at seeds below it (see bench/README.md).
HELD_OUT_SEED = 100


def write_drawn_scene(folder: Path, *, size: int, setting: str, seed: int, pixel_size: float, name: str) -> dict:
    """Write one scene whose parameters are drawn for ``seed`` (``synthetic.draw_params``).

    Returns ``{"tif", "labels", "seed", "params"}`` (labels: EPSG:4326 GeoJSON, class field ``class``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    params = synthetic.draw_params(seed, setting)
    scene = synthetic.make_scene(size, size, seed=seed, params=params)
    tif = folder / f"{name}.tif"
    transform = synthetic.write_scene(tif, scene, pixel_size=pixel_size)
    labels = folder / f"{name}.geojson"
    synthetic.write_labels(labels, scene, transform, "EPSG:32611")
    counts = {c: int((scene.classes == c).sum()) for c in sorted(set(scene.classes))}
    return {"tif": str(tif), "labels": str(labels), "seed": seed, "params": params.to_dict(), "counts": counts}

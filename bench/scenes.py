"""Train/test scene pairs for the benchmarks (shared by the bench scripts)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from geodet import synthetic  # noqa: E402


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

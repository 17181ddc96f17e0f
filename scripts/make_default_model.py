"""Train the small default model bundled as geodet/weights/default.pt.

Reproducible: synthetic suburb scenes (geodet.testing.synthetic, seeds 101-103,
2048 x 2048 px at 0.4 m, pools 8-30 px), fitted anchors, a fixed seed and a
fixed number of epochs on the CPU. The model finds swimming pools in
geodet's synthetic scenes; it is a demonstration model, not one for real
imagery.

    python scripts/make_default_model.py [--epochs 12] [--out geodet/weights/default.pt]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from geodet.testing import synthetic  # noqa: E402
from geodet.config import ChipConfig, TrainConfig  # noqa: E402
from geodet.learning.training import train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--scenes", type=int, default=3)
    parser.add_argument("--max-time", type=float, default=None, help="minutes")
    parser.add_argument("--out", default=str(REPO / "geodet" / "weights" / "default.pt"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    with tempfile.TemporaryDirectory() as tmp:
        imagery = []
        labels = Path(tmp) / "pools.gpkg"
        frames = []
        for i in range(args.scenes):
            scene = synthetic.make_scene(args.size, args.size, seed=101 + i)
            path = Path(tmp) / f"scene{i}.tif"
            # scenes side by side on the map so one label file serves all
            transform = synthetic.write_scene(
                path, scene, crs="EPSG:32611", origin=(500000.0 + i * 2000.0, 3760000.0), pixel_size=0.4
            )
            frames.append(synthetic.label_frame(scene, transform, "EPSG:32611", to_crs="EPSG:32611"))
            imagery.append(str(path))
        import pandas as pd

        pd.concat(frames, ignore_index=True).to_file(labels)
        t0 = time.time()
        result = train(
            imagery, str(labels), args.out,
            chip=ChipConfig(size=256, overlap=64),
            model=dict(backbone="resnet18", fpn_channels=64, head_convs=2),
            config=TrainConfig(epochs=args.epochs, batch_size=8, lr=2e-3, seed=0, max_time_min=args.max_time,
                               val_fraction=0.1),
            overwrite=True, progress=True,
        )
    last = result.history[-1]
    logging.info("trained in %.0f s; last epoch %s", time.time() - t0, last)
    Path(result.last_path).unlink(missing_ok=True)
    size_mb = Path(args.out).stat().st_size / 1e6
    logging.info("wrote %s (%.1f MB)", args.out, size_mb)


if __name__ == "__main__":
    main()

"""Fitted anchors vs COCO default anchors on dense small objects (8-30 px).

Generates a train and a test scene, trains the same RetinaNet twice with the
same time budget (COCO anchors, then anchors fitted to the labels), detects
on the test scene and prints AP50, anchor coverage, chips/s and wall time.

    python bench/train_small_objects.py [--size 1536] [--minutes 5] [--device auto]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from scenes import write_pair

from geodet.modeling.anchors import anchor_coverage
from geodet.config import ChipConfig, DetectConfig, TrainConfig
from geodet.inference.detection import detect
from geodet.reports.evaluation import evaluate
from geodet.modeling.modelfile import load_model
from geodet.learning.training import boxes_in_chip_frame, load_sources, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1536)
    ap.add_argument("--minutes", type=float, default=5.0, help="training budget per model")
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--chip-size", type=int, default=256)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        pair = write_pair(Path(tmp), size=args.size, difficulty="easy", pixel_size=0.4)
        chip = ChipConfig(size=args.chip_size, overlap=64)
        _, _, sources = load_sources([pair["train"][0]], pair["train"][1], None, chip)
        boxes = boxes_in_chip_frame(sources, chip.size)
        rows = []
        for anchors in ("coco", "auto"):
            out = str(Path(tmp) / f"{anchors}.pt")
            t0 = time.time()
            result = train([pair["train"][0]], pair["train"][1], out, chip=chip, anchors=anchors,
                           config=TrainConfig(epochs=args.epochs, max_time_min=args.minutes, device=args.device))
            train_s = time.time() - t0
            _, meta = load_model(out)
            cfg = meta.model_config
            cov = anchor_coverage(boxes, cfg.levels, cfg.anchors, iou_thresh=cfg.fg_iou_thresh, chip_size=chip.size)
            t0 = time.time()
            dets = detect(pair["test"][0], model=out, config=DetectConfig(score_threshold=0.05, device=args.device))
            detect_s = time.time() - t0
            report = evaluate(dets, pair["test"][1], imagery=pair["test"][0])
            chips_s = sum(h["chips_per_s"] * h["seconds"] for h in result.history) / max(
                sum(h["seconds"] for h in result.history), 1e-9)
            rows.append((anchors, cfg.levels, cfg.anchors.sizes, cov, report["overall"]["ap50"], chips_s,
                         len(result.history), train_s, detect_s))
    print(f"{'anchors':8} {'levels':12} {'sizes':22} {'coverage':>8} {'AP50':>6} {'chips/s':>8} "
          f"{'epochs':>6} {'train s':>8} {'detect s':>8}")
    for a, lv, sz, cov, ap50, cps, ep, ts, ds in rows:
        print(f"{a:8} {str(lv):12} {str(tuple(round(s, 1) for s in sz)):22} {cov:8.3f} {ap50:6.3f} {cps:8.2f} "
              f"{ep:6d} {ts:8.0f} {ds:8.1f}")


if __name__ == "__main__":
    main()

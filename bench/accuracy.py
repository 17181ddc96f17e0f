"""End-to-end accuracy through the CLI: train, detect, evaluate.

Two settings, each with a train and a test scene of different seeds
(about 2048 x 2048 px at 0.5 m):
  easy: one class, pools 8-30 px among houses, trees, roads and blue roofs;
  hard: pools 6-20 px, low contrast, a third under tree crowns, blue tarps,
        cars of about 5 x 10 px in dense rows, gradient, haze, blur, noise.
For each: `geodet train --max-time M` (fitted anchors, and again with
`--anchors coco` unless --skip-coco), `geodet detect`, `geodet evaluate --json`.
Prints AP50 per class, mAP50, AP50:95, precision, recall and wall times.

    python bench/accuracy.py [--minutes 15] [--size 2048] [--settings easy,hard]
                              [--anchors auto,coco | --skip-coco]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scenes import write_pair


def run(cmd) -> tuple:
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout, time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--settings", default="easy,hard")
    ap.add_argument("--skip-coco", action="store_true", help="same as --anchors auto")
    ap.add_argument("--anchors", default="auto,coco", help="anchor modes to compare, comma-separated")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--geodet", default="geodet", help="the geodet executable")
    args = ap.parse_args()

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for setting in args.settings.split(","):
            pair = write_pair(Path(tmp) / setting, size=args.size, difficulty=setting, pixel_size=0.5)
            for anchors in ["auto"] if args.skip_coco else args.anchors.split(","):
                model = f"{tmp}/{setting}_{anchors}.pt"
                _, train_s = run([args.geodet, "train", "--imagery", pair["train"][0], "--labels", pair["train"][1],
                                  "-o", model, "--max-time", str(args.minutes), "--epochs", "1000",
                                  "--anchors", anchors, "--device", args.device, "--quiet"])
                dets = f"{tmp}/{setting}_{anchors}.gpkg"
                _, detect_s = run([args.geodet, "detect", pair["test"][0], "-m", model, "-o", dets,
                                   "--score-threshold", "0.05", "--device", args.device, "--quiet"])
                out, eval_s = run([args.geodet, "evaluate", dets, pair["test"][1], "--imagery", pair["test"][0],
                                   "--json"])
                rep = json.loads(out)
                results.append((setting, anchors, rep, train_s, detect_s, eval_s))
                print_row(*results[-1])
    print("\nsummary")
    for r in results:
        print_row(*r)


def print_row(setting, anchors, rep, train_s, detect_s, eval_s):
    per_class = ", ".join(f"{c} AP50 {m['ap50']:.3f}" for c, m in rep["classes"].items())
    o = rep["overall"]
    print(f"{setting:5} anchors={anchors:5} {per_class}; mAP50 {o['ap50']:.3f} AP50:95 {o['ap50_95']:.3f} "
          f"P {o['precision']:.3f} R {o['recall']:.3f} | train {train_s:.0f} s, detect {detect_s:.1f} s, "
          f"evaluate {eval_s:.1f} s", flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Detection throughput on the CPU: the torch network against its ONNX export on onnxruntime.

One seeded random model of geodet's default ModelConfig (ResNet-18, FPN 64
channels, P3-P7), saved as a model file with 512 px chips (64 px overlap) and
exported with ``geodet.modeling.onnx_export.export_onnx``; one uniform-noise uint8 scene.
``geodet.detect`` runs the scene with the model file (``--precision float32``
and the default ``auto``, which is bfloat16 autocast on CPUs that compute it
natively) and with the ONNX file, each ``--repeat`` times in turn, in this one
process; the fastest run of each is reported (wall s, CPU s of the process,
megapixels/s). With random weights throughput does not depend on the pixels.

    python bench/onnx_throughput.py [--size 2048] [--repeat 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import cpu_s  # noqa: E402
from throughput_models import write_noise_scene  # noqa: E402


def _make_model(workdir: Path, chip_px: int, overlap_px: int, seed: int) -> str:
    import torch

    from geodet.config import ModelConfig
    from geodet.modeling.model import build_model
    from geodet.modeling.modelfile import save_model

    torch.manual_seed(seed)
    cfg = ModelConfig()
    path = workdir / "default.pt"
    save_model(path, build_model(cfg).eval(), model_config=cfg, class_names=["object"], bands=[1, 2, 3],
               band_mean=[127.5] * 3, band_std=[73.9] * 3, chip_size=chip_px, overlap=overlap_px, gsd=0.4,
               dtype="uint8")
    return str(path)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048, help="scene side in px")
    parser.add_argument("--chip-size", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import onnxruntime as ort
    import torch

    from geodet.config import DetectConfig
    from geodet.inference.detection import detect
    from geodet.modeling.onnx_export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        scene = str(write_noise_scene(work / "noise.tif", args.size, args.size))
        model = _make_model(work, args.chip_size, args.overlap, args.seed)
        onnx_model = str(export_onnx(model, work / "default.onnx"))
        runs = {
            "torch float32": (model, DetectConfig(precision="float32")),
            "torch auto": (model, DetectConfig()),
            "onnxruntime float32": (onnx_model, DetectConfig()),
        }
        best = {}
        for _ in range(args.repeat):
            for name, (path, cfg) in runs.items():
                t0, c0 = time.perf_counter(), cpu_s()
                frame = detect(scene, path, config=cfg)
                wall, cpu = time.perf_counter() - t0, cpu_s() - c0
                if name not in best or wall < best[name]["wall_s"]:
                    best[name] = {"wall_s": wall, "cpu_s": cpu, "mp_per_s": args.size ** 2 / 1e6 / wall,
                                  "detections": len(frame)}
    result = {"size_px": args.size, "chip_px": args.chip_size, "torch": torch.__version__,
              "onnxruntime": ort.__version__, "torch_threads": torch.get_num_threads(), "runs": best}
    print("| run | wall s | CPU s | MP/s |\n|---|---|---|---|")
    for name, r in best.items():
        print(f"| {name} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['mp_per_s']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

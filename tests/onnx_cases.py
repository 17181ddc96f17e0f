"""What the ONNX tests share (not a test module): exported models, tolerances, matching detections.

Tolerances. The export runs the same float32 network as torch, in another
library (onnxruntime vs oneDNN): only the summation order of the convolutions
differs. Each float32 sum of n terms is off by about sqrt(n) * 6e-8 relative;
over ~20 layers of n <= 3 * 3 * 512 terms that is ~1e-5 relative on a logit
or box delta. Logits are at most ~10 in size and sigmoid's slope is <= 1/4,
so scores agree to ~2.5e-5: SCORE_TOL = 1e-4. A box side is anchor * exp(dw)
(<= ~100 px here): 1e-5 relative is 1e-3 px: BOX_TOL_PX = 1e-2. Detections
within SCORE_TOL of a threshold may fall on either side, so sets are compared
only above threshold + SCORE_TOL.
"""

from __future__ import annotations

import numpy as np
import torch
from click.testing import CliRunner

from geodet.config import AnchorConfig, ModelConfig
from geodet_cli.main import cli

from conftest import tiny_model_overrides

SCORE_TOL = 1e-4
BOX_TOL_PX = 1e-2


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _two_class_model(path, chip_size=80):
    """A tiny 2-class model with spread-out random scores (many detections, no ties), saved to ``path``."""
    from geodet.modeling.model import build_model
    from geodet.modeling.modelfile import save_model

    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=2, levels=(3, 4), anchors=AnchorConfig(sizes=(16.0, 32.0)), **tiny_model_overrides())
    net = build_model(cfg).eval()
    with torch.no_grad():
        torch.nn.init.normal_(net.head.cls_logits.weight, std=0.05)
        net.head.cls_logits.bias.fill_(-0.5)
        torch.nn.init.normal_(net.head.bbox_reg.weight, std=0.02)
    history = [{"epoch": 1, "loss": 0.5, "seconds": 3.0, "chips": 12, "val_map50": 0.4, "val_map": 0.2,
                "val_ap50": {"car": 0.3, "pool": 0.5}}]
    save_model(path, net, model_config=cfg, class_names=["car", "pool"], bands=[1, 2, 3],
               band_mean=[100.0, 110.0, 90.0], band_std=[40.0, 35.0, 45.0], chip_size=chip_size, overlap=16,
               gsd=0.3, dtype="uint8", extra={"history": history})
    return str(path)


def _match(a, b):
    """Every detection of ``a`` (boxes [N, 4], scores, labels) has one in ``b`` within the tolerances."""
    boxes_a, scores_a, labels_a = a
    boxes_b, scores_b, labels_b = b
    for box, score, label in zip(boxes_a, scores_a, labels_a):
        same = (labels_b == label) & (np.abs(boxes_b - box).max(axis=1) <= BOX_TOL_PX)
        assert same.any(), f"no counterpart for box {box} ({score:.4f})"
        assert np.abs(scores_b[same] - score).min() <= SCORE_TOL


def _above(dets, threshold):
    boxes, scores, labels = dets
    keep = scores >= threshold + SCORE_TOL
    return boxes[keep], scores[keep], labels[keep]


def _frame_dets(frame, transform):
    from geodet.core.boxes import geometries_to_pixel_boxes

    classes = sorted(set(frame["class"]))
    boxes = np.asarray(geometries_to_pixel_boxes(frame.geometry.values, transform), np.float64).reshape(-1, 4)
    labels = np.array([classes.index(c) for c in frame["class"]])
    return boxes, frame["score"].to_numpy(), labels


def _one_sentence(result):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output

"""Test-time augmentation: the network run on flipped copies of each chip, boxes mapped back and merged.

Overhead scenes have no up, so a flipped chip is as likely an input as the
chip itself. :class:`FlipTTA` wraps a network (torch or ONNX, called as
``net(images)``) and runs it on the chip and its left-right, top-bottom and
both-ways flips (:data:`FLIPS`); each view's boxes are flipped back exactly
(a box ``[x1, x2]`` of a chip ``W`` pixels wide flips to ``[W - x2, W - x1]``,
pixel corners, not centres) and the four views' detections of a chip are
merged by class-wise NMS at the model's per-chip IoU, the best-scored box of
each cluster kept. It costs four forward passes per chip
(``DetectConfig.tta``; bench/README.md, "Test-time flips").
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from torchvision.ops import batched_nms

#: The views: (flip left-right, flip top-bottom).
FLIPS: Tuple[Tuple[bool, bool], ...] = ((False, False), (True, False), (False, True), (True, True))


def flip_images(images: torch.Tensor, lr: bool, tb: bool) -> torch.Tensor:
    """``[B, C, H, W]`` images flipped left-right (``lr``) and / or top-bottom (``tb``)."""
    dims = [d for d, on in ((-1, lr), (-2, tb)) if on]
    return images.flip(dims) if dims else images


def flip_boxes(boxes_px: torch.Tensor, size_hw: Tuple[int, int], lr: bool, tb: bool) -> torch.Tensor:
    """``[N, 4]`` xyxy boxes in the pixels of an ``(H, W)`` image flipped back (the flip is its own inverse).

    Coordinates are pixel corners: ``x -> W - x`` left-right, ``y -> H - y`` top-bottom. Returns
    float32 whatever the input: under bfloat16 autocast, ``W - x`` in bfloat16 would round a box
    by up to half a pixel at 256 px.
    """
    h, w = size_hw
    x1, y1, x2, y2 = boxes_px.float().unbind(-1)
    if lr:
        x1, x2 = w - x2, w - x1
    if tb:
        y1, y2 = h - y2, h - y1
    return torch.stack((x1, y1, x2, y2), dim=-1)


def merge_views(views: Sequence[Dict[str, torch.Tensor]], iou: float, max_detections: int) -> Dict[str, torch.Tensor]:
    """One chip's detections of several views (boxes already in the chip's frame) merged by class-wise NMS.

    Args:
        views: ``{"boxes": [n, 4] xyxy chip px, "scores": [n], "labels": [n]}`` per view.
        iou: NMS IoU.
        max_detections: most detections kept, best first.
    """
    boxes = torch.cat([v["boxes"].float() for v in views])
    scores = torch.cat([v["scores"].float() for v in views])
    labels = torch.cat([v["labels"] for v in views])
    keep = batched_nms(boxes, scores, labels, iou)[:max_detections]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


class FlipTTA:
    """``net`` run on the :data:`FLIPS` of each chip, called like ``net``.

    ``tta(images)`` with ``images`` ``[B, C, H, W]`` returns one
    ``{"boxes", "scores", "labels"}`` per chip, as ``net`` does. Other
    attributes are ``net``'s.

    Args:
        net: the network (torch module in eval mode, or :class:`geodet.inference.onnx_runtime.OnnxNet`).
        iou: IoU of the merge (the model's ``chip_nms_iou``).
        max_detections: detections kept per chip (the model's ``detections_per_chip``).
    """

    def __init__(self, net, iou: float, max_detections: int):
        self.net = net
        self.iou = float(iou)
        self.max_detections = int(max_detections)

    def __getattr__(self, name):
        if name == "net":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.net, name)

    def __call__(self, images: torch.Tensor) -> List[Dict[str, torch.Tensor]]:
        size_hw = (int(images.shape[-2]), int(images.shape[-1]))
        per_view = []
        for lr, tb in FLIPS:
            view = flip_images(images, lr, tb)
            if images.is_contiguous(memory_format=torch.channels_last):
                view = view.contiguous(memory_format=torch.channels_last)
            outputs = self.net(view)
            per_view.append([dict(out, boxes=flip_boxes(out["boxes"], size_hw, lr, tb)) for out in outputs])
        return [merge_views(chip_views, self.iou, self.max_detections) for chip_views in zip(*per_view)]

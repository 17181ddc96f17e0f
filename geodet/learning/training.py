"""The training loop: scenes + labels -> self-describing model file.

AMP and cudnn autotune on CUDA; repeat-factor sampling of chips holding rare
classes; AdamW with warm-up and cosine decay driven by progress (steps or wall
time, whichever is further along, so a ``max_time`` run still anneals; wall
time alone when no epoch count is set); validation mAP and per-class AP50
each epoch, with warnings for classes that are not being learned; best and
last checkpoints; resumable with nothing lost (model, optimizer, schedule
position, epoch, RNG).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from geodet.config import (
    ASSIGNERS,
    COCO_ANCHORS,
    COCO_LEVELS,
    OBJECT_OVERLAP_QUANTILE,
    PRETRAINED_BACKBONE,
    PRETRAINED_BANDS,
    SCRATCH_BACKBONE,
    TRAIN_CHIP,
    VALIDATION_INTERVAL,
    AnchorConfig,
    ChipConfig,
    ModelConfig,
    TrainConfig,
    from_dict,
)
from geodet.errors import ConfigError, GeodetError
from geodet.io.outputs import check_output
from geodet.io.raster import gsd_metres, open_dataset, pool_band_stats, resolve_bands, sample_band_stats, scene_info
from geodet.io.sources import resolve_scenes
from geodet.io.vector import check_labels_inside, labels_for_scene, read_labels
from geodet.learning import distributed as ddp
from geodet.learning.dataset import (
    ChipDataset,
    RepeatFactorSampler,
    SceneSource,
    choose_block_px,
    collate,
    repeat_factors,
    spatial_blocks,
    split_blocks,
)
from geodet.learning.distributed import SINGLE, Distributed
from geodet.learning.train_state import get_rng_state, load_checkpoint_state, seed_everything, set_rng_state
from geodet.modeling.anchors import anchor_coverage, choose_input_scale, fit_anchors, fit_assignment
from geodet.modeling.backbones import EFFICIENTNETS, IMAGENET, weights_record
from geodet.modeling.device import resolve_device, training_autocast_dtype
from geodet.modeling.model import build_model
from geodet.modeling.modelfile import save_model
from geodet.core.metrics import coco_map

log = logging.getLogger(__name__)

AnchorsArg = Union[str, Tuple[Tuple[int, ...], AnchorConfig]]


@dataclass
class TrainResult:
    """What :func:`train` produced.

    Attributes:
        model_path: the best checkpoint (by validation mAP50; the last one
            when there is no validation split).
        last_path: the last checkpoint (resumable).
        history: one dict per epoch: epoch, loss, lr, seconds, chips_per_s,
            chips (drawn this epoch), complete, progress (share of the
            budget spent, 0..1) and, with a validation split, val_map50,
            val_map and val_ap50 (``{class name: AP50}`` of the classes
            with validation objects).
        model_config: the config the model was built with.
    """

    model_path: str
    last_path: str
    history: List[dict] = field(default_factory=list)
    model_config: Optional[ModelConfig] = None


def last_checkpoint_path(model_path: str) -> str:
    """``model.pt`` -> ``model.last.pt`` (the resumable checkpoint)."""
    p = Path(model_path)
    return str(p.with_name(p.stem + ".last" + p.suffix))


def load_sources(imagery, labels_path, class_field, chip: ChipConfig):
    imagery = resolve_scenes(imagery)  # paths, patterns, @lists, URLs, STAC (default asset)
    infos = []
    for path in imagery:
        with open_dataset(path) as src:
            infos.append(scene_info(src))
    label_set = read_labels(labels_path, class_field=class_field)
    per_scene = [labels_for_scene(label_set, info, point_size_m=chip.point_size_m) for info in infos]
    check_labels_inside(label_set, per_scene, imagery)
    bands = [resolve_bands(info, chip.bands) for info in infos]
    if len({len(b) for b in bands}) > 1:
        counts = ", ".join(f"{i.path}: {len(b)}" for i, b in zip(infos, bands))
        raise GeodetError(f"all training scenes must give the same number of bands ({counts}); use --bands.")
    sources = []
    for info, b, lab in zip(infos, bands, per_scene):
        with open_dataset(info.path) as src:
            stats = sample_band_stats(src, b)
        sources.append(
            SceneSource(info.path, b, stats, lab.boxes_px, lab.class_ids, info.height, info.width)
        )
    return infos, label_set, sources


def boxes_in_chip_frame(sources: Sequence[SceneSource], chip_px: int) -> np.ndarray:
    """Ground-truth boxes ``[N, 4]`` xyxy placed in chip coordinates (for anchor fitting).

    Boxes come in the order of ``sources`` and of each source's boxes, so
    ``np.concatenate([s.class_ids for s in sources])`` gives their classes.
    """
    out = []
    for s in sources:
        b = s.boxes_px.copy()
        # positions relative to a chip grid of stride chip_px keep the anchor-grid phase
        shift = np.floor(b[:, :1] / chip_px) * chip_px, np.floor(b[:, 1:2] / chip_px) * chip_px
        b[:, [0, 2]] -= shift[0]
        b[:, [1, 3]] -= shift[1]
        out.append(b)
    return np.concatenate(out) if out else np.zeros((0, 4))


def explicit_anchors(
    sizes: Optional[Sequence[float]] = None,
    scales: Optional[Sequence[float]] = None,
    ratios: Optional[Sequence[float]] = None,
    levels: Optional[Sequence[int]] = None,
) -> Optional[Tuple[Tuple[int, ...], AnchorConfig]]:
    """``(levels, AnchorConfig)`` of explicitly given anchors, or None when none of them is given.

    Args:
        sizes: base anchor size in px per pyramid level; needed whenever any of
            the others is given.
        scales / ratios: default to :class:`AnchorConfig`'s.
        levels: pyramid levels (default: one per size from P3 up).
    """
    if not (sizes or scales or ratios or levels):
        return None
    if not sizes:
        raise ConfigError("give --anchor-sizes with --anchor-scales/--anchor-ratios/--levels.")
    levels = tuple(int(v) for v in levels) if levels else tuple(range(3, 3 + len(sizes)))
    base = AnchorConfig()
    return levels, AnchorConfig(sizes=tuple(sizes), scales=tuple(scales) if scales else base.scales,
                                ratios=tuple(ratios) if ratios else base.ratios)


def resolve_anchors(
    anchors: AnchorsArg,
    overrides: dict,
    boxes_px: np.ndarray,
    *,
    chip_px: int,
    class_ids: Optional[np.ndarray] = None,
) -> Tuple[Tuple[int, ...], AnchorConfig, dict]:
    """``(levels, AnchorConfig, {IoU threshold overrides})`` of a new model: the one
    place where the ways of setting anchors meet.

    In order of precedence:

    1. ``levels`` and ``anchors`` both in ``overrides`` (a ``model:`` table):
       taken as they are (``anchors`` may be a dict) and removed from
       ``overrides``; no threshold is fitted.
    2. ``anchors=(levels, AnchorConfig)`` (see :func:`explicit_anchors`): as given.
    3. ``anchors="coco"``: torchvision's COCO anchors on P3-P7.
    4. ``anchors="auto"``: fitted per class (``class_ids [N]`` of
       ``boxes_px [N, 4]`` xyxy in chip px; None = one class) for the
       assigner in ``overrides`` (default ``ModelConfig.assigner``). With
       ``"atss"`` nothing else is fitted: ATSS sets each box's IoU threshold
       itself. With ``"maxiou"`` the matching thresholds are fitted too
       (:func:`geodet.modeling.anchors.fit_assignment`) unless ``overrides`` sets
       ``fg_iou_thresh``; ``bg_iou_thresh`` in ``overrides`` is kept.
    """
    # Anchors live in the network's (resampled) pixels.
    input_scale = float(overrides.get("input_scale", ModelConfig.input_scale))
    boxes_px = np.asarray(boxes_px, np.float64) * input_scale
    chip_px = int(round(chip_px * input_scale))
    if "levels" in overrides and "anchors" in overrides:
        levels, anchor_cfg = tuple(overrides.pop("levels")), overrides.pop("anchors")
        if isinstance(anchor_cfg, dict):
            anchor_cfg = from_dict(AnchorConfig, anchor_cfg)
        return levels, anchor_cfg, {}
    if isinstance(anchors, tuple):
        return anchors[0], anchors[1], {}
    if anchors == "coco":
        return COCO_LEVELS, COCO_ANCHORS, {}
    if anchors == "auto":
        assigner = overrides.get("assigner", ModelConfig.assigner)
        if assigner not in ASSIGNERS:
            raise ConfigError(f"assigner must be one of {', '.join(ASSIGNERS)}, got {assigner!r}")
        if assigner == "atss":
            levels, anchor_cfg, _, _ = fit_assignment(
                boxes_px, class_ids=class_ids, assigner="atss", chip_size=chip_px
            )
            return levels, anchor_cfg, {}
        if "fg_iou_thresh" in overrides:
            fg = float(overrides["fg_iou_thresh"])
            return (*fit_anchors(boxes_px, class_ids=class_ids, fg_iou=fg, chip_size=chip_px), {})
        levels, anchor_cfg, fg, bg = fit_assignment(
            boxes_px, class_ids=class_ids, assigner=assigner, chip_size=chip_px
        )
        thresholds = {"fg_iou_thresh": fg}
        if "bg_iou_thresh" not in overrides:
            thresholds["bg_iou_thresh"] = bg
        return levels, anchor_cfg, thresholds
    raise GeodetError(f"anchors must be 'auto', 'coco' or explicit sizes, got {anchors!r}.")


def _lr_at(progress: float, peak: float, warmup: float = TrainConfig.warmup) -> float:
    """Linear warm-up then cosine decay to 1% of ``peak``; ``progress`` in [0, 1]."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup:
        return peak * (0.1 + 0.9 * progress / warmup)
    t = (progress - warmup) / (1 - warmup)
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


def label_warnings(
    class_names: Sequence[str],
    n_labelled: Sequence[int],
    n_validation: Optional[Sequence[int]],
    *,
    min_objects: int,
) -> List[str]:
    """Warnings about labels too thin to learn from or to validate on.

    Args:
        class_names: [K] class names.
        n_labelled: [K] labelled objects per class (all scenes).
        n_validation: [K] objects per class in the validation chips, or None
            when there is no validation split.
        min_objects: fewer labelled objects than this draws a warning.
    """
    out = []
    for name, n in zip(class_names, n_labelled):
        if n < min_objects:
            out.append(
                f"class {name!r} has only {int(n)} labelled object(s); a detector needs tens to hundreds "
                f"per class to learn it (at least {min_objects} advised)."
            )
    if n_validation is None:
        out.append("there is no validation split (too few blocks or --val-fraction 0): nothing measures "
                   "whether the model learns; the last epoch is kept.")
    else:
        for name, n in zip(class_names, n_validation):
            if n == 0:
                out.append(f"no labelled {name!r} object lies in the validation blocks, so its validation AP "
                           f"is meaningless; label more of the scene or raise --val-fraction.")
    return out


def budget_progress(epochs_done: int, epoch_limit: Optional[int], elapsed_s: float,
                    max_time_s: Optional[float]) -> float:
    """Share (0..1) of the training budget spent: epochs or time, whichever is further along."""
    parts = []
    if epoch_limit is not None:
        parts.append(epochs_done / epoch_limit)
    if max_time_s is not None:
        parts.append(elapsed_s / max_time_s)
    return min(1.0, max(parts or [0.0]))


def format_epoch(record: Dict[str, Any], epoch_limit: Optional[int] = None) -> str:
    """One line for a history record: loss, validation mAP50 and AP50 per class, time."""
    total = f"/{epoch_limit}" if epoch_limit is not None else ""
    line = f"epoch {record['epoch']}{total}: loss {record['loss']:.4f}"
    if "val_map50" in record:
        line += f", val mAP50 {record['val_map50']:.3f}"
        per_class = record.get("val_ap50") or {}
        if len(per_class) > 1:
            line += " (" + ", ".join(f"{k} {v:.3f}" for k, v in per_class.items()) + ")"
    if "chips" in record:
        line += f", {record['chips']} chips"
    line += f" in {record['seconds']:.1f} s"
    return line


@dataclass
class TrainingRun:
    """Everything :func:`prepare_run` sets up for the loop (one process; a
    distributed run would set its rank, sampler and writer here).

    Attributes:
        device: where the model trains.
        model_config: the config the model was built with.
        class_names: [K] class names.
        train_ds / val_ds: training chips; validation chips or None.
        sampler: repeat-factor sampler of the training chips.
        loader: the training DataLoader (drawn by ``sampler``).
        net: the model being trained.
        eval_net: the weights validated and saved as the model (the EMA's when on).
        ema: the moving average of ``net``'s weights, or None.
        optimizer / scaler: AdamW and the AMP gradient scaler.
        amp_dtype: autocast dtype, or None without AMP.
        params: the trained parameters (gradient clipping).
        meta: what the model file describes besides the weights.
        backbone_init: the packaged weights the backbone started from
            (:func:`geodet.modeling.backbones.weights_record`), empty for random or a local file's.
        dist: this process's rank in a distributed run (:mod:`geodet.learning.distributed`).
        ddp_net: ``net`` wrapped in DDP (what the loop runs forward), or ``net``.
    """

    device: torch.device
    model_config: ModelConfig
    class_names: List[str]
    train_ds: ChipDataset
    val_ds: Optional[ChipDataset]
    sampler: RepeatFactorSampler
    loader: Any
    net: torch.nn.Module
    eval_net: torch.nn.Module
    ema: Any
    optimizer: torch.optim.Optimizer
    scaler: Any
    amp_dtype: Optional[torch.dtype]
    params: List[torch.nn.Parameter]
    meta: Dict[str, Any]
    dist: Distributed = SINGLE
    backbone_init: Dict[str, Any] = field(default_factory=dict)
    ddp_net: Optional[torch.nn.Module] = None


@dataclass
class LoopState:
    """Where the loop is: what a last checkpoint saves and a resume restores."""

    epoch: int = 0
    step: int = 0
    elapsed_before_s: float = 0.0
    best: float = float("-inf")
    history: List[dict] = field(default_factory=list)


@dataclass(frozen=True)
class Budget:
    """How long the run lasts: epochs, steps and wall time (None = no limit)."""

    epoch_limit: Optional[int]
    total_steps: Optional[int]
    max_time_s: Optional[float]

    def progress(self, step: int, elapsed_s: float) -> float:
        """Share of the schedule at a step: steps or time, whichever is further along."""
        fracs = [] if self.total_steps is None else [step / self.total_steps]
        if self.max_time_s is not None:
            fracs.append(elapsed_s / self.max_time_s)
        return max(fracs)


def train(
    imagery: Sequence[str],
    labels: str,
    out: str,
    *,
    class_field: Optional[str] = None,
    chip: ChipConfig = TRAIN_CHIP,
    model: Optional[dict] = None,
    config: TrainConfig = TrainConfig(),
    anchors: AnchorsArg = "auto",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    on_epoch: Optional[Callable[[Dict[str, Any]], None]] = None,
    asset: Optional[str] = None,
    distributed: Optional[Distributed] = None,
    allow_local_hrefs: bool = False,
) -> TrainResult:
    """Train a RetinaNet on scenes and vector labels; write the model file.

    Args:
        imagery: scenes, as :func:`geodet.io.sources.resolve_scenes` takes them (paths, globs,
            ``@list.txt``, URLs, GDAL virtual paths, STAC JSON).
        labels: vector labels (any format/CRS geopandas reads).
        out: model file path; the last (resumable) checkpoint goes beside it
            as ``<stem>.last.pt``.
        class_field: the labels' class column.
        chip: chip size/overlap/bands for training (and the default for
            detection); default :data:`geodet.config.TRAIN_CHIP` (256 px).
        model: :class:`ModelConfig` field overrides (``num_classes``,
            ``in_channels`` and, unless given, ``levels``/``anchors`` are filled in).
        config: training loop settings.
        anchors: ``"auto"`` (fit to the labels), ``"coco"`` (torchvision
            defaults) or ``(levels, AnchorConfig)`` (:func:`explicit_anchors`);
            see :func:`resolve_anchors`.
        resume: continue from ``<stem>.last.pt``.
        overwrite: replace an existing ``out``.
        progress: show a progress bar with the running loss (stderr).
        on_epoch: called with each epoch's history record (the CLI prints
            :func:`format_epoch` of it); on rank 0 only.
        asset: the STAC asset key read from STAC inputs (default: the visual/RGB one).
        allow_local_hrefs: follow local hrefs of remote STAC catalogs
            (:func:`geodet.io.sources.resolve_scenes`).
        distributed: this process's rank in a DDP run (see
            :mod:`geodet.learning.distributed`; ``config.batch_size`` is then the global
            batch); default: read from ``torchrun``'s environment, else one process.

    Returns:
        :class:`TrainResult` with the model path and per-epoch history.
    """
    place = distributed or ddp.from_env() or SINGLE
    last_path = _check_outputs(out, resume=resume, overwrite=overwrite)
    imagery = resolve_scenes(imagery, asset=asset, allow_local_hrefs=allow_local_hrefs)
    ddp.setup(place, config.device)
    try:
        return _train_loop(imagery, labels, out, last_path, place, class_field=class_field, chip=chip,
                           model=model, config=config, anchors=anchors, resume=resume, overwrite=overwrite,
                           progress=progress, on_epoch=on_epoch)
    finally:
        ddp.teardown(place)


def _train_loop(imagery, labels, out, last_path, place: Distributed, *, class_field, chip, model, config,
                anchors, resume, overwrite, progress, on_epoch) -> TrainResult:
    """:func:`train` once its outputs are checked and its process group joined."""
    run, state = prepare_run(imagery, labels, class_field=class_field, chip=chip, model=model, config=config,
                             anchors=anchors, resume_from=last_path if resume else None, distributed=place)
    budget = _budget(run, config)
    clock = _Clock(state.elapsed_before_s)
    claimed = resume or overwrite  # may the best-model file at ``out`` be replaced?
    epochs = (range(state.epoch, budget.epoch_limit) if budget.epoch_limit is not None
              else itertools.count(state.epoch))
    lr = _lr_at(0.0, config.lr, config.warmup)
    for epoch in epochs:
        record, lr, stop = train_one_epoch(run, state, epoch, config, budget, clock, lr,
                                           progress=progress and place.is_writer)
        if place.is_writer:  # the others go on training and wait at the next step's collectives
            _end_of_epoch(run, state, record, config, budget, clock)
            if on_epoch is not None:
                on_epoch(record)
            claimed = save_checkpoints(run, state, record, out, last_path, clock, claimed=claimed)
        else:
            state.epoch = record["epoch"]
            state.history.append(record)
        if stop:
            log.info("time limit of %.1f min reached; stopped after %d steps", config.max_time_min, state.step)
            break
    _warn_if_nothing_learned(state.history)
    return TrainResult(model_path=str(out), last_path=last_path, history=state.history,
                       model_config=run.model_config)


def _check_outputs(out: str, *, resume: bool, overwrite: bool) -> str:
    """Refuse to start a run that would clobber ``out`` or resume from nothing; the last checkpoint's path."""
    last_path = last_checkpoint_path(out)
    if resume and not os.path.exists(last_path):
        raise GeodetError(f"cannot resume: {last_path} does not exist.")
    if not resume and os.path.exists(out) and not overwrite:
        raise GeodetError(f"{out} already exists; choose another name, pass --overwrite, or --resume.")
    check_output(out, overwrite=True)  # the folder exists and can be written
    return last_path


def prepare_run(
    imagery: Sequence[str],
    labels: str,
    *,
    class_field: Optional[str],
    chip: ChipConfig,
    model: Optional[dict],
    config: TrainConfig,
    anchors: AnchorsArg,
    resume_from: Optional[str] = None,
    distributed: Distributed = SINGLE,
) -> Tuple[TrainingRun, LoopState]:
    """Set a run up: seed, sources, model config (anchors), datasets and
    sampler, model, optimizer, loader; restored from the last checkpoint
    ``resume_from`` when given. Returns the run and the loop's starting state."""
    device = distributed.device(resolve_device(config.device))
    per_rank_batch = distributed.per_rank_batch(config.batch_size)
    seed_everything(config.seed)
    infos, label_set, sources = load_sources(imagery, labels, class_field, chip)
    checkpoint = None if resume_from is None else load_checkpoint_state(resume_from)
    if checkpoint is None:
        model = _auto_input_scale(choose_backbone(model, len(sources[0].bands)), anchors, sources)
        input_scale = float(model["input_scale"])
    else:
        input_scale = float(checkpoint["model_config"].input_scale)
    chip = chip_for_objects(chip, input_scale, np.concatenate([s.boxes_px for s in sources]))
    boxes_px = boxes_in_chip_frame(sources, chip.size)
    class_names = list(label_set.class_names)
    if checkpoint is not None:
        model_cfg = checkpoint["model_config"]
        if list(checkpoint["class_names"]) != class_names:
            raise GeodetError(
                f"cannot resume: the checkpoint's classes {checkpoint['class_names']} differ from the labels' "
                f"{class_names}."
            )
    else:
        model_cfg = _new_model_config(model, anchors, sources, boxes_px, len(class_names), chip.size)
    _log_anchor_coverage(model_cfg, boxes_px, chip.size)
    train_ds, val_ds, sampler = _datasets(sources, class_names, chip, config)

    net = build_model(model_cfg).to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        net = net.to(memory_format=torch.channels_last)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(_param_groups(net, config), lr=config.lr, weight_decay=config.weight_decay)
    amp_dtype = training_autocast_dtype(device, config.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    ema = _ema_model(net, config.ema_decay)
    run = TrainingRun(
        device=device, model_config=model_cfg, class_names=class_names, train_ds=train_ds, val_ds=val_ds,
        sampler=sampler, loader=None, net=net, eval_net=net if ema is None else ema.module, ema=ema,
        optimizer=optimizer, scaler=scaler, amp_dtype=amp_dtype, params=params,
        meta=_model_meta(model_cfg, class_names, sources, infos, chip), dist=distributed,
        backbone_init=_backbone_init(model_cfg),
    )
    state = LoopState() if checkpoint is None else _restore(run, checkpoint, resume_from)
    run.ddp_net = distributed.wrap(net, device)  # after the restore: DDP starts from rank 0's weights
    run.loader = torch.utils.data.DataLoader(
        train_ds, batch_size=per_rank_batch, sampler=distributed.shard(sampler, config.batch_size), collate_fn=collate,
        num_workers=config.workers, persistent_workers=config.workers > 0, drop_last=False,
        generator=torch.Generator().manual_seed(config.seed),
        pin_memory=device.type == "cuda",
    )
    return run, state


def chip_for_objects(chip: ChipConfig, input_scale: float, boxes_px: Optional[np.ndarray] = None) -> ChipConfig:
    """The training chip of a run, which the model file keeps as detection's default chip.

    Size: upsampling (``input_scale`` > 1) shrinks the default chip size
    (:data:`geodet.config.TRAIN_CHIP`) by that factor, so a chip costs the network what a default
    chip costs at native resolution. Downsampling keeps it: its objects are large and need the
    context, and the cheaper steps buy more of them in a time budget.

    Overlap: stitching reports an object once, whole, only when some chip holds it whole, which
    every object no larger than the overlap is. So the default overlap grows to the objects'
    :data:`~geodet.config.OBJECT_OVERLAP_QUANTILE` side (rounded up to 16 px, at most half the
    chip). A size or overlap other than the default is the user's choice and is kept.

    Args:
        chip: the chip asked for.
        input_scale: the model's ``input_scale``.
        boxes_px: ``[N, 4]`` xyxy scene pixels of the training objects (None: overlap kept).
    """
    if input_scale > 1 and chip.size == TRAIN_CHIP.size:
        chip = dataclasses.replace(chip, size=int(round(chip.size / input_scale)))
    if boxes_px is not None and len(boxes_px) and chip.overlap == TRAIN_CHIP.overlap:
        boxes = np.asarray(boxes_px, np.float64).reshape(-1, 4)
        side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        want = int(math.ceil(float(np.quantile(side, OBJECT_OVERLAP_QUANTILE)) / 16.0) * 16)
        overlap = min(max(chip.overlap, want), chip.size // 2)
        if overlap != chip.overlap:
            log.info("chip overlap %d px (objects up to %.0f px across)", overlap, float(side.max()))
            chip = dataclasses.replace(chip, overlap=overlap)
    return chip


def _param_groups(net, config: TrainConfig) -> List[Dict[str, Any]]:
    """The optimizer's parameter groups: the backbone body's trainable parameters at
    ``config.backbone_lr_scale`` times the learning rate, the rest (FPN, head) at the learning rate."""
    body = {id(p) for p in net.backbone.body.parameters()}
    trainable = [p for p in net.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trainable if id(p) in body], "lr_scale": config.backbone_lr_scale},
        {"params": [p for p in trainable if id(p) not in body], "lr_scale": 1.0},
    ]


def _backbone_init(model_cfg: ModelConfig) -> Dict[str, Any]:
    """What the model file records about the weights the backbone started from."""
    if model_cfg.backbone in EFFICIENTNETS and model_cfg.backbone_weights == IMAGENET:
        return weights_record(model_cfg.backbone)
    if model_cfg.backbone_weights:
        return {"weights": "file", "file": os.path.basename(model_cfg.backbone_weights)}
    return {"weights": "random"}


def choose_backbone(model: Optional[dict], num_bands: int) -> dict:
    """The ``model:`` overrides with ``backbone`` and ``backbone_weights`` set.

    When neither is given: :data:`~geodet.config.PRETRAINED_BACKBONE` with its packaged
    ImageNet weights for imagery of :data:`~geodet.config.PRETRAINED_BANDS` bands, else
    :data:`~geodet.config.SCRATCH_BACKBONE` from random weights. An EfficientNet named
    without weights starts from ImageNet; ``backbone_weights: none`` starts from random weights.
    """
    overrides = dict(model or {})
    weights = overrides.get("backbone_weights")
    if overrides.get("backbone") in (None, "auto"):
        pretrained = weights == IMAGENET or (weights is None and num_bands in PRETRAINED_BANDS)
        overrides["backbone"] = PRETRAINED_BACKBONE if pretrained else SCRATCH_BACKBONE
    if overrides["backbone"] in EFFICIENTNETS:
        overrides.setdefault("backbone_weights", IMAGENET)
    if isinstance(weights, str) and weights.lower() == "none":
        overrides["backbone_weights"] = None
    log.info("backbone %s from %s", overrides["backbone"], overrides.get("backbone_weights") or "random weights")
    return overrides


def _auto_input_scale(model: Optional[dict], anchors: AnchorsArg, sources: Sequence[SceneSource]) -> dict:
    """The ``model:`` overrides with ``input_scale`` set: as given, else chosen for the objects
    when anchors are fitted (``anchors="auto"``; :func:`geodet.modeling.anchors.choose_input_scale`),
    else 1 (anchors given in pixels keep the native scale)."""
    overrides = dict(model or {})
    if "input_scale" in overrides:
        return overrides
    if anchors != "auto" or ("levels" in overrides and "anchors" in overrides):
        overrides["input_scale"] = 1.0
        return overrides
    boxes = np.concatenate([s.boxes_px for s in sources]) if sources else np.zeros((0, 4))
    class_ids = np.concatenate([s.class_ids for s in sources]) if sources else None
    overrides["input_scale"] = choose_input_scale(boxes, class_ids)
    if overrides["input_scale"] != 1.0:
        log.info("chips are resampled %gx inside the network for objects of this size (input_scale; "
                 "set it in a 'model:' table to choose)", overrides["input_scale"])
    return overrides


def _new_model_config(model: Optional[dict], anchors: AnchorsArg, sources: Sequence[SceneSource],
                      boxes_px: np.ndarray, num_classes: int, chip_px: int) -> ModelConfig:
    """The :class:`ModelConfig` of a new run: ``model`` overrides, anchors, classes and bands."""
    overrides = dict(model or {})
    class_ids = np.concatenate([s.class_ids for s in sources])  # per-class anchor fitting
    levels, anchor_cfg, thresholds = resolve_anchors(anchors, overrides, boxes_px, chip_px=chip_px,
                                                     class_ids=class_ids)
    overrides.update(thresholds)
    overrides.update(
        num_classes=num_classes,
        in_channels=len(sources[0].bands),
        levels=tuple(levels),
        anchors=anchor_cfg,
    )
    return from_dict(ModelConfig, overrides)


def _log_anchor_coverage(model_cfg: ModelConfig, boxes_px: np.ndarray, chip_px: int) -> None:
    cov = anchor_coverage(
        np.asarray(boxes_px, np.float64) * model_cfg.input_scale, model_cfg.levels, model_cfg.anchors, iou_thresh=model_cfg.fg_iou_thresh,
        chip_size=int(round(chip_px * model_cfg.input_scale)),
    )
    log.info(
        "anchors: levels %s sizes %s; coverage %.3f; foreground/background IoU %.2f/%.2f",
        model_cfg.levels, model_cfg.anchors.sizes, cov, model_cfg.fg_iou_thresh, model_cfg.bg_iou_thresh,
    )


def _datasets(sources: Sequence[SceneSource], class_names: Sequence[str], chip: ChipConfig,
              config: TrainConfig) -> Tuple[ChipDataset, Optional[ChipDataset], RepeatFactorSampler]:
    """Training and validation chips from spatial blocks, the label warnings, and the
    repeat-factor sampler of the training chips."""
    block_px = choose_block_px(sources, chip.size, config.val_fraction)
    train_blocks, val_blocks = split_blocks(spatial_blocks(sources, block_px), config.val_fraction, config.seed)
    train_ds = ChipDataset(
        sources, train_blocks, chip.size, chip.overlap, min_visible=chip.min_visible,
        negative_ratio=config.negative_ratio, augment=config.augment, augmentation=config.augmentation,
        seed=config.seed,
    )
    val_ds = ChipDataset(
        sources, val_blocks, chip.size, chip.overlap, min_visible=chip.min_visible,
        negative_ratio=1.0, augment=False, seed=config.seed,
    ) if val_blocks else None
    if len(train_ds) == 0:
        raise GeodetError("no training chip holds a label; check the labels, chip size and bands.")
    log.info(
        "training on %d chips (%d with objects), validating on %d; %d blocks of %d px",
        len(train_ds), train_ds.positives, len(val_ds) if val_ds else 0,
        len(train_blocks) + len(val_blocks), block_px,
    )
    n_classes = len(class_names)
    n_labelled = np.bincount(np.concatenate([s.class_ids for s in sources]).astype(np.int64), minlength=n_classes)
    n_val = None
    if val_ds is not None:
        n_val = np.bincount(np.concatenate(val_ds.item_class_ids + [np.zeros(0, np.int64)]), minlength=n_classes)
    for message in label_warnings(class_names, n_labelled, n_val, min_objects=config.min_objects_per_class):
        log.warning(message)
    factors = repeat_factors(train_ds.item_class_ids, config.repeat_thresh)
    sampler = RepeatFactorSampler(factors, config.seed)
    log.info(
        "repeat-factor sampling (t=%g): %.1f chip draws per epoch from %d chips, largest factor %.2f",
        config.repeat_thresh, sampler.expected_len(), len(train_ds), float(factors.max(initial=1.0)),
    )
    return train_ds, val_ds, sampler


def _model_meta(model_cfg: ModelConfig, class_names: Sequence[str], sources: Sequence[SceneSource],
                infos, chip: ChipConfig) -> Dict[str, Any]:
    """What the model file describes besides the weights (detection reads it back)."""
    stored_stats = pool_band_stats([s.stats for s in sources])  # what detection normalises with
    return dict(
        model_config=model_cfg,
        class_names=list(class_names),
        bands=list(sources[0].bands),
        band_mean=list(stored_stats.mean),
        band_std=list(stored_stats.std),
        chip_size=chip.size,
        overlap=chip.overlap,
        gsd=float(np.mean([gsd_metres(i) for i in infos])),
        dtype=infos[0].dtype,
    )


def _restore(run: TrainingRun, checkpoint: dict, path: str) -> LoopState:
    """Load a last checkpoint's weights, optimizer, scaler, EMA and RNG into ``run``; its loop state."""
    run.net.load_state_dict(checkpoint["state_dict"])
    ts = checkpoint["train_state"]
    run.optimizer.load_state_dict(ts["optimizer"])
    if ts.get("scaler"):
        run.scaler.load_state_dict(ts["scaler"])
    if run.ema is not None:
        if ts.get("ema") is None:
            raise GeodetError(f"cannot resume with an EMA of weights: {path} was trained without one.")
        run.ema.load_state_dict(ts["ema"])
    state = LoopState(epoch=int(ts["epoch"]), step=int(ts["step"]), elapsed_before_s=float(ts["elapsed_s"]),
                      best=float(ts["best"]), history=list(ts["history"]))
    set_rng_state(ts["rng"])
    log.info("resumed from %s at epoch %d, step %d", path, state.epoch, state.step)
    return state


def _budget(run: TrainingRun, config: TrainConfig) -> Budget:
    epoch_limit = config.epoch_limit
    steps_per_epoch = math.ceil(run.sampler.expected_len() / config.batch_size)
    return Budget(
        epoch_limit=epoch_limit,
        total_steps=None if epoch_limit is None else max(1, steps_per_epoch * epoch_limit),
        max_time_s=None if config.max_time_min is None else 60.0 * config.max_time_min,
    )


class _Clock:
    """Training time in seconds, counting the time before a resume."""

    def __init__(self, elapsed_before_s: float):
        self.elapsed_before_s, self.t0 = elapsed_before_s, time.monotonic()

    def elapsed(self) -> float:
        return self.elapsed_before_s + time.monotonic() - self.t0


def train_one_epoch(run: TrainingRun, state: LoopState, epoch: int, config: TrainConfig, budget: Budget,
                    clock: _Clock, lr: float, *, progress: bool = False) -> Tuple[Dict[str, Any], float, bool]:
    """One pass over the sampler's draws (0-based ``epoch``), stopping early when
    the time budget is spent. Advances ``state.step``.

    Returns:
        ``(record, lr, stop)``: the epoch's history record (epoch, loss, lr,
        seconds, chips_per_s, chips, complete), the last learning rate, and
        whether the time limit stopped it.
    """
    run.train_ds.set_epoch(epoch)
    run.loader.sampler.set_epoch(epoch)
    run.loader.generator.manual_seed(config.seed + epoch)
    net, device, use_amp = run.ddp_net or run.net, run.device, run.amp_dtype is not None
    shared = run.dist.shared  # rank 0's clock on every rank: one lr and one stopping step
    net.train()
    t_epoch, seen, loss_sum, stop = time.monotonic(), 0, 0.0, False
    total = f"/{budget.epoch_limit}" if budget.epoch_limit is not None else ""
    bar = _progress_bar(progress, len(run.loader), f"epoch {epoch + 1}{total}")
    for images, targets in run.loader:
        lr = _lr_at(budget.progress(state.step, shared(clock.elapsed())), config.lr, config.warmup)
        for g in run.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        images = images.to(device, non_blocking=True)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        with torch.autocast(device.type, dtype=run.amp_dtype, enabled=use_amp):
            losses = net(images, targets)
            loss = sum(losses.values())
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.params, 10.0)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        if run.ema is not None:
            run.ema.update_parameters(net)
        state.step += 1
        seen += len(images)
        loss_sum += float(loss.detach()) * len(images)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", lr=f"{lr:.2e}")
        if budget.max_time_s is not None and shared(clock.elapsed()) >= budget.max_time_s:
            stop = True
            break
    if bar is not None:
        bar.close()
    seconds = time.monotonic() - t_epoch
    loss_sum, seen = run.dist.sum(loss_sum, seen)  # over the ranks: the global batch's figures
    seen = int(seen)
    record = {
        "epoch": epoch + 1,
        "loss": loss_sum / max(seen, 1),
        "lr": lr,
        "seconds": seconds,
        "chips_per_s": seen / max(seconds, 1e-9),
        "chips": seen,
        "complete": not stop,
    }
    return record, lr, stop


def _end_of_epoch(run: TrainingRun, state: LoopState, record: Dict[str, Any], config: TrainConfig,
                  budget: Budget, clock: _Clock) -> None:
    """Validate (when due: :func:`validation_due`), add the budget's progress, warn about weak
    classes, log and keep ``record``."""
    progress = budget_progress(record["epoch"], budget.epoch_limit, clock.elapsed(), budget.max_time_s)
    if run.val_ds is not None and validation_due(state.history, progress, last=not record["complete"]):
        metrics = validate(run.eval_net, run.val_ds, run.device, batch_size=config.batch_size,
                           amp_dtype=run.amp_dtype)
        record.update(
            val_map50=metrics["map_50"], val_map=metrics["map"],
            val_ap50={run.class_names[c]: ap for c, ap in metrics["ap50_per_class"].items()},
        )
    record["progress"] = budget_progress(record["epoch"], budget.epoch_limit, clock.elapsed(), budget.max_time_s)
    _warn_weak_classes(record, state.history, config.weak_class_ap50)
    state.history.append(record)
    log.info("%s", format_epoch(record, budget.epoch_limit))


def validation_due(history: Sequence[dict], progress: float, *, last: bool) -> bool:
    """Is this epoch validated? The last epoch and the first one, then whenever the budget has
    moved on by :data:`~geodet.config.VALIDATION_INTERVAL` since the last validation. Short
    epochs of a time budget would otherwise spend more time validating than training."""
    validated = [h.get("progress", 0.0) for h in history if "val_map50" in h]
    return last or progress >= 1.0 or not validated or progress - validated[-1] >= VALIDATION_INTERVAL - 1e-9


def save_checkpoints(run: TrainingRun, state: LoopState, record: Dict[str, Any], out: str, last_path: str,
                     clock: _Clock, *, claimed: bool) -> bool:
    """Save the best model at ``out`` when this epoch is the best so far, and the
    resumable last checkpoint (weights, optimizer, scaler, EMA, loop state, RNG).

    ``claimed``: may ``out`` be replaced? The first save of a new run never
    replaces a file that appeared meanwhile (another run). Returns the new ``claimed``.
    """
    state.epoch = record["epoch"]
    score = record.get("val_map50") if run.val_ds is not None else -record["loss"]
    if score is not None and score > state.best:
        state.best = score
        save_model(out, run.eval_net, extra={"history": state.history, "backbone_init": run.backbone_init}, overwrite=claimed, **run.meta)
        claimed = True
    train_state = {
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else {},
        "epoch": state.epoch,
        "step": state.step,
        "elapsed_s": clock.elapsed(),
        "best": state.best,
        "history": state.history,
        "rng": get_rng_state(),
        "ema": None if run.ema is None else run.ema.state_dict(),
    }
    save_model(last_path, run.net, extra={"history": state.history, "train_state": train_state, "backbone_init": run.backbone_init}, **run.meta)
    return claimed


def _warn_if_nothing_learned(history: Sequence[dict]) -> None:
    if history and history[-1].get("val_map50") == 0.0:
        log.warning(
            "training ended with validation mAP50 still 0.0 after %d epoch(s): the model finds none of the "
            "validation objects; give it more labelled objects, more epochs or time, or check that the labels "
            "lie on the objects (geodet tile).", len(history),
        )


def _warn_weak_classes(record: Dict[str, Any], history: Sequence[dict], threshold: float) -> None:
    """Warn, once, about classes whose validation AP50 is below ``threshold``
    at the first validation past half the budget."""
    validated = [h for h in history if "val_ap50" in h]
    before = validated[-1].get("progress", 0.0) if validated else 0.0
    if "val_ap50" not in record or not before < 0.5 <= record["progress"]:
        return
    for name, ap in record["val_ap50"].items():
        if ap < threshold:
            log.warning(
                "class %r is not being learned: validation AP50 %.3f at half the training budget (epoch %d); "
                "it needs more labelled objects, or check its labels and anchors.", name, ap, record["epoch"],
            )


@torch.inference_mode()
def validate(net, dataset, device, *, batch_size: int = 8, amp_dtype=None) -> Dict[str, Any]:
    """mAP and AP50 per class label of the model on a dataset's chips
    (COCO definition, pycocotools; see :func:`geodet.core.metrics.coco_map`)."""
    net.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    preds, truths = [], []
    for images, targets in loader:
        images = images.to(device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = net(images)
        for o, t in zip(out, targets):
            preds.append({k: v.float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy() for k, v in o.items()})
            truths.append({k: v.numpy() for k, v in t.items()})
    net.train()
    return coco_map(preds, truths)


def _ema_model(net, decay: Optional[float]):
    """An exponential moving average of ``net``'s weights and buffers, or None when ``decay`` is None."""
    if decay is None:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _progress_bar(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    return tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True)

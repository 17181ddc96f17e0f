"""``geodet train``: scenes + vector labels -> model file."""

from __future__ import annotations

import click

from geodet.config import (
    BACKBONES, DEFAULT_EPOCHS, PRETRAINED_BACKBONE, SCRATCH_BACKBONE, TRAIN_CHIP, TrainConfig,
)
from geodet_cli.options import (
    SCENES_HELP,
    allow_local_hrefs_option,
    asset_option,
    bands_option,
    class_field_option,
    config_option,
    device_option,
    overwrite_option,
    parse_floats,
    user_errors,
)


#: TrainConfig's defaults, shown and used by the flags (one home for each default).
_DEFAULTS = TrainConfig()


class ShowEpoch:
    """Prints each epoch's line (a class, so that spawned DDP processes can take it)."""

    def __init__(self, epoch_limit):
        self.epoch_limit = epoch_limit

    def __call__(self, record):
        from geodet.learning.training import format_epoch

        click.echo(format_epoch(record, self.epoch_limit), err=True)


@click.command("train")
@config_option
@click.option("--imagery", multiple=True, required=True, type=click.Path(dir_okay=False),
              help="Training scene; repeat for several. " + SCENES_HELP)
@asset_option
@allow_local_hrefs_option
@click.option("--labels", required=True, type=click.Path(dir_okay=False), help="Vector labels (any CRS).")
@class_field_option
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False),
              help="Model file to write (the resumable checkpoint goes beside it as NAME.last.pt).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help=f"Epochs to train [default: {DEFAULT_EPOCHS}, or until --max-time is spent when it is given].")
@click.option("--batch-size", type=click.IntRange(min=1), default=_DEFAULTS.batch_size, show_default=True,
              help="Chips per optimisation step, over all --devices (the global batch; a multiple of --devices).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=_DEFAULTS.lr, show_default=True,
              help="Peak learning rate (AdamW, warm-up then cosine).")
@click.option("--backbone-lr-scale", type=click.FloatRange(min=0, min_open=True), default=_DEFAULTS.backbone_lr_scale,
              show_default=True, help="The backbone's learning rate is --lr times this.")
@click.option("--chip-size", type=click.IntRange(min=8), default=TRAIN_CHIP.size, show_default=True,
              help="Training chip side (px).")
@click.option("--overlap", type=click.IntRange(min=0), default=TRAIN_CHIP.overlap, show_default=True,
              help="Chip overlap (px).")
@bands_option
@click.option("--backbone", type=click.Choice(("auto",) + BACKBONES), default="auto", show_default=True,
              help=f"Network under the pyramid; auto: {PRETRAINED_BACKBONE} with ImageNet weights for 3-band "
                   f"imagery, {SCRATCH_BACKBONE} from random weights otherwise.")
@click.option("--backbone-weights", default=None,
              help="Where the backbone starts from: imagenet (the weights a package installs; the default for "
                   f"{PRETRAINED_BACKBONE}), none (random weights), or a local torchvision ResNet state dict "
                   "(never downloaded).")
@device_option
@click.option("--devices", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train with DDP in this many processes on this machine (one GPU each with --device cuda, "
                   "else CPU processes sharing the cores); or start under torchrun instead.")
@click.option("--val-fraction", type=click.FloatRange(0, 0.9), default=_DEFAULTS.val_fraction, show_default=True,
              help="Share of spatial blocks held out for validation.")
@click.option("--negative-ratio", type=click.FloatRange(min=0), default=_DEFAULTS.negative_ratio, show_default=True,
              help="Chips without objects kept per chip with objects.")
@click.option("--repeat-thresh", type=click.FloatRange(min=0), default=_DEFAULTS.repeat_thresh, show_default=True,
              help="Repeat-factor sampling: chips of a class found on fewer than this share of the training "
                   "chips are drawn more often (0 = off).")
@click.option("--seed", type=click.IntRange(min=0), default=_DEFAULTS.seed, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint beside -o.")
@click.option("--workers", type=click.IntRange(min=0), default=_DEFAULTS.workers, show_default=True,
              help="Data loader processes.")
@click.option("--max-time", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Train for this many minutes (the learning-rate schedule follows the clock unless --epochs "
                   "is given, then whichever ends first), keeping the best and last checkpoints.")
@click.option("--anchors", type=click.Choice(["auto", "coco"]), default="auto", show_default=True,
              help="Fit anchors to the labels (auto) or use torchvision's COCO defaults.")
@click.option("--anchor-sizes", default=None, help="Explicit anchor size per pyramid level, e.g. 8,16,32.")
@click.option("--anchor-scales", default=None, help="Explicit anchor scales, e.g. 1,1.26,1.59.")
@click.option("--anchor-ratios", default=None, help="Explicit aspect ratios (h/w), e.g. 0.5,1,2.")
@click.option("--levels", default=None, help="Pyramid levels, e.g. 2,3,4 (default: fitted, or 3..7).")
@click.option("--point-size", type=click.FloatRange(0, min_open=True), default=TRAIN_CHIP.point_size_m,
              show_default=True,
              help="Side in metres of the box drawn around a point label.")
@click.option("--ema-decay", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=_DEFAULTS.ema_decay,
              help="Keep an exponential moving average of the weights (e.g. 0.999 per step); it is validated "
                   "and saved as the model.")
@click.option("--no-augment", is_flag=True,
              help="Turn off augmentation (dihedral flips/rotations, scale, colour, blur, noise, chip shift).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@overwrite_option
def train_cmd(imagery, asset, allow_local_hrefs, labels, class_field, out, epochs, batch_size, lr, backbone_lr_scale,
              chip_size, overlap, bands, backbone,
              backbone_weights, device, devices, val_fraction, negative_ratio, repeat_thresh, seed, resume, workers,
              max_time, anchors,
              anchor_sizes, anchor_scales, anchor_ratios, levels, point_size, ema_decay, no_augment, quiet, overwrite):
    """Train a RetinaNet on GeoTIFFs and vector labels.

    Anchors are fitted to the objects by default; the model file carries its
    config, class names, bands, band statistics, chip size and pixel size.
    Each epoch prints its loss and validation mAP50 (with AP50 per class when
    there are several classes).

    \b
    Examples:
      geodet train --imagery sample_data/suburb.tif --labels sample_data/pools.geojson -o pools.pt
      geodet train --imagery a.tif --imagery b.tif --labels cars.gpkg --class-field type \\
          --max-time 60 --device cuda -o cars.pt
      geodet train --imagery @scenes.txt --imagery 'more/*.tif' --labels cars.gpkg -o cars.pt
      geodet train --config train.yaml -o model.pt
      geodet train --imagery a.tif --labels cars.gpkg --device cuda --devices 4 --batch-size 32 -o cars.pt
      torchrun --nproc-per-node 4 -m geodet_cli.main train --imagery a.tif --labels cars.gpkg -o cars.pt
    """
    ctx = click.get_current_context()
    with user_errors():
        from geodet.config import ChipConfig
        from geodet.errors import ConfigError
        from geodet.learning.training import explicit_anchors, train

        model = dict((ctx.default_map or {}).get("_model_overrides", {}))
        if backbone != "auto" or "backbone" not in model:
            model["backbone"] = backbone
        if backbone_weights:
            model["backbone_weights"] = backbone_weights
        try:
            explicit = explicit_anchors(
                sizes=parse_floats(anchor_sizes, "--anchor-sizes"),
                scales=parse_floats(anchor_scales, "--anchor-scales"),
                ratios=parse_floats(anchor_ratios, "--anchor-ratios"),
                levels=parse_floats(levels, "--levels"),
            )
        except ConfigError as exc:  # a combination of flags: a usage error, as for any flag
            raise click.BadParameter(str(exc)) from None
        chip = ChipConfig(size=chip_size, overlap=overlap, bands=bands, point_size_m=point_size)
        cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, backbone_lr_scale=backbone_lr_scale, val_fraction=val_fraction,
                          negative_ratio=negative_ratio, repeat_thresh=repeat_thresh, seed=seed, workers=workers,
                          max_time_min=max_time, device=device, augment=not no_augment, ema_decay=ema_decay)

        kwargs = dict(class_field=class_field, chip=chip, model=model, config=cfg, anchors=explicit or anchors,
                      resume=resume, overwrite=overwrite, progress=not quiet,
                      on_epoch=None if quiet else ShowEpoch(cfg.epoch_limit), asset=asset,
                      allow_local_hrefs=allow_local_hrefs)
        if devices > 1:
            from geodet.learning.distributed import launch

            result = launch(devices, train, imagery=list(imagery), labels=labels, out=out, **kwargs)
        else:
            result = train(list(imagery), labels, out, **kwargs)
    last = result.history[-1] if result.history else {}
    summary = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if isinstance(v, float))
    click.echo(f"wrote {result.model_path} (last checkpoint {result.last_path}); "
               f"{len(result.history)} epoch(s); last epoch: {summary}")

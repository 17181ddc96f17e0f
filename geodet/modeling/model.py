"""The RetinaNet of geodet, assembled from torchvision parts by :func:`build_model`.

Differences from ``torchvision.models.detection.retinanet_resnet50_fpn``:

* no internal resize and no internal normalisation: chips arrive normalised
  (``float32 [B, C, H, W]``, any band count) at native resolution and are only
  zero-padded to a multiple of 32 px; output boxes are in input chip pixels;
* any ResNet depth or EfficientNet-Lite0 (ImageNet weights from a package,
  :mod:`geodet.modeling.backbones`), any consecutive subset of pyramid levels P2..P7
  (P2..P5 from the backbone's stages at strides 4..32, P6/P7 from stride-2
  convolutions on P5);
* anchors on the true stride ``2 ** level`` (see :mod:`geodet.modeling.anchors`);
* training anchors assigned by ATSS (default, :mod:`geodet.modeling.assign`) or by
  torchvision's fixed-IoU ``Matcher`` (``assigner="maxiou"``);
* focal loss alpha / gamma, head depth and prior from :class:`ModelConfig`;
  losses are normalised by the number of foreground anchors of the batch;
* head outputs, anchors, losses and box decoding stay ``float32`` under autocast.
"""

from __future__ import annotations

import copy
import logging
import math
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.models import resnet18, resnet34, resnet50, resnet101
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection import RetinaNet
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d, generalized_box_iou_loss, sigmoid_focal_loss
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock
from torchvision.ops.misc import Conv2dNormActivation

from geodet.config import RESNET_DEPTHS, ModelConfig
from geodet.errors import GeodetError
from geodet.modeling.anchors import PAD_MULTIPLE_PX, make_anchor_generator
from geodet.modeling.assign import atss_matched_idxs
from geodet.modeling.backbones import EFFICIENTNETS, adapt_stem, build_efficientnet_body, efficientnet_channels
from geodet.modeling.safe_load import load_plain

log = logging.getLogger(__name__)

_RESNETS = {18: resnet18, 34: resnet34, 50: resnet50, 101: resnet101}
#: Output channels of ResNet stages layer1..layer4 (C2..C5).
_STAGE_CHANNELS = {
    18: (64, 128, 256, 512),
    34: (64, 128, 256, 512),
    50: (256, 512, 1024, 2048),
    101: (256, 512, 1024, 2048),
}


# --------------------------------------------------------------------------- input


class ChipBatcher(nn.Module):
    """Stacks chips into one zero-padded batch; no resize, no normalisation.

    Replaces torchvision's ``GeneralizedRCNNTransform`` (which resizes to
    800 px and normalises with ImageNet statistics).

    Args:
        in_channels: expected number of bands.
        size_divisible: the batch is zero-padded at the bottom/right to a
            multiple of this many pixels.
    """

    def __init__(self, in_channels: int, size_divisible: int = PAD_MULTIPLE_PX, input_scale: float = 1.0) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.size_divisible = size_divisible
        self.input_scale = float(input_scale)

    def forward(
        self, images: Union[Tensor, Sequence[Tensor]], targets: Optional[List[Dict[str, Tensor]]] = None
    ) -> Tuple[ImageList, Optional[List[Dict[str, Tensor]]]]:
        """
        Args:
            images: ``[B, C, H, W]`` tensor or a list of ``[C, H, W]`` tensors.
            targets: passed through unchanged (boxes stay in chip pixels).

        Returns:
            ``ImageList`` with the padded batch ``[B, C, H', W']`` and the
            unpadded ``(H, W)`` of every chip, and the targets.
        """
        channels = {int(img.shape[-3]) for img in images}
        if channels != {self.in_channels}:
            raise GeodetError(
                f"the model expects {self.in_channels}-band chips but got {sorted(channels)} band(s)"
            )
        s = self.input_scale
        if s != 1.0:
            images = [
                F.interpolate(img[None], scale_factor=s, mode="bilinear", align_corners=False)[0] for img in images
            ]
            if targets is not None:
                targets = [dict(t, boxes=t["boxes"] * s) for t in targets]
        sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        d = self.size_divisible
        height = int(math.ceil(max(h for h, _ in sizes) / d) * d)
        width = int(math.ceil(max(w for _, w in sizes) / d) * d)
        if isinstance(images, Tensor) and images.dim() == 4:
            batch = images
            if batch.shape[-2:] != (height, width):
                batch = F.pad(batch, (0, width - batch.shape[-1], 0, height - batch.shape[-2]))
        else:
            batch = images[0].new_zeros((len(images), self.in_channels, height, width))
            for img, out in zip(images, batch):
                out[:, : img.shape[-2], : img.shape[-1]].copy_(img)
        return ImageList(batch, sizes), targets

    def postprocess(
        self,
        result: List[Dict[str, Tensor]],
        image_shapes: List[Tuple[int, int]],
        original_image_sizes: List[Tuple[int, int]],
    ) -> List[Dict[str, Tensor]]:
        """Boxes back to input chip pixels (divided by ``input_scale``)."""
        if self.input_scale == 1.0:
            return result
        return [dict(r, boxes=r["boxes"] / self.input_scale) for r in result]


# --------------------------------------------------------------------------- backbone


class ExtraLevels(ExtraFPNBlock):
    """P6, P7, ...: stride-2 3x3 convolutions on P5 (ReLU between them).

    Args:
        channels: channels of the pyramid.
        num_levels: how many extra levels after P5.
    """

    def __init__(self, channels: int, num_levels: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, stride=2, padding=1) for _ in range(num_levels))
        for conv in self.convs:
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)

    def forward(self, results: List[Tensor], x: List[Tensor], names: List[str]) -> Tuple[List[Tensor], List[str]]:
        p = results[-1]  # P5
        for i, conv in enumerate(self.convs):
            p = conv(p if i == 0 else F.relu(p))
            results.append(p)
            names.append(f"p{6 + i}")
        return results, names


class ResNetFPN(nn.Module):
    """Backbone stages + FPN returning exactly the configured pyramid levels.

    Args:
        body: module returning C-levels named ``p2``..``p5`` (a ResNet's
            ``IntermediateLayerGetter`` or an :class:`~geodet.modeling.backbones.EfficientNetBody`).
        fpn: feature pyramid over those C-levels (plus extra levels).
        levels: pyramid levels to return, lowest first.
        out_channels: channels of every returned level.

    Returns (forward):
        ``OrderedDict`` ``{"p<level>": Tensor[B, out_channels, H / 2**level, W / 2**level]}``.
    """

    def __init__(self, body: nn.Module, fpn: nn.Module, levels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.level_names = [f"p{lv}" for lv in levels]
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        features = self.fpn(self.body(x))
        return OrderedDict((name, features[name]) for name in self.level_names)


def _load_backbone_weights(net: nn.Module, path: str, depth: int, in_channels: int) -> None:
    """Load a torchvision ResNet state dict from ``path`` into ``net`` (fc ignored)."""
    state = load_plain(path, "backbone weights file")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise GeodetError(f"backbone weights file {path} does not hold a state dict of tensors")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if "conv1.weight" in state and state["conv1.weight"].dim() == 4:
        state["conv1.weight"] = adapt_stem(state["conv1.weight"], in_channels)
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise GeodetError(f"backbone weights file {path} does not fit a ResNet-{depth}: tensor shapes differ") from exc
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    if missing or result.unexpected_keys:
        raise GeodetError(
            f"backbone weights file {path} is not a torchvision ResNet-{depth} state dict "
            f"({len(missing)} missing and {len(result.unexpected_keys)} unexpected keys)"
        )
    log.info("loaded backbone weights from %s", path)


def _freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` inside ``module`` by a ``FrozenBatchNorm2d`` copy."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        frozen.weight.copy_(module.weight.detach())
        frozen.bias.copy_(module.bias.detach())
        frozen.running_mean.copy_(module.running_mean)
        frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        setattr(module, name, _freeze_batchnorm(child))
    return module


def _stages(net: nn.Module) -> List[List[nn.Module]]:
    """Freezable stages of a torchvision ResNet: stem, layer1 .. layer4."""
    return [[net.conv1, net.bn1], [net.layer1], [net.layer2], [net.layer3], [net.layer4]]


def _resnet_body(cfg: ModelConfig, c_levels: Sequence[int], *, load_backbone_weights: bool) -> nn.Module:
    """A torchvision ResNet's stages returning C-levels ``c_levels`` as ``p<level>``."""
    depth = RESNET_DEPTHS[cfg.backbone]
    pretrained = cfg.backbone_weights is not None
    norm_layer = FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    net = _RESNETS[depth](weights=None, norm_layer=norm_layer)
    if cfg.in_channels != 3:
        net.conv1 = nn.Conv2d(cfg.in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    if pretrained and load_backbone_weights:
        _load_backbone_weights(net, cfg.backbone_weights, depth, cfg.in_channels)

    for stage in _stages(net)[: cfg.frozen_stages]:
        for module in stage:
            module.requires_grad_(False)
    for name in ("bn1", "layer1", "layer2", "layer3", "layer4")[: cfg.frozen_stages]:
        setattr(net, name, _freeze_batchnorm(getattr(net, name)))
    return IntermediateLayerGetter(net, return_layers={f"layer{lv - 1}": f"p{lv}" for lv in c_levels})


def build_backbone(cfg: ModelConfig, *, load_backbone_weights: bool = True) -> ResNetFPN:
    """Backbone body + FPN for ``cfg`` (backbone, levels, bands, frozen stages, weights).

    ResNets: with ``cfg.backbone_weights`` (a local file) every BatchNorm is a
    ``FrozenBatchNorm2d`` (as torchvision does for pretrained detection
    backbones); BatchNorms of frozen stages are always frozen. EfficientNet:
    see :func:`geodet.modeling.backbones.build_efficientnet_body`.
    EfficientNet stages feed the FPN down to stride 32 whatever the head's levels.
    ``load_backbone_weights=False`` builds the same architecture without
    reading the weights (used when a geodet model file supplies all weights).
    """
    levels = tuple(cfg.levels)
    low, high = levels[0], levels[-1]
    c_levels = list(range(min(low, 5), min(high, 5) + 1))  # pyramid levels taken from backbone stages
    if cfg.backbone in EFFICIENTNETS:
        # every stage down to stride 32 feeds the FPN, whose top-down path carries the pretrained
        # deep features to the levels the head uses (P2-P3 alone would see 5 blocks of the network)
        c_levels = list(range(min(low, 5), 6))
        body = build_efficientnet_body(cfg, c_levels, load_weights=load_backbone_weights)
        channels = efficientnet_channels(cfg.backbone, c_levels)
    else:
        body = _resnet_body(cfg, c_levels, load_backbone_weights=load_backbone_weights)
        channels = [_STAGE_CHANNELS[RESNET_DEPTHS[cfg.backbone]][lv - 2] for lv in c_levels]
    extra = ExtraLevels(cfg.fpn_channels, high - 5) if high > 5 else None
    fpn = FeaturePyramidNetwork(channels, cfg.fpn_channels, extra_blocks=extra)
    return ResNetFPN(body, fpn, levels, cfg.fpn_channels)


# --------------------------------------------------------------------------- head


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm of a head tower: groups of 4 channels, at most 32 groups (as FCOS / RetinaNet v2)."""
    return nn.GroupNorm(max(1, min(32, channels // 4)), channels)


def _conv_tower(channels: int, num_convs: int, norm: str = "none") -> nn.Sequential:
    """``num_convs`` 3x3 conv (+ GroupNorm when ``norm == "group"``) + ReLU layers."""
    norm_layer = _group_norm if norm == "group" else None
    tower = nn.Sequential(*(Conv2dNormActivation(channels, channels, norm_layer=norm_layer) for _ in range(num_convs)))
    for layer in tower.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, std=0.01)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return tower


def _flatten_per_level(outputs: List[Tensor], width: int) -> Tensor:
    """``[B, A * width, H, W]`` per level -> ``float32 [B, sum_l H*W*A, width]``."""
    flat = []
    for out in outputs:
        b, _, h, w = out.shape
        flat.append(out.view(b, -1, width, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, width))
    return torch.cat(flat, dim=1).float()


class RetinaHead(nn.Module):
    """Classification and box-regression towers shared over pyramid levels.

    Args:
        in_channels: channels of every pyramid level.
        num_anchors: anchors per location A.
        num_classes: object classes K (no background class).
        num_convs: 3x3 conv + ReLU layers in each tower.
        norm: ``"none"`` or ``"group"`` (GroupNorm after each tower conv).
        prior_prob: initial foreground probability of every anchor.
        focal_alpha / focal_gamma: sigmoid focal loss parameters.
    """

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        *,
        num_convs: int = 4,
        prior_prob: float = 0.01,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        box_loss: str = "l1",
        norm: str = "none",
    ) -> None:
        super().__init__()
        self.box_loss = box_loss
        self.num_anchors = num_anchors
        self.num_classes = num_classes
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.cls_tower = _conv_tower(in_channels, num_convs, norm)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors * num_classes, 3, padding=1)
        nn.init.normal_(self.cls_logits.weight, std=0.01)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))
        self.box_tower = _conv_tower(in_channels, num_convs, norm)
        self.bbox_reg = nn.Conv2d(in_channels, num_anchors * 4, 3, padding=1)
        nn.init.normal_(self.bbox_reg.weight, std=0.01)
        nn.init.zeros_(self.bbox_reg.bias)
        self.box_coder = det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))

    def forward(self, features: List[Tensor]) -> Dict[str, Tensor]:
        """
        Args:
            features: one ``[B, C, H_l, W_l]`` tensor per level.

        Returns:
            ``cls_logits`` ``float32 [B, M, K]`` and ``bbox_regression``
            ``float32 [B, M, 4]`` (box deltas), ``M = sum_l H_l * W_l * A``.
        """
        logits = [self.cls_logits(self.cls_tower(f)) for f in features]
        deltas = [self.bbox_reg(self.box_tower(f)) for f in features]
        return {
            "cls_logits": _flatten_per_level(logits, self.num_classes),
            "bbox_regression": _flatten_per_level(deltas, 4),
        }

    def compute_loss(
        self,
        targets: List[Dict[str, Tensor]],
        head_outputs: Dict[str, Tensor],
        anchors: List[Tensor],
        matched_idxs: List[Tensor],
    ) -> Dict[str, Tensor]:
        """Focal loss and box loss (L1 on deltas, or GIoU on decoded boxes),
        each summed over the batch and divided by the batch's number of
        foreground anchors (at least 1).

        Args:
            targets: per chip ``boxes`` ``[N, 4]`` xyxy px and ``labels`` ``[N]`` 0-based.
            head_outputs: see :meth:`forward`.
            anchors: per chip ``[M, 4]`` xyxy px.
            matched_idxs: per chip ``[M]``: matched box index, -1 background,
                -2 ignored (between the IoU thresholds; never with ATSS).
        """
        cls_logits = head_outputs["cls_logits"]
        bbox_regression = head_outputs["bbox_regression"]
        logits_valid, targets_valid, deltas_fg, anchors_fg, boxes_fg = [], [], [], [], []
        num_foreground = 0
        for target, logits, deltas, anchors_per_chip, matched in zip(
            targets, cls_logits, bbox_regression, anchors, matched_idxs
        ):
            foreground = matched >= 0
            num_foreground += int(foreground.sum())
            gt_classes = torch.zeros_like(logits)
            fg_idx = torch.where(foreground)[0]
            gt_idx = matched[fg_idx]
            gt_classes[fg_idx, target["labels"][gt_idx]] = 1.0
            valid = matched != det_utils.Matcher.BETWEEN_THRESHOLDS
            logits_valid.append(logits[valid])
            targets_valid.append(gt_classes[valid])
            deltas_fg.append(deltas[fg_idx])
            anchors_fg.append(anchors_per_chip[fg_idx])
            boxes_fg.append(target["boxes"][gt_idx].float())
        normaliser = _foreground_normaliser(num_foreground, cls_logits.device)
        classification = sigmoid_focal_loss(
            torch.cat(logits_valid),
            torch.cat(targets_valid),
            alpha=self.focal_alpha,
            gamma=self.focal_gamma,
            reduction="sum",
        )
        deltas_fg, anchors_fg, boxes_fg = torch.cat(deltas_fg), torch.cat(anchors_fg), torch.cat(boxes_fg)
        if self.box_loss == "giou":  # decoded boxes against the target boxes
            predicted = self.box_coder.decode_single(deltas_fg, anchors_fg)
            regression = generalized_box_iou_loss(predicted, boxes_fg, reduction="sum")
        else:  # deltas against the target boxes encoded on their anchors
            regression = F.l1_loss(deltas_fg, self.box_coder.encode_single(boxes_fg, anchors_fg), reduction="sum")
        return {"classification": classification / normaliser, "bbox_regression": regression / normaliser}


def _foreground_normaliser(num_foreground: int, device: torch.device) -> float:
    """What a batch's summed losses are divided by: its foreground anchors (at least 1).

    Under DDP (:mod:`geodet.learning.distributed`) the count is the global batch's, over
    all ranks, divided by the number of ranks, since DDP averages the ranks'
    gradients: N ranks then give the gradient of one process with the global batch.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return float(max(1, num_foreground))
    total = torch.tensor([float(num_foreground)], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(total)
    return max(1.0, float(total.item())) / torch.distributed.get_world_size()


# --------------------------------------------------------------------------- model


class GeodetRetinaNet(RetinaNet):
    """torchvision ``RetinaNet`` at native chip resolution.

    ``model(images, targets)`` in train mode returns
    ``{"classification": loss, "bbox_regression": loss}``; in eval mode
    ``model(images)`` returns one ``{"boxes": [N, 4] xyxy chip px,
    "scores": [N], "labels": [N] int64 0-based}`` per chip.

    Args:
        cfg: the model's configuration (kept as ``self.config``).
        backbone: module returning the pyramid levels (``out_channels`` attribute).
        anchor_generator: anchors for those levels.
        head: classification / regression head.
    """

    def __init__(self, cfg: ModelConfig, backbone: nn.Module, anchor_generator: nn.Module, head: nn.Module) -> None:
        super().__init__(
            backbone,
            cfg.num_classes,
            anchor_generator=anchor_generator,
            head=head,
            score_thresh=cfg.chip_score_threshold,
            nms_thresh=cfg.chip_nms_iou,
            detections_per_img=cfg.detections_per_chip,
            fg_iou_thresh=cfg.fg_iou_thresh,
            bg_iou_thresh=cfg.bg_iou_thresh,
            topk_candidates=cfg.topk_candidates,
        )
        self.transform = ChipBatcher(cfg.in_channels, PAD_MULTIPLE_PX, cfg.input_scale)
        self.config = cfg

    def compute_loss(
        self, targets: List[Dict[str, Tensor]], head_outputs: Dict[str, Tensor], anchors: List[Tensor]
    ) -> Dict[str, Tensor]:
        """Losses of a batch with anchors assigned by ``config.assigner``.

        ``"maxiou"`` is torchvision's ``Matcher`` (``fg_iou_thresh`` /
        ``bg_iou_thresh``); ``"atss"`` is :func:`geodet.modeling.assign.atss_matched_idxs`
        on the per-level anchor counts of this forward pass.

        Args:
            targets: per chip ``boxes`` ``[N, 4]`` xyxy px and ``labels`` ``[N]``.
            head_outputs: see :meth:`RetinaHead.forward`.
            anchors: per chip ``[M, 4]`` xyxy px, level-major.
        """
        if self.config.assigner == "maxiou":
            return super().compute_loss(targets, head_outputs, anchors)
        per_level = self.anchor_generator.num_anchors_per_level
        matched_idxs = [
            atss_matched_idxs(target["boxes"], anchors_per_chip, per_level, self.config.atss_topk)
            for target, anchors_per_chip in zip(targets, anchors)
        ]
        return self.head.compute_loss(targets, head_outputs, anchors, matched_idxs)


def build_model(cfg: ModelConfig, *, load_backbone_weights: bool = True) -> GeodetRetinaNet:
    """A RetinaNet for ``cfg`` built from torchvision parts.

    Args:
        cfg: every knob of the model.
        load_backbone_weights: read ``cfg.backbone_weights`` (when set); False
            builds the identical architecture without touching the file.

    Raises:
        GeodetError: a missing or incompatible backbone weights file.
    """
    backbone = build_backbone(cfg, load_backbone_weights=load_backbone_weights)
    anchor_generator = make_anchor_generator(cfg)
    head = RetinaHead(
        cfg.fpn_channels,
        cfg.anchors.anchors_per_location,
        cfg.num_classes,
        num_convs=cfg.head_convs,
        prior_prob=cfg.prior_prob,
        focal_alpha=cfg.focal_alpha,
        focal_gamma=cfg.focal_gamma,
        box_loss=cfg.box_loss,
        norm=cfg.head_norm,
    )
    return GeodetRetinaNet(cfg, backbone, anchor_generator, head)


# --------------------------------------------------------------------------- inference


def _fuse_pair(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    """A copy of ``conv`` (same class, e.g. timm's ``Conv2dSame``) whose weights fold in the
    following (frozen or eval) batch norm; ``conv`` itself is left unchanged."""
    weight, bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
    )
    fused = copy.deepcopy(conv)
    fused.weight = weight
    fused.bias = bias
    fused.requires_grad_(False)
    return fused


def _is_batchnorm(module: nn.Module) -> bool:
    """A 2-d batch norm with running statistics: torch's, torchvision's frozen one, or timm's
    batch norm + activation modules (``BatchNormAct2d``, ``FrozenBatchNormAct2d``)."""
    if isinstance(module, (nn.BatchNorm2d, FrozenBatchNorm2d)):
        return True
    return type(module).__name__ in ("BatchNormAct2d", "FrozenBatchNormAct2d")


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every batch norm that directly follows a convolution into it (in place).

    A pair is a convolution and a batch norm registered one after the other in
    the same parent: ResNet's ``convN`` / ``bnN`` (stem and blocks),
    ``Sequential(conv, bn)`` (downsample shortcuts) and timm's EfficientNet
    blocks (``conv_pw`` / ``bn1``, ...). The batch norm is replaced by
    ``nn.Identity``, or by its activation for timm's batch norm + activation
    modules. Only for inference: the module must be in eval mode (batch norms
    use their running statistics).

    Returns:
        the number of batch norms folded.
    """
    if module.training:
        raise ValueError("fold_batchnorm needs a model in eval mode")
    folded = 0
    for parent in list(module.modules()):
        children = list(parent.named_children())
        for (conv_name, conv), (norm_name, norm) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and _is_batchnorm(norm):
                setattr(parent, conv_name, _fuse_pair(conv, norm))
                setattr(parent, norm_name, getattr(norm, "act", None) or nn.Identity())
                folded += 1
    return folded


def prepare_for_inference(net: nn.Module, device: torch.device) -> nn.Module:
    """An inference-only model: eval mode, batch norms folded, channels_last, on ``device``.

    Folding removes a memory pass per convolution and channels_last is the
    faster convolution layout on both CPU (oneDNN) and CUDA; outputs match the
    unfolded model up to float rounding (see bench/detect_throughput.py for
    the figures).
    """
    net = net.to(device).eval()
    fold_batchnorm(net)
    return net.to(memory_format=torch.channels_last)

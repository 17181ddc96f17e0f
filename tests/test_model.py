"""Tests of geodet.modeling.model: the RetinaNet at native chip resolution."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d, box_iou

from geodet.modeling.anchors import anchor_count, feature_grid_size, make_anchor_generator
from geodet.config import AnchorConfig, ModelConfig
from geodet.errors import GeodetError
from geodet.modeling.model import build_model, fold_batchnorm, prepare_for_inference

P2_P4 = dict(levels=(2, 3, 4), anchors=AnchorConfig(sizes=(8.0, 16.0, 32.0)))
P3_P5 = dict(levels=(3, 4, 5), anchors=AnchorConfig(sizes=(8.0, 16.0, 32.0)))


def tiny_config(**overrides) -> ModelConfig:
    """resnet18, 32 FPN channels, 2 head convs, P2-P4 anchors 8-32 px (plus overrides)."""
    settings = dict(backbone="resnet18", fpn_channels=32, head_convs=2, **P2_P4)
    settings.update(overrides)
    return ModelConfig(**settings)


def two_targets() -> list:
    """One chip with two boxes, one without any."""
    return [
        {"boxes": torch.tensor([[10.0, 12.0, 22.0, 24.0], [36.0, 30.0, 52.0, 46.0]]), "labels": torch.tensor([0, 0])},
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)},
    ]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_train_forward_backward_with_empty_and_non_empty_targets():
    model = build_model(tiny_config()).train()
    losses = model(torch.randn(2, 3, 64, 64), two_targets())
    assert set(losses) == {"classification", "bbox_regression"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert model.head.cls_logits.weight.grad is not None
    assert model.backbone.body.conv1.weight.grad.abs().sum() > 0


def test_batch_without_any_box():
    model = build_model(tiny_config()).train()
    targets = [two_targets()[1]] * 2
    losses = model(torch.randn(2, 3, 64, 64), targets)
    assert losses["bbox_regression"] == 0
    assert losses["classification"] > 0
    sum(losses.values()).backward()


@pytest.mark.parametrize("bands", [1, 4])
def test_any_band_count(bands):
    model = build_model(tiny_config(in_channels=bands)).train()
    losses = model(torch.randn(2, bands, 64, 64), two_targets())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        (out,) = model(torch.randn(1, bands, 64, 64))
    assert set(out) == {"boxes", "scores", "labels"}


def test_wrong_band_count_is_a_clear_error():
    model = build_model(tiny_config(in_channels=4)).eval()
    with pytest.raises(GeodetError, match="expects 4-band chips"):
        model(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize(
    "levels, sizes",
    [
        ((2, 3, 4), (8.0, 16.0, 32.0)),
        ((3, 4, 5, 6, 7), (32.0, 64.0, 128.0, 256.0, 512.0)),
        ((5, 6, 7), (8.0, 9.0, 10.0)),
    ],
)
def test_levels_and_anchor_counts(levels, sizes):
    anchors = AnchorConfig(sizes=sizes, scales=(1.0, 1.5), ratios=(0.5, 1.0, 2.0))
    model = build_model(tiny_config(levels=levels, anchors=anchors))
    x = torch.randn(1, 3, 128, 128)
    features = model.backbone(x)
    assert list(features) == [f"p{lv}" for lv in levels]
    for lv, f in zip(levels, features.values()):
        assert f.shape == (1, 32, 128 // 2**lv, 128 // 2**lv)
    head = model.head(list(features.values()))
    per_location = len(anchors.scales) * len(anchors.ratios)
    expected = sum((128 // 2**lv) ** 2 * per_location for lv in levels)
    assert expected == anchor_count(levels, anchors, 128)
    assert head["cls_logits"].shape == (1, expected, 1)
    assert head["bbox_regression"].shape == (1, expected, 4)
    model.train()
    losses = model(x, [two_targets()[0]])
    sum(losses.values()).backward()


def test_no_unused_resnet_stages():
    """With P2-P4 only, ResNet layer4 (C5) is not part of the model."""
    model = build_model(tiny_config())
    assert not hasattr(model.backbone.body, "layer4")


@pytest.mark.parametrize("height, width", [(128, 128), (96, 160), (100, 70)])
def test_eval_boxes_are_in_input_pixels(height, width):
    """A head that scores every anchor 1 and predicts zero deltas returns the
    anchors themselves, clipped to the chip: the chip was neither resized nor
    shifted, and padding never leaks into the output."""
    cfg = tiny_config(
        levels=(3, 4, 5),
        anchors=AnchorConfig(sizes=(16.0, 32.0, 64.0), scales=(1.0,), ratios=(1.0,)),
        chip_score_threshold=0.0,
        chip_nms_iou=1.0,
        topk_candidates=10_000,
        detections_per_chip=10_000,
    )
    model = build_model(cfg).eval()
    with torch.no_grad():
        for conv in (model.head.cls_logits, model.head.bbox_reg):
            conv.weight.zero_()
        model.head.cls_logits.bias.fill_(5.0)
        model.head.bbox_reg.bias.zero_()
        (out,) = model(torch.randn(1, 3, height, width))
    grids = [(feature_grid_size(height, lv), feature_grid_size(width, lv)) for lv in cfg.levels]
    anchors = make_anchor_generator(cfg).anchors_for_grid(grids, torch.device("cpu"))
    expected = anchors.clone()
    expected[:, 0::2] = expected[:, 0::2].clamp(0, width)
    expected[:, 1::2] = expected[:, 1::2].clamp(0, height)
    # every anchor comes back exactly once, as a box in chip pixels
    assert out["boxes"].shape == expected.shape
    order = lambda b: sorted(map(tuple, b.tolist()))  # noqa: E731
    assert order(out["boxes"]) == order(expected)
    assert out["boxes"][:, 2].max() == width and out["boxes"][:, 3].max() == height
    assert out["labels"].dtype == torch.int64 and (out["labels"] == 0).all()


def test_list_of_differently_sized_chips():
    model = build_model(tiny_config(chip_score_threshold=0.0, detections_per_chip=50)).eval()
    with torch.no_grad():
        outs = model([torch.randn(3, 64, 64), torch.randn(3, 40, 72)])
    assert outs[1]["boxes"][:, 2].max() <= 72 and outs[1]["boxes"][:, 3].max() <= 40
    assert len(outs[0]["boxes"]) == 50


def _resnet18_weights(tmp_path):
    path = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


@pytest.mark.parametrize("bands", [3, 4])
def test_backbone_weights_file(tmp_path, bands):
    path = _resnet18_weights(tmp_path)
    reference = torch.load(path, weights_only=True)
    model = build_model(tiny_config(in_channels=bands, backbone_weights=str(path)))
    body = model.backbone.body
    conv1 = body.conv1.weight.detach()
    if bands == 3:
        torch.testing.assert_close(conv1, reference["conv1.weight"])
    else:
        mean_rgb = reference["conv1.weight"].mean(dim=1, keepdim=True)
        torch.testing.assert_close(conv1, mean_rgb.repeat(1, 4, 1, 1) * 3 / 4)
    torch.testing.assert_close(body.layer2[0].conv1.weight.detach(), reference["layer2.0.conv1.weight"])
    torch.testing.assert_close(body.layer1[0].bn1.running_var, reference["layer1.0.bn1.running_var"])
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    model.train()
    losses = model(torch.randn(1, bands, 64, 64), [two_targets()[0]])
    sum(losses.values()).backward()


def test_backbone_weights_errors(tmp_path):
    with pytest.raises(GeodetError, match="does not exist"):
        build_model(tiny_config(backbone_weights=str(tmp_path / "missing.pt")))
    wrong_depth = tmp_path / "resnet34.pt"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), wrong_depth)
    with pytest.raises(GeodetError, match="ResNet-18"):
        build_model(tiny_config(backbone_weights=str(wrong_depth)))
    wrong_shapes = tmp_path / "resnet50.pt"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), wrong_shapes)
    with pytest.raises(GeodetError, match="ResNet-18"):
        build_model(tiny_config(backbone_weights=str(wrong_shapes), **P3_P5))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(GeodetError, match="not a readable"):
        build_model(tiny_config(backbone_weights=str(garbage)))


_STAGES = ("conv1", "layer1", "layer2", "layer3", "layer4")


@pytest.mark.parametrize("frozen", [0, 1, 2, 5])
def test_frozen_stages(frozen):
    model = build_model(tiny_config(frozen_stages=frozen, **P3_P5))
    body = model.backbone.body
    for index, name in enumerate(_STAGES):
        params = list(getattr(body, name).parameters())
        if name == "conv1":
            params += list(body.bn1.parameters())
        assert params and all(p.requires_grad == (index >= frozen) for p in params), name
        stage = body.bn1 if name == "conv1" else getattr(body, name)
        has_trainable_bn = any(isinstance(m, nn.BatchNorm2d) for m in stage.modules())
        assert has_trainable_bn == (index >= frozen), name
    assert all(p.requires_grad for p in model.backbone.fpn.parameters())
    assert all(p.requires_grad for p in model.head.parameters())

    # a training step changes nothing in the frozen stages, buffers included
    frozen_state = {k: v.clone() for k, v in body.state_dict().items() if k.split(".")[0] in ("conv1", "bn1", "layer1")}
    model.train()
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sum(model(torch.randn(2, 3, 64, 64), two_targets()).values()).backward()
    optimiser.step()
    after = body.state_dict()
    for key, before in frozen_state.items():
        stage_index = 0 if key.split(".")[0] in ("conv1", "bn1") else 1
        if stage_index < frozen:
            torch.testing.assert_close(after[key], before, msg=key)


def test_bias_prior_and_focal_settings():
    cfg = tiny_config(prior_prob=0.05, focal_alpha=0.5, focal_gamma=1.0, head_convs=3)
    model = build_model(cfg)
    bias = model.head.cls_logits.bias
    torch.testing.assert_close(bias, torch.full_like(bias, -math.log(0.95 / 0.05)))
    assert (model.head.focal_alpha, model.head.focal_gamma) == (0.5, 1.0)
    assert sum(isinstance(m, nn.Conv2d) for m in model.head.cls_tower.modules()) == 3


def test_cpu_autocast_keeps_boxes_and_losses_float32():
    model = build_model(tiny_config(chip_score_threshold=0.0, detections_per_chip=10))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.train()
        losses = model(torch.randn(2, 3, 64, 64), two_targets())
        model.eval()
        with torch.no_grad():
            (out,) = model(torch.randn(1, 3, 64, 64))
    assert all(v.dtype == torch.float32 for v in losses.values())
    assert out["boxes"].dtype == torch.float32 and out["scores"].dtype == torch.float32


def test_overfits_one_chip():
    """A few dozen steps on one 64 x 64 chip with two bright boxes: the loss drops and both boxes are found."""
    model = build_model(tiny_config()).train()
    image = torch.zeros(1, 3, 64, 64)
    target = two_targets()[0]
    for x1, y1, x2, y2 in target["boxes"].int().tolist():
        image[0, :, y1:y2, x1:x2] = 2.0
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    history = []
    for _ in range(40):
        losses = model(image, [target])
        loss = sum(losses.values())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        history.append(loss.item())
    assert history[-1] < 0.3 * history[0]
    model.eval()
    with torch.no_grad():
        (out,) = model(image)
    best = box_iou(target["boxes"], out["boxes"][:5]).max(dim=1).values
    assert (best > 0.5).all()


def test_giou_box_loss_trains():
    model = build_model(tiny_config(box_loss="giou")).train()
    losses = model(torch.randn(2, 3, 64, 64), two_targets())
    assert 0 < losses["bbox_regression"] <= 2  # GIoU loss per foreground anchor lies in [0, 2]
    sum(losses.values()).backward()
    assert model.head.bbox_reg.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="box_loss"):
        tiny_config(box_loss="smooth")


def test_group_norm_head_trains_folds_and_round_trips(tmp_path):
    """head_norm "group": GroupNorm after each head conv; it trains, survives batch-norm folding
    unchanged (GroupNorm is not folded), and a saved model predicts what it predicted."""
    from geodet.config import to_dict, from_dict
    from geodet.modeling.modelfile import load_model, save_model

    model = build_model(tiny_config(head_norm="group")).train()
    norms = [m for m in model.head.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 2 * model.config.head_convs and norms[0].num_groups == 32 // 4
    losses = model(torch.randn(2, 3, 64, 64), two_targets())
    sum(losses.values()).backward()
    assert norms[0].weight.grad.abs().sum() > 0
    image = torch.randn(1, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        before = _pyramid_and_head(model, image)
        folded = copy.deepcopy(model)
        fold_batchnorm(folded)
        after = _pyramid_and_head(folded, image)
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=1e-4, atol=1e-4)
    path = tmp_path / "gn.pt"
    save_model(str(path), model, model_config=model.config, class_names=["a"], bands=[1, 2, 3], band_mean=[0.0] * 3, band_std=[1.0] * 3,
               chip_size=64, overlap=16, gsd=0.5, dtype="uint8")
    net, _meta = load_model(str(path))
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(image)[0]["scores"], model(image)[0]["scores"])
    assert from_dict(ModelConfig, {k: v for k, v in to_dict(tiny_config()).items() if k != "head_norm"}).head_norm == "none"
    with pytest.raises(ValueError, match="head_norm"):
        tiny_config(head_norm="batch")


def _pyramid_and_head(model, image):
    """Every tensor the network computes before post-processing: the FPN levels and the head outputs."""
    features = model.backbone(image)
    head = model.head(list(features.values()))
    return {**features, **head}


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50", "efficientnet-lite0"])
def test_folding_batch_norms_keeps_the_outputs(backbone):
    """Folding is exact algebra; in float32 it adds no more error than float32 arithmetic already makes.

    Error analysis: the fold rewrites ``bn(conv(x))`` as ``conv'(x)``, which is the same function, so
    in float64 the two networks agree to float64 rounding (relative ~1e-16 per operation; 1e-9 of the
    output scale bounds it for any depth here). In float32, each network differs from the float64
    answer by accumulated rounding that grows with depth and with the CPU's summation order (AVX2 and
    AVX-512 kernels sum in different orders), so a fixed absolute tolerance is machine-dependent. The
    folded float32 network is instead held to the unfolded float32 network's own error against the
    float64 answer: at most 4x it, plus 64 float32 ulps of the output scale.
    """
    model = build_model(tiny_config(backbone=backbone, chip_score_threshold=0.0, detections_per_chip=50))
    # give the frozen batch norms non-trivial statistics, as trained weights have
    for m in model.modules():
        if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5) if isinstance(m.weight, nn.Parameter) else m.weight.uniform_(0.5, 1.5)
    model.eval()
    image = torch.randn(2, 3, 96, 96)
    exact = copy.deepcopy(model).double()
    folded = copy.deepcopy(model)
    norms = sum(isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) for m in model.modules())
    assert fold_batchnorm(folded) == norms  # every ResNet batch norm follows a convolution
    assert not any(isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) for m in folded.modules())
    folded64 = copy.deepcopy(model).double()  # folded in float64, to check the algebra alone
    fold_batchnorm(folded64)

    with torch.no_grad():
        want = _pyramid_and_head(exact, image.double())
        got64 = _pyramid_and_head(folded64, image.double())
        unfolded32 = _pyramid_and_head(model, image)
        folded32 = _pyramid_and_head(folded, image)
        (dets_exact, _), (dets_folded, _) = exact(image.double()), folded64(image.double())
    eps32 = torch.finfo(torch.float32).eps
    for key, ref in want.items():
        scale = float(ref.abs().max())
        torch.testing.assert_close(got64[key], ref, rtol=0, atol=1e-9 * scale)
        err_unfolded = float((unfolded32[key].double() - ref).abs().max())
        err_folded = float((folded32[key].double() - ref).abs().max())
        assert err_folded <= 4 * err_unfolded + 64 * eps32 * scale, (key, err_folded, err_unfolded, scale)
    # end to end (decoding, NMS) the float64 networks give the same detections
    torch.testing.assert_close(dets_folded["scores"], dets_exact["scores"], rtol=0, atol=1e-9)
    torch.testing.assert_close(dets_folded["boxes"], dets_exact["boxes"], rtol=0, atol=1e-7)


def test_folding_needs_eval_mode_and_prepare_gives_channels_last():
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(build_model(tiny_config()).train())
    net = prepare_for_inference(build_model(tiny_config()).train(), torch.device("cpu"))
    assert not net.training
    assert net.backbone.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_assigner_setting_is_validated_and_carried_by_the_config():
    from geodet.config import from_dict, to_dict

    assert ModelConfig().assigner == "maxiou" and ModelConfig().atss_topk == 9
    with pytest.raises(ValueError, match="assigner"):
        tiny_config(assigner="fixed")
    with pytest.raises(ValueError, match="atss_topk"):
        tiny_config(atss_topk=0)
    cfg = tiny_config(assigner="maxiou", atss_topk=5)
    assert from_dict(ModelConfig, to_dict(cfg)) == cfg
    old = {k: v for k, v in to_dict(cfg).items() if k not in ("assigner", "atss_topk")}  # a file from before ATSS
    assert from_dict(ModelConfig, old).assigner == ModelConfig().assigner


@pytest.mark.parametrize("assigner", ["atss", "maxiou"])
def test_both_assigners_train(assigner):
    model = build_model(tiny_config(assigner=assigner)).train()
    losses = model(torch.randn(2, 3, 64, 64), two_targets())
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert model.head.cls_logits.weight.grad.abs().sum() > 0
    # the generator's per-level split matches the feature maps of this 64 px batch (P2-P4: 16, 8, 4 px grids)
    per_location = model.config.anchors.anchors_per_location
    assert model.anchor_generator.num_anchors_per_level == [16 * 16 * per_location, 8 * 8 * per_location,
                                                            4 * 4 * per_location]



def test_input_scale_resamples_inside_the_network_and_keeps_chip_pixels():
    """ChipBatcher with input_scale 2: the batch is twice the chip, targets follow, outputs come back."""
    import torch

    from geodet.modeling.model import ChipBatcher

    batcher = ChipBatcher(3, 32, input_scale=2.0)
    images = torch.rand(2, 3, 40, 48)
    targets = [{"boxes": torch.tensor([[1.0, 2.0, 6.0, 12.0]]), "labels": torch.tensor([0])}] * 2
    batch, scaled = batcher(images, targets)
    assert tuple(batch.tensors.shape) == (2, 3, 96, 96) and batch.image_sizes == [(80, 96), (80, 96)]
    assert torch.equal(scaled[0]["boxes"], torch.tensor([[2.0, 4.0, 12.0, 24.0]]))
    assert torch.equal(targets[0]["boxes"], torch.tensor([[1.0, 2.0, 6.0, 12.0]]))  # caller's targets untouched
    back = batcher.postprocess([{"boxes": scaled[0]["boxes"]}], batch.image_sizes, [(40, 48)])
    assert torch.equal(back[0]["boxes"], targets[0]["boxes"])
    # bilinear with pixel-edge alignment: a constant image stays constant, its mean is kept
    flat, _ = batcher(torch.full((1, 3, 40, 48), 0.25))
    assert torch.allclose(flat.tensors[0, :, :80, :96], torch.tensor(0.25))


def test_choose_input_scale_from_the_smallest_class_median():
    import numpy as np

    from geodet.modeling.anchors import choose_input_scale
    from geodet.config import LARGE_OBJECT_SCALE, SMALL_OBJECT_SCALE

    cars = np.array([[0, 0, 5, 10], [20, 20, 30, 25]] * 5, dtype=float)  # short side 5 px
    pools = np.array([[0, 0, 14, 12]] * 40, dtype=float)
    assert choose_input_scale(pools) == 1.0
    both = np.concatenate([pools, cars])
    ids = np.array([0] * 40 + [1] * 10)
    assert choose_input_scale(both, ids) == SMALL_OBJECT_SCALE  # a rare tiny class counts
    assert choose_input_scale(both) == 1.0  # one class: the median is a pool's
    assert choose_input_scale(np.zeros((0, 4))) == 1.0
    # every class large (median short side >= 32 px): downsampled; one class of small objects keeps 1
    crowns = np.array([[0, 0, 41, 38], [50, 50, 70, 90], [0, 0, 33, 60]] * 5, dtype=float)
    assert choose_input_scale(crowns) == LARGE_OBJECT_SCALE
    assert choose_input_scale(crowns - [0, 0, 2, 2]) == 1.0  # medians 31 px: just under the line
    mixed = np.concatenate([crowns, pools])
    assert choose_input_scale(mixed, np.array([0] * 15 + [1] * 40)) == 1.0
    assert choose_input_scale(np.concatenate([crowns, cars]), np.array([0] * 15 + [1] * 10)) == SMALL_OBJECT_SCALE

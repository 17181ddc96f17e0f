"""Detection metrics on boxes: COCO AP pinned by hand, best-F1 point, grouped images, chip mAP."""

import contextlib
import io
import json

import numpy as np
import pytest

from geodet.core.metrics import best_f1_point, coco_map, evaluate_boxes
from geodet.errors import GeodetError

# Three objects A, B, C of one class and four predictions, by descending score:
#   p1 0.9 = A exactly (IoU 1)           TP at every IoU threshold
#   p2 0.8 far from everything           FP
#   p3 0.7 inside B, IoU(p3, B) = 0.62   TP at IoU 0.50, 0.55, 0.60; FP from 0.65 on
#   p4 0.6 inside A, IoU 0.8, A taken    FP
TRUTH = [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]]
PREDS = [[0, 0, 10, 10], [100, 100, 110, 110], [20, 0, 30, 6.2], [0, 0, 10, 8]]
SCORES = [0.9, 0.8, 0.7, 0.6]
# Hand computation, COCO's 101-point interpolation (precision at recall r = max precision at recall >= r):
#   IoU <= 0.60: cumulative (recall, precision) = (1/3, 1), (1/3, 1/2), (2/3, 2/3), (2/3, 1/2)
#     r in {0.00 .. 0.33} (34 points) -> 1; r in {0.34 .. 0.66} (33 points) -> 2/3; r >= 0.67 -> 0
#     AP = (34 * 1 + 33 * 2/3) / 101 = 56 / 101 = 0.5545
#   IoU >= 0.65: only p1 is a TP: 34 points at precision 1 -> AP = 34 / 101
#   AP50:95 = (3 * 56/101 + 7 * 34/101) / 10 = 406 / 1010 = 0.4020
#   F1 = 2TP / (2TP + FP + FN) at thresholds 0.9, 0.8, 0.7, 0.6: 2/4, 2/5, 4/6, 4/7 -> best 2/3 at 0.7
AP50 = 56 / 101
AP50_95 = 406 / 1010


def test_hand_computed_ap_and_best_f1():
    r = evaluate_boxes(PREDS, SCORES, ["car"] * 4, TRUTH, ["car"] * 3)
    car = r["classes"]["car"]
    assert car["ap50"] == pytest.approx(AP50, abs=1e-12)
    assert car["ap50_95"] == pytest.approx(AP50_95, abs=1e-12)
    assert car["ap"] == pytest.approx(AP50, abs=1e-12)
    assert car["threshold"] == 0.7
    assert (car["tp"], car["fp"], car["fn"]) == (2, 1, 1)
    assert car["precision"] == pytest.approx(2 / 3) and car["recall"] == pytest.approx(2 / 3)
    assert car["f1"] == pytest.approx(2 / 3)
    curve = car["pr_curve"]
    assert len(curve["recall"]) == len(curve["precision"]) == 101
    assert curve["precision"][:34] == pytest.approx([1.0] * 34) and curve["precision"][-1] == 0.0
    assert curve["precision"][34] == pytest.approx(2 / 3) and curve["precision"][67] == 0.0
    assert r["overall"]["ap50"] == pytest.approx(AP50)
    json.dumps(r)  # plain JSON types only


def test_per_class_map_and_pooled_counts():
    preds = PREDS + [[0, 50, 10, 60]]
    scores = SCORES + [0.95]
    truth = TRUTH + [[0, 50, 10, 60]]
    r = evaluate_boxes(preds, scores, ["car"] * 4 + ["pool"], truth, ["car"] * 3 + ["pool"])
    assert r["classes"]["pool"]["ap50"] == pytest.approx(1.0)
    assert r["classes"]["car"]["ap50"] == pytest.approx(AP50)
    assert r["overall"]["ap50"] == pytest.approx((1.0 + AP50) / 2)
    # Pooled by score: 0.95 TP, 0.9 TP, 0.8 FP, 0.7 TP, 0.6 FP; 4 objects -> best F1 6/8 at 0.7.
    o = r["overall"]
    assert (o["threshold"], o["tp"], o["fp"], o["fn"]) == (0.7, 3, 1, 1)
    assert o["f1"] == pytest.approx(0.75)
    assert (o["n_true"], o["n_pred"]) == (4, 5)


def test_classes_are_matched_only_to_their_own_class():
    # Same box, other class: a false positive and a miss, never a match.
    r = evaluate_boxes([[0, 0, 10, 10]], [0.9], ["pool"], [[0, 0, 10, 10]], ["car"])
    assert r["classes"]["car"]["ap50"] == 0.0 and r["classes"]["car"]["fn"] == 1
    pool = r["classes"]["pool"]
    assert pool["ap50"] is None and pool["recall"] is None and pool["fp"] == 1
    assert r["overall"]["ap50"] == 0.0  # mean over classes with truth only
    assert (r["overall"]["tp"], r["overall"]["fp"], r["overall"]["fn"]) == (0, 1, 1)


def test_iou_other_than_coco_thresholds():
    # IoU(pred, truth) = 0.4: a match at --iou 0.3 but not at 0.5.
    r = evaluate_boxes([[0, 0, 10, 4]], [0.9], ["car"], [[0, 0, 10, 10]], ["car"], iou=0.3)
    car = r["classes"]["car"]
    assert car["ap"] == pytest.approx(1.0) and car["ap50"] == 0.0 and car["tp"] == 1
    with pytest.raises(GeodetError):
        evaluate_boxes([], [], [], TRUTH, ["car"] * 3, iou=0.0)


def test_no_predictions():
    r = evaluate_boxes(np.zeros((0, 4)), [], [], TRUTH, ["car"] * 3)
    car = r["classes"]["car"]
    assert car["ap50"] == 0.0 and (car["tp"], car["fp"], car["fn"]) == (0, 0, 3) and car["threshold"] is None


def test_best_f1_keeps_tied_scores_together():
    # The two 0.8 detections (one TP, one FP) stand or fall together.
    p = best_f1_point(np.array([0.9, 0.8, 0.8, 0.1]), np.array([True, True, False, False]), 2)
    assert (p["threshold"], p["tp"], p["fp"]) == (0.8, 2, 1)
    none = best_f1_point(np.array([0.5, 0.4]), np.array([False, False]), 3)
    assert (none["threshold"], none["fp"], none["fn"], none["f1"]) == (0.4, 2, 3, 0.0)


def _pycocotools_one_image(pred, scores, truth):
    """AP50 and AP50:95 of plain pycocotools, the whole scene as one image, no detection cap."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def anns(boxes, s=None):
        out = []
        for k, (x1, y1, x2, y2) in enumerate(boxes):
            a = {"id": k + 1, "image_id": 1, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                 "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
            if s is not None:
                a["score"] = float(s[k])
            out.append(a)
        return out

    with contextlib.redirect_stdout(io.StringIO()):
        gt, dt = COCO(), COCO()
        base = {"images": [{"id": 1}], "categories": [{"id": 1}]}
        gt.dataset = {**base, "annotations": anns(truth.tolist())}
        dt.dataset = {**base, "annotations": anns(pred.tolist(), scores)}
        gt.createIndex()
        dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        ev.params.maxDets = [len(pred)]
        ev.params.areaRng = [[0, float("inf")]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"][:, :, 0, 0, 0]
    return prec[0].mean(), prec.mean()


def test_grouped_images_equal_one_scene_image():
    rng = np.random.default_rng(7)
    xy = rng.uniform(0, 300, (250, 2))
    truth = np.c_[xy, xy + rng.uniform(5, 20, (250, 2))]
    pred = np.r_[truth[:200] + rng.normal(0, 2.0, (200, 4)), truth[:40] + rng.normal(0, 3.0, (40, 4))]
    pred = np.r_[pred, np.c_[rng.uniform(0, 300, (60, 2)), np.zeros((60, 2))]]
    pred[-60:, 2:] = pred[-60:, :2] + 12
    scores = rng.random(len(pred))
    r = evaluate_boxes(pred, scores, ["x"] * len(pred), truth, ["x"] * len(truth))
    ap50, ap50_95 = _pycocotools_one_image(pred, scores, truth)
    assert r["classes"]["x"]["ap50"] == pytest.approx(ap50, abs=1e-12)
    assert r["classes"]["x"]["ap50_95"] == pytest.approx(ap50_95, abs=1e-12)


# --------------------------------------------------------------------------- geo layer


def test_coco_map_per_class_ap50_over_chips():
    # chip 0: the hand-computed case as class 0, plus a class-0 prediction scored 0.95
    # lying on truth C's place in chip 1, where there is no class-0 truth: it must not
    # match across chips, so it is a false positive ranked first:
    #   cumulative (recall, precision): (0, 0), (1/3, 1/2), (1/3, 1/3), (2/3, 1/2), (2/3, 2/5)
    #   interpolated precision is 1/2 for r in {0.00 .. 0.66} (67 points), 0 above: AP50 = 33.5 / 101
    # chip 1: one class-1 object found exactly (AP50 1); a class-2 prediction without truth is
    # left out of the per-class AP and of the mean.
    preds = [
        {"boxes": np.array(PREDS, float), "scores": np.array(SCORES), "labels": np.zeros(4, int)},
        {"boxes": np.array([[40, 0, 50, 10], [5, 5, 15, 15], [60, 60, 70, 70]], float),
         "scores": np.array([0.95, 0.9, 0.5]), "labels": np.array([0, 1, 2])},
    ]
    truths = [
        {"boxes": np.array(TRUTH, float), "labels": np.zeros(3, int)},
        {"boxes": np.array([[5, 5, 15, 15]], float), "labels": np.array([1])},
    ]
    r = coco_map(preds, truths)
    assert r["ap50_per_class"] == {0: pytest.approx(33.5 / 101), 1: pytest.approx(1.0)}
    assert r["map_50"] == pytest.approx((33.5 / 101 + 1.0) / 2)
    empty = coco_map([{"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)}],
                     [{"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int)}])
    assert empty == {"map_50": 0.0, "map": 0.0, "ap50_per_class": {}}

"""Object-level metrics against hand-computed examples."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from oddsparse.eval import SceneAnnotation, ScenePrediction, binary_auroc, evaluate_objects, match_boxes
from oddsparse.geometry.boxes import YawBoxes


def boxes(x_ranges, yaw=None):
    """Unit-section boxes spanning [x0, x1] along x, y and z in [0, 1] (and yaw about z if given)."""
    x_ranges = torch.tensor(x_ranges, dtype=torch.float64)
    n = len(x_ranges)
    center = torch.stack([x_ranges.mean(1), torch.full((n,), 0.5), torch.full((n,), 0.5)], 1).double()
    size = torch.stack([x_ranges[:, 1] - x_ranges[:, 0], torch.ones(n), torch.ones(n)], 1).double()
    return YawBoxes(center, size, torch.zeros(n, dtype=torch.float64) if yaw is None else torch.tensor(yaw).double())


def test_match_boxes_threshold_and_extra_boxes():
    gt = boxes([[0, 1], [3, 4], [6, 7]])
    # IoU 0.8/1.2 = 2/3 with GT 0; IoU exactly 0.5 with GT 1 (not > 0.5); an extra box far away
    pred = boxes([[10, 11], [0.2, 1.2], [3, 5]])
    pred_of_gt, iou = match_boxes(gt, pred)
    assert pred_of_gt.tolist() == [1, -1, -1]
    assert iou[0].item() == pytest.approx(2 / 3)


def test_match_boxes_rotated():
    # a unit square turned by 45 degrees over itself: overlap octagon 2 (sqrt 2 - 1), IoU = sqrt(2) / 2
    gt = boxes([[0, 1]])
    pred = boxes([[0, 1]], yaw=[math.pi / 4])
    pred_of_gt, iou = match_boxes(gt, pred)
    assert pred_of_gt.tolist() == [0]
    assert iou[0].item() == pytest.approx(math.sqrt(2) / 2, abs=1e-9)


def test_match_boxes_is_hungarian_not_greedy():
    gt = boxes([[0, 1], [0.3, 1.3]])
    # p0: IoU 0.818 with GT 0, 0.667 with GT 1; p1: IoU 0.667 with GT 0, 0.333 with GT 1.
    # Greedy (best IoU first) would match p0-GT0 and leave GT 1 missed; the assignment matches both.
    pred = boxes([[0.1, 1.1], [-0.2, 0.8]])
    pred_of_gt, iou = match_boxes(gt, pred)
    assert pred_of_gt.tolist() == [1, 0]
    assert iou.tolist() == pytest.approx([0.8 / 1.2, 0.8 / 1.2])


def test_binary_auroc_hand_and_sklearn():
    assert binary_auroc([0.1, 0.7, 0.8], [0, 0, 1]) == 1.0
    assert binary_auroc([0.2, 0.6, 1.0, 0.3, 0.6], [0, 0, 0, 0, 1]) == pytest.approx(2.5 / 4)
    assert binary_auroc([0.3, 0.4], [0, 0]) is None
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, 200) / 5  # many ties
    labels = rng.random(200) < 0.3
    assert binary_auroc(scores, labels) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores))


def two_scenes():
    """Scene 1: 3 objects (normal, normal, crack), all found, 5 views.
    Scene 2: 5 objects (4 normal, 1 bump), normal #3 missed, one extra box, 10 views."""
    gt1 = boxes([[0, 1], [2, 3], [4, 5]])
    ann1 = SceneAnnotation(gt1, torch.tensor([False, False, True]), ["normal", "normal", "crack"], num_views=5, name="s1")
    pred1 = ScenePrediction(boxes([[4.05, 5.05], [0, 1], [2, 3]]), torch.tensor([0.8, 0.1, 0.7]))
    gt2 = boxes([[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]])
    ann2 = SceneAnnotation(gt2, torch.tensor([False, False, False, False, True]),
                           ["normal", "normal", "normal", "normal", "bump"], num_views=10, name="s2")
    # predictions: GT0 (0.2), GT1 (0.6), GT3 (0.3), GT4 (0.6); GT2 only by a box of IoU 1/3; an extra box
    pred2 = ScenePrediction(boxes([[8, 9], [0, 1], [20, 21], [6, 7], [2, 3], [4.5, 5.5]]),
                            torch.tensor([0.6, 0.2, 0.9, 0.3, 0.6, 0.4]))
    return [pred1, pred2], [ann1, ann2]


def test_evaluate_objects_hand_computed():
    predictions, annotations = two_scenes()
    report = evaluate_objects(predictions, annotations)
    # scene 1: labels (>= 0.5) [0, 1, 1] vs [0, 0, 1] -> accuracy 2/3; AUROC: 0.8 above 0.1 and 0.7 -> 1
    # scene 2: outcomes n0 0.2 ok, n1 0.6 wrong, n2 missed (score 1, wrong), n3 0.3 ok, bump 0.6 ok -> 3/5;
    #          AUROC: 0.6 vs {0.2, 0.6, 1.0, 0.3} -> (1 + 0.5 + 0 + 1) / 4 = 0.625
    assert report["object_accuracy"] == pytest.approx((2 / 3 + 3 / 5) / 2)
    assert report["object_AUROC"] == pytest.approx((1 + 0.625) / 2)
    # pooled: 5 of 8 correct; anomalies {0.8, 0.6} vs normals {0.1, 0.7, 0.2, 0.6, 1.0, 0.3}: (5 + 3.5) / 12
    assert report["object_accuracy_pooled"] == pytest.approx(5 / 8)
    assert report["object_AUROC_pooled"] == pytest.approx(8.5 / 12)
    assert (report["num_scenes"], report["num_objects"], report["num_anomalous"]) == (2, 8, 2)
    assert (report["num_missed"], report["num_extra_predictions"]) == (1, 2)
    assert report["box_recall"] == pytest.approx(7 / 8) and report["box_precision"] == pytest.approx(7 / 9)
    assert set(report["per_type"]) == {"crack", "bump"}
    assert report["per_type"]["crack"]["object_accuracy"] == pytest.approx(2 / 3)
    assert report["per_type"]["crack"]["object_AUROC"] == 1.0
    assert report["per_type"]["bump"]["object_accuracy"] == pytest.approx(3 / 5)
    assert report["per_type"]["bump"]["object_AUROC_pooled"] == pytest.approx(0.625)
    assert list(report["per_object_count"]) == ["3-4", "5-6"]
    assert report["per_object_count"]["3-4"]["object_accuracy"] == pytest.approx(2 / 3)
    assert report["per_object_count"]["5-6"]["object_AUROC"] == pytest.approx(0.625)
    assert list(report["per_num_views"]) == ["5", "10"]
    assert report["per_num_views"]["10"]["num_missed"] == 1
    json.dumps(report, allow_nan=False)  # JSON-ready


def test_a_scene_of_one_class_has_no_scene_auroc_but_counts_pooled():
    """A scene without an anomaly (or without a normal object) has no AUROC of its own: the scene mean leaves it
    out (``num_scenes_with_auroc``), the pooled AUROC and both accuracies read its objects."""
    predictions, annotations = two_scenes()
    gt3 = boxes([[0, 1], [2, 3]])
    predictions.append(ScenePrediction(gt3, torch.tensor([0.4, 0.95])))  # two normals: 0.4 right, 0.95 wrong
    annotations.append(SceneAnnotation(gt3, torch.tensor([False, False]), ["normal", "normal"], num_views=5, name="s3"))
    report = evaluate_objects(predictions, annotations)
    assert report["object_AUROC"] == pytest.approx((1 + 0.625) / 2)  # as without the scene
    assert report["num_scenes"] == 3 and report["num_scenes_with_auroc"] == 2
    assert report["object_accuracy"] == pytest.approx((2 / 3 + 3 / 5 + 1 / 2) / 3)
    # pooled: anomalies {0.8, 0.6} vs normals {0.1, 0.7, 0.2, 0.6, 1.0, 0.3} as before (8.5 of 12 pairs) and
    # the new {0.4, 0.95}: both anomalies above 0.4, below 0.95 (2 of 4 pairs)
    assert report["object_AUROC_pooled"] == pytest.approx(10.5 / 16)
    assert report["object_accuracy_pooled"] == pytest.approx(6 / 10)


def test_per_type_keeps_normals_and_that_type_only():
    gt = boxes([[0, 1], [2, 3], [4, 5]])
    ann = SceneAnnotation(gt, torch.tensor([False, True, True]), ["normal", "crack", "bump"])
    report = evaluate_objects([ScenePrediction(gt, torch.tensor([0.5, 0.9, 0.1]))], [ann])
    # crack: normal 0.5 (wrong), crack 0.9 (right): accuracy 1/2, AUROC 1; bump: 0.1 < 0.5: AUROC 0, accuracy 0
    assert report["per_type"]["crack"]["object_accuracy"] == pytest.approx(0.5)
    assert report["per_type"]["crack"]["object_AUROC"] == 1.0
    assert report["per_type"]["bump"]["object_accuracy"] == 0.0
    assert report["per_type"]["bump"]["object_AUROC"] == 0.0
    assert report["per_object_count"].keys() == {"3-4"}
    # an extra box belongs to no type: the per-type prediction counts are undefined, the scene's are not
    extra = ScenePrediction(boxes([[0, 1], [2, 3], [4, 5], [9, 10]]), torch.tensor([0.5, 0.9, 0.1, 0.3]))
    report = evaluate_objects([extra], [ann])
    assert (report["num_extra_predictions"], report["box_precision"]) == (1, 0.75)
    for name in ("crack", "bump"):
        assert report["per_type"][name]["num_extra_predictions"] is None
        assert report["per_type"][name]["box_precision"] is None
        assert report["per_type"][name]["box_recall"] == 1.0


def test_missed_anomaly_ranks_below_every_normal():
    gt = boxes([[0, 1], [2, 3]])
    ann = SceneAnnotation(gt, torch.tensor([False, True]))
    report = evaluate_objects([ScenePrediction(boxes([[0, 1]]), torch.tensor([0.01]))], [ann])
    assert report["object_AUROC"] == 0.0
    assert report["object_accuracy"] == 0.5
    assert report["num_missed"] == 1 and report["num_extra_predictions"] == 0
    # nothing predicted at all: every object wrong; explicit labels override the score threshold
    empty = ScenePrediction(boxes(np.zeros((0, 2))), torch.zeros(0))
    assert evaluate_objects([empty], [ann])["object_accuracy"] == 0.0
    labelled = ScenePrediction(gt, torch.tensor([0.9, 0.1]), labels=torch.tensor([False, True]))
    assert evaluate_objects([labelled], [ann])["object_accuracy"] == 1.0


def test_bad_input_names_the_field():
    gt = boxes([[0, 1], [2, 3]])
    with pytest.raises(ValueError, match="labels"):
        evaluate_objects([ScenePrediction(gt, torch.zeros(2))], [SceneAnnotation(gt, torch.tensor([True]))])
    with pytest.raises(ValueError, match="scores"):
        evaluate_objects([ScenePrediction(gt, torch.zeros(3))], [SceneAnnotation(gt, torch.tensor([True, False]))])
    with pytest.raises(ValueError, match="type"):
        evaluate_objects([ScenePrediction(gt, torch.zeros(2))],
                         [SceneAnnotation(gt, torch.tensor([True, False]), ["normal", "crack"])])
    with pytest.raises(ValueError, match=r"ScenePrediction for 's0'.*not all finite"):  # NaN has no rank
        evaluate_objects([ScenePrediction(gt, torch.tensor([float("nan"), 0.1]))],
                         [SceneAnnotation(gt, torch.tensor([True, False]), name="s0")])
    with pytest.raises(ValueError, match="not finite"):
        binary_auroc([0.2, float("nan")], [True, False])

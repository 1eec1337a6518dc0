"""Object-level anomaly metrics with box matching (names follow anomalib: ``object_AUROC``, ``object_accuracy``).

Protocol (one scene = predicted boxes + anomaly scores vs ground-truth boxes + labels):

- **Matching.** Predicted and GT yaw boxes are matched one-to-one by the Hungarian algorithm on 3D IoU
  (:func:`oddsparse.geometry.boxes.box_iou_3d`), pairs with IoU <= ``iou_threshold`` (0.5) being
  ineligible (so the assignment maximises the summed IoU of eligible pairs); a GT object is *matched*
  when its pair has IoU > ``iou_threshold``.
- **Outcome per GT object.** A matched object takes its prediction's score and label (label =
  ``score >= score_threshold`` unless labels are given); it is correct when the label equals the GT label.
- **Missed GT objects** count as wrong, and for AUROC they get the worst score for their class:
  0 for an anomaly, 1 for a normal object (with the opposite label). A detector therefore cannot
  gain accuracy or AUROC by dropping objects it is unsure of; with perfect boxes the metric is the
  plain classification metric.
- **Extra predicted boxes** (matched to no GT object) carry no GT label: they are not part of the
  object metrics and are counted in ``num_extra_predictions`` (with ``box_recall`` =
  matched / GT objects, ``box_precision`` = matched / predicted boxes).

Reported both ways: ``object_AUROC`` / ``object_accuracy`` are means over scenes of the per-scene
values (the paper; scenes with a single class have no AUROC and are left out of that mean, their
number is ``num_scenes_with_auroc``), ``object_AUROC_pooled`` / ``object_accuracy_pooled`` pool all
objects (the official code). Breakdowns, each with the same keys:

- ``per_type[t]``: the scenes that contain an anomaly of type ``t``, restricted to their normal
  objects and their type-``t`` anomalies (``num_extra_predictions`` and ``box_precision`` are None
  there: a box matched to no GT object has no type);
- ``per_object_count["3-4"]``...: scenes by their number of GT objects (``count_bins``; a count in no
  bin goes to ``"other"``);
- ``per_num_views["5"]``...: scenes by number of input views (when given).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from oddsparse.geometry.boxes import as_yaw_boxes, match_boxes

__all__ = ["ScenePrediction", "SceneAnnotation", "ObjectOutcomes", "match_boxes", "binary_auroc", "object_outcomes",
           "summarize_outcomes", "evaluate_objects", "DEFAULT_COUNT_BINS"]

DEFAULT_COUNT_BINS: tuple[tuple[int, int], ...] = ((3, 4), (5, 6), (7, 8), (9, 10), (11, 12))
NORMAL = "normal"


@dataclass
class ScenePrediction:
    """Predictions for one scene.

    Attributes:
        boxes: P yaw boxes (:class:`~oddsparse.geometry.boxes.YawBoxes` or ``(center (P, 3), size (P, 3), yaw (P,))``).
        scores: (P,) anomaly scores in [0, 1] (higher = more anomalous).
        labels: optional (P,) bool predicted anomaly labels; default ``scores >= score_threshold``.
    """

    boxes: object
    scores: Tensor
    labels: Tensor | None = None


@dataclass
class SceneAnnotation:
    """Ground truth for one scene.

    Attributes:
        boxes: G yaw boxes. labels: (G,) bool, True = anomalous.
        types: G anomaly type names (``"normal"`` for normal objects); default ``"anomaly"`` / ``"normal"``.
        num_views: number of input views the prediction used (for the per-views breakdown), or None.
        name: scene name (for reports).
    """

    boxes: object
    labels: Tensor
    types: Sequence[str] | None = None
    num_views: int | None = None
    name: str = ""


@dataclass
class ObjectOutcomes:
    """Per-GT-object outcome of one scene: arrays of length G."""

    scores: np.ndarray          # (G,) float, missed objects get the worst score of their class
    predicted: np.ndarray       # (G,) bool predicted label
    labels: np.ndarray          # (G,) bool GT label
    matched: np.ndarray         # (G,) bool
    types: list[str]
    num_predictions: int | None  # None: a subset of the GT objects (per type), whose unmatched boxes have no type
    num_views: int | None = None
    name: str = ""
    correct: np.ndarray = field(init=False)

    def __post_init__(self):
        self.correct = self.matched & (self.predicted == self.labels)


def _num_boxes(boxes) -> int:
    return int(as_yaw_boxes(boxes).center.shape[0])


def binary_auroc(scores, labels) -> float | None:
    """Area under the ROC curve = P(score of a random positive > score of a random negative), ties 1/2.

    Returns None when ``labels`` hold a single class; a score that is not finite is a ValueError (NaN has no
    rank).
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    if not np.isfinite(scores).all():
        raise ValueError(f"binary_auroc: {int((~np.isfinite(scores)).sum())} scores are not finite")
    positives, negatives = scores[labels], scores[~labels]
    if len(positives) == 0 or len(negatives) == 0:
        return None
    # Mann-Whitney U from average ranks (ties get the mean rank)
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    start = 0
    while start < len(scores):
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    rank_sum = ranks[labels].sum()
    u = rank_sum - len(positives) * (len(positives) + 1) / 2
    return float(u / (len(positives) * len(negatives)))


def object_outcomes(prediction: ScenePrediction, annotation: SceneAnnotation, *, iou_threshold: float = 0.5,
                    score_threshold: float = 0.5) -> ObjectOutcomes:
    """Match one scene's predictions to its GT objects and score every GT object (see module docstring)."""
    gt_labels = torch.as_tensor(annotation.labels).bool().cpu().numpy().reshape(-1)
    num_gt = _num_boxes(annotation.boxes)
    if len(gt_labels) != num_gt:
        raise ValueError(f"SceneAnnotation {annotation.name!r}: labels has {len(gt_labels)} entries for {num_gt} boxes")
    types = list(annotation.types) if annotation.types is not None else \
        ["anomaly" if a else NORMAL for a in gt_labels]
    if len(types) != num_gt:
        raise ValueError(f"SceneAnnotation {annotation.name!r}: types has {len(types)} entries for {num_gt} boxes")
    for t, label in zip(types, gt_labels):
        if (t == NORMAL) == bool(label):
            raise ValueError(f"SceneAnnotation {annotation.name!r}: type {t!r} contradicts label {bool(label)}")
    scores = torch.as_tensor(prediction.scores).detach().cpu().double().numpy().reshape(-1)
    num_pred = _num_boxes(prediction.boxes)
    if len(scores) != num_pred:
        raise ValueError(f"ScenePrediction for {annotation.name!r}: scores has {len(scores)} entries for "
                         f"{num_pred} boxes")
    if not np.isfinite(scores).all():  # NaN would rank first in the AUROC and never pass the threshold
        raise ValueError(f"ScenePrediction for {annotation.name!r}: scores {scores.tolist()} are not all finite")
    if prediction.labels is not None:
        labels = torch.as_tensor(prediction.labels).bool().cpu().numpy().reshape(-1)
        if len(labels) != num_pred:
            raise ValueError(f"ScenePrediction for {annotation.name!r}: labels has {len(labels)} entries for "
                             f"{num_pred} boxes")
    else:
        labels = scores >= score_threshold
    pred_of_gt, _ = match_boxes(annotation.boxes, prediction.boxes, iou_threshold)
    pred_of_gt = pred_of_gt.numpy()
    matched = pred_of_gt >= 0
    object_scores = np.where(gt_labels, 0.0, 1.0)  # missed: worst score of the class
    object_predicted = ~gt_labels  # missed: the wrong label
    object_scores[matched] = scores[pred_of_gt[matched]]
    object_predicted[matched] = labels[pred_of_gt[matched]]
    return ObjectOutcomes(scores=object_scores, predicted=object_predicted, labels=gt_labels, matched=matched,
                          types=types, num_predictions=num_pred, num_views=annotation.num_views, name=annotation.name)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarize_outcomes(outcomes: Sequence[ObjectOutcomes]) -> dict:
    """Scene-mean and pooled metrics of a list of scene outcomes (keys as in :func:`evaluate_objects`)."""
    scene_auroc = [a for a in (binary_auroc(o.scores, o.labels) for o in outcomes) if a is not None]
    scene_accuracy = [float(o.correct.mean()) for o in outcomes if len(o.labels)]
    scores = np.concatenate([o.scores for o in outcomes]) if outcomes else np.zeros(0)
    labels = np.concatenate([o.labels for o in outcomes]) if outcomes else np.zeros(0, dtype=bool)
    correct = np.concatenate([o.correct for o in outcomes]) if outcomes else np.zeros(0, dtype=bool)
    matched = int(sum(o.matched.sum() for o in outcomes))
    counted = all(o.num_predictions is not None for o in outcomes)
    num_predictions = int(sum(o.num_predictions for o in outcomes)) if counted else None
    return {
        "object_AUROC": _mean(scene_auroc),
        "object_accuracy": _mean(scene_accuracy),
        "object_AUROC_pooled": binary_auroc(scores, labels),
        "object_accuracy_pooled": float(correct.mean()) if len(correct) else None,
        "num_scenes": len(outcomes),
        "num_scenes_with_auroc": len(scene_auroc),
        "num_objects": int(len(labels)),
        "num_anomalous": int(labels.sum()),
        "num_missed": int(len(labels)) - matched,
        "num_extra_predictions": num_predictions - matched if counted else None,
        "box_recall": matched / len(labels) if len(labels) else None,
        "box_precision": matched / num_predictions if counted and num_predictions else None,
    }


def _restrict(outcome: ObjectOutcomes, keep: np.ndarray) -> ObjectOutcomes:
    restricted = ObjectOutcomes(scores=outcome.scores[keep], predicted=outcome.predicted[keep],
                                labels=outcome.labels[keep], matched=outcome.matched[keep],
                                types=[t for t, k in zip(outcome.types, keep) if k], num_predictions=None,
                                num_views=outcome.num_views, name=outcome.name)
    return restricted


def _bin_name(count: int, bins: Sequence[tuple[int, int]]) -> str:
    for low, high in bins:
        if low <= count <= high:
            return f"{low}-{high}"
    return "other"


def evaluate_objects(predictions: Sequence[ScenePrediction], annotations: Sequence[SceneAnnotation], *,
                     iou_threshold: float = 0.5, score_threshold: float = 0.5,
                     count_bins: Sequence[tuple[int, int]] = DEFAULT_COUNT_BINS) -> dict:
    """Object-level metrics over scenes, with breakdowns (see the module docstring for the protocol).

    Returns:
        A JSON-ready dict: ``object_AUROC``, ``object_accuracy`` (scene means), ``object_AUROC_pooled``,
        ``object_accuracy_pooled``, counts (``num_scenes``, ``num_objects``, ``num_missed``,
        ``num_extra_predictions``...), ``box_recall``, ``box_precision``, and ``per_type``,
        ``per_object_count``, ``per_num_views`` dicts of the same metrics. Undefined values are None.

    Example:
        >>> from oddsparse.geometry.boxes import YawBoxes
        >>> gt = YawBoxes(torch.tensor([[0., 0, 0], [2, 0, 0]]), torch.ones(2, 3), torch.zeros(2))
        >>> report = evaluate_objects([ScenePrediction(gt, torch.tensor([0.1, 0.9]))],
        ...                           [SceneAnnotation(gt, torch.tensor([False, True]))])
        >>> report["object_AUROC"], report["object_accuracy"]
        (1.0, 1.0)
    """
    if len(predictions) != len(annotations):
        raise ValueError(f"evaluate_objects: {len(predictions)} predictions for {len(annotations)} annotations")
    outcomes = [object_outcomes(p, a, iou_threshold=iou_threshold, score_threshold=score_threshold)
                for p, a in zip(predictions, annotations)]
    report = summarize_outcomes(outcomes)
    anomaly_types = sorted({t for o in outcomes for t in o.types if t != NORMAL})
    report["per_type"] = {}
    for name in anomaly_types:
        subset = [_restrict(o, np.array([t in (NORMAL, name) for t in o.types], dtype=bool))
                  for o in outcomes if name in o.types]
        report["per_type"][name] = summarize_outcomes(subset)
    by_count: dict[str, list[ObjectOutcomes]] = {}
    for o in outcomes:
        by_count.setdefault(_bin_name(len(o.labels), count_bins), []).append(o)
    order = [f"{low}-{high}" for low, high in count_bins] + ["other"]
    report["per_object_count"] = {k: summarize_outcomes(by_count[k]) for k in order if k in by_count}
    by_views: dict[int, list[ObjectOutcomes]] = {}
    for o in outcomes:
        if o.num_views is not None:
            by_views.setdefault(int(o.num_views), []).append(o)
    report["per_num_views"] = {str(v): summarize_outcomes(by_views[v]) for v in sorted(by_views)}
    return report

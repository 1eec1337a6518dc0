"""Evaluate an odd-one-out detector on a dataset split: object AUROC / accuracy, breakdowns, figures.

Protocol
    For every scene of the split and every requested number of input views n, the detector sees the
    n views :func:`evenly_spaced_views` picks among the scene's stored views (a fixed, deterministic
    selection: views ``floor(i * V / n)``, so 1 view is view 0 and 5 of 20 are 0, 4, 8, 12, 16). Its
    boxes and scores are compared with the ground truth by :func:`oddsparse.eval.metrics.evaluate_objects`
    (IoU > 0.5 matching; a missed GT object counts as wrong; see that module for the protocol).

Report (a JSON-ready dict)
    * top level: the metrics at ``primary_views`` (default: the largest requested n), i.e.
      ``object_AUROC`` / ``object_accuracy`` (means over scenes, as in the paper),
      ``object_AUROC_pooled`` / ``object_accuracy_pooled`` (pooled over objects, as in the official
      code), counts, box recall/precision, ``per_type`` and ``per_object_count`` breakdowns;
    * ``per_num_views``: the same metrics for every requested n;
    * ``by_num_views``: for every n, its ``per_type`` and ``per_object_count`` breakdowns;
    * ``roc``: for every n, the pooled ROC curve (``fpr``, ``tpr``);
    * ``per_split``: where the dataset defines ``seen`` / ``unseen`` splits (ToysAD: test scenes of
      categories seen / not seen in training), the top-level metrics and breakdowns at ``primary_views``
      of the evaluated scenes of each (the paper's ToysAD seen / unseen columns); empty otherwise;
    * ``per_scene``: one row per (scene, n) with the scene's metrics and timings;
    * ``settings``: split, views, image size, thresholds, root, and the detector's test-time settings
      (:func:`detector_settings`: density and carve thresholds, test flips, box consensus, registration,
      merge_floating).

:func:`write_report` writes ``report.json`` (atomically) and the figures ``roc.png``,
``per_type_accuracy.png``, ``auroc_vs_views.png`` and ``auroc_vs_object_count.png``.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from oddsparse.data.scene_io import BOX_SOURCES
from oddsparse.eval.metrics import (DEFAULT_COUNT_BINS, NORMAL, SceneAnnotation, ScenePrediction, binary_auroc,
                                    evaluate_objects, object_outcomes, summarize_outcomes)
from oddsparse.geometry.boxes import YawBoxes, as_yaw_boxes
from oddsparse.utils.figures import save_figure
from oddsparse.utils.errors import InputError

__all__ = ["DEFAULT_VIEWS", "evenly_spaced_views", "detect_scene", "evaluate_detector", "detector_settings",
           "write_report", "roc_curve_points", "add_eval_arguments", "run_eval", "non_negative", "PARTIAL_DIR"]

#: Numbers of input views evaluated by default (the paper's breakdown).
DEFAULT_VIEWS: tuple[int, ...] = (1, 3, 5, 10, 20)


def evenly_spaced_views(num_stored: int, count: int) -> list[int]:
    """Indices of ``count`` views spread evenly over ``num_stored`` stored views: ``floor(i * V / n)``.

    Example:
        >>> evenly_spaced_views(20, 5), evenly_spaced_views(20, 1), evenly_spaced_views(6, 6)
        ([0, 4, 8, 12, 16], [0], [0, 1, 2, 3, 4, 5])
    """
    if not 1 <= count <= num_stored:
        raise InputError(f"cannot pick {count} views among {num_stored} stored views")
    return [(i * num_stored) // count for i in range(count)]


@torch.no_grad()
def detect_scene(detector, images: torch.Tensor, K: torch.Tensor, world_to_cam: torch.Tensor,
                 boxes: YawBoxes | None = None) -> tuple[YawBoxes, torch.Tensor]:
    """Run ``detector`` on one scene's views: images (V, H, W, 3), K (V, 3, 3), world_to_cam (V, 4, 4).

    ``boxes`` (optional) are scored instead of the estimated boxes (the oracle-box diagnostic).

    ``detector`` is an :class:`~oddsparse.models.detector.OddOneOutDetector` or any callable taking
    batched ``(images, K, world_to_cam)`` and returning an object with ``boxes`` (YawBoxes),
    ``scene_index`` and ``scores``. Returns ``(boxes (O,), scores (O,))`` on the CPU.
    """
    device = _device_of(detector)
    kwargs = {}
    if boxes is not None:
        from oddsparse.models.detector import canonical_boxes

        given = canonical_boxes(YawBoxes(*(t.to(device).float() for t in boxes)))
        kwargs["boxes"] = (given, torch.zeros(given.center.shape[0], dtype=torch.int64, device=device))
    detection = detector(images[None].to(device), K[None].to(device), world_to_cam[None].to(device), **kwargs)
    keep = detection.scene_index.cpu() == 0
    boxes = as_yaw_boxes(detection.boxes)
    boxes = YawBoxes(*(t.detach().cpu().float()[keep] for t in boxes))
    return boxes, detection.scores.detach().cpu().float()[keep]


#: Where ``oddsparse eval`` (and the recipes' end-of-run evaluation) keep each finished scene's detections until
#: the report is written: an interrupted evaluation run again with the same weights and settings resumes there.
PARTIAL_DIR = ".partial"


def _kept_detections(resume_dir, name: str, fingerprint: str | None) -> dict:
    """The detections per number of views that an earlier run of the same fingerprint kept for scene ``name``
    (:func:`evaluate_detector`'s ``resume_dir``); empty where there are none or they were made otherwise."""
    if fingerprint is None:
        return {}
    path = Path(resume_dir) / f"{name}.json"
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, or unreadable: detect again
        return {}
    if not isinstance(kept, dict) or kept.get("fingerprint") != fingerprint or not isinstance(kept.get("runs"), dict):
        return {}
    return kept["runs"]


def _keep_detections(resume_dir, name: str, fingerprint: str, runs: dict) -> None:
    from oddsparse.utils.checkpoint import atomic_write_bytes

    payload = {"fingerprint": fingerprint, "runs": runs}
    atomic_write_bytes(Path(resume_dir) / f"{name}.json", (json.dumps(payload) + "\n").encode())


def _rows_from_boxes(boxes: YawBoxes) -> list[list[float]]:
    """(O, 7) ``(center, size, yaw)`` rows of float32 boxes as JSON floats (exact: a float32 is a float64)."""
    return torch.cat([boxes.center, boxes.size, boxes.yaw[:, None]], dim=1).double().tolist()


def _boxes_from_rows(rows: list) -> YawBoxes:
    table = torch.tensor(rows, dtype=torch.float64).reshape(-1, 7).float()
    return YawBoxes(table[:, :3], table[:, 3:6], table[:, 6])


def _device_of(module) -> torch.device:
    try:
        return next(module.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def roc_curve_points(scores: np.ndarray, labels: np.ndarray) -> dict:
    """ROC curve of scores (P,) against bool labels (P,): ``{"fpr": [...], "tpr": [...]}`` (empty for one class)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    positives, negatives = labels.sum(), (~labels).sum()
    if positives == 0 or negatives == 0:
        return {"fpr": [], "tpr": []}
    thresholds = np.unique(scores)[::-1]  # descending: one point per distinct score
    fpr, tpr = [0.0], [0.0]
    for threshold in thresholds:
        flagged = scores >= threshold
        tpr.append(float((flagged & labels).sum() / positives))
        fpr.append(float((flagged & ~labels).sum() / negatives))
    return {"fpr": fpr, "tpr": tpr}


#: Splits of the evaluated split that the report also breaks the metrics down by (``per_split``).
SUBSET_SPLITS = ("seen", "unseen")


def evaluate_detector(detector, root, split: str = "test", *, views: Sequence[int] = DEFAULT_VIEWS,
                      image_size=None, family: str = "auto", primary_views: int | None = None,
                      iou_threshold: float = 0.5, score_threshold: float = 0.5,
                      count_bins: Sequence[tuple[int, int]] = DEFAULT_COUNT_BINS, max_scenes: int | None = None,
                      boxes: str = "predicted", box_source: str = "metadata", progress: bool = True,
                      resume_dir: str | Path | None = None) -> dict:
    """Run ``detector`` over the scenes of ``root``'s ``split`` and compute the object-level report.

    Args:
        detector: an :class:`~oddsparse.models.detector.OddOneOutDetector` (put in eval mode here) or
            a callable as described in :func:`detect_scene`.
        root: dataset root (scene folders and optionally ``splits.json``; see :class:`~oddsparse.data.SceneDataset`).
        split: split name. family: ``"toys"``, ``"parts"`` or ``"auto"`` (used without a splits file).
        views: numbers of input views n to evaluate; a scene with fewer stored views than n is skipped
            for that n (listed in ``skipped``).
        image_size: ``S`` or ``(H, W)`` to read the images at (default: stored size).
        primary_views: n of the top-level metrics (default ``max(views)``).
        iou_threshold, score_threshold, count_bins: see :func:`~oddsparse.eval.metrics.evaluate_objects`.
        max_scenes: evaluate only the first scenes of the split (sorted by name).
        boxes: ``"predicted"`` (the detector estimates boxes: the benchmark setting) or ``"gt"`` (it scores
            the ground-truth boxes: a diagnostic separating the matcher from box estimation).
        box_source: the GT boxes: ``"metadata"`` (published) or ``"observed"`` (fitted to what every stored
            view shows of each object, :func:`~oddsparse.data.scene_io.observed_boxes`).
        progress: show a progress bar.
        resume_dir: a folder for each finished scene's detections (``<scene>.json``, written atomically, with
            a fingerprint of the detector's weights, its test-time settings and these arguments): a run
            interrupted and started again with the same ones reads them instead of detecting again, and gives the
            same report. None: nothing kept. Only for a detector with a ``state_dict`` (an nn.Module).
    Returns:
        The report dict described in the module docstring.
    """
    from tqdm.auto import tqdm

    from oddsparse.data.dataset import SceneDataset
    from oddsparse.data.scene_io import read_scene, read_scene_metadata

    if boxes not in ("predicted", "gt"):
        raise InputError(f"boxes must be 'predicted' or 'gt', got {boxes!r}")
    views = sorted({int(v) for v in views})
    if not views or views[0] < 1:
        raise InputError(f"views must be positive numbers of input views, got {views}")
    primary = max(views) if primary_views is None else int(primary_views)
    if primary not in views:
        raise InputError(f"primary_views={primary} is not one of the evaluated views {views}")
    if image_size is not None and (len(_size_list(image_size)) != 2 or min(_size_list(image_size)) <= 0):
        raise InputError(f"image_size must be a positive int or (H, W), got {image_size!r}")
    if max_scenes is not None and max_scenes < 1:
        raise InputError(f"max_scenes must be >= 1 (or None: every scene), got {max_scenes}")
    dataset = SceneDataset(root, split, family=family, num_input_views=None, num_target_views=0,
                           box_source=box_source)
    folders = dataset.scenes if max_scenes is None else dataset.scenes[:max_scenes]
    if not folders:
        raise InputError(f"split {split!r} of {root} holds no scenes")
    stored_views = [read_scene_metadata(folder).num_views for folder in folders]
    most = max(stored_views)
    if primary > most:  # found before any scene is evaluated
        raise InputError(f"{root}: no scene of split {split!r} stores {primary} views (at most {most}), so the primary "
                         f"setting cannot be evaluated: pass --views up to {most}, or --primary-views")
    if hasattr(detector, "eval"):
        detector.eval()
    fingerprint = None
    if resume_dir is not None and hasattr(detector, "state_dict"):
        from oddsparse.utils.checkpoint import state_fingerprint

        resume_dir = Path(resume_dir)
        resume_dir.mkdir(parents=True, exist_ok=True)
        fingerprint = state_fingerprint(detector.state_dict(), {
            "detector": detector_settings(detector), "root": str(Path(root).resolve()), "split": split,
            "image_size": _size_list(image_size), "boxes": boxes, "box_source": box_source})

    predictions: dict[int, list[ScenePrediction]] = {n: [] for n in views}
    annotations: dict[int, list[SceneAnnotation]] = {n: [] for n in views}
    per_scene, skipped = [], []
    bar = tqdm(total=len(folders) * len(views), desc=f"eval {split}", unit="run", disable=not progress)
    try:
        for folder, stored in zip(folders, stored_views):
            selections = {n: evenly_spaced_views(stored, n) for n in views if n <= stored}
            for n in views:
                if n not in selections:
                    skipped.append({"name": folder.name, "num_views": n,
                                    "reason": f"the scene stores {stored} views"})
                    bar.update(1)
            if not selections:
                continue
            needed = sorted({v for selection in selections.values() for v in selection})
            scene = read_scene(folder, views=needed, image_size=image_size, box_source=box_source)
            position = {view: i for i, view in enumerate(needed)}
            gt_boxes = as_yaw_boxes(scene.boxes)
            types = [t if t else NORMAL for t in scene.anomaly_types]
            kept = _kept_detections(resume_dir, folder.name, fingerprint)
            for n, selection in selections.items():
                run = kept.get(str(n))
                if isinstance(run, dict) and run.get("views") == selection and {"boxes", "scores", "seconds"} <= set(run):
                    # detected by an interrupted run of this setting
                    found, scores, seconds = _boxes_from_rows(run["boxes"]), torch.tensor(run["scores"]), run["seconds"]
                else:
                    subset = scene.select_views([position[v] for v in selection])
                    start = time.perf_counter()
                    found, scores = detect_scene(detector, subset.images, subset.K, subset.world_to_cam,
                                                 boxes=gt_boxes if boxes == "gt" else None)
                    seconds = time.perf_counter() - start
                    kept[str(n)] = {"views": selection, "boxes": _rows_from_boxes(found),
                                    "scores": [float(v) for v in scores], "seconds": seconds}
                prediction = ScenePrediction(boxes=found, scores=scores)
                annotation = SceneAnnotation(boxes=gt_boxes, labels=scene.labels.bool(), types=types, num_views=n,
                                             name=scene.name)
                predictions[n].append(prediction)
                annotations[n].append(annotation)
                outcome = object_outcomes(prediction, annotation, iou_threshold=iou_threshold,
                                          score_threshold=score_threshold)
                per_scene.append({"name": scene.name, "num_views": n, "views": selection,
                                  "num_objects": scene.num_objects, "num_anomalous": int(scene.labels.sum()),
                                  "num_predictions": int(found.center.shape[0]),
                                  "num_matched": int(outcome.matched.sum()),
                                  "object_AUROC": binary_auroc(outcome.scores, outcome.labels),
                                  "object_accuracy": float(outcome.correct.mean()) if len(outcome.labels) else None,
                                  "scores": [float(s) for s in scores], "seconds": seconds})
                bar.update(1)
            if fingerprint is not None:
                _keep_detections(resume_dir, folder.name, fingerprint, kept)
    finally:
        bar.close()

    evaluated = [n for n in views if predictions[n]]  # the primary setting among them: checked before the loop
    options = dict(iou_threshold=iou_threshold, score_threshold=score_threshold, count_bins=count_bins)
    report = evaluate_objects(predictions[primary], annotations[primary], **options)
    combined = evaluate_objects([p for n in evaluated for p in predictions[n]],
                                [a for n in evaluated for a in annotations[n]], **options)
    report["per_num_views"] = combined["per_num_views"]
    report["by_num_views"], report["roc"] = {}, {}
    for n in evaluated:
        single = evaluate_objects(predictions[n], annotations[n], **options)
        report["by_num_views"][str(n)] = {"per_type": single["per_type"],
                                          "per_object_count": single["per_object_count"]}
        outcomes = [object_outcomes(p, a, iou_threshold=iou_threshold, score_threshold=score_threshold)
                    for p, a in zip(predictions[n], annotations[n])]
        pooled = summarize_outcomes(outcomes)
        report["roc"][str(n)] = {**roc_curve_points(np.concatenate([o.scores for o in outcomes]),
                                                    np.concatenate([o.labels for o in outcomes])),
                                 "object_AUROC_pooled": pooled["object_AUROC_pooled"]}
    report["per_split"] = {}
    for name in SUBSET_SPLITS:
        members = set(dataset.splits.get(name, ())) if name != split else set()
        rows = [i for i, a in enumerate(annotations[primary]) if a.name in members]
        if rows:
            subset = evaluate_objects([predictions[primary][i] for i in rows], [annotations[primary][i] for i in rows],
                                      **options)
            subset.pop("per_num_views", None)
            report["per_split"][name] = subset
    report["primary_views"] = primary
    report["per_scene"] = per_scene
    report["skipped"] = skipped
    report["settings"] = {"root": str(Path(root).resolve()), "split": split,
                          "splits_file": str(dataset.splits_file) if dataset.splits_file else None,
                          "family": dataset.family,
                          "views": evaluated, "image_size": _size_list(image_size),
                          "iou_threshold": iou_threshold, "score_threshold": score_threshold, "boxes": boxes,
                          "box_source": box_source, "count_bins": [list(b) for b in count_bins],
                          "num_scenes": len(folders),
                          **detector_settings(detector)}
    return report


def non_negative(kind=float):
    """argparse ``type`` for a number >= 0: a negative value is a usage error naming the option.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> _ = parser.add_argument("--test-flips", type=non_negative(int))
        >>> parser.parse_args(["--test-flips", "2"]).test_flips
        2
    """
    def parse(text: str):
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the expected type after it ("invalid int value")
    return parse


def unit_interval(*, closed: bool):
    """argparse ``type`` for a probability: in [0, 1] when ``closed``, else in (0, 1); a value outside is a
    usage error naming the option, raised before any file is read.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> _ = parser.add_argument("--carve-threshold", type=unit_interval(closed=False))
        >>> parser.parse_args(["--carve-threshold", "0.65"]).carve_threshold
        0.65
    """
    def parse(text: str) -> float:
        value = float(text)
        inside = 0.0 <= value <= 1.0 if closed else 0.0 < value < 1.0
        if not inside:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be in {'[0, 1]' if closed else '(0, 1)'}, got {text}")
        return value

    parse.__name__ = "float"
    return parse


#: Detector attributes that change its boxes or scores at test time, recorded in a report's settings.
DETECTOR_SETTINGS = ("density_threshold", "test_flips", "box_consensus", "register_objects", "merge_floating",
                     "box_delta_scale", "objectness_threshold", "box_nms_iou")


def detector_settings(detector) -> dict:
    """The test-time settings of ``detector`` (:data:`DETECTOR_SETTINGS` and its scene model's
    ``carve_threshold``), those it has: a report states what produced it, whichever path ran it."""
    settings = {name: getattr(detector, name) for name in DETECTOR_SETTINGS if hasattr(detector, name)}
    scene_model = getattr(detector, "scene_model", None)
    if hasattr(scene_model, "carve_threshold"):
        settings["carve_threshold"] = scene_model.carve_threshold
    return {k: v.item() if hasattr(v, "item") else v for k, v in settings.items()}


def _size_list(image_size):
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return [image_size, image_size]
    return [int(s) for s in image_size]


def _json_ready(value):
    """Replace NaN/inf floats by None and numpy scalars by Python ones (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _value(x):
    return math.nan if x is None else x


def write_report(report: dict, out_dir) -> dict[str, Path]:
    """Write ``report.json`` (atomic) and the figures into ``out_dir``; returns ``{name: path}``.

    Figures (matplotlib, Agg): ``roc.png`` (pooled ROC per number of views), ``per_type_accuracy.png``
    (object accuracy per anomaly type at the primary number of views), ``auroc_vs_views.png`` and
    ``auroc_vs_object_count.png`` (scene-mean and pooled AUROC). The detections an interrupted evaluation kept in
    ``out_dir / PARTIAL_DIR`` are removed once everything is written: the report holds them now.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from oddsparse.utils.checkpoint import atomic_write_bytes

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    text = json.dumps(_json_ready(report), indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(out_dir / "report.json", text.encode())
    written["report"] = out_dir / "report.json"
    primary = report.get("primary_views")

    fig, axis = plt.subplots(figsize=(4.5, 4.5))
    for n, curve in report.get("roc", {}).items():
        if curve["fpr"]:
            auroc = curve.get("object_AUROC_pooled")
            axis.plot(curve["fpr"], curve["tpr"], drawstyle="steps-post",
                      label=f"{n} views (AUROC {auroc:.3f})" if auroc is not None else f"{n} views")
    axis.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    axis.set_title("object ROC (pooled)")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.01)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure(fig, out_dir / "roc.png")
    written["roc"] = out_dir / "roc.png"

    per_type = report.get("per_type", {})
    names = list(per_type)
    fig, axis = plt.subplots(figsize=(max(4.0, 0.8 * len(names) + 2), 3.5))
    x = np.arange(len(names))
    axis.bar(x - 0.2, [_value(per_type[t]["object_accuracy"]) for t in names], 0.4, label="scene mean")
    axis.bar(x + 0.2, [_value(per_type[t]["object_accuracy_pooled"]) for t in names], 0.4, label="pooled")
    axis.set_xticks(x, names)
    axis.set_ylim(0, 1)
    axis.set_ylabel("object accuracy")
    axis.set_title(f"accuracy per anomaly type ({primary} views)")
    if names:
        axis.legend(fontsize=8)
    else:
        axis.text(0.5, 0.5, "no anomalies in the split", ha="center", va="center", transform=axis.transAxes)
    fig.tight_layout()
    save_figure(fig, out_dir / "per_type_accuracy.png")
    written["per_type_accuracy"] = out_dir / "per_type_accuracy.png"

    for key, name, xlabel, title in (("per_num_views", "auroc_vs_views", "number of input views", "AUROC vs views"),
                                     ("per_object_count", "auroc_vs_object_count", "objects per scene",
                                      f"AUROC vs object count ({primary} views)")):
        groups = report.get(key, {})
        labels = list(groups)
        fig, axis = plt.subplots(figsize=(4.5, 3.5))
        x = np.arange(len(labels))
        for metric, style in (("object_AUROC", "o-"), ("object_AUROC_pooled", "s--")):
            axis.plot(x, [_value(groups[k][metric]) for k in labels], style, label=metric)
        axis.set_xticks(x, labels)
        axis.set_ylim(0, 1.02)
        axis.set_xlabel(xlabel)
        axis.set_ylabel("object AUROC")
        axis.set_title(title)
        axis.legend(fontsize=8)
        fig.tight_layout()
        save_figure(fig, out_dir / f"{name}.png")
        written[name] = out_dir / f"{name}.png"
    shutil.rmtree(out_dir / PARTIAL_DIR, ignore_errors=True)
    return written


# ------------------------------------------------------------------------------------------ CLI
def parse_int_list(text: str) -> list[int]:
    """``"1,3,5"`` -> [1, 3, 5] (for argparse)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    return values


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``oddsparse eval``."""
    parser.add_argument("--checkpoint", required=True, type=Path, help="detector checkpoint (e.g. <run>/final.pt)")
    parser.add_argument("--data", type=Path, default=None,
                        help="dataset root (default: the checkpoint's data_root)")
    parser.add_argument("--split", default="test", help="split to evaluate (default test)")
    parser.add_argument("--views", type=parse_int_list, default=list(DEFAULT_VIEWS),
                        help="numbers of input views, comma-separated (default 1,3,5,10,20)")
    parser.add_argument("--primary-views", type=int, default=None,
                        help="views of the top-level metrics (default: the largest of --views)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="image height = width (default: the checkpoint's image_size)")
    parser.add_argument("--family", choices=("auto", "toys", "parts"), default=None,
                        help="dataset family without a splits file (default: the checkpoint's family)")
    parser.add_argument("--max-scenes", type=int, default=None, help="evaluate only the first scenes")
    parser.add_argument("--boxes", choices=("predicted", "gt"), default="predicted",
                        help="predicted (the benchmark) or gt (score ground-truth boxes: matcher-only diagnostic)")
    parser.add_argument("--box-source", choices=BOX_SOURCES, default=None,
                        help="GT boxes: metadata (as published) or observed (fitted to what every stored view shows "
                             "of each object; the published boxes are centred on the objects' origins); default: "
                             "the checkpoint's training box_source, else metadata")
    parser.add_argument("--carve-threshold", type=unit_interval(closed=False), default=None,
                        help="foreground probability for carving (default: the checkpoint's)")
    parser.add_argument("--density-threshold", type=unit_interval(closed=False), default=None,
                        help="voxel opacity of object voxels for boxes and tokens (default: the checkpoint's)")
    parser.add_argument("--test-flips", type=non_negative(int), default=None,
                        help="average the anomaly logits over this many extra readings with random per-object "
                             "half-turns of the boxes (default: the checkpoint's, 0 unless set)")
    parser.add_argument("--box-consensus", action=argparse.BooleanOptionalAction, default=None,
                        help="the estimated boxes of a scene agree on one size and ground plane "
                             "(default: the checkpoint's)")
    parser.add_argument("--register-objects", action=argparse.BooleanOptionalAction, default=None,
                        help="read each object volume in its scene's reference frame before scoring "
                             "(default: the checkpoint's; not for variant A)")
    parser.add_argument("--merge-floating", type=non_negative(float), default=None,
                        help="DBSCAN clusters more than this many voxels above the ground join the grounded "
                             "cluster below them (default: the checkpoint's; 0: off)")
    parser.add_argument("--box-delta-scale", type=non_negative(float), default=None,
                        help="multiply the box head's corrections by this (default: the checkpoint's; 1: as trained, "
                             "0: the DBSCAN boxes)")
    parser.add_argument("--objectness-threshold", type=unit_interval(closed=True), default=None,
                        help="drop the proposals the box head gives a lower objectness probability, in [0, 1] "
                             "(default: the checkpoint's; 0: keep every proposal)")
    parser.add_argument("--box-nms-iou", type=unit_interval(closed=True), default=None,
                        help="of the box head's boxes of a scene that overlap above this 3D IoU keep the one of "
                             "highest objectness, in [0, 1] (default: the checkpoint's; 0: off)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (report.json + figures)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_diagnostic_arguments(parser: argparse.ArgumentParser, *, scenes: int) -> None:
    """Options shared by the diagnostic recipes on a checkpoint's dataset (``recipes/report_*.py``)."""
    parser.add_argument("--checkpoint", required=True, help="detector checkpoint (e.g. <run>/final.pt)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (JSON + figures)")
    parser.add_argument("--data", default="", help="dataset root (default: the checkpoint's)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--scenes", type=int, default=scenes, help="first scenes of the split (0: all)")
    parser.add_argument("--views", type=int, default=0, help="input views (default: the checkpoint's)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--box-source", choices=BOX_SOURCES, default="metadata",
                        help="GT boxes: metadata (as published) or observed (fitted to what the stored views show)")


def open_diagnostic(args: argparse.Namespace):
    """Load the checkpoint of :func:`add_diagnostic_arguments` options (weights only, eval mode).

    Returns ``(detector, checkpoint, root, folders, views, image_size)``: the scene folders are the first
    ``args.scenes`` of the split (all with 0); exits with a message naming the root when there are none.
    """
    from oddsparse.data import SceneDataset
    from oddsparse.models.detector import load_detector

    if args.threads:
        torch.set_num_threads(args.threads)
    detector, checkpoint = load_detector(args.checkpoint)
    detector.eval()
    root = args.data or checkpoint["data_root"]
    views = args.views or checkpoint["config"]["input_views"]
    dataset = SceneDataset(root, args.split, family=checkpoint.get("family", "auto"), num_input_views=None,
                           num_target_views=0)
    folders = dataset.scenes[:args.scenes] if args.scenes > 0 else list(dataset.scenes)
    if not folders:
        raise InputError(f"{root}: split {args.split!r} holds no scenes")
    return detector, checkpoint, root, folders, views, tuple(checkpoint["image_size"])


def read_scene_with_boxes(folder, views: int, image_size, box_source: str = "metadata"):
    """The scene of ``folder`` at ``views`` evenly spaced input views, and its GT boxes (``box_source``, see
    :func:`~oddsparse.data.scene_io.read_scene`) in canonical form."""
    from oddsparse.data.scene_io import read_scene, read_scene_metadata
    from oddsparse.models.detector import canonical_boxes

    selection = evenly_spaced_views(read_scene_metadata(folder).num_views, views)
    scene = read_scene(folder, views=selection, image_size=image_size, box_source=box_source)
    gt = as_yaw_boxes(scene.boxes)
    return scene, canonical_boxes(YawBoxes(gt.center.float(), gt.size.float(), gt.yaw.float()))


def run_eval(args: argparse.Namespace) -> int:
    """``oddsparse eval``: load the checkpoint (weights only), evaluate, write report.json and figures."""
    from oddsparse.models.detector import load_detector

    detector, checkpoint = load_detector(args.checkpoint, map_location=args.device)
    detector.to(args.device)
    for owner, name in ((detector.scene_model, "carve_threshold"), (detector, "density_threshold")):
        if getattr(args, name) is not None:  # in (0, 1): checked when parsed
            setattr(owner, name, getattr(args, name))
    if args.test_flips is not None:
        detector.test_flips = args.test_flips
    if args.box_consensus is not None:
        detector.box_consensus = args.box_consensus
    if args.merge_floating is not None:
        detector.merge_floating = float(args.merge_floating)
    if args.box_delta_scale is not None:
        detector.box_delta_scale = float(args.box_delta_scale)
    if args.objectness_threshold is not None:  # in [0, 1]: checked when parsed
        detector.objectness_threshold = float(args.objectness_threshold)
    if args.box_nms_iou is not None:  # in [0, 1]: checked when parsed
        detector.box_nms_iou = float(args.box_nms_iou)
    if args.register_objects is not None:
        if args.register_objects and detector.variant == "A":
            raise InputError(f"{args.checkpoint}: variant A compares nothing; --register-objects is not for it")
        detector.register_objects = args.register_objects
    root = args.data if args.data is not None else checkpoint.get("data_root")
    if root is None:
        raise InputError(f"{args.checkpoint}: field 'data_root' missing; pass --data ROOT")
    if args.image_size is not None:
        image_size = args.image_size
    else:
        stored = checkpoint.get("image_size")
        image_size = tuple(int(s) for s in stored) if stored is not None else None
    family = args.family or checkpoint.get("family") or "auto"
    box_source = args.box_source or checkpoint.get("config", {}).get("box_source") or "metadata"
    report = evaluate_detector(detector, root, args.split, views=args.views, image_size=image_size, family=family,
                               primary_views=args.primary_views, max_scenes=args.max_scenes, boxes=args.boxes,
                               box_source=box_source, progress=not args.quiet, resume_dir=args.out / PARTIAL_DIR)
    report["settings"]["checkpoint"] = str(Path(args.checkpoint).resolve())
    report["settings"]["stage"] = checkpoint.get("stage")
    report["settings"]["variant"] = checkpoint.get("detector_kwargs", {}).get("variant")
    written = write_report(report, args.out)  # removes the kept detections of PARTIAL_DIR
    print(f"object_AUROC={_format(report['object_AUROC'])} object_accuracy={_format(report['object_accuracy'])} "
          f"object_AUROC_pooled={_format(report['object_AUROC_pooled'])} "
          f"object_accuracy_pooled={_format(report['object_accuracy_pooled'])} views={report['primary_views']} "
          f"scenes={report['num_scenes']}")
    for name, subset in report.get("per_split", {}).items():
        print(f"  {name}: object_AUROC={_format(subset['object_AUROC'])} "
              f"object_accuracy={_format(subset['object_accuracy'])} scenes={subset['num_scenes']}")
    print(f"wrote {written['report']}")
    return 0


def _format(value) -> str:
    return "nan" if value is None else f"{value:.4f}"

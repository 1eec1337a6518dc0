"""Matcher vs parameter-free baselines on the same GT-box object volumes of held-out scenes.

    python recipes/report_baselines.py --checkpoint runs/partsad/final.pt --out docs/baselines
    python recipes/report_baselines.py --checkpoint runs/partsad/final.pt --out docs/baselines_gt --gt-masks

For each scene (evenly spaced input views, as ``oddsparse eval``) the checkpoint's scene model gives
the object volumes of the GT boxes (:meth:`OddOneOutDetector.object_volumes`: F_v, beta, opacity), the
same ones the matcher scores with ``oddsparse eval --gt-boxes``. Each scorer then ranks the objects of
a scene: ``matcher`` (the checkpoint's), ``distance_opacity`` / ``distance_F_v`` / ``distance_beta`` /
(``distance_colour`` for a detector with ``view_colour``) / ``distance_all``
(:func:`oddsparse.eval.baselines.distance_to_others` on those channels: the median
distance to the scene's other objects, no parameters), ``distance_carved`` (the same distance on the
carved voxels alone, the visual hull that the scene model fills, as 0/1 occupancy: what the
foreground gives before any learned field), ``fewer_cells`` (fewer occupied cells = more
anomalous: the "less material" rule) and, with ``--fit-scenes N``, ``distance_fit``: a logistic
regression of the labels on the matcher's three distance inputs (:meth:`OddOneOutDetector.distance_inputs`)
of the GT-box objects of the first N scenes of ``--fit-split`` (default train), the least a matcher given
those inputs should read. ``--gt-masks`` carves with the GT masks instead of the
predicted foreground (an upper bound for the carving). The report also gives how well the predicted
foreground (at the carving threshold) matches the GT object masks of the input views:
``foreground`` IoU, false positives and false negatives as fractions of the GT foreground, means
over the scenes. ``--roi-size N`` samples the object volumes at
N cells per axis instead of the checkpoint's (does a finer volume hold more of the difference?); the
matcher, built for its own resolution, is then left out. Writes ``baselines.json`` (object_AUROC per
scene and pooled, per anomaly type, and each scene's, for every scorer: ``per_scene`` rows as in an
``oddsparse eval`` report, so :func:`oddsparse.eval.bootstrap_object_auroc` pairs two scorers, or two
reports' scorers, scene by scene) and ``baselines.png`` (per-type bars); a learned matcher that compares
instances should beat every distance baseline.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:
    import oddsparse  # noqa: F401
except ModuleNotFoundError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from oddsparse.eval.baselines import distance_to_others
from oddsparse.eval.evaluate import add_diagnostic_arguments, open_diagnostic, read_scene_with_boxes
from oddsparse.eval.metrics import SceneAnnotation, ScenePrediction, binary_auroc, evaluate_objects
from oddsparse.geometry.roi import roi_sample
from oddsparse.models.encoder import upsample_logits
from oddsparse.utils.checkpoint import atomic_write_bytes
from oddsparse.utils.figures import save_figure

METRICS = ("object_AUROC", "object_AUROC_pooled")


def scorer_scores(detector, volumes: torch.Tensor, scene_index: torch.Tensor,
                  matcher: bool = True, carved: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """(O,) scores of every scorer (higher = more anomalous) for packed GT-box volumes (O, C, S, S, S);
    ``matcher=False`` leaves the checkpoint's matcher out; ``carved`` (O, 1, S, S, S), the carved occupancy
    sampled on the same boxes (:func:`carved_volumes`), adds ``distance_carved``."""
    groups = dict(detector.volume_parts(volumes), all=volumes)
    opacity = groups["opacity"]
    scores = {}
    if matcher:
        with torch.no_grad():
            logits, _ = detector.score_volumes(volumes, scene_index)
        scores["matcher"] = torch.sigmoid(logits)
    for name in ("opacity", "F_v", "beta", "colour", "all"):  # colour: a detector with view_colour
        if name in groups:
            scores[f"distance_{name}"] = distance_to_others(groups[name], scene_index)
    if carved is not None:
        scores["distance_carved"] = distance_to_others(carved, scene_index)
    cells = (opacity[:, 0] > detector.density_threshold).flatten(1).sum(1).to(volumes.dtype)
    scores["fewer_cells"] = -cells
    return scores


def gt_box_volumes(detector, folder, views: int, image_size, box_source: str, gt_masks: bool = False):
    """One scene read at ``views`` evenly spaced input views and run through the scene model (carving from the
    predicted foreground, or the GT masks with ``gt_masks``): ``(scene, GT boxes, scene_index, scene output,
    object volumes of the GT boxes)``."""
    scene, gt = read_scene_with_boxes(folder, views, image_size, box_source)
    scene_index = torch.zeros(gt.center.shape[0], dtype=torch.int64)
    with torch.no_grad():
        masks = scene.masks.any(0)[None] if gt_masks else None
        output = detector.scene_model(scene.images[None], scene.K[None], scene.world_to_cam[None], carve_masks=masks)
        volumes = detector.object_volumes(output, gt, scene_index)
    return scene, gt, scene_index, output, volumes


def fitted_distance_weights(detector, root, split: str, scenes: int, views: int, image_size, box_source: str, *,
                            family: str = "auto", gt_masks: bool = False) -> tuple[list[float], float] | None:
    """:func:`~oddsparse.eval.baselines.fit_distance_weights` on the distance inputs of the GT-box objects of the
    first ``scenes`` scenes of ``split`` (the checkpoint's scene model carving from the predicted foreground, or
    from the GT masks with ``gt_masks``; ``views`` evenly spaced input views): the ``distance_fit`` scorer's
    weights and bias."""
    from tqdm.auto import tqdm

    from oddsparse.data import SceneDataset
    from oddsparse.eval.baselines import fit_distance_weights

    dataset = SceneDataset(root, split, family=family, num_input_views=None, num_target_views=0)
    columns, labels = [], []
    for folder in tqdm(dataset.scenes[:scenes], desc=f"distance_fit ({split})", unit="scene"):
        scene, gt, scene_index, _, volumes = gt_box_volumes(detector, folder, views, image_size, box_source, gt_masks)
        columns.append(detector.distance_inputs(volumes, scene_index))
        labels.append(scene.labels)
    return fit_distance_weights(torch.cat(columns).numpy(), torch.cat(labels).numpy())


def carved_volumes(detector, output, boxes, scene_index: torch.Tensor) -> torch.Tensor:
    """(O, 1, S, S, S): the scene output's carved voxels as 0/1 occupancy, sampled on ``boxes`` as the object
    volumes are (``roi_size`` cells, ``roi_margin``)."""
    occupancy = output.occupancy
    return roi_sample(occupancy.replace(feats=torch.ones_like(occupancy.feats[:, :1])), boxes, scene_index,
                      out_size=detector.roi_size, margin=detector.roi_margin)


def foreground_agreement(logits: torch.Tensor, masks: torch.Tensor, threshold: float,
                         floor: torch.Tensor | None = None) -> dict[str, float]:
    """Predicted foreground (``sigmoid(logits) >= threshold``, logits (V, h, w) upsampled to the masks' size when
    coarser) against GT foreground masks (V, H, W): IoU, and false positives and false negatives as fractions of
    the GT foreground pixels. With the scene's floor mask (V, H, W), the false positives split into those on the
    floor (``false_positive_floor``) and those beyond it (``false_positive_beyond_floor``: sky, environment)."""
    if logits.shape[-2:] != masks.shape[-2:]:
        logits = upsample_logits(logits[:, None], tuple(masks.shape[-2:]))[:, 0]
    predicted, true = torch.sigmoid(logits) >= threshold, masks.bool()
    area = max(int(true.sum()), 1)
    result = {"IoU": float((predicted & true).sum() / max(int((predicted | true).sum()), 1)),
              "false_positive": float((predicted & ~true).sum()) / area,
              "false_negative": float((~predicted & true).sum()) / area}
    if floor is not None:
        floor = floor.bool() & ~true
        result["false_positive_floor"] = float((predicted & floor).sum()) / area
        result["false_positive_beyond_floor"] = float((predicted & ~true & ~floor).sum()) / area
    return result


def summarize(report: dict) -> dict:
    """The AUROC entries of an :func:`evaluate_objects` report, overall and per anomaly type."""
    return {**{k: report[k] for k in METRICS},
            "per_type": {t: {k: v[k] for k in METRICS} for t, v in report["per_type"].items()}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_diagnostic_arguments(parser, scenes=0)
    parser.add_argument("--gt-masks", action="store_true", help="carve with the GT masks (upper bound)")
    parser.add_argument("--fit-scenes", type=int, default=0,
                        help="fit the distance_fit scorer on the first N scenes of --fit-split (0: no distance_fit)")
    parser.add_argument("--fit-split", default="train", help="split whose scenes --fit-scenes reads")
    parser.add_argument("--roi-size", type=int, default=0,
                        help="object-volume cells per axis for the distance scorers (0: the checkpoint's; "
                             "another size leaves the matcher out)")
    args = parser.parse_args(argv)
    if args.roi_size < 0:
        parser.error(f"--roi-size must be >= 0, got {args.roi_size}")
    if args.fit_scenes < 0:
        parser.error(f"--fit-scenes must be >= 0, got {args.fit_scenes}")
    detector, checkpoint, root, folders, views, image_size = open_diagnostic(args)
    with_matcher = args.roi_size in (0, detector.roi_size)
    detector.roi_size = args.roi_size or detector.roi_size
    from tqdm.auto import tqdm

    fit = None
    if args.fit_scenes:
        fit = fitted_distance_weights(detector, root, args.fit_split, args.fit_scenes, views, image_size,
                                      args.box_source, family=checkpoint.get("family", "auto"), gt_masks=args.gt_masks)
        print(f"distance_fit on {args.fit_scenes} {args.fit_split} scenes: weights "
              + ("none (one class)" if fit is None else ", ".join(f"{w:.3f}" for w in fit[0]) + f", bias {fit[1]:.3f}"))
    predictions: dict[str, list] = {}
    per_scene: dict[str, list] = {}  # GT boxes: every object is matched, so a scene's AUROC is that of its scores
    annotations, agreement = [], []
    for folder in tqdm(folders, desc="object volumes", unit="scene"):
        scene, gt, scene_index, output, volumes = gt_box_volumes(detector, folder, views, image_size, args.box_source,
                                                                 args.gt_masks)
        with torch.no_grad():
            carved = carved_volumes(detector, output, gt, scene_index)
        agreement.append(foreground_agreement(output.foreground_logits[0], scene.masks.any(0),
                                              detector.scene_model.carve_threshold, scene.floor_mask))
        scores = scorer_scores(detector, volumes, scene_index, matcher=with_matcher, carved=carved)
        if fit is not None:
            scores["distance_fit"] = detector.distance_inputs(volumes, scene_index) @ volumes.new_tensor(fit[0]) + fit[1]
        for name, values in scores.items():
            predictions.setdefault(name, []).append(ScenePrediction(boxes=gt, scores=values))
            per_scene.setdefault(name, []).append({"name": scene.name,
                                                   "object_AUROC": binary_auroc(values.numpy(), scene.labels.numpy())})
        types = [t if t else "normal" for t in scene.anomaly_types]
        annotations.append(SceneAnnotation(boxes=gt, labels=scene.labels.bool(), types=types, num_views=views,
                                           name=scene.name))
    results = {name: dict(summarize(evaluate_objects(p, annotations)), per_scene=per_scene[name])
               for name, p in predictions.items()}
    report = {"checkpoint": str(args.checkpoint), "root": str(root), "split": args.split,
              "box_source": args.box_source, "scenes": len(folders),
              "views": views, "carving": "gt_masks" if args.gt_masks else "predicted_foreground",
              "roi_size": detector.roi_size,
              "distance_fit": None if fit is None else {"split": args.fit_split, "scenes": args.fit_scenes,
                                                        "weights": dict(zip(detector.distance_groups, fit[0])),
                                                        "bias": fit[1]},
              "foreground": {key: float(np.mean([a[key] for a in agreement])) for key in agreement[0]
                             if all(key in a for a in agreement)},  # the floor split where every scene has a floor mask
              "scorers": results}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "baselines.json", (json.dumps(report, indent=2) + "\n").encode())

    types = sorted({t for r in results.values() for t in r["per_type"]})
    print(f"{'scorer':18s} {'AUROC':>7s} {'pooled':>7s} " + " ".join(f"{t:>6s}" for t in types))
    for name, r in results.items():
        cells = [r["per_type"].get(t, {}).get("object_AUROC") for t in types]
        print(f"{name:18s} {_fmt(r['object_AUROC']):>7s} {_fmt(r['object_AUROC_pooled']):>7s} "
              + " ".join(f"{_fmt(v):>6s}" for v in cells))
    print("predicted foreground vs GT masks (input views, mean over scenes): "
          + ", ".join(f"{key} {value:.3f}" for key, value in report["foreground"].items()))
    _figure(results, types, args.out / "baselines.png",
            f"GT boxes, {len(folders)} {args.split} scenes, {detector.roi_size}^3 volumes, carving from "
            + ("GT masks" if args.gt_masks else "the predicted foreground"))
    print(f"wrote {args.out / 'baselines.json'} and {args.out / 'baselines.png'}")
    return report


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _figure(results: dict, types: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["all"] + types
    names = list(results)
    fig, axis = plt.subplots(figsize=(1.2 + 1.3 * len(columns), 3.6))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        r = results[name]
        values = [r["object_AUROC"]] + [r["per_type"].get(t, {}).get("object_AUROC") for t in types]
        x = np.arange(len(columns)) + (i - (len(names) - 1) / 2) * width
        axis.bar(x, [np.nan if v is None else v for v in values], width, label=name)
    axis.axhline(0.5, color="0.6", linestyle=":", linewidth=1)
    axis.set_xticks(np.arange(len(columns)), columns)
    axis.set_ylim(0, 1)
    axis.set_ylabel("object_AUROC (per scene)")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7, ncol=3, loc="upper left")
    fig.tight_layout()
    save_figure(fig, path, dpi=130)


if __name__ == "__main__":
    main()

"""Box-estimation report: DBSCAN proposals vs box-head refinement against the GT boxes of held-out scenes.

    python recipes/report_boxes.py --checkpoint runs/partsad/final.pt --out docs/boxes --scenes 60

For each scene (evenly spaced input views, as ``oddsparse eval``) the scene model's density gives the
DBSCAN proposals (:meth:`OddOneOutDetector.propose_boxes`); a checkpoint with a box head also gives the
refined boxes (:meth:`OddOneOutDetector.refine_boxes`). Each set is matched one-to-one to the GT boxes
(Hungarian on 3D IoU) and the script prints and writes (``boxes.json``) box recall at IoU 0.25 / 0.5 /
0.7, the median IoU of the best match of every GT box, and the number of boxes per GT object, with the
component oracle of the proposals (recall when the proposal's height, or its whole size, is replaced
by the GT's: which part of a box is wrong), the boxes the detector reports (``final``:
:meth:`OddOneOutDetector.find_boxes`, with the checkpoint's box consensus; ``--box-consensus`` /
``--no-box-consensus`` override it) and, per set, recall at IoU 0.5 by GT object height
(``recall_by_height``, bins of ``HEIGHT_BINS`` metres: a flat object is a voxel or two tall) and by
scene category (``recall_by_category``: :attr:`Scene.category`, the word before the first ``_`` of
the scene's name, e.g. ``lamp`` for ``lamp_0048``) and by the GT object's anomaly type (``recall_by_type``:
``normal`` or the type, e.g. ``frac``: does a shape change lose its object's box?). With a box head,
three ablations of its output say which of its deltas a category gains or loses by (:func:`head_ablations`:
proposals kept by objectness alone, and the deltas without or with only the size),
``dropped_by_objectness_by_type`` counts the GT objects that a proposal found (IoU > 0.25) but the head's
objectness dropped, leaving them without a final box (:func:`objectness_drops`), and
``head_size_changes_by_category`` gives the median footprint and height ratios the head applies to the
matched proposals against those their GT boxes would need (:func:`size_changes`). ``--merge-floating V``
sets the detector's ``merge_floating`` (DBSCAN clusters more than V voxels above the ground join the grounded
cluster below them). Figures: ``boxes_bev.png`` (bird's-eye views, GT green /
red for anomalous, proposals grey, refined blue) and ``boxes_iou.png`` (histogram of the GT boxes'
best IoU). No GT reaches the detector: GT boxes are used for scoring only.
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

from oddsparse.eval.evaluate import add_diagnostic_arguments, non_negative, open_diagnostic, read_scene_with_boxes
from oddsparse.geometry.boxes import YawBoxes, match_boxes
from oddsparse.models.box_head import apply_box_deltas
from oddsparse.models.detector import canonical_boxes
from oddsparse.utils.checkpoint import atomic_write_bytes
from oddsparse.utils.figures import save_figure

THRESHOLDS = (0.25, 0.5, 0.7)
#: Edges (metres) of the GT-height bins of ``recall_by_height``.
HEIGHT_BINS = (0.0, 0.03, 0.05, 0.08, float("inf"))


def best_ious(gt: YawBoxes, boxes: YawBoxes) -> np.ndarray:
    """(G,) IoU of each GT box with its one-to-one (Hungarian) match among ``boxes``, 0 where unmatched."""
    if boxes.center.shape[0] == 0:
        return np.zeros(gt.center.shape[0])
    _, iou = match_boxes(gt, boxes, 0.0)
    return iou.numpy()


def with_gt_part(proposals: YawBoxes, gt: YawBoxes, part: str) -> YawBoxes:
    """Oracle proposals: each matched proposal takes the GT's height (``"height"``) or whole size (``"size"``,
    in canonical order: both are canonical boxes), keeping its centre in xy and its bottom."""
    if proposals.center.shape[0] == 0:
        return proposals
    match, _ = match_boxes(proposals, gt, 0.0)
    center, size = proposals.center.clone(), proposals.size.clone()
    for p, g in enumerate(match.tolist()):
        if g < 0:
            continue
        bottom = center[p, 2] - size[p, 2] / 2
        if part == "height":
            size[p, 2] = gt.size[g, 2]
        else:
            size[p] = canonical_boxes(YawBoxes(gt.center[g:g + 1], gt.size[g:g + 1], gt.yaw[g:g + 1])).size[0]
        center[p, 2] = bottom + size[p, 2] / 2  # the box keeps its bottom (objects rest on the floor)
    return YawBoxes(center, size, proposals.yaw)


#: head_ablations: the delta components (centre 0-2, log size 3-5, yaw 6) each ablation keeps.
HEAD_ABLATIONS = {"head_objectness_only": (), "head_without_size": (0, 1, 2, 6), "head_size_only": (3, 4, 5)}


def objectness_drops(gt: YawBoxes, proposals: YawBoxes, kept, final_ious: np.ndarray, *, found: float = 0.25,
                     threshold: float = 0.5) -> np.ndarray:
    """(G,) bool: the GT objects lost to the box head's objectness. A GT box is lost so when its one-to-one
    (Hungarian) proposal has IoU above ``found``, the head dropped that proposal (``kept`` (P,) False), and no
    final box matches the GT box (``final_ious``, :func:`best_ious` of the final boxes, at most ``threshold``)."""
    dropped = np.zeros(gt.center.shape[0], dtype=bool)
    if proposals.center.shape[0] == 0:
        return dropped
    index, iou = match_boxes(gt, proposals, 0.0)
    index, iou = index.numpy(), iou.numpy()
    hit = (index >= 0) & (iou > found)
    dropped[hit] = ~np.asarray(kept, dtype=bool)[index[hit]]
    return dropped & (np.asarray(final_ious) <= threshold)


def head_ablations(proposals: YawBoxes, deltas: torch.Tensor, keep: torch.Tensor) -> dict[str, YawBoxes]:
    """The box head's output taken apart: for each of :data:`HEAD_ABLATIONS`, the proposals kept by the
    head's objectness (``keep``, (P,) bool) moved by the head's ``deltas`` (P, 7) restricted to those
    components (the others zeroed), as canonical boxes."""
    out = {}
    for name, components in HEAD_ABLATIONS.items():
        partial = torch.zeros_like(deltas)
        partial[:, list(components)] = deltas[:, list(components)]
        moved = canonical_boxes(apply_box_deltas(proposals, partial))
        out[name] = YawBoxes(*(t[keep] for t in moved))
    return out


def size_changes(proposals: YawBoxes, refined: YawBoxes, gt: YawBoxes, min_iou: float = 0.25) -> np.ndarray:
    """(P, 4) per proposal: the head's footprint and height ratios (refined / proposal) and the ratios the
    proposal's matched GT box would need (GT / proposal; NaN where no GT box matches it at ``min_iou``).

    ``refined`` holds the head's box of every proposal (none dropped), in the same order. The footprint
    is ``sqrt(size_x * size_y)``, so that a box's x/y order (canonical form) does not matter."""
    def footprint(boxes):
        return (boxes.size[:, 0] * boxes.size[:, 1]).sqrt()

    out = np.full((proposals.center.shape[0], 4), np.nan)
    if not len(out):
        return out
    out[:, 0] = (footprint(refined) / footprint(proposals)).numpy()
    out[:, 1] = (refined.size[:, 2] / proposals.size[:, 2]).numpy()
    match, _ = match_boxes(proposals, gt, min_iou)
    rows = match >= 0
    out[rows.numpy(), 2] = (footprint(gt)[match[rows]] / footprint(proposals)[rows]).numpy()
    out[rows.numpy(), 3] = (gt.size[match[rows], 2] / proposals.size[rows, 2]).numpy()
    return out


def size_changes_by_category(changes: np.ndarray, categories: list) -> dict:
    """Medians of :func:`size_changes` rows per category, over the proposals matched to a GT box:
    ``{"duck": {"proposals": n, "head_footprint": r, "head_height": r, "needed_footprint": r, "needed_height": r}}``."""
    categories = np.asarray(categories)
    out = {}
    for c in sorted(set(categories.tolist())):
        rows = changes[(categories == c) & np.isfinite(changes[:, 2])]
        out[c] = {"proposals": int(len(rows)), **{name: float(np.median(rows[:, k])) if len(rows) else None
                  for k, name in enumerate(("head_footprint", "head_height", "needed_footprint", "needed_height"))}}
    return out


def summarize(ious: np.ndarray, num_boxes: int, num_gt: int) -> dict:
    return {**{f"recall@{t}": float((ious > t).mean()) for t in THRESHOLDS},
            "median_best_iou": float(np.median(ious)), "boxes_per_gt": num_boxes / max(1, num_gt)}


def recall_by_height(ious: np.ndarray, heights: np.ndarray, edges=HEIGHT_BINS, threshold: float = 0.5) -> dict:
    """Recall at IoU ``threshold`` of the GT objects whose height lies in each bin ``[edges[i], edges[i+1])``:
    ``{"0.03-0.05": {"objects": n, "recall@0.5": r or None}, ...}`` (None for an empty bin)."""
    out = {}
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (heights >= low) & (heights < high)
        name = f"{low:g}-{high:g}" if np.isfinite(high) else f">={low:g}"
        n = int(inside.sum())
        out[name] = {"objects": n, f"recall@{threshold:g}": float((ious[inside] > threshold).mean()) if n else None}
    return out


def recall_by_category(ious: np.ndarray, categories: list, threshold: float = 0.5) -> dict:
    """Recall at IoU ``threshold`` of the GT objects of each category: ``{"lamp": {"objects": n, "recall@0.5": r}}``."""
    categories = np.asarray(categories)
    return {c: {"objects": int((categories == c).sum()),
                f"recall@{threshold:g}": float((ious[categories == c] > threshold).mean())}
            for c in sorted(set(categories.tolist()))}


def draw_bev(axis, gt: YawBoxes, labels, proposals: YawBoxes, refined: YawBoxes | None, title: str) -> None:
    from oddsparse.geometry.boxes import yaw_boxes_to_corners

    def outline(boxes, **style):
        if boxes is None or boxes.center.shape[0] == 0:
            return
        corners = yaw_boxes_to_corners(boxes.center.double(), boxes.size.double(), boxes.yaw.double())
        for quad in corners[:, [0, 2, 6, 4, 0], :2].numpy():  # z- corners: x-y-, x-y+, x+y+, x+y-
            axis.plot(quad[:, 0], quad[:, 1], **style)

    outline(proposals, color="0.55", linestyle="--", linewidth=1)
    if refined is not None:
        outline(refined, color="tab:blue", linewidth=1.3)
    for i in range(gt.center.shape[0]):
        outline(YawBoxes(gt.center[i:i + 1], gt.size[i:i + 1], gt.yaw[i:i + 1]),
                color="tab:red" if bool(labels[i]) else "tab:green", linewidth=1.6)
    axis.set_aspect("equal")
    axis.set_title(title, fontsize=8)
    axis.tick_params(labelsize=6)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_diagnostic_arguments(parser, scenes=60)
    parser.add_argument("--figure-scenes", type=non_negative(int), default=6,
                        help="scenes drawn from above in boxes_bev.png (0: no such figure)")
    parser.add_argument("--box-consensus", action=argparse.BooleanOptionalAction, default=None,
                        help="scene-consensus boxes for the final set (default: the checkpoint's setting)")
    parser.add_argument("--merge-floating", type=non_negative(float), default=None,
                        help="the detector's merge_floating in voxels (default: the checkpoint's; 0: off)")
    args = parser.parse_args(argv)
    detector, checkpoint, root, folders, views, image_size = open_diagnostic(args)
    if args.box_consensus is not None:
        detector.box_consensus = args.box_consensus
    if args.merge_floating is not None:
        detector.merge_floating = float(args.merge_floating)
    has_head = detector.box_head is not None
    sets = (["proposals", "proposals_gt_height", "proposals_gt_size"]
            + (["refined", *HEAD_ABLATIONS] if has_head else []) + ["final"])
    ious = {name: [] for name in sets}
    heights, categories, types = [], [], []
    changes, change_categories = [], []  # the box head's size changes per proposal (size_changes)
    drops = []  # per GT object: lost to the head's objectness (objectness_drops)
    counts = {name: 0 for name in sets}
    drawn = []
    from tqdm.auto import tqdm

    for folder in tqdm(folders, desc="boxes", unit="scene"):
        scene, gt = read_scene_with_boxes(folder, views, image_size, args.box_source)
        with torch.no_grad():
            output = detector.scene_model(scene.images[None], scene.K[None], scene.world_to_cam[None])
            final, _, proposals, index, _ = detector.find_boxes(output, return_proposals=True)
            found = {"proposals": proposals, "proposals_gt_height": with_gt_part(proposals, gt, "height"),
                     "proposals_gt_size": with_gt_part(proposals, gt, "size")}
            if has_head:  # one head pass: every proposal's refined box, objectness and deltas
                refined, _, probability, deltas = detector.refine_boxes(output, proposals, index, keep_all=True,
                                                                        return_deltas=True)
                keep = detector.kept_proposals(probability)
                found["refined"] = YawBoxes(*(t[keep] for t in refined))
                found.update(head_ablations(proposals, deltas, keep))
                changes.append(size_changes(proposals, refined, gt))
                change_categories += [scene.category] * int(proposals.center.shape[0])
            found["final"] = canonical_boxes(final)
        heights.append(gt.size[:, 2].numpy())
        categories += [scene.category] * int(gt.center.shape[0])
        types += [t or "normal" for t in scene.anomaly_types]
        for name, boxes in found.items():
            ious[name].append(best_ious(gt, boxes))
            counts[name] += int(boxes.center.shape[0])
        if has_head:
            drops.append(objectness_drops(gt, proposals, keep.cpu().numpy(), ious["final"][-1]))
        if len(drawn) < args.figure_scenes:
            drawn.append((scene.name, gt, scene.labels, proposals, found.get("refined"),
                          ious["proposals"][-1], ious["refined"][-1] if has_head else None))
    num_gt = sum(len(v) for v in ious["proposals"])
    summary = {name: summarize(np.concatenate(ious[name]), counts[name], num_gt) for name in sets}
    heights = np.concatenate(heights)
    by_height = {name: recall_by_height(np.concatenate(ious[name]), heights) for name in sets}
    by_category = {name: recall_by_category(np.concatenate(ious[name]), categories) for name in sets}
    by_type = {name: recall_by_category(np.concatenate(ious[name]), types) for name in sets}
    report = {"checkpoint": str(args.checkpoint), "root": str(root), "split": args.split,
              "box_source": args.box_source, "scenes": len(folders),
              "views": views, "gt_objects": num_gt, "density_threshold": detector.density_threshold,
              "objectness_threshold": detector.objectness_threshold if has_head else None,
              "box_consensus": bool(detector.box_consensus), "merge_floating": float(detector.merge_floating),
              "summary": summary, "recall_by_height": by_height, "recall_by_category": by_category,
              "recall_by_type": by_type}
    if has_head:
        report["head_size_changes_by_category"] = size_changes_by_category(
            np.concatenate(changes) if changes else np.zeros((0, 4)), change_categories)
        dropped, types_array = np.concatenate(drops), np.asarray(types)
        report["dropped_by_objectness_by_type"] = {
            t: {"objects": int((types_array == t).sum()), "dropped": int(dropped[types_array == t].sum())}
            for t in sorted(set(types))}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "boxes.json", (json.dumps(report, indent=2) + "\n").encode())

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if drawn:  # --figure-scenes 0 draws none
        columns = min(3, len(drawn))
        rows = (len(drawn) + columns - 1) // columns
        fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows), squeeze=False)
        for axis in axes.flat:
            axis.set_visible(False)
        for axis, (name, gt, labels, proposals, refined, iou_p, iou_r) in zip(axes.flat, drawn):
            axis.set_visible(True)
            title = f"{name}: proposals IoU>0.5 {int((iou_p > 0.5).sum())}/{len(iou_p)}"
            if iou_r is not None:
                title += f", refined {int((iou_r > 0.5).sum())}"
            draw_bev(axis, gt, labels, proposals, refined, title)
        fig.suptitle("GT (green; red = anomalous), DBSCAN proposals (grey dashed), box head (blue)", fontsize=9)
        fig.tight_layout()
        save_figure(fig, args.out / "boxes_bev.png", dpi=130)

    fig, axis = plt.subplots(figsize=(4.8, 3.4))
    bins = np.linspace(0, 1, 21)
    for name, color in (("proposals", "0.5"), ("refined", "tab:blue")):
        if name in ious:
            values = np.concatenate(ious[name])
            axis.hist(values, bins=bins, histtype="step", linewidth=1.6, color=color,
                      label=f"{name} (recall@0.5 {summary[name]['recall@0.5']:.2f})")
    axis.axvline(0.5, color="0.7", linestyle=":")
    axis.set_xlabel("IoU of each GT box with its matched box")
    axis.set_ylabel("GT objects")
    axis.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    save_figure(fig, args.out / "boxes_iou.png", dpi=130)

    for name in sets:
        s = summary[name]
        print(f"{name:22s} " + " ".join(f"{k}={v:.3f}" for k, v in s.items()))
    print("recall@0.5 by GT height (m): " + "; ".join(
        f"{name} " + " ".join(f"{b}:{v['recall@0.5']:.2f}({v['objects']})" if v["recall@0.5"] is not None
                             else f"{b}:-(0)" for b, v in by_height[name].items()) for name in ("proposals", "final")))
    print("recall@0.5 by category: " + "; ".join(
        f"{name} " + " ".join(f"{c}:{v['recall@0.5']:.2f}({v['objects']})" for c, v in by_category[name].items())
        for name in ("proposals", "final")))
    print("recall@0.5 by type: " + "; ".join(
        f"{name} " + " ".join(f"{c}:{v['recall@0.5']:.2f}({v['objects']})" for c, v in by_type[name].items())
        for name in ("proposals", "proposals_gt_size", "final")))
    if has_head:
        print("lost to the head's objectness (found by a proposal, no final box): " + " ".join(
            f"{t}:{v['dropped']}/{v['objects']}" for t, v in report["dropped_by_objectness_by_type"].items()))
    return report


if __name__ == "__main__":
    main()

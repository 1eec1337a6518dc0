"""GT-box report: how a dataset's published boxes sit on what its views show, and what carving can match.

    python recipes/report_gt_boxes.py --data ../shared/data/toysad_sample --split all --out docs/gt_boxes_s21

No model is involved. For each scene of the split (the first ``--scenes``), every object's points from
all stored views (:func:`oddsparse.data.scene_io.object_points`) give:

- ``size_ratio``: the extent of the points along the published box's axes over the published size
  (1 where ``bbox[1]`` is the object's extent along its own axes);
- ``origin_offset``: the distance (metres) from the published centre (the object's ``location``) to the
  centre of that extent (0 where ``location`` is the box centre);
- ``outside``: the fraction of the points outside the published box;
- ``iou_published_observed``: the IoU of the published box and the observed box
  (:func:`oddsparse.data.observed_boxes`);

and the boxes carved from the GT masks of ``--views`` evenly spaced input views at ``--image-size``
on the recipe's grid (:func:`oddsparse.geometry.carve_occupancy`, then
:func:`oddsparse.geometry.boxes_from_occupancy`: what the detector's box stage starts from with a perfect
foreground) are matched one-to-one to either kind of GT box (``carved_iou_published``,
``carved_iou_observed``; recall at IoU 0.5 in the summary). Writes ``gt_boxes.json`` and
``gt_boxes.png`` (bird's-eye views of the first ``--figure-scenes`` scenes: object points, published
boxes dashed, observed solid, carved dotted; the anomalous objects in red).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

try:
    import oddsparse  # noqa: F401
except ModuleNotFoundError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from oddsparse.data import SceneDataset, read_scene
from oddsparse.data.scene_io import fit_observed_boxes, object_points, read_scene_metadata
from oddsparse.eval.evaluate import evenly_spaced_views, non_negative
from oddsparse.geometry import VoxelGrid, boxes_from_occupancy, carve_occupancy
from oddsparse.geometry.boxes import YawBoxes, as_yaw_boxes, box_iou_3d, yaw_to_rotation
from oddsparse.utils.checkpoint import atomic_write_bytes
from oddsparse.utils.figures import save_figure

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report_boxes import best_ious  # noqa: E402  (one-to-one matching of GT boxes, as the box report scores)


def centred_grid(shape: tuple[int, int, int], voxel_size: float) -> VoxelGrid:
    """The recipes' grid: ``shape`` voxels of ``voxel_size`` centred on the world origin in x, y, floor at z = 0."""
    x, y, _ = shape
    return VoxelGrid(shape=tuple(shape), voxel_size=voxel_size, origin=(-x * voxel_size / 2, -y * voxel_size / 2, 0.0))


def published_fit(points: torch.Tensor, boxes: YawBoxes, i: int) -> dict:
    """``size_ratio`` (3,), ``origin_offset`` and ``outside`` of object ``i``'s points against its published box."""
    if points.shape[0] == 0:
        return {"size_ratio": None, "origin_offset": None, "outside": None}
    rotation = yaw_to_rotation(boxes.yaw[i].double())  # (3, 3) box-to-world
    local = (points - boxes.center[i].double()) @ rotation  # (P, 3) in the box's axes
    low, high = local.min(0).values, local.max(0).values
    size = boxes.size[i].double()
    outside = (local.abs() > size / 2 + 1e-3).any(1).double().mean()
    return {"size_ratio": ((high - low) / size.clamp(min=1e-9)).tolist(),
            "origin_offset": float(((low + high) / 2).norm()), "outside": float(outside)}


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None


def summarize(objects: list[dict]) -> dict:
    recall = lambda key: float(np.mean([o[key] > 0.5 for o in objects])) if objects else None  # noqa: E731
    return {"objects": len(objects),
            "median_size_ratio": _median([min(o["size_ratio"]) for o in objects if o["size_ratio"]]),
            "median_origin_offset": _median([o["origin_offset"] for o in objects]),
            "max_origin_offset": max((o["origin_offset"] for o in objects if o["origin_offset"] is not None),
                                     default=None),
            "median_outside": _median([o["outside"] for o in objects]),
            "median_iou_published_observed": _median([o["iou_published_observed"] for o in objects]),
            "carved_recall_published": recall("carved_iou_published"),
            "carved_recall_observed": recall("carved_iou_observed")}


def _rectangle(box: YawBoxes, i: int) -> np.ndarray:
    cx, cy = float(box.center[i, 0]), float(box.center[i, 1])
    sx, sy, yaw = float(box.size[i, 0]) / 2, float(box.size[i, 1]) / 2, float(box.yaw[i])
    c, s = math.cos(yaw), math.sin(yaw)
    corners = np.array([[-sx, -sy], [sx, -sy], [sx, sy], [-sx, sy], [-sx, -sy]])
    return corners @ np.array([[c, s], [-s, c]]) + [cx, cy]


def draw(drawn: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(drawn), figsize=(max(6.0, 4.5 * len(drawn)), 5.0), squeeze=False)
    for ax, item in zip(axes[0], drawn):
        for i, points in enumerate(item["points"]):
            colour = "tab:red" if item["labels"][i] else "tab:green"
            if len(points):
                step = max(1, len(points) // 3000)
                ax.scatter(points[::step, 0], points[::step, 1], s=0.3, color=colour, alpha=0.3)
            for boxes, style, label in ((item["published"], "--", "published"), (item["observed"], "-", "observed")):
                xy = _rectangle(boxes, i)
                ax.plot(xy[:, 0], xy[:, 1], style, color=colour, lw=1.2, label=label if i == 0 else None)
        for j in range(item["carved"].center.shape[0]):
            xy = _rectangle(item["carved"], j)
            ax.plot(xy[:, 0], xy[:, 1], ":", color="tab:blue", lw=1.2, label="carved" if j == 0 else None)
        ax.set_aspect("equal")
        ax.set_title(item["name"], fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle("bird's-eye view: object points (red: anomalous), GT boxes as published (dashed) and\n"
                 "observed (solid), boxes carved from the GT masks of the input views (dotted)", fontsize=9)
    save_figure(fig, path, dpi=120)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="dataset root (scene folders, optionally splits.json)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--family", choices=("auto", "toys", "parts"), default="auto")
    parser.add_argument("--scenes", type=non_negative(int), default=0, help="first scenes of the split (0: all)")
    parser.add_argument("--views", type=int, default=5, help="input views carved (evenly spaced, as oddsparse eval)")
    parser.add_argument("--image-size", type=int, default=128, help="image size the masks are carved at")
    parser.add_argument("--grid", type=int, nargs=3, default=(128, 128, 32), help="voxels per axis (x, y, z)")
    parser.add_argument("--voxel-size", type=float, default=0.02, help="voxel edge in metres")
    parser.add_argument("--figure-scenes", type=non_negative(int), default=3)
    parser.add_argument("--out", required=True, type=Path, help="output folder (gt_boxes.json, gt_boxes.png)")
    args = parser.parse_args(argv)

    dataset = SceneDataset(args.data, args.split, family=args.family, num_input_views=None, num_target_views=0)
    folders = dataset.scenes[:args.scenes] if args.scenes else list(dataset.scenes)
    if not folders:
        raise SystemExit(f"{args.data}: split {args.split!r} holds no scenes")
    grid = centred_grid(tuple(args.grid), args.voxel_size)
    from tqdm.auto import tqdm

    objects, drawn = [], []
    for folder in tqdm(folders, desc="gt boxes", unit="scene"):
        meta = read_scene_metadata(folder)
        points = object_points(folder)  # every stored view's depth and masks, read once for both uses
        published, observed = as_yaw_boxes(meta.boxes), as_yaw_boxes(fit_observed_boxes(points, meta.boxes))
        selection = evenly_spaced_views(meta.num_views, args.views)
        scene = read_scene(folder, views=selection, image_size=args.image_size)
        carved = boxes_from_occupancy(carve_occupancy(scene.masks.any(0), scene.K, scene.world_to_cam, grid))[0]
        iou = torch.diagonal(box_iou_3d(published, observed))
        carved_published, carved_observed = best_ious(published, carved), best_ious(observed, carved)
        for i, name in enumerate(scene.object_names):
            objects.append({"scene": folder.name, "object": name, "anomaly": scene.anomaly_types[i] or None,
                            **published_fit(points[i], published, i), "iou_published_observed": float(iou[i]),
                            "carved_iou_published": float(carved_published[i]),
                            "carved_iou_observed": float(carved_observed[i]),
                            "published": {"center": published.center[i].tolist(), "size": published.size[i].tolist(),
                                          "yaw": float(published.yaw[i])},
                            "observed": {"center": observed.center[i].tolist(), "size": observed.size[i].tolist(),
                                         "yaw": float(observed.yaw[i])}})
        if len(drawn) < args.figure_scenes:
            drawn.append({"name": folder.name, "points": [p.numpy() for p in points], "labels": scene.labels.tolist(),
                          "published": published, "observed": observed, "carved": carved})
    report = {"root": str(args.data.resolve()), "split": args.split, "scenes": len(folders), "views": args.views,
              "image_size": args.image_size, "grid": list(args.grid), "voxel_size": args.voxel_size,
              "summary": summarize(objects), "objects": objects}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "gt_boxes.json", (json.dumps(report, indent=2) + "\n").encode())
    if drawn:
        draw(drawn, args.out / "gt_boxes.png")
    summary = report["summary"]
    print(" ".join(f"{key}={value:.4f}" if isinstance(value, float) else f"{key}={value}"
                   for key, value in summary.items()))
    return report


if __name__ == "__main__":
    main()

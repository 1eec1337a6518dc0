"""What object registration does: each object's volume before and after :meth:`register_boxes`.

    python recipes/report_registration.py --checkpoint runs/partsad/final.pt --out docs/registration --scenes 4

For the first ``--scenes`` scenes of the split (evenly spaced input views, as ``oddsparse eval``) the
checkpoint's detector finds its boxes (``--boxes predicted``, with the checkpoint's box consensus) or
takes the GT boxes (``--boxes gt``), then registers them to the scene's reference object
(:meth:`OddOneOutDetector.register_boxes`, with the checkpoint's registration settings even when
its ``register_objects`` is off). ``registration.png`` shows, per scene, the opacity of every object
volume seen from above (maximum over the box's height) as read from the boxes (top row) and from the
registered boxes (bottom row), the reference framed, anomalies titled in red; ``registration.json``
holds each object's L2 distance to the reference volume before and after (the volumes registration
compares), which registration can only lower.
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

from oddsparse.eval.evaluate import add_diagnostic_arguments, open_diagnostic, read_scene_with_boxes
from oddsparse.geometry.boxes import YawBoxes, match_boxes
from oddsparse.utils.checkpoint import atomic_write_bytes
from oddsparse.utils.figures import save_figure


def register_scene(detector, output, boxes: YawBoxes) -> dict:
    """Registration of one scene's boxes: the boxes, the registered ones, their volumes and distances."""
    index = torch.zeros(boxes.center.shape[0], dtype=torch.int64)
    enabled, detector.register_objects = detector.register_objects, True
    try:
        registered, is_reference = detector.register_boxes(output, boxes, index, return_references=True)
    finally:
        detector.register_objects = enabled
    reference = int(torch.nonzero(is_reference)[0, 0])
    field = detector._registration_field(output)
    compared_before = detector._registration_volumes(field, boxes, index).flatten(1)
    compared_after = detector._registration_volumes(field, registered, index).flatten(1)
    opacity = {name: detector.volume_parts(detector.object_volumes(output, b, index))["opacity"][:, 0]
               for name, b in (("before", boxes), ("after", registered))}
    return {"registered": registered, "reference": reference, "opacity": opacity,
            "before": (compared_before - compared_before[reference]).norm(dim=1).tolist(),
            "after": (compared_after - compared_after[reference]).norm(dim=1).tolist()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_diagnostic_arguments(parser, scenes=4)
    parser.add_argument("--boxes", choices=("predicted", "gt"), default="predicted",
                        help="register the detector's boxes (default) or the GT boxes")
    args = parser.parse_args(argv)
    detector, checkpoint, root, folders, views, image_size = open_diagnostic(args)
    if detector.variant == "A":
        raise SystemExit(f"{args.checkpoint}: variant A compares nothing; it has no registration to show")
    rows, report = [], {"checkpoint": str(args.checkpoint), "root": str(root), "split": args.split,
                        "box_source": args.box_source, "views": views,
                        "boxes": args.boxes, "scenes": []}
    for folder in folders:
        scene, gt = read_scene_with_boxes(folder, views, image_size, args.box_source)
        with torch.no_grad():
            output = detector.scene_model(scene.images[None], scene.K[None], scene.world_to_cam[None])
            boxes = gt if args.boxes == "gt" else detector.find_boxes(output)[0]
            if boxes.center.shape[0] < 3:
                report["scenes"].append({"name": scene.name, "objects": int(boxes.center.shape[0]),
                                         "skipped": "fewer than 3 boxes: nothing to register"})
                continue
            result = register_scene(detector, output, boxes)
        gt_of, _ = match_boxes(boxes, gt, 0.5)
        labels = [int(scene.labels[g]) if g >= 0 else -1 for g in gt_of.tolist()]
        report["scenes"].append({"name": scene.name, "objects": len(labels), "reference": result["reference"],
                                 "labels": labels, "distance_before": result["before"],
                                 "distance_after": result["after"]})
        rows.append((scene.name, result, labels))
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "registration.json", (json.dumps(report, indent=2) + "\n").encode())
    if rows:
        _figure(rows, args.out / "registration.png")
    for entry in report["scenes"]:
        if "skipped" in entry:
            print(f"{entry['name']}: {entry['skipped']}")
        else:
            print(f"{entry['name']}: mean distance to the reference {np.mean(entry['distance_before']):.3f} -> "
                  f"{np.mean(entry['distance_after']):.3f}")
    print(f"wrote {args.out / 'registration.json'}" + (f" and {args.out / 'registration.png'}" if rows else ""))
    return report


def _figure(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(len(labels) for _, _, labels in rows)
    fig, axes = plt.subplots(2 * len(rows), columns, figsize=(1.3 * columns, 2.7 * len(rows)), squeeze=False)
    for r, (name, result, labels) in enumerate(rows):
        for k, stage in enumerate(("before", "after")):
            top = result["opacity"][stage].amax(dim=3).numpy()  # (O, S, S): max over the box's height
            for i in range(columns):
                axis = axes[2 * r + k, i]
                axis.set_xticks([]), axis.set_yticks([])
                if i >= len(labels):
                    axis.axis("off")
                    continue
                axis.imshow(top[i].T, origin="lower", vmin=0, vmax=1, cmap="magma")
                color = "red" if labels[i] == 1 else ("0.5" if labels[i] < 0 else "black")
                axis.set_title(f"{result[stage][i]:.2f}", fontsize=7, color=color)
                if i == result["reference"]:
                    for spine in axis.spines.values():
                        spine.set_edgecolor("tab:green"), spine.set_linewidth(2.5)
            axes[2 * r + k, 0].set_ylabel(f"{name[:14]}\n{stage}", fontsize=7)
    fig.suptitle("object opacity from above, read from the boxes (before) and the registered boxes (after);\n"
                 "title: distance to the reference (green frame), red = anomaly", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


if __name__ == "__main__":
    main()

"""Where the predicted boxes lose object_AUROC against GT boxes (session 29).

    python docs/fine_s29/misses.py

Pairs each run's two `oddsparse eval` reports (predicted and GT boxes, the same 249 test scenes) scene by
scene and splits the difference of their object_AUROC (scene mean over the scenes with an AUROC in both)
into the scenes where every GT object got a box (IoU > 0.5: framing) and those where one or more did not
(a missed anomaly scores 0, a missed normal object 1: such a scene reads near 0). The default's reports are
session 25's (docs/parts_s25/reports: the default recipe on the scene model of runs/parts-s24/full).
"""
import json
from pathlib import Path

import numpy as np

DOCS = Path(__file__).resolve().parents[1]
RUNS = {"default": (DOCS / "parts_s25/reports/default-scale1.json", DOCS / "parts_s25/reports/gt-boxes.json"),
        "fine": (DOCS / "fine_s29/reports/predicted.json", DOCS / "fine_s29/reports/gt_boxes.json")}

for run, (predicted_file, gt_file) in RUNS.items():
    predicted = {r["name"]: r for r in json.loads(predicted_file.read_text())["per_scene"]}
    gt = {r["name"]: r for r in json.loads(gt_file.read_text())["per_scene"]}
    both = [n for n in predicted if predicted[n]["object_AUROC"] is not None and gt[n]["object_AUROC"] is not None]
    mean = {label: np.mean([report[n]["object_AUROC"] for n in both]) for label, report in (("predicted", predicted),
                                                                                           ("GT boxes", gt))}
    print(f"{run}: {len(both)} scenes with an AUROC in both, predicted {mean['predicted']:.3f}, "
          f"GT boxes {mean['GT boxes']:.3f}")
    for label, keep in (("every object boxed", lambda r: r["num_matched"] == r["num_objects"]),
                        ("an object missed", lambda r: r["num_matched"] < r["num_objects"])):
        names = [n for n in both if keep(predicted[n])]
        a = np.array([predicted[n]["object_AUROC"] for n in names])
        b = np.array([gt[n]["object_AUROC"] for n in names])
        print(f"  {label:18s} {len(names):3d} scenes: predicted {a.mean():.3f}, GT boxes {b.mean():.3f}; "
              f"share of the difference {(b - a).sum() / len(both):.3f}")

"""Does registration put a fractured object's box where the whole object stands? (session 29)

    python docs/fine_s29/registered_boxes.py runs/parts-fine/final.pt docs/fine_s29/reports/predicted.json

(about 12 minutes on 2 threads). The detector's registration (:meth:`OddOneOutDetector.register_boxes`: every box
of a scene re-placed by quarter-turns, yaw offsets and xy shifts so that its object volume best matches the
scene's medoid object) moves only the volumes the matcher reads; here its boxes are matched to the GT boxes
instead, as `oddsparse eval` would if the detector reported them. Scenes: the test scenes where the eval report
(second argument) misses a GT object, and every sixth of the others. Prints recall at IoU 0.5 per GT type of
the detector's final boxes and of four registrations (shifts in voxels, compared channels, cells per axis),
and the registration's seconds per scene.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "recipes"))
from oddsparse.eval.evaluate import read_scene_with_boxes  # noqa: E402
from oddsparse.models.detector import canonical_boxes, load_detector  # noqa: E402
from report_boxes import best_ious  # noqa: E402

CONFIGS = {"noshift-geom8": ((0.0,), "geometry", 8), "shift2-geom8": ((-2.0, -1.0, 1.0, 2.0), "geometry", 8),
           "shift4-geom8": ((-4.0, -2.0, 2.0, 4.0), "geometry", 8), "shift4-all8": ((-4.0, -2.0, 2.0, 4.0), "all", 8)}

torch.set_num_threads(2)
detector, checkpoint = load_detector(sys.argv[1])
detector.eval()
root, size = checkpoint["data_root"], tuple(int(v) for v in checkpoint["image_size"])
names = json.loads((Path(root) / "splits.json").read_text())["test"]
report = {r["name"]: r for r in json.loads(Path(sys.argv[2]).read_text())["per_scene"]}
missed = [n for n in names if report[n]["num_matched"] < report[n]["num_objects"]]
names = missed + [n for n in names if n not in missed][::6]
print(f"{len(missed)} scenes with a miss, {len(names)} in all", flush=True)
ious = {"final": [], **{k: [] for k in CONFIGS}}
seconds = dict.fromkeys(CONFIGS, 0.0)
types = []
detector.register_objects = True
for name in names:
    scene, gt = read_scene_with_boxes(Path(root) / name, 5, size, "metadata")
    with torch.no_grad():
        output = detector.scene_model(scene.images[None], scene.K[None], scene.world_to_cam[None])
        boxes, index = detector.find_boxes(output)
        ious["final"].append(best_ious(gt, canonical_boxes(boxes)))
        for key, (shifts, channels, resolution) in CONFIGS.items():
            detector.register_shifts, detector.register_channels = shifts, channels
            detector.register_resolution = resolution
            t0 = time.perf_counter()
            registered = detector.register_boxes(output, boxes, index)
            seconds[key] += time.perf_counter() - t0
            ious[key].append(best_ious(gt, canonical_boxes(registered)))
    types += [t or "normal" for t in scene.anomaly_types]
types = np.array(types)
for key, values in ious.items():
    values = np.concatenate(values)
    print(f"{key:14s} " + " ".join(f"{t}:{(values[types == t] > 0.5).mean():.3f}({(types == t).sum()})"
                                   for t in sorted(set(types.tolist())))
          + f" all {(values > 0.5).mean():.3f} register {seconds.get(key, 0.0) / len(names):.2f} s/scene")

"""A checkpoint evaluated with another objectness threshold and box-delta scale (a throwaway script kept for the
record, written before `oddsparse eval --objectness-threshold` existed).

    python docs/flat_toys_s23/objectness_eval.py CHECKPOINT THRESHOLD SCALE OUT.json

Test split, 5 views, predicted boxes, the checkpoint's other settings; writes the report of `evaluate_detector`.
"""
import json
import sys
from pathlib import Path

import torch

from oddsparse.eval.evaluate import evaluate_detector
from oddsparse.models.detector import load_detector

torch.set_num_threads(1)
checkpoint, threshold, scale, out = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4])
detector, payload = load_detector(checkpoint)
detector.objectness_threshold, detector.box_delta_scale = threshold, scale
report = evaluate_detector(detector, payload["data_root"], "test", views=[5], progress=False)
report["settings"].update(objectness_threshold=threshold, box_delta_scale=scale)
out.write_text(json.dumps(report) + "\n")
print(out, report["object_AUROC"], report["box_recall"], report["box_precision"])

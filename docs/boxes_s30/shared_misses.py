"""Which test scenes lose a GT object under every box head of one scene model? (session 30)

    python docs/boxes_s30/shared_misses.py docs/parts_s25/reports/default-scale1.json \
        runs/boxes-s30/plain-seed0/report.json runs/boxes-s30/size-seed0/report.json ...

Reads ``oddsparse eval`` reports of the same test scenes (predicted boxes) and prints, for each, the scenes where
a GT object got no box at IoU > 0.5, then how many such scenes every report shares: what no head of the scene
model recovers (its proposals) against what changes from head to head.
"""
import json
import sys
from pathlib import Path

missed = {}
for path in sys.argv[1:]:
    report = json.loads(Path(path).read_text())
    missed[path] = {row["name"] for row in report["per_scene"] if row["num_matched"] < row["num_objects"]}
    print(f"{path}: object_AUROC {report['object_AUROC']:.3f}, box recall {report['box_recall']:.3f}, "
          f"{len(missed[path])} of {len(report['per_scene'])} scenes miss an object")
shared = set.intersection(*missed.values())
either = set.union(*missed.values())
print(f"every report misses an object in {len(shared)} scenes; at least one report in {len(either)}")
print("shared:", " ".join(sorted(shared)))

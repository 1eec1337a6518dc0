"""Per-category box recall and object_AUROC of `oddsparse eval` reports (a throwaway script kept for the record).

    python docs/flat_toys_s23/by_category.py REPORT.json [REPORT.json ...] [--json OUT]

A generated toys scene holds one category, the first word of its name: recall = matched GT objects / GT objects
over that category's scenes, object_AUROC = the mean over its scenes that have one (as the report's top level).
"""
import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def by_category(report: dict) -> dict:
    rows = defaultdict(lambda: {"scenes": 0, "objects": 0, "matched": 0, "auroc": []})
    for scene in report["per_scene"]:
        row = rows[scene["name"].split("_")[0]]
        row["scenes"] += 1
        row["objects"] += scene["num_objects"]
        row["matched"] += scene["num_matched"]
        if scene["object_AUROC"] is not None and np.isfinite(scene["object_AUROC"]):
            row["auroc"].append(scene["object_AUROC"])
    return {c: {"scenes": r["scenes"], "box_recall": r["matched"] / max(r["objects"], 1),
                "object_AUROC": float(np.mean(r["auroc"])) if r["auroc"] else None} for c, r in sorted(rows.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    out = {}
    for path in args.reports:
        report = json.loads(path.read_text())
        out[str(path)] = {"object_AUROC": report["object_AUROC"], "box_recall": report["box_recall"],
                          "per_category": by_category(report)}
        print(f"{path}: object_AUROC {report['object_AUROC']:.3f}  box recall {report['box_recall']:.3f}")
        for category, row in out[str(path)]["per_category"].items():
            auroc = "n/a" if row["object_AUROC"] is None else f"{row['object_AUROC']:.3f}"
            print(f"  {category:11s} scenes {row['scenes']:3d}  recall {row['box_recall']:.3f}  object_AUROC {auroc}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

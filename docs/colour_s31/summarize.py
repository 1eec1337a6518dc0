"""Session 31: what the views' colour on the objects' surfaces tells, against geometry and the trained models.

    python docs/colour_s31/summarize.py runs/colour-s31 runs/hullcolour-s31

Reads the per-scene records of two ``recipes/report_resolution.py`` runs over the 249 held-out test scenes of
the default parts dataset (``--sources solid observed colour --image-sizes 128 256 --voxel-sizes 0.04 0.02
0.01 --roi-sizes 8 16`` and ``--sources hullcolour --image-sizes 128 --voxel-sizes 0.04 0.02 0.01 --roi-sizes
8``), writes ``docs/colour_s31/per_scene.json`` (the object_AUROC per scene of the settings it prints, as
``per_scene`` rows of an eval report, and per anomaly type), prints the table of RESULTS.md with paired 95% intervals
(:func:`oddsparse.eval.bootstrap_object_auroc`, scenes resampled) against the default recipe's trained model on
the same GT boxes (``docs/parts_s25/reports/gt-boxes.json``) and draws ``docs/colour_s31/colour.png``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "recipes"))

import report_resolution as rr  # noqa: E402
from oddsparse.eval.compare import bootstrap_object_auroc  # noqa: E402
from oddsparse.eval.metrics import ScenePrediction, binary_auroc, evaluate_objects  # noqa: E402
from oddsparse.utils.checkpoint import atomic_write_bytes  # noqa: E402
from oddsparse.utils.figures import save_figure  # noqa: E402

OUT = Path(__file__).resolve().parent
TYPES = ("bump", "crack", "diff", "frac")
REFERENCES = {"trained default model (GT boxes)": ROOT / "docs/parts_s25/reports/gt-boxes.json",
              "trained fine model (GT boxes)": ROOT / "docs/fine_s29/reports/gt_boxes.json"}
TABLE = ["solid/0.02/8", "solid/0.01/8", "observed@128/0.02/8", "colour@128/0.02/8", "observed+colour@128/0.02/8",
         "hullcolour@128/0.04/8", "hullcolour@128/0.02/8", "hullcolour@128/0.01/8", "observed@256/0.01/8",
         "colour@256/0.01/8", "observed+colour@256/0.01/8"]
PAIRS = [f"@{size}/{voxel}/{roi}" for size in (128, 256) for voxel in ("0.04", "0.02", "0.01") for roi in (8, 16)]
FIGURE = ["observed@128/0.02/8", "colour@128/0.02/8", "observed+colour@128/0.02/8", "hullcolour@128/0.02/8"]


def read_records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((folder / "scenes").glob("*.json"))]


def setting_reports(records: list[dict]) -> dict[str, dict]:
    """Per setting: an eval-report-like dict (object_AUROC, per_type, per_scene rows)."""
    annotations = rr.record_annotations(records, 5)
    reports = {}
    for key in records[0]["scores"]:
        predictions = [ScenePrediction(boxes=a.boxes, scores=torch.tensor(r["scores"][key]))
                       for r, a in zip(records, annotations)]
        report = evaluate_objects(predictions, annotations)
        reports[key] = {"object_AUROC": report["object_AUROC"],
                        "per_type": {t: {"object_AUROC": v["object_AUROC"]} for t, v in report["per_type"].items()},
                        "per_scene": [{"name": r["name"], "object_AUROC": binary_auroc(r["scores"][key], r["labels"])}
                                      for r in records]}
    return reports


def on_scenes(report: dict, names: list[str]) -> dict:
    """An eval report's per-scene object_AUROC and per-type breakdown restricted to the scenes ``names`` (the mean
    over those of them that have an AUROC; the per-type figures are the report's own, over all its scenes)."""
    rows = [row for row in report["per_scene"] if row["name"] in set(names)]
    values = [row["object_AUROC"] for row in rows if row["object_AUROC"] is not None]
    return {"object_AUROC": float(np.mean(values)), "per_type": report["per_type"], "per_scene": rows,
            "all_scenes": len(report["per_scene"]) == len(rows)}


def main(argv=None) -> None:
    folders = [Path(a) for a in (argv if argv is not None else sys.argv[1:])]
    runs = [read_records(folder) for folder in folders]
    names = sorted(set.intersection(*({r["name"] for r in records} for records in runs)))  # scenes every run scored
    reports: dict[str, dict] = {}
    for records in runs:
        reports.update(setting_reports([r for r in records if r["name"] in names]))
    kept = set(TABLE) | {kind + key for key in PAIRS for kind in ("observed", "observed+colour")}
    atomic_write_bytes(OUT / "per_scene.json", (json.dumps({k: v for k, v in reports.items() if k in kept}) + "\n").encode())
    references = {label: on_scenes(json.loads(path.read_text()), names) for label, path in REFERENCES.items()
                  if path.is_file()}
    default = references.get("trained default model (GT boxes)")
    print(f"{len(names)} test scenes")
    print("| setting | object_AUROC | minus the trained default model, paired 95% | bump | crack | diff | frac |")
    print("|---|---|---|---|---|---|---|")
    rows = [(label, report) for label, report in references.items()] + [(key, reports[key]) for key in TABLE
                                                                        if key in reports]
    for label, report in rows:
        diff = ""
        if default is not None and report is not default:
            _, interval = bootstrap_object_auroc(report, default)
            diff = f"{report['object_AUROC'] - default['object_AUROC']:+.3f} ({interval[0]:+.3f} to {interval[1]:+.3f})"
        types = [report["per_type"].get(t, {}).get("object_AUROC") for t in TYPES]
        print(f"| {label} | {report['object_AUROC']:.3f} | {diff} | "
              + " | ".join("n/a" if v is None else f"{v:.2f}" for v in types) + " |")
    print()
    print("| colour added to depth-carved geometry | observed | observed+colour | paired 95% |")
    print("|---|---|---|---|")
    for key in PAIRS:
        both, alone = reports.get("observed+colour" + key), reports.get("observed" + key)
        if both is None or alone is None:
            continue
        _, interval = bootstrap_object_auroc(both, alone)
        print(f"| {key[1:]} | {alone['object_AUROC']:.3f} | {both['object_AUROC']:.3f} | "
              f"{both['object_AUROC'] - alone['object_AUROC']:+.3f} ({interval[0]:+.3f} to {interval[1]:+.3f}) |")
    figure(reports, references, OUT / "colour.png", len(names))
    print(f"wrote {OUT / 'per_scene.json'} and {OUT / 'colour.png'}")


def figure(reports: dict, references: dict, path: Path, scenes: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(k, reports[k]) for k in FIGURE if k in reports] + list(references.items())
    columns = ["all", *TYPES]
    fig, axis = plt.subplots(figsize=(9.5, 3.8))
    width = 0.8 / len(bars)
    for i, (label, report) in enumerate(bars):
        values = [report["object_AUROC"]] + [report["per_type"].get(t, {}).get("object_AUROC") for t in TYPES]
        x = np.arange(len(columns)) + (i - (len(bars) - 1) / 2) * width
        axis.bar(x, [np.nan if v is None else v for v in values], width, label=label)
    axis.axhline(0.5, color="0.6", linestyle=":", linewidth=1)
    axis.axhline(0.9, color="0.8", linewidth=1)
    axis.set_xticks(np.arange(len(columns)), columns)
    axis.set_ylim(0.3, 1.02)
    axis.set_ylabel("object_AUROC (GT boxes, per scene)")
    axis.set_title(f"parts, {scenes} test scenes, 5 views at 128 px: geometry, the views' colour, both, "
                   "and the trained models", fontsize=9)
    axis.legend(fontsize=7, loc="lower left", ncol=2)
    fig.tight_layout()
    save_figure(fig, path, dpi=130)


if __name__ == "__main__":
    main()

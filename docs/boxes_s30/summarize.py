"""Table and figure of session 30's box heads (``docs/boxes_s30/box_heads.py``) from their stored reports.

    python docs/boxes_s30/summarize.py

Reads ``docs/boxes_s30/reports/<arm>-seed<s>.json`` (``oddsparse eval``) and ``docs/boxes_s30/boxes/<arm>-seed<s>.json``
(``recipes/report_boxes.py``), prints a markdown table (object_AUROC, box recall, scenes with a missed object,
final-box recall by GT height and for fractures) and writes ``docs/boxes_s30/box_heads.png``.
"""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
ARMS = ("plain", "size", "cover")
rows = []
for arm in ARMS:
    for seed in (0, 1, 2):
        report_path, boxes_path = HERE / "reports" / f"{arm}-seed{seed}.json", HERE / "boxes" / f"{arm}-seed{seed}.json"
        if not report_path.is_file():
            continue
        report = json.loads(report_path.read_text())
        boxes = json.loads(boxes_path.read_text()) if boxes_path.is_file() else None
        missed = sum(row["num_matched"] < row["num_objects"] for row in report["per_scene"])
        heights = ({k: v["recall@0.5"] for k, v in boxes["recall_by_height"]["final"].items()} if boxes else {})
        counts = ({k: v["objects"] for k, v in boxes["recall_by_height"]["final"].items()} if boxes else {})
        frac = boxes["recall_by_type"]["final"]["frac"]["recall@0.5"] if boxes else float("nan")
        rows.append(dict(arm=arm, seed=seed, auroc=report["object_AUROC"], recall=report["box_recall"],
                         missed=missed, heights=heights, counts=counts, frac=frac))
bins = list(rows[0]["heights"]) if rows and rows[0]["heights"] else []
print("| head | seed | object_AUROC | box recall | scenes with a missed object | "
      + " | ".join(f"recall, height {b} m" for b in bins) + " | recall, frac |")
print("|---|---|---|---|---|" + "---|" * len(bins) + "---|")
for r in rows:
    print(f"| {r['arm']} | {r['seed']} | {r['auroc']:.3f} | {r['recall']:.3f} | {r['missed']} | "
          + " | ".join(f"{r['heights'][b]:.2f}" for b in bins) + f" | {r['frac']:.2f} |")

figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
for i, arm in enumerate(ARMS):
    mine = [r for r in rows if r["arm"] == arm]
    left.scatter([i] * len(mine), [r["auroc"] for r in mine], label=None, color=f"C{i}")
    left.scatter([i + 0.2] * len(mine), [r["recall"] for r in mine], marker="s", color=f"C{i}")
    for r in mine:
        right.plot(range(len(bins)), [r["heights"][b] for b in bins], marker="o", color=f"C{i}",
                   linestyle=("-", "--", ":")[r["seed"]], label=f"{arm}, seed {r['seed']}")
left.set_xticks([i + 0.1 for i in range(len(ARMS))], ARMS)
left.set_ylabel("object_AUROC (dots) / box recall (squares)")
left.set_title("parts test split, 249 scenes, predicted boxes")
right.set_xticks(range(len(bins)), [f"{b} m\n({rows[0]['counts'][b]} objects)" for b in bins])
right.set_xlabel("GT object height")
right.set_ylabel("final-box recall at IoU 0.5")
right.set_title("recall by object height (one scene model)")
right.legend(fontsize=7)
figure.tight_layout()
figure.savefig(HERE / "box_heads.png", dpi=120)
print(f"wrote {HERE / 'box_heads.png'}")

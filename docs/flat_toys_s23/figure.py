"""Per-category box recall of the reports in by_category.json (a throwaway script kept for the record).

    python docs/flat_toys_s23/figure.py   # writes docs/flat_toys_s23/recall_by_category.png
"""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from oddsparse.utils.figures import save_figure  # noqa: E402

HERE = Path(__file__).resolve().parent
rows = json.loads((HERE / "by_category.json").read_text())
runs = {"session 21's model (no flat toys)": "s21-on-flat-predicted.json",
        "flat-toys model": "flat-predicted.json",
        "flat-toys model, box-delta scale 0.25": "flat-predicted-scale0.25.json",
        "a fresh head on its final scene model, scale 0.25": "fresh-head-all-seed0-predicted-scale0.25.json"}
tables = {label: next(v["per_category"] for k, v in rows.items() if Path(k).name == name) for label, name in runs.items()}
categories = ["banana", "chair", "duck", "turtle", "skateboard", "car", "lamp", "mug", "mushroom", "robot", "rocket",
              "snowman", "table"]
figure, axis = plt.subplots(figsize=(11, 3.8))
width = 0.8 / len(tables)
for i, (label, table) in enumerate(tables.items()):
    axis.bar(np.arange(len(categories)) + (i - (len(tables) - 1) / 2) * width, [table[c]["box_recall"] for c in categories], width,
             label=label)
axis.set_xticks(np.arange(len(categories)), [f"{c}\n(unseen)" if c in ("banana", "chair", "duck") else c
                                             for c in categories], fontsize=8)
axis.set_ylabel("box recall (IoU > 0.5)")
axis.set_ylim(0, 1.05)
axis.set_title("481 test scenes of the flat-toys dataset, 5 views, predicted boxes")
axis.legend(fontsize=8, loc="lower right")
save_figure(figure, HERE / "recall_by_category.png")

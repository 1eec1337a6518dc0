"""Session 22's figure: box recall against the box-delta scale (python docs/delta_scale_s22/scripts/figure.py)."""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from oddsparse.utils.figures import save_figure  # noqa: E402

here = Path(__file__).resolve().parents[1]
test = json.loads((here / "test_recall_by_scale.json").read_text())
probe = json.loads((here / "heldout_categories_probe.json").read_text())
figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
for name, rows in test.items():
    scales = [float(a) for a in rows]
    line, = left.plot(scales, [r["unseen"] for r in rows.values()], marker="o", label=f"{name}: unseen")
    left.plot(scales, [r["seen"] for r in rows.values()], marker=".", linestyle="--", color=line.get_color())
left.set_title("test split (443 scenes, run 1's scene model): final-box recall\n"
               "solid: unseen categories (duck, rocket), dashed: seen")
left.set_xlabel("box delta scale (0: DBSCAN boxes, 1: the head as trained)")
left.set_ylabel("box recall (IoU > 0.5)")
left.legend(fontsize=7)
for fold, record in probe.items():
    scales = [float(a) for a in record["recall"]]
    right.plot(scales, list(record["recall"].values()), marker="o", label=f"held out: {fold.replace(',', ' + ')}")
right.set_title("training scenes, categories held out from a probe head\n(what --box_delta_scale -1 measures)")
right.set_xlabel("box delta scale")
right.legend(fontsize=8)
figure.tight_layout()
save_figure(figure, here / "recall_by_scale.png", dpi=120)
print("wrote", here / "recall_by_scale.png")

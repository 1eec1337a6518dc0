"""Stage 2b's held-out loss by step on the flat-toys run: the recipe's 2b (on from the stage-2 head, 500 steps) and
2b from a fresh head (1500 steps). A throwaway script kept for the record.

    python docs/heads_s24/figure.py   # -> docs/heads_s24/heldout_loss.png, heldout_loss.json
"""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from oddsparse.utils.checkpoint import load_checkpoint  # noqa: E402

runs = {"2b on from the stage-2 head (recipe default)": "runs/toys-flat-s23/full/box_head_refresh.pt",
        "2b from a fresh head, 1500 steps": "runs/toys-flat-s24/fresh-keep/box_head_refresh.pt"}
out = Path("docs/heads_s24")
record = {}
fig, ax = plt.subplots(figsize=(6.4, 4.0))
for label, path in runs.items():
    v = load_checkpoint(path)["validation"]
    record[label] = {k: v[k] for k in ("steps", "losses", "best_step", "adopted", "stage2_loss", "recall_start",
                                       "recall_best", "held_out_categories", "delta_scale_recalls")}
    ax.plot(v["steps"], v["losses"], marker=".", label=label)
    ax.scatter([v["best_step"]], [v["losses"][v["steps"].index(v["best_step"])]], s=60, facecolors="none",
               edgecolors="k")
ax.axhline(record[next(iter(runs))]["stage2_loss"], color="gray", ls="--", lw=1, label="stage-2 head")
ax.set_xlabel("stage-2b step")
ax.set_ylabel("held-out loss (lamp, robot proposals)")
ax.set_title("Flat toys: stage 2b's held-out loss (circle: the step chosen)")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "heldout_loss.png", dpi=120)
(out / "heldout_loss.json").write_text(json.dumps(record, indent=1) + "\n")
print(json.dumps({k: {kk: vv for kk, vv in r.items() if kk not in ("steps", "losses")} for k, r in record.items()},
                 indent=1))

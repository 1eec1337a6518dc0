"""Table and figure of session 28's comparison: the `fine` preset's scene model against the default's.

    python docs/fine_s28/summarize.py

Each ``*.json`` beside this file is ``recipes/report_baselines.py``'s report on one checkpoint, the same 249
held-out scenes (the `fine` dataset renders the default's scenes at 256 px instead of 128 px; scene names,
objects, poses and labels are the same). docs/RESULTS.md (session 28) gives the commands. Prints, for every
scorer, the object_AUROC (per scene) of each report and the paired 95% interval of the difference to the
first report; writes ``summary.png`` (per anomaly type, the distance scorers).
"""
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from oddsparse.eval import bootstrap_object_auroc  # noqa: E402
from oddsparse.utils.figures import save_figure  # noqa: E402

HERE = Path(__file__).resolve().parent
#: (file stem, label), the reference first
REPORTS = [("default_stage1", "default, stage 1 (128 px, 2 cm)"), ("fine_stage1", "fine, stage 1 (256 px, 1 cm)")]
REPORTS = [(stem, label) for stem, label in REPORTS if (HERE / f"{stem}.json").is_file()]
reports = {stem: json.loads((HERE / f"{stem}.json").read_text()) for stem, _ in REPORTS}
reference = reports[REPORTS[0][0]]
scorers = [name for name in reference["scorers"] if name != "matcher"]  # a stage-1 matcher is untrained
for stem, label in REPORTS:
    print(f"{label}: {reports[stem]['checkpoint']}")
    for name in scorers:
        scorer = reports[stem]["scorers"][name]
        line = f"  {name:18s} {scorer['object_AUROC']:.3f}"
        if stem != REPORTS[0][0]:
            low, high = bootstrap_object_auroc(scorer, reference["scorers"][name])[1]
            line += f"  minus {REPORTS[0][0]} {low:+.3f} to {high:+.3f}"
        line += "  " + " ".join(f"{t} {v['object_AUROC']:.2f}" for t, v in sorted(scorer["per_type"].items()))
        print(line)

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

types = sorted(reference["scorers"][scorers[0]]["per_type"])
shown = ["distance_carved", "distance_opacity", "distance_beta"]
fig, axes = plt.subplots(1, len(shown), figsize=(3.4 * len(shown), 3.2), sharey=True)
for axis, name in zip(axes, shown):
    columns = ["all"] + types
    width = 0.8 / len(REPORTS)
    for i, (stem, label) in enumerate(REPORTS):
        scorer = reports[stem]["scorers"][name]
        values = [scorer["object_AUROC"]] + [scorer["per_type"][t]["object_AUROC"] for t in types]
        axis.bar(np.arange(len(columns)) + (i - (len(REPORTS) - 1) / 2) * width, values, width, label=label)
    axis.axhline(0.5, color="0.6", linestyle=":", linewidth=1)
    axis.axhline(0.9, color="tab:red", linestyle="--", linewidth=0.8)
    axis.set_xticks(np.arange(len(columns)), columns)
    axis.set_title(name, fontsize=9)
    axis.set_ylim(0, 1)
axes[0].set_ylabel("object_AUROC (GT boxes, per scene)")
axes[0].legend(fontsize=7, loc="lower left")
fig.tight_layout()
save_figure(fig, HERE / "summary.png", dpi=130)
print(f"wrote {HERE / 'summary.png'}")

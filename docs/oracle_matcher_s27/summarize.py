"""Table and figure of session 27's oracle matchers from the reports beside this file.

    python docs/oracle_matcher_s27/summarize.py

Each ``*.json`` is ``recipes/report_oracle_matcher.py``'s report of one run (docs/RESULTS.md, session 27, gives
the commands). Prints one row per run: the distance, the fitted distance (``distance_fit``) and the trained
full matcher (object_AUROC per scene), the matcher minus the fitted distance and minus the plain matcher of
its resolution (paired 95% intervals over the test scenes); writes ``summary.png``. Then the matchers trained
without the distance inputs (``roi8_nodistance_*``), each against its variant's plain no-distance run.
"""
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from oddsparse.eval import bootstrap_object_auroc  # noqa: E402
from oddsparse.utils.figures import save_figure  # noqa: E402

HERE = Path(__file__).resolve().parent
RUNS = ["roi8_plain", "roi8_difference", "roi16_plain", "roi16_anchor", "roi16_anchor_rank1", "roi16_difference"]
results = {name: next(iter(json.loads((HERE / f"{name}.json").read_text())["results"].values())) for name in RUNS}
rows = []
for name, column in results.items():
    plain = results["roi8_plain" if name.startswith("roi8") else "roi16_plain"]["full"]
    full = column["full"]
    vs_plain = bootstrap_object_auroc(full, plain)[1]
    rows.append((name, column["distance"]["object_AUROC"], column["distance_fit"]["object_AUROC"],
                 full["object_AUROC"], full["minus_distance_fit_95"], vs_plain, full["per_type"]))
    print(f"{name:20s} distance {rows[-1][1]:.3f} distance_fit {rows[-1][2]:.3f} full {rows[-1][3]:.3f} "
          f"full-fit {rows[-1][4][0]:+.3f} to {rows[-1][4][1]:+.3f} full-plain {vs_plain[0]:+.3f} to {vs_plain[1]:+.3f} "
          f"bump {full['per_type']['bump']:.2f} crack {full['per_type']['crack']:.2f}")

print("without the distance inputs (8^3 cells):")
NODISTANCE = ["roi8_nodistance_B", "roi8_nodistance_full", "roi8_nodistance_diffmessages_B",
              "roi8_nodistance_diffmessages_full", "roi8_nodistance_B_1500"]
for name in NODISTANCE:
    column = next(iter(json.loads((HERE / f"{name}.json").read_text())["results"].values()))
    variant = "B" if "_B" in name else "full"
    matcher = column[variant]
    line = (f"{name:34s} {variant:4s} {matcher['object_AUROC']:.3f} ({matcher['object_AUROC_95'][0]:.2f}-"
            f"{matcher['object_AUROC_95'][1]:.2f}) bump {matcher['per_type']['bump']:.2f} crack "
            f"{matcher['per_type']['crack']:.2f} diff {matcher['per_type']['diff']:.2f} frac {matcher['per_type']['frac']:.2f}")
    if "diffmessages" in name or name.endswith("_1500"):  # against the plain 500-step run
        plain = next(iter(json.loads((HERE / f"roi8_nodistance_{variant}.json").read_text())["results"].values()))
        low, high = bootstrap_object_auroc(matcher, plain[variant])[1]
        line += f" minus plain {low:+.3f} to {high:+.3f}"
    print(line)

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, axis = plt.subplots(figsize=(7.5, 3.2))
x = np.arange(len(rows))
for offset, index, label in ((-0.25, 1, "distance"), (0.0, 2, "distance_fit (logistic regression)"),
                             (0.25, 3, "full matcher (trained)")):
    axis.bar(x + offset, [r[index] for r in rows], 0.25, label=label)
axis.set_xticks(x, [r[0].replace("_", "\n", 1) for r in rows], fontsize=7)
axis.set_ylim(0.85, 0.93)
axis.axhline(0.9, color="0.5", linewidth=1, linestyle=":")
axis.set_ylabel("object_AUROC (per scene)")
axis.set_title("parts, perfect 1 cm density, 249 test scenes: every matcher reads what its distance inputs read",
               fontsize=8)
axis.legend(fontsize=7, loc="upper left")
fig.tight_layout()
save_figure(fig, HERE / "summary.png", dpi=130)
print(f"wrote {HERE / 'summary.png'}")

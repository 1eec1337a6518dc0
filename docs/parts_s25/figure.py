"""Figure of session 25: stage 2b from a fresh head on every training scene (``--box_head_refresh_fit all``,
``--box_delta_scale -1``) against the default recipe, on the three scene models measured (sessions 24-25).

Reads the paired comparisons written by ``oddsparse compare`` (``docs/heads_s24/compare/``,
``docs/parts_s25/compare/``) and writes ``docs/parts_s25/fit_all.png``::

    python docs/parts_s25/figure.py
"""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DOCS = Path(__file__).resolve().parents[1]
#: (label, comparison folder); the default recipe's report is the first of each comparison
ROWS = (
    ("flat toys\n(s23 model)\n2b 1500 steps", "heads_s24/compare/flat-recipe-vs-fit-all"),
    ("structured-horizon\ntoys (s21 model)\n2b 1500 steps", "heads_s24/compare/env-recipe-vs-fit-all"),
    ("parts\n(s24-25 model)\n2b 1500 steps", "parts_s25/compare/default-scale1-vs-fit-all-1500-auto"),
    ("parts\n(s24-25 model)\n2b 1500, seed 1", "parts_s25/compare/default-scale1-vs-fit-all-1500-seed1-auto"),
    ("parts\n(s24-25 model)\n2b 500 steps", "parts_s25/compare/default-scale1-vs-fit-all-500-auto"),
)


def main() -> None:
    rows = []
    for label, folder in ROWS:
        data = json.loads((DOCS / folder / "comparison.json").read_text())
        default, other = (data["summary"][name] for name in data["names"])
        rows.append((label, default, other, data["difference"]))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw=dict(width_ratios=(3, 2)))
    width = 0.38
    for i, (_, default, other, _) in enumerate(rows):
        for offset, summary, colour, name in ((-width / 2, default, "0.6", "default recipe"),
                                              (width / 2, other, "tab:blue", "2b fresh, fit all, scale -1")):
            low, high = summary["object_AUROC_CI"]
            value = summary["object_AUROC"]
            left.bar(i + offset, value, width, color=colour, label=name if i == 0 else None)
            left.errorbar(i + offset, value, yerr=[[value - low], [high - value]], color="k", capsize=3)
            left.text(i + offset, high + 0.01, f"{value:.3f}", ha="center", fontsize=8)
    left.set_xticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    left.set_ylabel("object_AUROC, predicted boxes (95% CI)")
    left.set_ylim(0, 0.8)
    left.legend(loc="upper left", fontsize=8)
    left.set_title("test split, 5 views")
    for i, (_, _, _, difference) in enumerate(rows):
        value = difference["object_AUROC"]
        low, high = difference["object_AUROC_CI"]
        right.errorbar(value, i, xerr=[[value - low], [high - value]], fmt="o", color="tab:blue", capsize=3)
    right.axvline(0, color="k", lw=0.8)
    right.set_yticks(range(len(rows)), [r[0].replace("\n", " ") for r in rows], fontsize=8)
    right.invert_yaxis()
    right.set_xlabel("minus the default, paired 95% CI over test scenes")
    fig.tight_layout()
    out = DOCS / "parts_s25" / "fit_all.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

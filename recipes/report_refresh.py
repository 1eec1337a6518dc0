"""Stage 2b of several runs side by side: the box head's held-out loss while it trains again, and whether it was adopted.

    python recipes/report_refresh.py runs/refresh-parts/* runs/refresh-toys/* --out docs/refresh_s17

Reads the ``validation`` field that stage 2b (``recipes/train_partsad.py``, ``box_head_refresh.pt``)
stores in each run folder: the loss on the held-out training scenes before the first step (the
stage-2 head) and every 50 steps. Prints one line per run (start, best and step, gain = start / best,
whether the run adopted it, whether the recipe's rule would (``--min-gain``, default 1, and
``--min-recall-gain``, default 0.02, as the recipe's; runs of session 17's code lack the recall and are judged
on the loss alone), and where recorded the held-out box recall of both heads and the held-out
categories) and writes ``<out>/refresh.json`` and ``<out>/refresh_heldout.png``
(held-out loss over the stage-2 head's, per step, log scale; a filled marker where the rule adopts).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:
    import oddsparse  # noqa: F401
except ModuleNotFoundError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oddsparse.utils.checkpoint import atomic_write_bytes, load_checkpoint  # noqa: E402
from oddsparse.utils.figures import save_figure  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_partsad import adopts_refreshed_head, best_delta_scale  # noqa: E402  (the recipe's rules)


def read_run(folder: Path, min_gain: float = 1.0, min_recall_gain: float = 0.02) -> dict:
    """One run's stage-2b record: ``label`` (family / variant), ``steps``, ``losses``, ``best_step``,
    ``gain``, ``adopted`` (as the run did; None where its checkpoint predates the field),
    ``adopted_at_min_gain`` (as the recipe's rule would with ``min_gain`` and ``min_recall_gain``; records
    without the recall are judged on the loss alone), ``recall_start`` /
    ``recall_best`` (held-out box recall of the final boxes with the stage-2 head and the best one) and
    ``held_out_categories`` (None where scenes were held out, or the record predates these fields),
    ``stage2_loss`` (the stage-2 head's held-out loss: the first of ``losses`` in records that predate the
    field), ``init`` (``stage2`` or ``fresh``, the head 2b trained on from) and ``delta_scale_recalls`` (the
    probe's held-out recall per box-delta scale where the run chose its scale, ``--box_delta_scale -1``; else
    None)."""
    path = folder / "box_head_refresh.pt"
    if not path.is_file():
        raise SystemExit(f"{path}: no such file (stage 2b has not run in {folder})")
    checkpoint = load_checkpoint(path, mmap=True)  # its weights are not read
    validation = checkpoint.get("validation")
    if not isinstance(validation, dict) or not validation.get("losses"):
        raise SystemExit(f"{path}: field 'validation' missing or empty (stage 2b ran without a hold-out: "
                         f"--box_head_refresh_holdout 0, --box_head_refresh_fit all, or a single training scene)")
    steps, losses = [int(s) for s in validation["steps"]], [float(v) for v in validation["losses"]]
    best_step = int(validation["best_step"])
    if len(steps) != len(losses) or best_step not in steps:
        raise SystemExit(f"{path}: field 'validation' holds {len(steps)} steps, {len(losses)} losses and "
                         f"best_step {best_step}: not a stage-2b record")
    best = losses[steps.index(best_step)]
    start = float(validation.get("stage2_loss", losses[0]))  # a fresh start's losses begin with the new head's
    config = checkpoint.get("config") or {}
    recall_start, recall_best = validation.get("recall_start"), validation.get("recall_best")
    return {"run": str(folder), "label": f"{checkpoint.get('family', '?')} {config.get('variant', '?')}",
            "steps": steps, "losses": losses, "best_step": best_step, "best_loss": best,
            "stage2_loss": start, "init": validation.get("init", "stage2"),
            "gain": start / best if best > 0 else float("inf"), "adopted": validation.get("adopted"),
            "adopted_at_min_gain": adopts_refreshed_head(start, best_step, best, min_gain, recall_start,
                                                         recall_best, min_recall_gain),
            "recall_start": recall_start, "recall_best": recall_best,
            "held_out_categories": validation.get("held_out_categories"),
            "delta_scale_recalls": validation.get("delta_scale_recalls")}


def _recall_text(record: dict) -> str:
    if record["recall_start"] is None:
        return ""
    held = ", ".join(record["held_out_categories"]) if record["held_out_categories"] else "scenes"
    text = (f"; held-out box recall {record['recall_start']:.3f} -> {record['recall_best']:.3f} "
            f"(held out: {held})")
    scales = record.get("delta_scale_recalls")
    if scales:
        best = best_delta_scale({float(k): v for k, v in scales.items()})
        text += "; box delta scale " + ", ".join(f"{k} {v:.3f}" for k, v in scales.items()) + f" -> {best:g}"
    return text


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders holding box_head_refresh.pt")
    parser.add_argument("--out", type=Path, required=True, help="folder for refresh.json and refresh_heldout.png")
    parser.add_argument("--min-gain", type=float, default=1.0,
                        help="the adoption rule's loss gain (the recipe's --box_head_refresh_min_gain)")
    parser.add_argument("--min-recall-gain", type=float, default=0.02,
                        help="the adoption rule's held-out recall gain (the recipe's --box_head_refresh_min_recall_gain)")
    args = parser.parse_args(argv)
    records = [read_run(folder, args.min_gain, args.min_recall_gain) for folder in args.runs]
    rule = f"min gain {args.min_gain:g}, min recall gain {args.min_recall_gain:g}"
    for r in records:
        print(f"{r['label']:<12} held-out loss {r['stage2_loss']:.4f} -> {r['best_loss']:.4f} at step {r['best_step']} "
              f"(gain {r['gain']:.2f}x) adopted in the run: {r['adopted']}, by the rule ({rule}): "
              f"{r['adopted_at_min_gain']}{_recall_text(r)}  {r['run']}")
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "refresh.json", (json.dumps(records, indent=2) + "\n").encode())

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.2))
    for r in records:
        ratios = [v / r["stage2_loss"] for v in r["losses"]]
        line, = axis.plot(r["steps"], ratios, marker=".", label=f"{r['label']} ({r['gain']:.2f}x)")
        best = r["steps"].index(r["best_step"])
        axis.plot(r["best_step"], ratios[best], marker="o", markersize=8, color=line.get_color(),
                  fillstyle="full" if r["adopted_at_min_gain"] else "none")
    axis.set_yscale("log")
    axis.set_xlabel("stage-2b step")
    axis.set_ylabel("held-out loss / stage-2 head's")
    axis.set_title("Stage 2b: box head trained again on the stage-2 model's proposals\n"
                   f"(circle: lowest held-out loss; filled: adopted at {rule})")
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    save_figure(figure, args.out / "refresh_heldout.png", dpi=120)
    return records


if __name__ == "__main__":
    main()

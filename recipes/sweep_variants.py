"""Train the matcher variants A, B, C and full of one family and tabulate their test metrics.

    python recipes/sweep_variants.py --family parts --out runs/sweep-parts [-- extra recipe options]

Variants A and B train stage 1 the same way (no distillation), as do C and full (with
distillation), so each pair shares one stage-1 run: the second variant of a pair starts from the
first one's finished ``stage1.pt`` (scene-model weights, optimizer, step and RNG state copied; its
own matcher initialised exactly as the recipe would) and, where the first trained one, from its
``box_head.pt`` (the box head depends on the scene model only), and only trains its stage 2. When
only the second variant of a pair is asked for, the first one trains stage 1 and its box head alone
(no warm-up, stage 2 or evaluation). Stage 0 (segmentation) does not depend on the variant: C starts
from A's ``stage0.pt`` when A's folder has one. Each variant's
run folder is a normal recipe run folder (``final.pt``, ``eval/report.json``); the table is written
to ``<out>/results.json`` and ``<out>/results.md``.

``--reuse DIR`` starts every variant from an earlier sweep's finished steps (``DIR/<variant>``, or the
first of its pair): stage 0, stage 1 and the box head are copied with a fresh matcher built from this
sweep's options, so a matcher option (``--no-matcher_distance_input``) is measured without retraining
the scene model; options that change the scene model are refused. The box head is trained on the
scene model's DBSCAN proposals, so a sweep whose ``merge_floating`` differs from the reused box head's
is refused too, as is one whose box head has other weights (``--box_head_resolution``, ``--box_head_inputs``,
``--box_head_size_input``), unless ``--retrain-box-head`` (copy stage 0 and stage 1 only; each variant trains its
box head on this sweep's proposals).

``--seeds DIR [DIR ...]`` with ``--out`` tabulates finished sweeps of other training seeds over the same test
scenes (:func:`collect_seeds`: ``seeds.json``, ``seeds.md``, ``seeds.png``): each variant's object_AUROC per
seed with its interval over the test scenes, the mean over seeds and their spread, and the paired difference
to A within each seed. The spread is what the training itself moves, which those intervals do not hold.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

try:
    import oddsparse  # noqa: F401
except ModuleNotFoundError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_partsad  # noqa: E402  (both families' recipe: train_toysad runs it with family="toys")

from oddsparse.eval.compare import bootstrap_object_auroc as bootstrap_auroc  # noqa: E402
from oddsparse.eval.evaluate import SUBSET_SPLITS  # noqa: E402
from oddsparse.models.detector import OddOneOutDetector, build_detector  # noqa: E402
from oddsparse.utils.checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint  # noqa: E402
from oddsparse.utils.figures import interval_error, save_figure  # noqa: E402

RECIPES = {"parts": "train_partsad.py", "toys": "train_toysad.py"}
PAIRS = (("A", "B"), ("C", "full"))  # (trains stage 1, reuses it)


def run_recipe(family: str, variant: str, out: Path, extra: list[str]) -> None:
    recipe = Path(__file__).resolve().parent / RECIPES[family]
    command = [sys.executable, str(recipe), "--variant", variant, "--out", str(out), *extra]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def recipe_model_kwargs(variant: str, extra: list[str]) -> tuple[dict, dict]:
    """``(scene_kwargs, detector_kwargs)`` that the recipe builds for ``variant`` with options ``extra``."""
    return train_partsad.model_kwargs(train_partsad.parse_config(["--variant", variant, *extra]))


#: ``(report folder, box kind)`` of the two evaluations a recipe run writes.
REPORT_FOLDERS = train_partsad.REPORT_FOLDERS

#: Options that make a recipe run train stage 1 and the box head only.
SHARED_STEPS_ONLY = ["--matcher_warmup_steps", "0", "--stage2_steps", "0", "--stage2_epochs", "0", "--no-evaluate"]


#: Detector options a --reuse sweep may change (they do not touch the reused scene model and box head).
MATCHER_OPTIONS = ("matcher_distance_input", "matcher_distance_anchor", "matcher_difference_input",
                   "matcher_difference_messages", "box_consensus", "register_objects", "register_resolution", "roi_size",
                   "token_patch", "token_features", "view_colour")
#: Detector options that change the box head's proposals: a reused box head must have been trained with them.
PROPOSAL_OPTIONS = ("merge_floating",)
#: Value of a PROPOSAL_OPTIONS option in a checkpoint written before the option existed (the option's "off").
PROPOSAL_DEFAULTS = {"merge_floating": 0.0}
#: Detector options that change the box head's weights: a reused box head must have been built with them.
BOX_HEAD_LAYOUT = ("box_head_resolution", "box_head_inputs", "box_head_size_input")


def seed_checkpoint(source: Path, target: Path, variant: str, shared: tuple,
                    kwargs: tuple[dict, dict] | None = None) -> None:
    """Write ``target``: checkpoint ``source`` with the weights under the ``shared`` prefixes kept and a fresh
    matcher of ``variant`` (initialised as the recipe would: seeded before building the detector).

    ``kwargs``: the target's ``(scene_kwargs, detector_kwargs)``; the matcher is built from them, and a
    source whose scene model they would build differently is refused. Default: ``source``'s, with ``variant``.
    """
    checkpoint = load_checkpoint(source)
    if kwargs is None:
        detector_kwargs = dict(checkpoint["detector_kwargs"], variant=variant)
    else:
        scene_kwargs, detector_kwargs = kwargs
        changed = train_partsad.scene_kwargs_differences(checkpoint["scene_kwargs"], scene_kwargs)
        if changed:  # a field the checkpoint predates reads as its default (encoder_norm: batch)
            raise SystemExit(f"{source}: scene_kwargs differ from this sweep's ({', '.join(changed)}); "
                             f"--reuse needs the same scene model")
        if any(p.startswith("box_head.") for p in shared):
            for key in PROPOSAL_OPTIONS:
                found = float(checkpoint["detector_kwargs"].get(key, PROPOSAL_DEFAULTS[key]))
                if found != float(detector_kwargs.get(key, PROPOSAL_DEFAULTS[key])):
                    raise SystemExit(f"{source}: detector_kwargs.{key} is {found}, this sweep's "
                                     f"{detector_kwargs.get(key)}; the box head was trained on other proposals "
                                     f"(--retrain-box-head trains it anew)")
            layout = train_partsad.scene_kwargs_differences(checkpoint["detector_kwargs"], detector_kwargs,
                                                            BOX_HEAD_LAYOUT, model=OddOneOutDetector)
            if layout:  # a field the checkpoint predates reads as the detector's default
                was = ", ".join(f"{f} is {old!r}, this sweep's {new!r}" for f, (old, new) in layout.items())
                raise SystemExit(f"{source}: detector_kwargs: {was}; the box head has other weights "
                                 f"(--retrain-box-head trains it anew)")
    torch.manual_seed(checkpoint["config"]["seed"])
    state = build_detector(checkpoint["scene_kwargs"], detector_kwargs).state_dict()
    state.update({k: v for k, v in checkpoint["model"].items() if k.startswith(shared)})
    config = dict(checkpoint["config"], variant=variant, out=str(target.parent),
                  **{k: v for k, v in detector_kwargs.items() if k in MATCHER_OPTIONS + PROPOSAL_OPTIONS})
    save_checkpoint(target, dict(checkpoint, model=state, detector_kwargs=detector_kwargs, config=config))


def seed_stage1(source: Path, target: Path, variant: str, kwargs: tuple[dict, dict] | None = None, *,
                box_head: bool = True) -> None:
    """Write ``target/stage0.pt``, ``stage1.pt`` and ``box_head.pt``, those that ``source`` has and ``target``
    has not: ``source``'s finished steps with a fresh matcher of ``variant`` (``kwargs``: as
    :func:`seed_checkpoint`). ``box_head=False``: stage 0 and stage 1 only (the recipe then trains the box head)."""
    target.mkdir(parents=True, exist_ok=True)
    steps = (("stage0.pt", ("scene_model.",)), ("stage1.pt", ("scene_model.",)),
             ("box_head.pt", ("scene_model.", "box_head.")))
    for name, shared in steps[:3 if box_head else 2]:
        if not (target / name).is_file() and (source / name).is_file():
            seed_checkpoint(source / name, target / name, variant, shared, kwargs)
    for name in ("teacher_pca.npz",):  # the distillation targets must be the same ones
        if (source / name).is_file() and not (target / name).is_file():
            atomic_write_bytes(target / name, (source / name).read_bytes())


def reuse_source(root: Path, variant: str) -> Path:
    """The run folder of an earlier sweep ``root`` whose finished stage 1 ``variant`` starts from."""
    first = next(pair[0] for pair in PAIRS if variant in pair)
    for folder in (root / variant, root / first):
        if (folder / "stage1.pt").is_file():
            return folder
    raise SystemExit(f"{root}: neither {variant}/stage1.pt nor {first}/stage1.pt exists (--reuse needs a finished stage 1)")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", choices=sorted(RECIPES), default=None, help="required unless --seeds")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", default="A,B,C,full", help="comma-separated subset, in pair order")
    parser.add_argument("--collect-only", action="store_true", help="only rebuild the table from finished runs")
    parser.add_argument("--reuse", type=Path, default=None,
                        help="an earlier sweep's folder: start every variant from its stage 0, stage 1 and box head")
    parser.add_argument("--retrain-box-head", action="store_true",
                        help="with --reuse: copy stage 0 and stage 1 only, train the box head anew")
    parser.add_argument("--seeds", type=Path, nargs="+", default=None,
                        help="finished sweeps of several training seeds: tabulate them across seeds into --out")
    args, extra = parser.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    wanted = args.variants.split(",")
    if args.seeds:
        return collect_seeds(args.seeds, wanted, args.out)
    if args.family is None:
        parser.error("--family is required (unless --seeds)")
    if args.collect_only:
        return collect(args.out, wanted)
    if args.reuse is not None:
        for variant in wanted:
            kwargs = recipe_model_kwargs(variant, extra)
            seed_stage1(reuse_source(args.reuse, variant), args.out / variant, variant, kwargs,
                        box_head=not args.retrain_box_head)
    for pair, (first, second) in enumerate(PAIRS):
        if pair > 0 and (first in wanted or second in wanted) and (args.out / PAIRS[0][0]).is_dir():
            # stage 0 (segmentation) does not depend on the variant: the second pair starts from the first's
            stage0 = args.out / PAIRS[0][0] / "stage0.pt"
            if stage0.is_file() and not (args.out / first / "stage0.pt").is_file():
                (args.out / first).mkdir(parents=True, exist_ok=True)
                seed_checkpoint(stage0, args.out / first / "stage0.pt", first, ("scene_model.",),
                                recipe_model_kwargs(first, extra))
        if first in wanted:
            run_recipe(args.family, first, args.out / first, extra)
        elif second in wanted and not (args.out / second / "stage1.pt").is_file():
            run_recipe(args.family, first, args.out / first, extra + SHARED_STEPS_ONLY)
        if second in wanted:
            seed_stage1(args.out / first, args.out / second, second,
                        recipe_model_kwargs(second, extra))
            run_recipe(args.family, second, args.out / second, extra)
    results = collect(args.out, wanted)
    return results


def miss_split(predicted: dict, gt: dict) -> dict:
    """Per-scene object_AUROC of the predicted-box and GT-box reports, split by whether every GT object of the
    scene was matched by a predicted box: ``{"all_matched" | "some_missed": (scenes, predicted, gt)}``.

    Separates what misses cost (a missed object takes the worst score of its class) from what the matched
    boxes' misalignment costs (all-matched scenes: predicted vs GT boxes). Scenes without an AUROC in
    either report are left out; a group without scenes reads ``(0, None, None)``.
    """
    gt_auroc = {s["name"]: s.get("object_AUROC") for s in gt.get("per_scene", [])}
    groups = {"all_matched": [], "some_missed": []}
    for row in predicted.get("per_scene", []):
        pair = (row.get("object_AUROC"), gt_auroc.get(row["name"]))
        if None in pair:
            continue
        groups["all_matched" if row["num_matched"] == row["num_objects"] else "some_missed"].append(pair)
    return {name: (len(rows), float(sum(p for p, _ in rows) / len(rows)) if rows else None,
                   float(sum(g for _, g in rows) / len(rows)) if rows else None)
            for name, rows in groups.items()}


def collect(out: Path, variants) -> dict:
    """Tabulate ``<out>/<variant>/eval*/report.json`` into ``<out>/results.json`` and ``<out>/results.md``."""
    results = {}
    for variant in variants:
        for folder, boxes in REPORT_FOLDERS:
            path = out / variant / folder / "report.json"
            if path.is_file():
                results.setdefault(variant, {})[boxes] = json.loads(path.read_text())
    keys = ("object_AUROC", "object_accuracy", "object_AUROC_pooled", "object_accuracy_pooled", "box_recall")
    rows = ["| variant | boxes | " + " | ".join(keys) + " | object_AUROC 95% CI | minus A, 95% CI |",
            "|---|---|" + "---|" * (len(keys) + 2)]
    for variant, by_boxes in results.items():
        for boxes, report in by_boxes.items():
            cells = [report.get(k) for k in keys]
            reference = results.get("A", {}).get(boxes) if variant != "A" else None
            interval, diff = bootstrap_auroc(report, reference)
            extra = ["n/a" if interval is None else f"{interval[0]:.2f}-{interval[1]:.2f}",
                     "n/a" if diff is None else f"{diff[0]:+.2f} to {diff[1]:+.2f}"]
            rows.append(f"| {variant} | {boxes} | " + " | ".join("n/a" if c is None else f"{c:.3f}" for c in cells)
                        + " | " + " | ".join(extra) + " |")
    types = sorted({t for by_boxes in results.values() for r in by_boxes.values() for t in r.get("per_type", {})})
    if types:
        rows += ["", "Per anomaly type, object_AUROC (predicted boxes / GT boxes):", "",
                 "| variant | " + " | ".join(types) + " |", "|---|" + "---|" * len(types)]
        for variant, by_boxes in results.items():
            def cell(t):
                values = [by_boxes.get(b, {}).get("per_type", {}).get(t, {}).get("object_AUROC") for b in ("predicted", "gt")]
                return " / ".join("n/a" if v is None else f"{v:.2f}" for v in values)
            rows.append(f"| {variant} | " + " | ".join(cell(t) for t in types) + " |")
    subsets = [name for name in SUBSET_SPLITS
               if any(name in r.get("per_split", {}) for by_boxes in results.values() for r in by_boxes.values())]
    if subsets:  # ToysAD: test scenes of categories seen / not seen in training (the paper's columns)
        rows += ["", "Per split, object_AUROC / object_accuracy (predicted boxes; GT boxes):", "",
                 "| variant | " + " | ".join(subsets) + " |", "|---|" + "---|" * len(subsets)]
        for variant, by_boxes in results.items():
            def subset_cell(name):
                parts = []
                for b in ("predicted", "gt"):
                    entry = by_boxes.get(b, {}).get("per_split", {}).get(name, {})
                    parts.append(" / ".join("n/a" if entry.get(k) is None else f"{entry[k]:.3f}"
                                            for k in ("object_AUROC", "object_accuracy")))
                return "; ".join(parts)
            rows.append(f"| {variant} | " + " | ".join(subset_cell(n) for n in subsets) + " |")
    split_rows = []
    for variant, by_boxes in results.items():
        if "predicted" in by_boxes and "gt" in by_boxes:
            split = miss_split(by_boxes["predicted"], by_boxes["gt"])
            split_rows.append(f"| {variant} | " + " | ".join(
                f"{n} | " + " / ".join("n/a" if v is None else f"{v:.3f}" for v in (p, g))
                for n, p, g in (split[k] for k in ("all_matched", "some_missed"))) + " |")
    if split_rows:
        rows += ["", "Per-scene object_AUROC (predicted / GT boxes) of the scenes whose every object was matched "
                 "and of those with a missed object:", "",
                 "| variant | scenes, all matched | AUROC | scenes, some missed | AUROC |", "|---|---|---|---|---|",
                 *split_rows]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "results.json", (json.dumps(results, indent=2) + "\n").encode())
    atomic_write_bytes(out / "results.md", ("\n".join(rows) + "\n").encode())
    print("\n".join(rows))
    return results


def collect_seeds(sweeps: list[Path], variants, out: Path) -> dict:
    """Tabulate sweeps of several training seeds (``<sweep>/<variant>/eval*/report.json``, the same test scenes)
    into ``<out>/seeds.json``, ``seeds.md`` and ``seeds.png``.

    Per variant and box kind: object_AUROC of each seed with its 95% interval over the test scenes, the
    mean over the seeds and their spread (max - min), and, for every variant but A, the paired 95%
    interval of its difference to A within each seed. A variant is tabulated where every sweep has its
    report. Returns ``{"sweeps": [...], boxes: {variant: {"values", "intervals", "mean", "spread", "minus_A"}}}``.
    """
    names = [sweep.name if sweep.name not in ("", ".") else str(sweep) for sweep in sweeps]
    reports: dict[str, dict[str, list[dict]]] = {}
    for folder, boxes in REPORT_FOLDERS:
        for variant in variants:
            paths = [sweep / variant / folder / "report.json" for sweep in sweeps]
            if all(path.is_file() for path in paths):
                reports.setdefault(boxes, {})[variant] = [json.loads(path.read_text()) for path in paths]
    if not reports:
        raise SystemExit(f"--seeds: no variant of {', '.join(variants)} has reports in every one of "
                         f"{', '.join(str(s) for s in sweeps)}")
    results: dict = {"sweeps": [str(s) for s in sweeps]}
    rows = ["| variant | boxes | " + " | ".join(f"seed {n} (95%)" for n in names)
            + " | mean | spread | minus A, per seed (paired 95%) |", "|---|---|" + "---|" * (len(names) + 3)]
    for boxes, by_variant in reports.items():
        for variant, seeds in by_variant.items():
            reference = by_variant.get("A") if variant != "A" else None
            values = [float(r["object_AUROC"]) for r in seeds]
            intervals, differences = [], []
            for i, report in enumerate(seeds):
                interval, diff = bootstrap_auroc(report, reference[i] if reference else None)
                intervals.append(interval)
                if reference:
                    differences.append({"value": values[i] - float(reference[i]["object_AUROC"]), "interval": diff})
            entry = {"values": values, "intervals": intervals, "mean": sum(values) / len(values),
                     "spread": max(values) - min(values), "minus_A": differences or None}
            results.setdefault(boxes, {})[variant] = entry
            cells = [f"{v:.3f}" + ("" if iv is None else f" ({iv[0]:.2f}-{iv[1]:.2f})")
                     for v, iv in zip(values, intervals)]
            minus = "n/a" if not differences else "; ".join(
                f"{d['value']:+.3f}" + ("" if d["interval"] is None else
                                        f" ({d['interval'][0]:+.3f} to {d['interval'][1]:+.3f})") for d in differences)
            rows.append(f"| {variant} | {boxes} | " + " | ".join(cells)
                        + f" | {entry['mean']:.3f} | {entry['spread']:.3f} | {minus} |")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "seeds.json", (json.dumps(results, indent=2) + "\n").encode())
    atomic_write_bytes(out / "seeds.md", ("\n".join(rows) + "\n").encode())
    _plot_seeds(results, names, out / "seeds.png")
    print("\n".join(rows))
    return results


def _plot_seeds(results: dict, names: list[str], path: Path) -> None:
    """``seeds.png``: per box kind, each variant's object_AUROC per seed (interval over test scenes) and the mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in ("predicted", "gt") if k in results]
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.5 * len(kinds), 3.6), squeeze=False, sharey=True)
    for ax, boxes in zip(axes[0], kinds):
        for x, (variant, entry) in enumerate(results[boxes].items()):
            for i, (value, interval) in enumerate(zip(entry["values"], entry["intervals"])):
                offset = (i - (len(names) - 1) / 2) * 0.15
                error = None if interval is None else interval_error(value, *interval)
                ax.errorbar(x + offset, value, yerr=error, fmt="o", color=f"C{i}", capsize=3,
                            label=f"seed {names[i]}" if x == 0 else None)
            ax.hlines(entry["mean"], x - 0.3, x + 0.3, color="k", lw=2, label="mean" if x == 0 else None)
        ax.set_xticks(range(len(results[boxes])), list(results[boxes]))
        ax.set_title("GT boxes" if boxes == "gt" else f"{boxes} boxes")
        ax.set_ylabel("object_AUROC (per scene)")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.suptitle("variants over training seeds (bars: 95% over test scenes)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()

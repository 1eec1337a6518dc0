"""Majority-vote sanity experiment (the paper's Fig. 6): is the minority of two look-alike shapes flagged?

    python recipes/majority_vote.py --checkpoint runs/partsad/final.pt --out runs/partsad/majority_vote

Each scene holds six objects: n_A copies of a shape A and n_B = 6 - n_A copies of B, a ``diff``
look-alike of A (:func:`oddsparse.data.synth.scene.generate_group_scene`; the same A/B pair for one
scene index at every count). For n_A = 1..5 and ``--scenes-per-count`` scene indices, the scenes are
generated into ``<out>/scenes/`` (once; finished scenes are reused), the detector sees
``--input-views`` evenly spaced views of each, and its per-object anomaly scores are matched to the
ground-truth objects (IoU > ``--iou-threshold``, as in ``oddsparse eval``; a missed object has no score).

An odd-one-out detector should score whichever group is the minority higher: A for n_A < 3, B for
n_A > 3 (the written labels mark the minority as the anomaly). n_A = 3 is a tie: its labels mark B,
and it is reported separately (``tie``) and left out of the overall fraction.

Writes ``<out>/results.json`` (per n_A: mean score of A and B objects over scenes, their spread, the
fraction of scenes whose minority group has the higher mean score; the per-scene rows) and
``<out>/majority_vote.png`` (score of A and of B against n_A). Last line: key=value pairs.

``--gt-boxes`` scores the ground-truth boxes instead of the estimated ones and ``--gt-masks`` carves
with the ground-truth masks: diagnostics that isolate the matcher from box estimation (state them
when reporting).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path

try:
    import oddsparse  # noqa: F401
except ModuleNotFoundError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from oddsparse.data.scene_io import read_scene, read_scene_metadata
from oddsparse.data.synth.scene import generate_group_scene
from oddsparse.data.synth.writer import render_and_write_scene
from oddsparse.eval.evaluate import detect_scene, evenly_spaced_views
from oddsparse.geometry.boxes import as_yaw_boxes, match_boxes
from oddsparse.models.detector import canonical_boxes, load_detector
from oddsparse.utils.checkpoint import atomic_write_bytes
from oddsparse.utils.figures import save_figure

NUM_OBJECTS = 6
COUNTS = tuple((n_a, NUM_OBJECTS - n_a) for n_a in range(1, NUM_OBJECTS))  # n_A = 1..5
MANIFEST = "manifest.json"
TIE_TOLERANCE = 1e-6  # mean scores closer than this count as equal


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path, help="detector checkpoint (e.g. <run>/final.pt)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (scenes/, results.json, figure)")
    parser.add_argument("--scenes-per-count", type=int, default=8, help="scenes (A/B pairs) per count n_A")
    parser.add_argument("--size", type=int, default=None, help="rendered image size (default: checkpoint image_size)")
    parser.add_argument("--views", type=int, default=10, help="stored views per generated scene")
    parser.add_argument("--input-views", type=int, default=5, help="views the detector sees (evenly spaced)")
    parser.add_argument("--family", choices=("parts", "toys"), default=None,
                        help="shape family (default: the checkpoint's family, else parts)")
    parser.add_argument("--seed", type=int, default=1000, help="seed of the generated scenes")
    parser.add_argument("--iou-threshold", type=float, default=0.5, help="IoU above which a box matches a GT object")
    parser.add_argument("--gt-boxes", action="store_true", help="diagnostic: score the GT boxes")
    parser.add_argument("--gt-masks", action="store_true", help="diagnostic: carve with the GT masks")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.scenes_per_count < 1 or args.input_views < 1 or args.views < args.input_views:
        parser.error("need --scenes-per-count >= 1 and 1 <= --input-views <= --views")
    return args


# ------------------------------------------------------------------------------------------ scenes
def generate_scenes(root: Path, *, family: str, seed: int, scenes_per_count: int, views: int, size: int,
                    progress: bool = True) -> list[dict]:
    """Generate the group scenes into ``root`` (finished scenes kept); returns one manifest row per scene.

    A row: ``{"name", "index", "n_A", "n_B", "groups": {object name: "A" | "B"}}``. Scenes are written
    to a temporary folder and renamed into place, so an interrupted run resumes cleanly.
    """
    from tqdm.auto import tqdm

    root.mkdir(parents=True, exist_ok=True)
    manifest_file = root / MANIFEST
    known = {row["name"]: row for row in json.loads(manifest_file.read_text())} if manifest_file.is_file() else {}
    rows = []
    jobs = [(index, counts) for index in range(scenes_per_count) for counts in COUNTS]
    for index, (n_a, n_b) in tqdm(jobs, desc="group scenes", unit="scene", disable=not progress):
        spec = generate_group_scene(family, seed=seed, index=index, counts=(n_a, n_b), views=views, size=size)
        row = {"name": spec.name, "index": index, "n_A": n_a, "n_B": n_b,
               "groups": {o.name: ("A" if i < n_a else "B") for i, o in enumerate(spec.objects)}}
        folder = root / spec.name
        if not folder.is_dir() or known.get(spec.name) != row:
            tmp = root / f".tmp-{spec.name}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(folder, ignore_errors=True)
            render_and_write_scene(spec, tmp)
            os.rename(tmp, folder)
        rows.append(row)
        known[spec.name] = row
        atomic_write_bytes(manifest_file, (json.dumps(list(known.values()), indent=1) + "\n").encode())
    return rows


# ----------------------------------------------------------------------------------------- scoring
@torch.no_grad()
def score_objects(detector, scene, *, iou_threshold: float = 0.5, gt_boxes: bool = False,
                  gt_masks: bool = False) -> np.ndarray:
    """(O,) anomaly score of each GT object of ``scene`` (NaN where no predicted box matches it)."""
    truth = as_yaw_boxes(scene.boxes)
    if not gt_boxes and not gt_masks:
        boxes, scores = detect_scene(detector, scene.images, scene.K, scene.world_to_cam)
    else:
        carve_masks = scene.masks.any(0)[None].float() if gt_masks else None  # (1, V, H, W)
        given = (canonical_boxes(truth), torch.zeros(truth.center.shape[0], dtype=torch.int64)) if gt_boxes else None
        detection = detector(scene.images[None], scene.K[None], scene.world_to_cam[None], carve_masks=carve_masks,
                             boxes=given)
        boxes, scores = as_yaw_boxes(detection.boxes), detection.scores.float()
    if gt_boxes:
        return scores.double().numpy()
    out = np.full(truth.center.shape[0], np.nan)
    if boxes.center.shape[0] == 0:
        return out
    pred_of_gt, _ = match_boxes(truth, boxes, iou_threshold)
    hit = pred_of_gt >= 0
    out[hit.numpy()] = scores[pred_of_gt[hit]].double().numpy()
    return out


def _finite(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values[np.isfinite(values)]


def _nanmean(values) -> float:
    values = _finite(values)
    return float(values.mean()) if len(values) else math.nan


def _nanstd(values) -> float:
    """Standard deviation of the finite ``values``: the population :func:`_nanmean` averages."""
    values = _finite(values)
    return float(values.std()) if len(values) else math.nan


def _higher(row: dict, group: str) -> float:
    """1 when ``group``'s mean score is above the other group's, 0 when below, 0.5 when they are equal
    within ``TIE_TOLERANCE`` (float rounding of a constant output must not decide)."""
    mine, other = row[f"score_{group}"], row[f"score_{'B' if group == 'A' else 'A'}"]
    if abs(mine - other) <= TIE_TOLERANCE:
        return 0.5
    return 1.0 if mine > other else 0.0


def summarize(rows: list[dict]) -> dict:
    """Per-count and overall statistics from the per-scene rows (``n_A``, ``n_B``, ``missed`` and the mean
    scores ``score_A``, ``score_B`` of the scene's A and B objects, NaN when none was scored).

    A scene counts 1 when its minority group's mean score is the higher, 0 when lower, 0.5 when equal
    (within ``TIE_TOLERANCE``);
    scenes without a score for both groups are left out (``scenes_scored``).
    """
    per_count = {}
    for n_a, n_b in COUNTS:
        mine = [r for r in rows if r["n_A"] == n_a]
        valid = [r for r in mine if np.isfinite(r["score_A"]) and np.isfinite(r["score_B"])]
        minority = "A" if n_a < n_b else "B" if n_a > n_b else None
        entry = {"n_A": n_a, "n_B": n_b, "scenes": len(mine), "scenes_scored": len(valid),
                 "minority": minority if minority else "tie",
                 "mean_score_A": _nanmean([r["score_A"] for r in mine]),
                 "std_score_A": _nanstd([r["score_A"] for r in mine]),
                 "mean_score_B": _nanmean([r["score_B"] for r in mine]),
                 "std_score_B": _nanstd([r["score_B"] for r in mine]),
                 "missed_objects": int(sum(r["missed"] for r in mine))}
        if minority is None:
            entry["B_higher_fraction"] = float(np.mean([_higher(r, "B") for r in valid])) if valid else math.nan
        else:
            flags = [_higher(r, minority) for r in valid]
            entry["minority_higher_fraction"] = float(np.mean(flags)) if valid else math.nan
        per_count[str(n_a)] = entry
    decided = [r for r in rows if r["n_A"] != r["n_B"] and np.isfinite(r["score_A"]) and np.isfinite(r["score_B"])]
    flags = [_higher(r, "A" if r["n_A"] < r["n_B"] else "B") for r in decided]
    return {"per_count": per_count,
            "minority_higher_fraction": float(np.mean(flags)) if flags else math.nan,
            "scenes_decided": len(decided),
            "tie": per_count[str(NUM_OBJECTS // 2)] if NUM_OBJECTS % 2 == 0 else None}


def plot(summary: dict, path: Path, title: str) -> None:
    """Mean score of the A and B objects against n_A (band: one standard deviation over scenes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [summary["per_count"][str(n_a)] for n_a, _ in COUNTS]
    x = np.array([e["n_A"] for e in entries])
    fig, axis = plt.subplots(figsize=(5.0, 3.8))
    for group, colour in (("A", "tab:blue"), ("B", "tab:orange")):
        mean = np.array([e[f"mean_score_{group}"] for e in entries], dtype=np.float64)
        std = np.array([e[f"std_score_{group}"] for e in entries], dtype=np.float64)
        axis.plot(x, mean, "o-", color=colour, label=f"objects of shape {group}")
        axis.fill_between(x, mean - std, mean + std, color=colour, alpha=0.15, linewidth=0)
    axis.axvline(NUM_OBJECTS / 2, color="0.6", linestyle=":", linewidth=1)
    for e in entries:
        fraction = e.get("minority_higher_fraction", e.get("B_higher_fraction"))
        if fraction is not None and math.isfinite(fraction):
            label = f"minority\nhigher {fraction:.0%}" if e["minority"] != "tie" else f"tie\nB higher {fraction:.0%}"
            axis.annotate(label, (e["n_A"], 1.0), textcoords="offset points", xytext=(0, -4), ha="center",
                          va="top", fontsize=7, color="0.3")
    axis.set_xticks(x, [f"{e['n_A']}\n({e['n_B']} B)" for e in entries])
    axis.set_xlabel("number of A objects (of 6)")
    axis.set_ylabel("mean anomaly score")
    axis.set_ylim(0, 1.08)
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=8, loc="center left")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _json_ready(value):
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def main(argv=None) -> dict:
    args = parse_args(argv)
    from tqdm.auto import tqdm

    if args.threads:
        torch.set_num_threads(args.threads)
    detector, checkpoint = load_detector(args.checkpoint)
    stored_size = checkpoint.get("image_size")
    size = args.size or (int(stored_size[0]) if stored_size else 64)
    family = args.family or checkpoint.get("family") or "parts"
    out = args.out
    scene_root = out / "scenes" / f"{family}-{size}px-v{args.views}-seed{args.seed}"
    rows = generate_scenes(scene_root, family=family, seed=args.seed, scenes_per_count=args.scenes_per_count,
                           views=args.views, size=size, progress=not args.quiet)

    per_scene = []
    for row in tqdm(rows, desc="detect", unit="scene", disable=args.quiet):
        folder = scene_root / row["name"]
        selection = evenly_spaced_views(read_scene_metadata(folder).num_views, args.input_views)
        scene = read_scene(folder, views=selection, image_size=size)
        groups = np.array([row["groups"][name] for name in scene.object_names])
        labels = scene.labels.numpy().astype(bool)
        minority = "A" if row["n_A"] < row["n_B"] else "B"  # the tie marks B
        if not np.array_equal(labels, groups == minority):
            raise RuntimeError(f"{folder}: labels {labels.tolist()} do not mark group {minority} ({groups.tolist()})")
        scores = score_objects(detector, scene, iou_threshold=args.iou_threshold, gt_boxes=args.gt_boxes,
                               gt_masks=args.gt_masks)
        per_scene.append({"name": row["name"], "index": row["index"], "n_A": row["n_A"], "n_B": row["n_B"],
                          "score_A": _nanmean(scores[groups == "A"]), "score_B": _nanmean(scores[groups == "B"]),
                          "missed": int(np.isnan(scores).sum()), "groups": groups.tolist(),
                          "scores": [None if math.isnan(s) else float(s) for s in scores]})

    summary = summarize(per_scene)
    settings = {"checkpoint": str(args.checkpoint.resolve()), "family": family, "size": size, "views": args.views,
                "input_views": args.input_views, "scenes_per_count": args.scenes_per_count, "seed": args.seed,
                "iou_threshold": args.iou_threshold, "gt_boxes": args.gt_boxes, "gt_masks": args.gt_masks,
                "variant": checkpoint.get("detector_kwargs", {}).get("variant"), "stage": checkpoint.get("stage"),
                "scene_root": str(scene_root.resolve())}
    results = {**summary, "settings": settings, "per_scene": per_scene}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "results.json",
                       (json.dumps(_json_ready(results), indent=2, allow_nan=False) + "\n").encode())
    diagnostics = " + ".join(name for name, on in (("GT boxes", args.gt_boxes), ("GT masks", args.gt_masks)) if on)
    plot(summary, out / "majority_vote.png",
         f"majority vote, {family}, {args.input_views} views, {args.scenes_per_count} scenes per count"
         + (f" ({diagnostics})" if diagnostics else ""))

    for n_a, n_b in COUNTS:
        e = summary["per_count"][str(n_a)]
        fraction = e.get("minority_higher_fraction", e.get("B_higher_fraction"))
        what = "minority higher" if e["minority"] != "tie" else "tie: B higher"
        print(f"n_A={n_a} n_B={n_b} score_A={e['mean_score_A']:.3f} score_B={e['mean_score_B']:.3f} "
              f"{what}={fraction:.2f} scored={e['scenes_scored']}/{e['scenes']} missed_objects={e['missed_objects']}")
    print(f"wrote {out / 'results.json'} and {out / 'majority_vote.png'}")
    print(f"minority_higher_fraction={summary['minority_higher_fraction']:.4f} "
          f"scenes_decided={summary['scenes_decided']} tie_B_higher_fraction="
          f"{summary['tie']['B_higher_fraction']:.4f} scenes={len(per_scene)}")
    return results


if __name__ == "__main__":
    main()

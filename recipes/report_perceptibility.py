"""How much of each anomaly the input views show, and the object_AUROC no image-based method can pass.

    python recipes/report_perceptibility.py --family parts --out runs/perceptibility-parts --workers 2

No model is involved. The held-out test scenes of the synthetic default (``train_partsad``'s dataset
settings, regenerated from their seed: nothing needs to be on disk) are rendered at every size of
``--image-sizes`` from the ``--views`` input views (evenly spaced, as ``oddsparse eval`` picks
them), once as generated and once per anomalous instance with that instance swapped for the normal
shape (:func:`~oddsparse.data.synth.perceptibility.anomaly_pixel_changes`). The pixels whose colour
changes by at least ``--thresholds`` 8-bit levels are all the evidence the views hold about that
instance (itself, its shadow, what it hides). The same renders also give the silhouette pixels it
changes (some object against floor or sky,
:func:`~oddsparse.data.synth.perceptibility.anomaly_evidence`): the part of that evidence left to a
method that reads the views through their foreground alone (carving, visual hulls, mask rendering),
reported beside each threshold as ``SIZE/silhouette``.

An ideal observer that finds every anomaly changing at least N pixels (summed over the input views)
and cannot tell the others from normal instances
(:func:`~oddsparse.data.synth.perceptibility.evidence_scores`) reads an object_AUROC (GT boxes, per
scene, :func:`~oddsparse.eval.metrics.evaluate_objects`) that bounds every method reading these
views: with N = 1 at the lowest threshold (8 of 255 levels by default) it is, in practice, the hard
ceiling (an anomaly that changes no pixel by that much cannot be seen); larger N what remains when a
few changed pixels are not enough to tell. For scale, the report also counts the pixels that turning
a normal instance by ``--turn-degrees`` (1) changes: instances are compared across poses, so an
anomaly whose change is far below that of a one-degree turn must be told from pose by a model that
registers instances better than that.

With ``--scores`` (an ``oddsparse eval`` report on GT boxes of the same test split, such as a recipe
run's ``eval_gt_boxes/report.json``) it also reads that detector's object_AUROC on the anomalies of
each evidence bin (0, 1-3, 4-15, ... changed pixels) against the normal objects of their scenes:
whether what a detector misses is what the views do not show.

Per-scene records are kept in ``OUT/scenes/`` (atomic writes; a rerun skips finished scenes with the
same settings). Writes ``perceptibility.json`` (per image size and threshold, and per image size for the
silhouette: changed pixels per
anomaly type, the ideal observer's object_AUROC per N, overall and per type, and with ``--scores``
the detector's by evidence), ``perceptibility.png`` (those ceilings against N), ``by_evidence.png``
(with ``--scores``) and ``examples.png`` (the renders and the changed pixels of the typical anomaly
of each type). Last line: key=value pairs.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch

import report_resolution as rr  # noqa: E402  (the test scenes, their GT boxes, the job runner)
from oddsparse.data.synth.perceptibility import (anomaly_evidence, color_difference, evidence_scores, render_rgb,
                                                 turn_evidence, with_normal)
from oddsparse.eval.evaluate import evenly_spaced_views
from oddsparse.eval.metrics import SceneAnnotation, ScenePrediction, evaluate_objects
from oddsparse.geometry.boxes import YawBoxes
from oddsparse.utils.checkpoint import atomic_write_bytes
from oddsparse.utils.figures import save_figure

MIN_PIXELS = (1, 2, 4, 8, 16, 32, 64)  # evidence the ideal observer needs, in pixels over the input views
EVIDENCE_BINS = ((0, 0), (1, 3), (4, 15), (16, 63), (64, 255), (256, None))  # changed pixels, inclusive ranges
SILHOUETTE = "silhouette"  # the evidence channel of silhouette changes, beside the colour thresholds' indices
RECORD_EVIDENCE = ["color", SILHOUETTE]  # what a record holds (records written before the silhouette are redone)


def _settings(args) -> dict:
    return {**rr.dataset_settings(args), "image_sizes": list(args.image_sizes), "thresholds": list(args.thresholds),
            "turn_degrees": args.turn_degrees, "evidence": RECORD_EVIDENCE}


def scene_record(spec, settings: dict) -> dict:
    """One scene's record: labels, types, GT boxes and, per image size, the (O, V, T) colour pixels and (O, V)
    silhouette pixels each anomaly changes, and the (V, T) and (V,) ones that turning the scene's first normal
    instance by ``turn_degrees`` changes (empty without a normal instance)."""
    views = evenly_spaced_views(settings["stored_views"], settings["views"])
    boxes = rr.gt_boxes(spec)
    normal = [index for index, obj in enumerate(spec.objects) if obj.kind is None]
    record = {"settings": settings, "name": spec.name,
              "labels": [o.is_anomalous for o in spec.objects],
              "types": [o.kind or "normal" for o in spec.objects],
              "boxes": {k: v.tolist() for k, v in boxes._asdict().items()},
              "changed_pixels": {}, "silhouette_pixels": {}, "turn_pixels": {}, "turn_silhouette_pixels": {}}
    for size in settings["image_sizes"]:
        colour, silhouette = anomaly_evidence(spec, views, size, thresholds=settings["thresholds"])
        record["changed_pixels"][str(size)], record["silhouette_pixels"][str(size)] = colour.tolist(), silhouette.tolist()
        colour, silhouette = (turn_evidence(spec, normal[0], views, size, degrees=settings["turn_degrees"],
                                            thresholds=settings["thresholds"]) if normal else (np.zeros(0), np.zeros(0)))
        record["turn_pixels"][str(size)], record["turn_silhouette_pixels"][str(size)] = colour.tolist(), silhouette.tolist()
    return record


def _write_scene(job: tuple[str, str, dict]) -> None:
    """Rebuild one test scene, render it, write its record atomically."""
    name, path, settings = job
    atomic_write_bytes(Path(path), (json.dumps(scene_record(rr.scene_spec(name, settings), settings)) + "\n").encode())


def evidence(record: dict, size: int, channel) -> np.ndarray:
    """(O,) pixels each object of a record changes at one image size, summed over the views: in colour by the
    threshold of index ``channel``, or in silhouette for ``channel == SILHOUETTE``."""
    if channel == SILHOUETTE:
        return np.asarray(record["silhouette_pixels"][str(size)], dtype=np.int64).reshape(len(record["labels"]), -1).sum(1)
    return np.asarray(record["changed_pixels"][str(size)], dtype=np.int64)[:, :, channel].sum(1)


def turn_evidence_of(record: dict, size: int, channel) -> int | None:
    """The pixels the record's turned normal instance changes at one size, summed over the views (``None``
    without a normal instance)."""
    key = "turn_silhouette_pixels" if channel == SILHOUETTE else "turn_pixels"
    values = np.asarray(record[key][str(size)])
    if not len(values):
        return None
    return int(values.sum() if channel == SILHOUETTE else values[:, channel].sum())


def ceilings(records: list[dict], size: int, channel, min_pixels=MIN_PIXELS) -> dict:
    """The ideal observer's object_AUROC (overall, pooled and per type) for every N of ``min_pixels``."""
    annotations = rr.record_annotations(records)
    out = {}
    for n in min_pixels:
        predictions = [ScenePrediction(boxes=a.boxes, scores=torch.from_numpy(
            evidence_scores(evidence(r, size, channel), r["labels"], n)))
            for r, a in zip(records, annotations)]
        report = evaluate_objects(predictions, annotations)
        out[str(n)] = {"object_AUROC": report["object_AUROC"], "object_AUROC_pooled": report["object_AUROC_pooled"],
                       "per_type": {t: v["object_AUROC"] for t, v in report["per_type"].items()}}
    return out


def model_scores(path: Path, records: list[dict], views: int) -> list[np.ndarray]:
    """Per record, the (O,) anomaly scores a detector gave its objects, read from an ``oddsparse eval`` report
    on GT boxes (``eval_gt_boxes/report.json`` of a recipe run on the same test split: its ``per_scene``
    rows with ``views`` input views hold one score per GT object, in the scene's object order).

    Raises:
        ValueError: naming the file and the field, when the report is not on GT boxes, lacks a scene, or
            holds another number of scores or other labels than the scene's objects.
    """
    report = json.loads(Path(path).read_text())
    boxes = report.get("settings", {}).get("boxes")
    if boxes != "gt":
        raise ValueError(f"{path}: settings.boxes is {boxes!r}; the scores must come from a report on GT boxes "
                         f"(a recipe run's eval_gt_boxes/report.json), one per GT object")
    rows = {row["name"]: row for row in report.get("per_scene", []) if row.get("num_views") == views}
    scores = []
    for record in records:
        row = rows.get(record["name"])
        if row is None:
            raise ValueError(f"{path}: per_scene has no row for scene {record['name']} with {views} views")
        if len(row["scores"]) != len(record["labels"]) or row["num_anomalous"] != sum(record["labels"]):
            raise ValueError(f"{path}: per_scene row of {record['name']} holds {len(row['scores'])} scores and "
                             f"{row['num_anomalous']} anomalies for {len(record['labels'])} objects with "
                             f"{sum(record['labels'])} anomalies (another dataset?)")
        scores.append(np.asarray(row["scores"], dtype=np.float64))
    return scores


def model_by_evidence(records: list[dict], scores: list[np.ndarray], size: int, channel,
                      bins=EVIDENCE_BINS) -> dict:
    """The detector's object_AUROC on the anomalies whose changed pixels fall in each bin (inclusive ranges,
    ``None``: no upper end), against the normal objects of their scenes; overall, pooled and per type, with
    the number of anomalies in the bin. The other anomalies of a scene are left out."""
    scene_annotations = rr.record_annotations(records)
    out = {}
    for low, high in bins:
        predictions, annotations = [], []
        for record, annotation, score in zip(records, scene_annotations, scores):
            changed = evidence(record, size, channel)
            labels = np.asarray(record["labels"], dtype=bool)
            in_bin = labels & (changed >= low) & (changed <= (high if high is not None else np.inf))
            keep = ~labels | in_bin
            if not in_bin.any():
                continue
            kept = torch.from_numpy(np.flatnonzero(keep))
            boxes = YawBoxes(*(t[kept] for t in annotation.boxes))
            predictions.append(ScenePrediction(boxes=boxes, scores=torch.from_numpy(score[keep])))
            annotations.append(SceneAnnotation(boxes=boxes, labels=torch.from_numpy(labels[keep]),
                                               types=[t for t, k in zip(record["types"], keep) if k],
                                               name=record["name"]))
        name = f"{low}-{high}" if high is not None else f">={low}"
        if not predictions:
            out[name] = {"num_anomalies": 0}
            continue
        report = evaluate_objects(predictions, annotations)
        out[name] = {"num_anomalies": report["num_anomalous"], "object_AUROC": report["object_AUROC"],
                     "object_AUROC_pooled": report["object_AUROC_pooled"],
                     "per_type": {t: {"object_AUROC": v["object_AUROC"], "num_anomalies": v["num_anomalous"]}
                                  for t, v in report["per_type"].items()}}
    return out


def changed_pixel_summary(records: list[dict], size: int, channel) -> dict:
    """Per anomaly type: count, quartiles of the changed pixels, fraction changing none and fewer than 4; the
    same of the turned normal instances under ``turn``."""
    by_type: dict[str, list[int]] = {}
    for r in records:
        for value, kind in zip(evidence(r, size, channel), r["types"]):
            if kind != "normal":
                by_type.setdefault(kind, []).append(int(value))
    turns = [t for t in (turn_evidence_of(r, size, channel) for r in records) if t is not None]
    if turns:
        by_type["turn"] = turns  # not an anomaly: a normal instance turned by turn_degrees, for scale
    return {kind: {"count": len(values), "quartiles": [float(q) for q in np.percentile(values, [25, 50, 75])],
                   "fraction_none": float(np.mean(np.asarray(values) == 0)),
                   "fraction_below_4": float(np.mean(np.asarray(values) < 4))}
            for kind, values in sorted(by_type.items())}


def main(argv=None) -> dict:
    import train_partsad  # noqa: E402  (the synthetic default's settings)

    defaults = train_partsad.Config()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    rr.add_scene_arguments(parser, defaults, scenes_help="scenes of the generated dataset (its test split is scored)",
                        views_help="input views rendered (evenly spaced among the stored ones)")
    parser.add_argument("--limit", type=int, default=0, help="score the first N test scenes only (0: all)")
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--thresholds", type=int, nargs="+", default=[8, 32],
                        help="8-bit colour differences from which a pixel counts as changed")
    parser.add_argument("--turn-degrees", type=float, default=1.0,
                        help="for scale: the pixels that turning a normal instance by this angle changes")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering scenes")
    parser.add_argument("--scores", type=Path, default=None,
                        help="an oddsparse eval report on GT boxes of the same test split (a recipe run's "
                             "eval_gt_boxes/report.json): also report that detector's object_AUROC by evidence")
    parser.add_argument("--no-examples", dest="examples", action="store_false",
                        help="skip examples.png (renders of the typical anomaly of each type)")
    args = parser.parse_args(argv)
    rr.check_view_arguments(parser, args)
    if args.limit < 0:
        parser.error(f"--limit must be >= 0, got {args.limit}")
    if min(args.image_sizes) < 8:
        parser.error(f"--image-sizes must be >= 8, got {args.image_sizes}")
    if min(args.thresholds) < 1 or max(args.thresholds) > 255:
        parser.error(f"--thresholds must lie in 1..255 (8-bit colour differences), got {args.thresholds}")
    from oddsparse.data.synth import dataset_splits

    settings = _settings(args)
    names = dataset_splits(args.family, args.scenes, args.seed)["test"]
    names = names[:args.limit] if args.limit else names
    records = rr.scene_records(_write_scene, names, args.out / "scenes", settings, args.workers, desc="renders")

    scores = model_scores(args.scores, records, args.views) if args.scores else None
    results = {}
    for size in args.image_sizes:
        for channel, name in [*enumerate(args.thresholds), (SILHOUETTE, SILHOUETTE)]:
            results[f"{size}/{name}"] = {"changed_pixels": changed_pixel_summary(records, size, channel),
                                         "ceilings": ceilings(records, size, channel)}
            if scores is not None:
                results[f"{size}/{name}"]["model_by_evidence"] = model_by_evidence(records, scores, size, channel)
    report = {**settings, "num_test_scenes": len(records), "min_pixels": list(MIN_PIXELS),
              "scores": str(args.scores) if args.scores else None,
              "observer": "finds an anomaly iff it changes >= N pixels (summed over the input views) by >= the "
                          "threshold (SIZE/silhouette: N silhouette pixels); GT boxes; object_AUROC per scene",
              "results": results}
    atomic_write_bytes(args.out / "perceptibility.json", (json.dumps(report, indent=2) + "\n").encode())
    types = sorted({t for r in records for t in r["types"] if t != "normal"})
    print(f"{'size/threshold':15s} {'type':6s} {'median px':>9s} {'none':>5s} {'<4':>5s}  "
          + " ".join(f"{'N=' + str(n):>6s}" for n in MIN_PIXELS))
    for key, result in results.items():
        for kind in ["all"] + types + ["turn"]:
            pixels = result["changed_pixels"].get(kind)
            row = [result["ceilings"][str(n)]["object_AUROC"] if kind == "all" else
                   result["ceilings"][str(n)]["per_type"].get(kind) for n in MIN_PIXELS]
            if kind == "turn" and pixels is None:
                continue
            stats = (f"{pixels['quartiles'][1]:9.0f} {pixels['fraction_none']:5.2f} {pixels['fraction_below_4']:5.2f}"
                     if pixels else f"{'':9s} {'':5s} {'':5s}")
            ceiling_columns = "" if kind == "turn" else " ".join(f"{_fmt(v):>6s}" for v in row)
            print(f"{key:15s} {kind:6s} {stats}  {ceiling_columns}")
    if scores is not None:
        print(f"detector ({args.scores}) by changed pixels: object_AUROC (anomalies)")
        for key, result in results.items():
            print(f"{key:15s} " + "  ".join(f"{bin_name}: {_fmt(v.get('object_AUROC'))} ({v['num_anomalies']})"
                                             for bin_name, v in result["model_by_evidence"].items()))
    _figure(report, types, args.out / "perceptibility.png")
    wrote = [args.out / "perceptibility.json", args.out / "perceptibility.png"]
    if scores is not None:
        _evidence_figure(report, types, args.out / "by_evidence.png")
        wrote.append(args.out / "by_evidence.png")
    if args.examples and _example_figure(records, settings, args.out / "examples.png"):
        wrote.append(args.out / "examples.png")
    print("wrote " + ", ".join(str(p) for p in wrote))
    first = f"{args.image_sizes[0]}/{max(args.thresholds)}"
    print(" ".join(f"ceiling_{s}_N{n}={_fmt(results[f'{s}/{max(args.thresholds)}']['ceilings'][str(n)]['object_AUROC'])}"
                   for s in args.image_sizes for n in (1, 4, 16))
          + " " + " ".join(f"silhouette_ceiling_{s}_N{n}="
                           f"{_fmt(results[f'{s}/{SILHOUETTE}']['ceilings'][str(n)]['object_AUROC'])}"
                           for s in args.image_sizes for n in (1, 4, 16))
          + f" crack_median_px_{first.replace('/', '_t')}="
          + _fmt(results[first]["changed_pixels"].get("crack", {}).get("quartiles", [None] * 3)[1]))
    return report


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _figure(report: dict, types: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ["all"] + types
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels) + 0.6, 3.2), sharey=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    n_values = report["min_pixels"]
    for axis, panel in zip(axes[0], panels):
        for color, size in zip(colors, report["image_sizes"]):
            turn = report["results"][f"{size}/{max(report['thresholds'])}"]["changed_pixels"].get("turn")
            for threshold, style in zip(report["thresholds"], ("--", "-", ":")):
                ceilings = report["results"][f"{size}/{threshold}"]["ceilings"]
                values = [ceilings[str(n)]["object_AUROC"] if panel == "all" else ceilings[str(n)]["per_type"].get(panel)
                          for n in n_values]
                label = f"{size} px, >= {threshold} levels"
                if turn and threshold == max(report["thresholds"]):
                    label += f" (turn: {turn['quartiles'][1]:.0f} px)"
                axis.plot(n_values, [np.nan if v is None else v for v in values], style, color=color, marker="o",
                          markersize=3, label=label)
            outline = report["results"].get(f"{size}/{SILHOUETTE}")
            if outline is not None:
                values = [outline["ceilings"][str(n)]["object_AUROC"] if panel == "all"
                          else outline["ceilings"][str(n)]["per_type"].get(panel) for n in n_values]
                axis.plot(n_values, [np.nan if v is None else v for v in values], "-.", color=color, marker="s",
                          markersize=3, alpha=0.7, label=f"{size} px, silhouette")
            if turn and panel == "all" and turn["quartiles"][1] <= n_values[-1]:
                axis.axvline(max(turn["quartiles"][1], n_values[0]), color=color, linewidth=0.8, alpha=0.5)
        axis.set_xscale("log", base=2)
        axis.set_xlim(n_values[0] / 1.3, n_values[-1] * 1.3)
        axis.set_xticks(n_values, [str(n) for n in n_values])
        axis.minorticks_off()
        axis.axhline(0.5, color="0.6", linestyle=":", linewidth=1)
        axis.axhline(0.9, color="0.8", linestyle="-", linewidth=1)
        axis.set_xlabel("changed pixels needed (N)")
        axis.set_title(panel, fontsize=9)
        axis.set_ylim(0.45, 1.02)
    axes[0][0].set_ylabel("ideal observer's object_AUROC")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=6, loc="center right")
    fig.suptitle(f"{report['family']}: what {report['views']} input views show, {report['num_test_scenes']} test "
                 f"scenes (GT boxes, per scene; turn: pixels a {report['turn_degrees']:g} degree turn of a normal "
                 f"instance changes, median, also the vertical lines)", fontsize=8)
    fig.tight_layout(rect=(0.0, 0.0, 0.86, 1.0))
    save_figure(fig, path, dpi=130)


def _evidence_figure(report: dict, types: list[str], path: Path) -> None:
    """The detector's object_AUROC per evidence bin, one panel per image size (the largest threshold)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threshold = max(report["thresholds"])
    sizes = report["image_sizes"]
    fig, axes = plt.subplots(1, len(sizes), figsize=(3.4 * len(sizes) + 0.8, 3.2), sharey=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, size in zip(axes[0], sizes):
        bins = report["results"][f"{size}/{threshold}"]["model_by_evidence"]
        names = list(bins)
        for color, kind in zip(colors, ["all"] + types):
            values = [(b.get("object_AUROC") if kind == "all" else b.get("per_type", {}).get(kind, {}).get("object_AUROC"))
                      for b in bins.values()]
            axis.plot(range(len(names)), [np.nan if v is None else v for v in values], "-o", markersize=3,
                      color=color, linewidth=2.0 if kind == "all" else 1.0, label=kind)
        axis.set_xticks(range(len(names)), [f"{n}\n({bins[n]['num_anomalies']})" for n in names], fontsize=6)
        axis.axhline(0.5, color="0.6", linestyle=":", linewidth=1)
        axis.axhline(0.9, color="0.8", linestyle="-", linewidth=1)
        axis.set_xlabel(f"changed pixels at {size} px (anomalies)", fontsize=8)
        axis.set_ylim(0.0, 1.02)
    axes[0][0].set_ylabel("detector's object_AUROC (GT boxes)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center right")
    fig.suptitle(f"{Path(report['scores']).parent.parent.name}: the detector on anomalies by the evidence the "
                 f"{report['views']} input views hold (>= {threshold} levels)", fontsize=8)
    fig.tight_layout(rect=(0.0, 0.0, 0.9, 1.0))
    save_figure(fig, path, dpi=130)


def _example_figure(records: list[dict], settings: dict, path: Path, size: int | None = None) -> bool:
    """Per anomaly type, the anomaly of median evidence at the first image size: in its view of most change,
    a crop of the generated render, the render with the normal shape swapped in, and the changed pixels."""
    from oddsparse.data.synth.scene import project_numpy
    from oddsparse.geometry.cameras import default_intrinsics

    size = size if size is not None else settings["image_sizes"][0]
    t_index = len(settings["thresholds"]) - 1
    views = evenly_spaced_views(settings["stored_views"], settings["views"])
    rows = []
    for kind in sorted({t for r in records for t in r["types"] if t != "normal"}):
        found = [(int(evidence(r, size, t_index)[i]), r["name"], i) for r in records
                 for i, t in enumerate(r["types"]) if t == kind]
        if not found:
            continue
        value, name, index = sorted(found)[len(found) // 2]
        record = next(r for r in records if r["name"] == name)
        per_view = np.asarray(record["changed_pixels"][str(size)])[index, :, t_index]
        view = views[int(per_view.argmax())]
        spec = rr.scene_spec(name, settings)
        pair = [render_rgb(s, [view], size)[0] for s in (spec, with_normal(spec, index))]
        change = color_difference(*pair)
        pair = [image.astype(np.uint8) for image in pair]
        K = default_intrinsics(size, dtype=torch.float64).numpy()
        uv, _ = project_numpy(spec.objects[index].location[None], K, spec.world_to_cam[[view]])
        u, v = (int(round(c)) for c in uv[0, 0])
        half = max(8, size // 8)
        crops = [np.pad(image, [(half, half), (half, half)] + [(0, 0)] * (image.ndim - 2))[v:v + 2 * half,
                                                                                        u:u + 2 * half]
                 for image in (*pair, change)]
        rows.append((f"{kind}: {name} #{index}, view {view}, {value} px", crops))
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 3, figsize=(6.0, 2.0 * len(rows) + 0.3), squeeze=False)
    for row, (title, crops) in zip(axes, rows):
        for axis, crop, label in zip(row, crops, ("generated", "normal swapped in", "max |difference| (levels)")):
            if crop.ndim == 3:
                axis.imshow(crop, interpolation="nearest")
            else:
                shown = axis.imshow(crop, cmap="magma", vmin=0, vmax=max(64, int(crop.max())), interpolation="nearest")
                fig.colorbar(shown, ax=axis, fraction=0.046, pad=0.02)
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_title(label, fontsize=7)
        row[0].set_ylabel(title, fontsize=6)
    fig.suptitle(f"the typical anomaly of each type at {size} px (median changed pixels over the "
                 f"{settings['views']} input views)", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=130)
    return True


if __name__ == "__main__":
    main()

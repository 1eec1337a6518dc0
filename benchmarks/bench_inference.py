"""End-to-end inference time per scene (5 input views) of the small configuration on CPU, by stage.

The detector is the recipe's default preset (``recipes/train_partsad.py``: ResNet18 encoder, d = 16,
U-Net widths 16-32-64-128, 64 x 64 x 16 grid of 4 cm, 64 px images, matcher width 64, 4 heads,
2 blocks, k = 20), read from ``--checkpoint`` when given, otherwise built with random weights (the
output says which). Stages, each timed separately on one scene (B = 1) under ``torch.no_grad``:

- ``encoder``: ResNet-FPN features and foreground logits of the 5 views;
- ``carving``: space carving of the foreground into occupied voxels;
- ``sparse_net``: unprojection of the features into those voxels + 3D U-Net + field heads;
- ``boxes``: density threshold + DBSCAN + yaw boxes;
- ``matcher``: RoI sampling of the object volumes + occupied-cell tokens + attention + anomaly head.

Timed beside them and not part of the total (an option, off by default): ``view_colour``, what
``OddOneOutDetector(view_colour=True)`` adds to the object volumes of the scored boxes
(:meth:`~oddsparse.models.detector.OddOneOutDetector.view_colour_volumes`: every cell's transmittance towards
every view and the views' colour there), reported as ``view_colour_s`` and its ratio to the matcher stage.

With random weights the predicted foreground and density are meaningless (carving keeps nothing or
everything, the density selects no voxel), so the run carves with the ground-truth masks, replaces
the density (untimed) by a high value on the carved voxels inside ground-truth boxes and zero
elsewhere, runs DBSCAN on it, and lets the matcher score the ground-truth boxes: the same shapes of
work as a trained detector on that scene. The scenes are the first test scenes of the recipe's
synthetic cache when it exists, else ``--scenes`` small scenes generated into a temporary folder.

Baseline, measured in the same run: the same pipeline with the dense 3D backbone
(``build_backbone("dense")``, the exact dense twin with the sparse net's weights copied, so every
later stage sees the same voxels) in place of the sparse U-Net.

Method: ``torch.set_num_threads(--threads)`` (default 2); per scene, one warm-up pass and
``--repeats`` timed passes of each backbone, the two taking turns (same machine load); each stage's
time is its minimum over passes (the least disturbed by other processes), averaged over scenes.

Last line: ``total_s=... encoder_s=... carving_s=... sparse_net_s=... boxes_s=... matcher_s=...
dense_total_s=... speedup_vs_dense=...`` (seconds per scene), then a few more pairs (the dense
network stage alone, its speedup, ``view_colour_s`` and ``view_colour_vs_matcher``, whether the oracle was
used, the load average).
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import statistics
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from oddsparse.data.scene_io import read_scene, read_scene_metadata  # noqa: E402
from oddsparse.eval.evaluate import evenly_spaced_views  # noqa: E402
from oddsparse.geometry.boxes import as_yaw_boxes  # noqa: E402
from oddsparse.geometry.unproject import unproject_features  # noqa: E402
from oddsparse.models.backbone import build_backbone, copy_sparse_to_dense  # noqa: E402
from oddsparse.models.detector import build_detector, canonical_boxes, load_detector  # noqa: E402
from oddsparse.models.fields import VoxelFields  # noqa: E402
from oddsparse.models.scene_model import SceneOutput  # noqa: E402

STAGES = ("encoder", "carving", "sparse_net", "boxes", "matcher")
#: Timed beside the stages, not in the total: options that are off by default.
OPTIONAL_STAGES = ("view_colour",)


def recipe_config():
    """The default preset's Config of recipes/train_partsad.py."""
    spec = importlib.util.spec_from_file_location("recipe_train_partsad", REPO / "recipes" / "train_partsad.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module, module.parse_config([])


def default_detector(recipe, cfg):
    """The recipe's default detector with random weights (the kwargs the recipe builds)."""
    return build_detector(*recipe.model_kwargs(cfg)).eval()


def find_scenes(recipe, cfg, count: int, input_views: int) -> tuple[list[Path], str, Path | None]:
    """Scene folders: the recipe's synthetic cache when present, else a few freshly generated ones; and the
    temporary folder those were generated into (None for the cache), for the caller to remove."""
    root = recipe.synthetic_root(cfg, "parts")
    if (root / "splits.json").is_file():
        from oddsparse.data import SceneDataset

        folders = [f for f in SceneDataset(root, "test", family="parts").scenes
                   if read_scene_metadata(f).num_views >= input_views][:count]
        if folders:
            return folders, f"recipe cache {root}", None
    from oddsparse.data.synth import generate_dataset

    tmp = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    lo, hi = cfg.synthetic_objects
    folders = generate_dataset(tmp, "parts", scenes=count, seed=0, objects=(lo, hi), views=max(input_views, 10),
                               size=cfg.synthetic_size, progress=False)
    return folders, f"{count} scenes generated into {tmp}, removed once read (no recipe cache at {root})", tmp


def _inside_boxes(points: torch.Tensor, boxes) -> torch.Tensor:
    """(N,) whether points (N, 3) lie inside any of the yaw boxes."""
    local = points[:, None, :] - boxes.center[None]  # (N, O, 3)
    cos, sin = torch.cos(boxes.yaw)[None], torch.sin(boxes.yaw)[None]
    x = cos * local[..., 0] + sin * local[..., 1]
    y = -sin * local[..., 0] + cos * local[..., 1]
    half = boxes.size[None] / 2
    inside = (x.abs() <= half[..., 0]) & (y.abs() <= half[..., 1]) & (local[..., 2].abs() <= half[..., 2])
    return inside.any(1)


@torch.no_grad()
def run_pipeline(detector, scene, *, oracle: bool, sync: Callable[[], None] = lambda: None,
                 optional: bool = False) -> tuple[dict[str, float], dict]:
    """One pass over one scene; returns seconds per stage and what each stage produced.

    With ``oracle``: carving uses the GT masks, the density is replaced (outside the timed stages) by
    an opacity of 0.9 on the carved voxels inside GT boxes and 0 elsewhere (what a trained density
    approximates), and the matcher scores the GT boxes. ``sync`` is called before each clock reading
    (``torch.cuda.synchronize`` for a scene and detector on a GPU, whose kernels run asynchronously). With
    ``optional`` the :data:`OPTIONAL_STAGES` are timed too.
    """
    model = detector.scene_model
    images, K, world_to_cam = scene.images[None], scene.K[None], scene.world_to_cam[None]
    image_size = tuple(images.shape[2:4])
    times = {}

    sync()
    start = time.perf_counter()
    features, logits = model.encode(images)  # (1, M, d, h, w), (1, M, h, w)
    sync()
    times["encoder"] = time.perf_counter() - start

    start = time.perf_counter()
    foreground = scene.masks.any(0)[None].float() if oracle else torch.sigmoid(logits)  # (1, M, h', w')
    occupancy = model.carve(foreground, K, world_to_cam, image_size)
    sync()
    times["carving"] = time.perf_counter() - start

    start = time.perf_counter()
    lifted, _ = unproject_features(features, K, world_to_cam, image_size, model.grid, occupancy)
    volume = model.backbone(lifted)  # (N, C_v)
    fields = model.fields(volume)
    sync()
    times["sparse_net"] = time.perf_counter() - start

    truth = canonical_boxes(as_yaw_boxes(scene.boxes))
    if oracle:  # not timed: stands in for a trained density
        inside = _inside_boxes(fields.voxels.voxel_centers(), truth)
        density = torch.where(inside, -math.log(0.1) / model.grid.voxel_size, 0.0)
        fields = VoxelFields(fields.voxels.replace(feats=torch.cat([density[:, None], fields.voxels.feats[:, 1:]], 1)))

    output = SceneOutput(occupancy=occupancy, volume=volume, fields=fields, foreground_logits=logits,
                         views=(images, K, world_to_cam))
    sync()
    start = time.perf_counter()
    boxes, scene_index = detector.find_boxes(output)
    sync()
    times["boxes"] = time.perf_counter() - start

    if oracle:
        scored, scored_index = truth, torch.zeros(truth.center.shape[0], dtype=torch.int64,
                                                   device=truth.center.device)
    else:
        scored, scored_index = boxes, scene_index
    sync()
    start = time.perf_counter()
    _, num_tokens = detector.score_boxes(output, scored, scored_index)
    sync()
    times["matcher"] = time.perf_counter() - start
    if optional:
        start = time.perf_counter()
        detector.view_colour_volumes(output, scored, scored_index)
        sync()
        times["view_colour"] = time.perf_counter() - start
    info = {"voxels": int(occupancy.coords.shape[0]), "estimated_boxes": int(boxes.center.shape[0]),
            "scored_boxes": int(scored.center.shape[0]), "tokens": int(num_tokens.sum())}
    return times, info


def measure(detector, backbones: dict, scenes, *, oracle: bool, repeats: int) -> tuple[dict, dict]:
    """Stage seconds per scene for each backbone (min over repeats, mean over scenes) and per-scene info.

    The backbones take turns pass by pass, so both see the same machine load.
    """
    model = detector.scene_model
    best = {name: [] for name in backbones}
    infos = {name: [] for name in backbones}
    for scene in scenes:
        passes = {name: [] for name in backbones}
        for repeat in range(repeats + 1):  # pass 0 is the warm-up
            for name, backbone in backbones.items():
                model.backbone = backbone
                result = run_pipeline(detector, scene, oracle=oracle, optional=True)
                if repeat:
                    passes[name].append(result)
        for name in backbones:
            best[name].append({s: min(p[0][s] for p in passes[name]) for s in STAGES + OPTIONAL_STAGES})
            infos[name].append(passes[name][-1][1])
    times = {name: {s: statistics.fmean(t[s] for t in best[name]) for s in STAGES + OPTIONAL_STAGES}
             for name in backbones}
    return times, infos


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="detector checkpoint (default: random weights)")
    parser.add_argument("--scenes", type=int, default=2, help="scenes to time")
    parser.add_argument("--input-views", type=int, default=5, help="input views per scene")
    parser.add_argument("--repeats", type=int, default=4, help="timed passes per scene (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--oracle", choices=("auto", "on", "off"), default="auto",
                        help="carve with GT masks and score GT boxes (auto: only with random weights)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.perf_counter()

    recipe, cfg = recipe_config()
    if args.checkpoint is not None:
        detector, checkpoint = load_detector(args.checkpoint)
        stored = checkpoint.get("image_size")
        image_size = int(stored[0]) if stored else cfg.image_size
        source = f"checkpoint {args.checkpoint} (stage {checkpoint.get('stage')})"
    else:
        detector, image_size = default_detector(recipe, cfg), cfg.image_size
        source = "recipe default preset, RANDOM weights (no --checkpoint)"
    oracle = args.oracle == "on" or (args.oracle == "auto" and args.checkpoint is None)
    model = detector.scene_model
    kind = type(model.backbone).__name__
    if kind != "SparseUNet3d":
        raise SystemExit(f"the detector's backbone is {kind}; this benchmark times the sparse network against "
                         "its dense twin")

    folders, where, generated = find_scenes(recipe, cfg, args.scenes, args.input_views)
    try:
        scenes = [read_scene(f, views=evenly_spaced_views(read_scene_metadata(f).num_views, args.input_views),
                             image_size=image_size) for f in folders]
    finally:
        if generated is not None:  # read into memory: the generated folders are not needed again
            shutil.rmtree(generated, ignore_errors=True)
    parameters = sum(p.numel() for p in detector.parameters())
    print(f"detector: {source}; {parameters / 1e6:.2f} M parameters; encoder ResNet{model.encoder.depth}, "
          f"d={model.encoder.out_channels}, U-Net {list(model.backbone.channels)}, grid {model.grid.shape} x "
          f"{model.grid.voxel_size} m, images {image_size} px, {args.input_views} views, "
          f"variant {detector.variant}; torch threads {torch.get_num_threads()}")
    print(f"scenes: {where}: {', '.join(f.name for f in folders)}")
    if oracle:
        print("random weights: carving with the GT masks, density set (untimed) to opacity 0.9 on carved voxels "
              "inside GT boxes and 0 elsewhere, matcher scoring the GT boxes (same shapes of work as a trained "
              "detector)")

    sparse_backbone = model.backbone
    dense_backbone = build_backbone("dense", sparse_backbone.in_channels, channels=tuple(sparse_backbone.channels),
                                    blocks=sparse_backbone.blocks)
    copy_sparse_to_dense(sparse_backbone, dense_backbone).eval()
    times, infos = measure(detector, {"sparse": sparse_backbone, "dense": dense_backbone}, scenes, oracle=oracle,
                           repeats=args.repeats)
    model.backbone = sparse_backbone
    (sparse_times, dense_times), (sparse_info, dense_info) = (times["sparse"], times["dense"]), \
        (infos["sparse"], infos["dense"])

    for info_s, info_d in zip(sparse_info, dense_info):  # the twin does the same work downstream
        if info_s["voxels"] != info_d["voxels"] or info_s["tokens"] != info_d["tokens"]:
            print(f"warning: dense twin differs from the sparse net downstream "
                  f"(voxels {info_s['voxels']} vs {info_d['voxels']}, tokens {info_s['tokens']} vs {info_d['tokens']})")
    for folder, info in zip(folders, sparse_info):
        print(f"  {folder.name}: {info['voxels']} occupied voxels, {info['estimated_boxes']} boxes from DBSCAN, "
              f"{info['scored_boxes']} boxes scored, {info['tokens']} occupied-cell tokens")

    if any(info["voxels"] == 0 or info["scored_boxes"] == 0 for info in sparse_info):
        print("warning: the detector kept no voxel or found no object in some scene, so the later stages did little "
              "or no work and these times understate a working detector; rerun with --oracle on")
    total, dense_total = (sum(t[s] for s in STAGES) for t in (sparse_times, dense_times))
    print(f"{'stage':<12}{'sparse (s)':>12}{'dense (s)':>12}{'dense/sparse':>14}")
    for stage in STAGES:
        print(f"{stage:<12}{sparse_times[stage]:>12.4f}{dense_times[stage]:>12.4f}"
              f"{dense_times[stage] / max(sparse_times[stage], 1e-9):>14.2f}")
    print(f"{'total':<12}{total:>12.4f}{dense_total:>12.4f}{dense_total / total:>14.2f}")
    print(f"option view_colour (not in the total): {sparse_times['view_colour']:.4f} s, "
          f"{sparse_times['view_colour'] / max(sparse_times['matcher'], 1e-9):.2f}x the matcher stage")
    verdict = "meets" if total <= 1.0 else "misses"
    load = os.getloadavg()[0]
    if load > torch.get_num_threads() + 0.5:
        print(f"note: 1-minute load average {load:.1f} on {os.cpu_count()} CPUs: other processes share the cores, "
              "so these times are upper bounds")
    print(f"per scene: {total:.3f} s sparse ({verdict} the 1 s target on {torch.get_num_threads()} threads), "
          f"{dense_total:.3f} s with the dense backbone; load average {load:.1f}; "
          f"benchmark wall time {time.perf_counter() - started:.0f} s")
    print(" ".join([f"total_s={total:.4f}"] + [f"{s}_s={sparse_times[s]:.4f}" for s in STAGES]
                   + [f"dense_total_s={dense_total:.4f}", f"dense_sparse_net_s={dense_times['sparse_net']:.4f}",
                      f"speedup_vs_dense={dense_total / total:.3f}",
                      f"sparse_net_speedup_vs_dense={dense_times['sparse_net'] / sparse_times['sparse_net']:.3f}",
                      f"view_colour_s={sparse_times['view_colour']:.4f}",
                      f"view_colour_vs_matcher={sparse_times['view_colour'] / sparse_times['matcher']:.3f}",
                      f"oracle={int(oracle)}", f"scenes={len(scenes)}", f"threads={torch.get_num_threads()}",
                      f"load_avg={load:.2f}"]))


if __name__ == "__main__":
    main()

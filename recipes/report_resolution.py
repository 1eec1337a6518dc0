"""What object volumes could read at each voxel size and image size: solid, silhouette, depth and colour oracles.

    python recipes/report_resolution.py --family parts --out runs/resolution-parts --workers 2

No model is involved. The held-out test scenes of the synthetic default (``train_partsad``'s dataset
settings, regenerated from their seed: nothing needs to be on disk) are rebuilt and each object is
voxelised on a fine world lattice (``--fine``, 2.5 mm) aligned with the coarser ones, in up to six
ways (``--sources``; :mod:`oddsparse.data.synth.voxelize`):

- ``solid``: the cells inside the object's closed surface (a perfect density field);
- ``hull@S``: the visual hull of the GT object masks of the input views (``--views``, evenly spaced
  as ``oddsparse eval``) rendered at S px (``--image-sizes``): what carving from perfect
  silhouettes keeps; concavities seen in no silhouette stay filled;
- ``depth@S``: space carving with the GT depth maps of those views at S px: what perfect depth
  keeps (the observed surfaces and whatever lies behind them);
- ``observed@S`` (not run by default): ``depth@S`` compared only where both objects were observed
  (:func:`~oddsparse.data.synth.voxelize.depth_observations`, the ``weights`` of
  :func:`~oddsparse.eval.baselines.distance_to_others`): what a matcher that knows which cells
  the views saw could read from perfect depth.
- ``colour@S`` (not run by default): the colour the input views (rendered at S px, as generated: shading,
  shadows, texture) show on the objects' surfaces through each cell
  (:func:`~oddsparse.data.synth.voxelize.surface_colours` on the objects' pixels), compared only where both
  objects show colour: what a scene model whose volume held the views' colour on perfect geometry could
  read (the evidence of cracks and bumps, which change the shading more than the outline). With
  ``observed`` also run, ``observed+colour@S`` compares both at once (depth-carved occupancy where both
  objects were observed, colour where both show some, in one weighted distance).
- ``hullcolour@S`` (not run by default): the same colour read without GT depth, as a scene model could
  lift it: the scene is carved from the GT object masks at S px on a grid of each voxel size (the default
  recipe's extent), the carved voxels become a density (:data:`HULL_DENSITY`: 4 cm hide 95%) and
  every RoI cell reads the views' colour on object pixels, each view weighted by its transmittance through
  that hull (:func:`~oddsparse.renderers.raymarch.roi_view_samples`); cells are compared weighted by the
  hull's occupancy there times the object pixels' share of what the views see. The voxel size is the
  carving's (no fine lattice).

Each fine occupancy is averaged to every voxel size of ``--voxel-sizes`` (occupied fraction per
voxel, as an opacity), RoI-sampled at the GT box (:func:`~oddsparse.geometry.roi.roi_sample`,
``--roi-sizes`` cells per axis) and scored with the parameter-free
:func:`~oddsparse.eval.baselines.distance_to_others` (median distance to the scene's other objects),
then object_AUROC per scene and per anomaly type (:func:`~oddsparse.eval.metrics.evaluate_objects`
on GT boxes). A setting that reads low here says that the volume's geometry at that resolution does
not hold the difference for this scorer; the colour of the views (shading in a crack) is only in the
``colour`` and ``hullcolour`` sources. Per-scene scores are kept in ``OUT/scenes/`` (atomic
writes; a rerun skips finished scenes with the same settings). Writes ``resolution.json``,
``resolution.png`` (object_AUROC against voxel size, per anomaly type) and ``examples.png`` (where each
oracle sees a crack and a bump: :func:`difference_maps` of a typical such test scene).
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

import numpy as np
import torch

from oddsparse.eval.baselines import distance_to_others
from oddsparse.eval.evaluate import evenly_spaced_views
from oddsparse.eval.metrics import SceneAnnotation, ScenePrediction, evaluate_objects
from oddsparse.geometry.boxes import YawBoxes, rotation_to_yaw
from oddsparse.geometry.cameras import default_intrinsics, pixel_rays
from oddsparse.geometry.grid import VoxelGrid
from oddsparse.geometry.roi import roi_points, roi_sample
from oddsparse.utils.checkpoint import atomic_write_bytes
from oddsparse.utils.figures import save_figure

METRICS = ("object_AUROC", "object_AUROC_pooled")
SOURCES = ("solid", "hull", "depth", "observed", "colour", "hullcolour")
#: The scene extent (metres, x y z) that ``hullcolour@S`` carves, the default recipe's grid (128 x 128 x 32 of 2 cm).
HULL_EXTENT = (2.56, 2.56, 0.64)
#: Density (per metre) of the carved hull for ``hullcolour@S``: 4 cm of hull hide 95% (the hull is fatter
#: than the object by a few pixels' footprint: an opaque voxel at 1 cm would hide every surface inside it).
HULL_DENSITY = 3.0 / 0.04


def dataset_settings(args) -> dict:
    """The settings naming the generated dataset and the input views (:func:`add_scene_arguments`);
    ``min_anomaly_pixels`` only where it is set, so records of datasets generated without it keep their settings."""
    settings = {"family": args.family, "scenes": args.scenes, "seed": args.seed, "objects": list(args.objects),
                "stored_views": args.stored_views, "render_size": args.render_size, "views": args.views}
    if args.min_anomaly_pixels:
        settings["min_anomaly_pixels"] = args.min_anomaly_pixels
    return settings


def _settings(args) -> dict:
    return {**dataset_settings(args), "fine": args.fine, "voxel_sizes": list(args.voxel_sizes), "roi_sizes": list(args.roi_sizes),
            "image_sizes": list(args.image_sizes), "sources": list(args.sources),
            "depth_tolerance_px": args.depth_tolerance_px}


def source_names(sources, image_sizes) -> list[str]:
    """The oracles that ``--sources`` and ``--image-sizes`` name, in order: ``solid``, then ``hull@S``,
    ``depth@S``, ``observed@S``, ``colour@S`` and, with both of the last two, ``observed+colour@S`` for every
    image size S."""
    kinds = [kind for kind in SOURCES[1:] if kind in sources]
    if "observed" in sources and "colour" in sources:
        kinds.append("observed+colour")
    return (["solid"] if "solid" in sources else []) + [f"{kind}@{size}" for kind in kinds for size in image_sizes]


def setting_key(source: str, voxel_size: float, roi_size: int) -> str:
    """Name of one oracle setting, e.g. ``solid/0.02/8`` or ``hull@256/0.01/16``."""
    return f"{source}/{voxel_size:g}/{roi_size}"


def view_maps(spec, views: list[int], image_size: int, raycaster=None) -> tuple[np.ndarray, np.ndarray]:
    """GT maps of ``views`` rendered at ``image_size`` px: (V, S, S) bool object masks (not the floor) and
    (V, S, S) float64 z-depths of the first surface, floor included (``inf`` where nothing is hit).
    ``raycaster``: the scene's (``spec.raycaster()`` by default; pass one to reuse it across sizes)."""
    K = default_intrinsics(image_size, dtype=torch.float64).expand(len(views), 3, 3)
    world_to_cam = torch.as_tensor(np.asarray(spec.world_to_cam[views], dtype=np.float64))
    origins, directions = pixel_rays(K, world_to_cam, image_size, image_size)  # directions: z_cam = 1
    raycaster = raycaster if raycaster is not None else spec.raycaster()
    masks, depths = [], []
    for view in range(len(views)):
        t, geom = raycaster.first_hit_t(origins[view].numpy(), directions[view].numpy())
        masks.append((geom >= 1).reshape(image_size, image_size))  # geometry 0 is the floor
        depths.append(t.reshape(image_size, image_size))
    return np.stack(masks), np.stack(depths)


def colour_maps(spec, views: list[int], image_size: int, raycaster=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The input views rendered at ``image_size`` px as the generator renders them: (V, S, S, 3) uint8 colours,
    (V, S, S) float64 z-depths (``inf`` where nothing is hit) and (V, S, S) bool object pixels (not the floor)."""
    from oddsparse.data.synth.render import BACKGROUND_DEPTH, render_views

    K = default_intrinsics(image_size, dtype=torch.float64).numpy()
    world_to_cam = np.asarray(spec.world_to_cam[views], dtype=np.float64)
    renders = render_views(raycaster if raycaster is not None else spec.raycaster(), spec.light, K, world_to_cam,
                           image_size, seed=spec.texture_seed)
    depth = np.stack([r.depth for r in renders]).astype(np.float64)
    depth[depth >= BACKGROUND_DEPTH] = np.inf
    return np.stack([r.rgb for r in renders]), depth, np.stack([r.labels >= 1 for r in renders])


def fine_block(obj, coarse: float, fine: float) -> VoxelGrid:
    """Fine lattice around an object's world bounds plus one coarse voxel, aligned with the coarse lattice."""
    corners = np.array(np.meshgrid(*obj.model.bounds().T, indexing="ij")).reshape(3, -1).T  # (8, 3)
    world = corners @ obj.object_to_world[:3, :3].T + obj.object_to_world[:3, 3]
    lo = np.floor((world.min(0) - coarse) / coarse).astype(np.int64)
    hi = np.ceil((world.max(0) + coarse) / coarse).astype(np.int64)
    lo[2] = max(lo[2], 0)  # the floor (z = 0) is a lattice plane
    ratio = int(round(coarse / fine))
    return VoxelGrid(shape=tuple(int(v) for v in (hi - lo) * ratio), voxel_size=fine,
                     origin=tuple(float(v) for v in lo * coarse))


def gt_boxes(spec) -> YawBoxes:
    matrices = np.stack([o.object_to_world for o in spec.objects])
    center = torch.tensor(matrices[:, :3, 3], dtype=torch.float32)
    size = torch.tensor(np.broadcast_to(spec.normal_extents, center.shape).copy(), dtype=torch.float32)
    yaw = rotation_to_yaw(torch.from_numpy(matrices)).float()
    return YawBoxes(center, size, yaw)


def colour_renders(spec, settings: dict, raycaster=None) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """:func:`colour_maps` of the input views at every image size of ``settings``, by size."""
    views = evenly_spaced_views(settings["stored_views"], settings["views"])
    raycaster = raycaster if raycaster is not None else spec.raycaster()
    return {size: colour_maps(spec, views, size, raycaster) for size in settings["image_sizes"]}


def fine_occupancies(spec, settings: dict, indices=None, renders=None) -> list[tuple[VoxelGrid, dict[str, np.ndarray]]]:
    """Per object (those of ``indices``, default all, in that order): its fine lattice block
    (:func:`fine_block`) and the bool occupancy of every source on it: (X, Y, Z) for ``solid``,
    ``hull@S``, ``depth@S``; (2, X, Y, Z) kept and observed cells for ``observed@S``; (4, X, Y, Z) colour sums
    and shown cells for ``colour@S`` (from ``renders``, :func:`colour_renders`, rendered here when not given)."""
    from oddsparse.data.synth.meshops import union_mesh
    from oddsparse.data.synth.voxelize import (depth_observations, silhouette_occupancies, solid_occupancy,
                                               surface_colours)

    views = evenly_spaced_views(settings["stored_views"], settings["views"])
    world_to_cam = np.asarray(spec.world_to_cam[views], dtype=np.float64)
    raycaster = spec.raycaster()
    maps = {size: view_maps(spec, views, size, raycaster) for size in settings["image_sizes"]}
    Ks = [default_intrinsics(size, dtype=torch.float64).numpy() for size in maps]
    sources = settings["sources"]
    if "colour" not in sources:
        renders = {}
    elif renders is None:
        renders = colour_renders(spec, settings, raycaster)
    meshes: dict[int, object] = {}
    out = []
    for obj in (spec.objects if indices is None else [spec.objects[i] for i in indices]):
        if id(obj.model) not in meshes:
            meshes[id(obj.model)] = union_mesh(obj.model)
        block = fine_block(obj, max(settings["voxel_sizes"]), settings["fine"])
        occupancy = {}
        if "solid" in sources:
            occupancy["solid"] = solid_occupancy(meshes[id(obj.model)], obj.object_to_world, block)
        if "hull" in sources:
            hulls = silhouette_occupancies([m for m, _ in maps.values()], Ks, world_to_cam, block)
            occupancy.update({f"hull@{size}": hull for size, hull in zip(maps, hulls)})
        if "depth" in sources or "observed" in sources:
            pairs = depth_observations([d for _, d in maps.values()], Ks, world_to_cam, block,
                                       tolerance_px=settings["depth_tolerance_px"])
            for size, (kept, observed) in zip(maps, pairs):
                if "depth" in sources:
                    occupancy[f"depth@{size}"] = kept
                if "observed" in sources:
                    occupancy[f"observed@{size}"] = np.stack([kept, observed])  # (2, X, Y, Z)
        if renders:
            shown = surface_colours([r for r, _, _ in renders.values()], [d for _, d, _ in renders.values()], Ks,
                                    world_to_cam, block, tolerance_px=settings["depth_tolerance_px"],
                                    masks=[m for _, _, m in renders.values()])
            for size, (colour, count) in zip(renders, shown):
                present = (count > 0).astype(np.float32)
                occupancy[f"colour@{size}"] = np.concatenate([colour / 255.0 * present, present[None]])  # (4, X, Y, Z)
        out.append((block, occupancy))
    return out


def oracle_volumes(spec, settings: dict) -> dict[str, torch.Tensor]:
    """(O, C, R, R, R) GT-box volumes of the scene's objects for every oracle setting (:func:`setting_key`):
    C = 1 (occupied fraction), 2 for ``observed@S`` (occupied fraction, observed fraction), or 4 for
    ``colour@S`` (mean RGB in [0, 1] of the cells that show colour, and their fraction) and ``hullcolour@S``
    (:func:`hull_colour_volumes`)."""
    from oddsparse.data.synth.voxelize import block_mean

    boxes = gt_boxes(spec)
    volumes: dict[str, list[torch.Tensor]] = {}
    colour_sources = {"colour", "hullcolour"} & set(settings["sources"])
    renders = colour_renders(spec, settings) if colour_sources else None  # rendered once for both sources
    for index, (block, occupancy) in enumerate(fine_occupancies(spec, settings, renders=renders)):
        box = YawBoxes(*(t[index:index + 1] for t in boxes))
        for source, cells in occupancy.items():
            for voxel_size in settings["voxel_sizes"]:
                factor = int(round(voxel_size / settings["fine"]))
                grid = VoxelGrid(shape=tuple(s // factor for s in block.shape), voxel_size=voxel_size,
                                 origin=block.origin)
                channels = cells if cells.ndim == 4 else cells[None]
                volume = torch.from_numpy(np.stack([block_mean(c, factor) for c in channels]))[None]
                for roi_size in settings["roi_sizes"]:
                    sampled = roi_sample(volume, box, grid=grid, out_size=roi_size)
                    if source.startswith("colour@"):  # colour-weighted sums -> mean colour, and the shown fraction
                        shown = sampled[:, 3:]
                        sampled = torch.cat([sampled[:, :3] / shown.clamp(min=1e-6) * (shown > 1e-6), shown], 1)
                    volumes.setdefault(setting_key(source, voxel_size, roi_size), []).append(sampled)
    if "hullcolour" in settings["sources"]:
        volumes.update(hull_colour_volumes(spec, settings, boxes, renders))
    return {key: torch.cat(parts) for key, parts in volumes.items()}


def hull_colour_volumes(spec, settings: dict, boxes: YawBoxes, renders=None) -> dict[str, list[torch.Tensor]]:
    """``hullcolour@S`` volumes (module docstring): per setting a one-item list of (O, 4, R, R, R) mean RGB in
    [0, 1] and the cell weight (hull occupancy times the object pixels' share of the transmittance-weighted
    views). ``renders``: :func:`colour_renders` (rendered here when not given)."""
    from oddsparse.geometry.carving import carve_occupancy
    from oddsparse.renderers.raymarch import roi_view_samples
    from oddsparse.geometry.sampling import sample_sparse_trilinear

    views = evenly_spaced_views(settings["stored_views"], settings["views"])
    world_to_cam = torch.as_tensor(np.asarray(spec.world_to_cam[views], dtype=np.float32))
    renders = renders if renders is not None else colour_renders(spec, settings)
    out: dict[str, list[torch.Tensor]] = {}
    for size in settings["image_sizes"]:
        rgb, _, masks = renders[size]
        K = default_intrinsics(size).expand(len(views), 3, 3)
        mask = torch.from_numpy(masks).float()[:, None]
        maps = torch.cat([torch.from_numpy(rgb).float().permute(0, 3, 1, 2) / 255.0 * mask, mask], 1)  # (V, 4, S, S)
        for voxel_size in settings["voxel_sizes"]:
            grid = VoxelGrid.centered(shape=tuple(int(round(e / voxel_size)) for e in HULL_EXTENT),
                                      voxel_size=voxel_size)
            hull = carve_occupancy(torch.from_numpy(masks), K, world_to_cam, grid)
            density = hull.replace(feats=torch.full_like(hull.feats, HULL_DENSITY))
            occupied = hull.replace(feats=torch.ones_like(hull.feats))
            for roi_size in settings["roi_sizes"]:
                values, support = roi_view_samples(maps, K, world_to_cam, (size, size), density, boxes,
                                                   out_size=roi_size)
                shown = values[:, 3:]  # the object pixels' share of the weighted views
                colour = torch.where(shown > 1e-6, values[:, :3] / shown.clamp(min=1e-6), 0.0)
                points = roi_points(boxes.center, boxes.size, boxes.yaw, roi_size).reshape(-1, 3)
                inside = sample_sparse_trilinear(occupied, points).reshape(shown.shape)
                weight = inside * shown * support / len(views)
                out[setting_key(f"hullcolour@{size}", voxel_size, roi_size)] = [torch.cat([colour, weight], 1)]
    return out


def scene_scores(spec, settings: dict) -> dict[str, list[float]]:
    """Scores (distance to the other objects) of every oracle setting for the objects of one scene."""
    scene_index = torch.zeros(len(spec.objects), dtype=torch.int64)
    scores = {}
    volumes_of = oracle_volumes(spec, settings)
    for key, volumes in volumes_of.items():
        if key.startswith(("colour@", "hullcolour@")):  # compare the colour where both objects hold some
            scores[key] = distance_to_others(volumes[:, :3], scene_index, weights=volumes[:, 3:]).tolist()
            observed = volumes_of.get("observed" + key[len("colour"):]) if key.startswith("colour@") else None
            if observed is not None:  # occupancy where both observed and colour where both show some, at once
                weights = torch.cat([observed[:, 1:], volumes[:, 3:].expand(-1, 3, -1, -1, -1)], 1)
                scores["observed+" + key] = distance_to_others(torch.cat([observed[:, :1], volumes[:, :3]], 1),
                                                               scene_index, weights=weights).tolist()
            continue
        weights = volumes[:, 1:] if key.startswith("observed@") else None  # compare what both objects observed
        scores[key] = distance_to_others(volumes[:, :1], scene_index, weights=weights).tolist()
    return scores


def _scene_record(spec, settings: dict) -> dict:
    boxes = gt_boxes(spec)
    return {"settings": settings, "name": spec.name,
            "labels": [o.is_anomalous for o in spec.objects],
            "types": [o.kind or "normal" for o in spec.objects],
            "boxes": {k: v.tolist() for k, v in boxes._asdict().items()},
            "scores": scene_scores(spec, settings)}


def scene_spec(name: str, settings: dict):
    """The generated scene ``name`` (e.g. ``parts_0021``) of the dataset the settings describe."""
    from oddsparse.data.synth import generate_scene

    return generate_scene(settings["family"], seed=settings["seed"], index=int(name.rsplit("_", 1)[1]),
                          objects=tuple(settings["objects"]), views=settings["stored_views"],
                          size=settings["render_size"], min_anomaly_pixels=settings.get("min_anomaly_pixels", 0))


def _init_worker() -> None:
    torch.set_num_threads(1)


def runs_in_process(jobs: list, workers: int) -> bool:
    """Whether :func:`run_jobs` runs ``jobs`` in this process (one worker or at most one job)."""
    return workers <= 1 or len(jobs) <= 1


def run_jobs(function, jobs: list, workers: int):
    """Yield ``function(job)`` for every job, in this process (:func:`runs_in_process`) or else in ``workers``
    spawned single-threaded processes (in the order they finish)."""
    if runs_in_process(jobs, workers):
        for job in jobs:
            yield function(job)
        return
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs)), initializer=_init_worker) as pool:
        yield from pool.imap_unordered(function, jobs)


def scene_records(write, names: list[str], scene_dir: Path, settings: dict, workers: int, *, desc: str) -> list[dict]:
    """The per-scene records ``scene_dir/<name>.json`` of ``names``, in order: those written with the same
    ``settings`` are read back, the others written by ``write((name, path, settings))`` in :func:`run_jobs`
    (``workers`` processes; ``write`` writes its record atomically, so an interrupted run resumes)."""
    from tqdm.auto import tqdm

    scene_dir.mkdir(parents=True, exist_ok=True)
    cached = {}
    for name in names:
        path = scene_dir / f"{name}.json"
        record = json.loads(path.read_text()) if path.is_file() else None
        if record is not None and record.get("settings") == settings:
            cached[name] = record
    todo = [(name, str(scene_dir / f"{name}.json"), settings) for name in names if name not in cached]
    bar = tqdm(total=len(names), initial=len(names) - len(todo), desc=desc, unit="scene")
    for _ in run_jobs(write, todo, workers):
        bar.update(1)
    bar.close()
    return [cached[name] if name in cached else json.loads((scene_dir / f"{name}.json").read_text())
            for name in names]


def record_annotations(records: list[dict], views: int | None = None) -> list[SceneAnnotation]:
    """The GT annotation (boxes, labels, types; ``views``: their ``num_views``) of each per-scene record of
    :func:`scene_records`."""
    return [SceneAnnotation(boxes=YawBoxes(*(torch.tensor(r["boxes"][k]) for k in YawBoxes._fields)),
                            labels=torch.tensor(r["labels"]), types=r["types"], num_views=views, name=r["name"])
            for r in records]


def add_scene_arguments(parser: argparse.ArgumentParser, defaults, *, scenes_help: str, views_help: str) -> None:
    """The options naming the generated dataset (``defaults``: a ``train_partsad.Config``), ``--out``, the input
    views; :func:`check_scene_arguments` checks them with ``--fine`` and ``--voxel-sizes``."""
    parser.add_argument("--family", choices=("parts", "toys"), default="parts")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scenes", type=int, default=defaults.synthetic_scenes, help=scenes_help)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--objects", type=int, nargs=2, default=list(defaults.synthetic_objects))
    parser.add_argument("--stored-views", type=int, default=defaults.synthetic_views)
    parser.add_argument("--render-size", type=int, default=defaults.synthetic_size,
                        help="the dataset's image size (the layouts depend on it)")
    parser.add_argument("--views", type=int, default=defaults.input_views, help=views_help)
    parser.add_argument("--min-anomaly-pixels", type=int, default=defaults.synthetic_min_anomaly_pixels,
                        help="the dataset's synthetic_min_anomaly_pixels (0: generated without the check)")


def check_scene_arguments(parser: argparse.ArgumentParser, args) -> None:
    """Usage errors for voxel sizes that are not multiples of ``--fine`` dividing the largest one, and
    :func:`check_view_arguments`'."""
    for size in args.voxel_sizes:
        if size <= 0 or not _is_multiple(size, args.fine) or not _is_multiple(max(args.voxel_sizes), size):
            parser.error(f"--voxel-sizes: {size:g} must be a positive multiple of --fine {args.fine:g} "
                         f"that divides the largest voxel size")
    check_view_arguments(parser, args)


def check_view_arguments(parser: argparse.ArgumentParser, args) -> None:
    """Usage error for more input views than stored ones (the options of :func:`add_scene_arguments`)."""
    if args.views > args.stored_views:
        parser.error(f"--views {args.views} exceeds --stored-views {args.stored_views}")


def _write_scene(job: tuple[str, str, dict]) -> None:
    """Rebuild one test scene, score every setting, write its record atomically."""
    name, path, settings = job
    atomic_write_bytes(Path(path), (json.dumps(_scene_record(scene_spec(name, settings), settings)) + "\n").encode())


def main(argv=None) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import train_partsad  # noqa: E402  (the synthetic default's settings)

    defaults = train_partsad.Config()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_scene_arguments(parser, defaults, scenes_help="scenes of the generated dataset (its test split is scored)",
                        views_help="input views of the hull and depth oracles")
    parser.add_argument("--limit", type=int, default=0, help="score the first N test scenes only (0: all)")
    parser.add_argument("--fine", type=float, default=0.0025, help="fine lattice (metres)")
    parser.add_argument("--voxel-sizes", type=float, nargs="+", default=[0.04, 0.02, 0.01, 0.005])
    parser.add_argument("--roi-sizes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES[:3]),
                        help="oracles: the solid, the silhouette hull, depth carving, depth carving compared on "
                             "the cells both objects observed, the views' colour on the surfaces compared where both "
                             "objects show some, that colour read through the carved hull (all but solid per image "
                             "size)")
    parser.add_argument("--depth-tolerance-px", type=float, default=0.5,
                        help="depth carving spares centres within this many pixels' footprint of the surface")
    parser.add_argument("--workers", type=int, default=1, help="processes scoring scenes")
    parser.add_argument("--no-examples", dest="examples", action="store_false",
                        help="skip examples.png (difference maps of a crack scene and a bump scene)")
    args = parser.parse_args(argv)
    check_scene_arguments(parser, args)
    if args.limit < 0:
        parser.error(f"--limit must be >= 0, got {args.limit}")
    from oddsparse.data.synth import dataset_splits

    settings = _settings(args)
    names = dataset_splits(args.family, args.scenes, args.seed)["test"]
    names = names[:args.limit] if args.limit else names
    records = scene_records(_write_scene, names, args.out / "scenes", settings, args.workers, desc="oracle volumes")

    annotations = record_annotations(records, args.views)
    results = {}
    for key in records[0]["scores"]:
        predictions = [ScenePrediction(boxes=a.boxes, scores=torch.tensor(r["scores"][key]))
                       for r, a in zip(records, annotations)]
        report = evaluate_objects(predictions, annotations)
        results[key] = {**{m: report[m] for m in METRICS},
                        "per_type": {t: v["object_AUROC"] for t, v in report["per_type"].items()}}
    report = {**settings, "num_test_scenes": len(records), "scorer": "distance_to_others (median, half-turn)",
              "results": results}
    atomic_write_bytes(args.out / "resolution.json", (json.dumps(report, indent=2) + "\n").encode())
    types = sorted({t for r in results.values() for t in r["per_type"]})
    print(f"{'setting':22s} {'AUROC':>6s} {'pooled':>6s} " + " ".join(f"{t:>6s}" for t in types))
    for key, r in results.items():
        print(f"{key:22s} {_fmt(r['object_AUROC']):>6s} {_fmt(r['object_AUROC_pooled']):>6s} "
              + " ".join(f"{_fmt(r['per_type'].get(t)):>6s}" for t in types))
    _figure(report, types, args.out / "resolution.png")
    wrote = [args.out / "resolution.json", args.out / "resolution.png"]
    if args.examples and _example_figure(records, settings, args.out / "examples.png"):
        wrote.append(args.out / "examples.png")
    print("wrote " + ", ".join(str(p) for p in wrote))
    return report


def difference_maps(spec, settings: dict, anomalous: int, normal: int, cells: int = 64) -> dict[str, np.ndarray]:
    """Per source, the (cells, cells) top view of ``|z_anomalous - z_normal|`` summed over the box height:
    the two objects' fine occupancies RoI-sampled at their GT boxes (``cells`` per axis), plus
    ``solid at V`` for the largest voxel size below 4 cm (what that voxel size keeps of the solid)."""
    from oddsparse.data.synth.voxelize import block_mean

    boxes = gt_boxes(spec)
    coarse = sorted(v for v in settings["voxel_sizes"] if v < 0.04 - 1e-9)[-1:] if "solid" in settings["sources"] else []
    volumes = {}
    for index, (block, occupancy) in zip((anomalous, normal), fine_occupancies(spec, settings, (anomalous, normal))):
        box = YawBoxes(*(t[index:index + 1] for t in boxes))
        for source, fine in occupancy.items():
            if fine.ndim != 3:
                continue  # observed@S: two channels, no single difference map
            volume = torch.from_numpy(fine.astype(np.float32))[None, None]
            volumes.setdefault(source, []).append(roi_sample(volume, box, grid=block, out_size=cells)[0, 0])
        for voxel_size in coarse:
            factor = int(round(voxel_size / settings["fine"]))
            grid = VoxelGrid(shape=tuple(s // factor for s in block.shape), voxel_size=voxel_size, origin=block.origin)
            volume = torch.from_numpy(block_mean(occupancy["solid"], factor))[None, None]
            volumes.setdefault(f"solid at {100 * voxel_size:g} cm", []).append(
                roi_sample(volume, box, grid=grid, out_size=cells)[0, 0])
    return {source: (a - b).abs().sum(-1).numpy() for source, (a, b) in volumes.items()}


def _example_figure(records: list[dict], settings: dict, path: Path, kinds=("crack", "bump")) -> bool:
    """Difference maps (:func:`difference_maps`) of one test scene per anomaly kind: among the scenes holding
    it, the one of median margin (its anomalous object's solid score over the scene's highest normal one)."""
    key = setting_key("solid", min(settings["voxel_sizes"]), max(settings["roi_sizes"]))
    rows = []
    for kind in kinds:
        candidates = [r for r in records if kind in r["types"] and "normal" in r["types"]]
        if not candidates or key not in candidates[0]["scores"]:
            continue
        # the typical case: the scene of median margin (anomalous score over the highest normal score)
        margins = [r["scores"][key][r["types"].index(kind)] / max(max(x for x, t in zip(r["scores"][key], r["types"])
                                                                     if t == "normal"), 1e-12)
                   for r in candidates]
        record = candidates[int(np.argsort(margins)[len(margins) // 2])]
        maps = difference_maps(scene_spec(record["name"], settings), settings, record["types"].index(kind), record["types"].index("normal"))
        rows.append((f"{record['name']}: {kind}", maps))
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = list(rows[0][1])
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(1.7 * len(columns), 1.9 * len(rows) + 0.4),
                             squeeze=False)
    for row, (title, maps) in zip(axes, rows):
        top = max(float(m.max()) for m in maps.values()) or 1.0
        for axis, column in zip(row, columns):
            axis.imshow(maps[column].T, origin="lower", cmap="magma", vmin=0, vmax=top)
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_title(column, fontsize=7)
        row[0].set_ylabel(title, fontsize=7)
    fig.suptitle("|anomalous - normal| occupancy, summed over the box height (GT boxes, "
                 f"{1000 * settings['fine']:g} mm lattice unless stated)", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=130)
    return True


def _is_multiple(value: float, unit: float) -> bool:
    return unit > 0 and abs(value / unit - round(value / unit)) < 1e-6


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _figure(report: dict, types: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = source_names(report["sources"], report["image_sizes"])
    panels = ["all"] + types
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels) + 0.6, 3.2), sharey=True, squeeze=False)
    sizes = sorted(report["voxel_sizes"])
    for axis, panel in zip(axes[0], panels):
        for color, source in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], sources):
            for roi_size, style in zip(report["roi_sizes"], ("-", "--", ":")):
                values = []
                for size in sizes:
                    r = report["results"][setting_key(source, size, roi_size)]
                    value = r["object_AUROC"] if panel == "all" else r["per_type"].get(panel)
                    values.append(np.nan if value is None else value)
                axis.plot([100 * s for s in sizes], values, style, color=color, marker="o", markersize=3,
                          label=f"{source}, {roi_size}^3")
        axis.set_xscale("log")
        axis.set_xticks([100 * s for s in sizes], [f"{100 * s:g}" for s in sizes])
        axis.minorticks_off()
        axis.axhline(0.5, color="0.6", linestyle=":", linewidth=1)
        axis.axhline(0.9, color="0.8", linestyle="-", linewidth=1)
        axis.set_xlabel("voxel (cm)")
        axis.set_title(panel, fontsize=9)
        axis.set_ylim(0.3, 1.02)
    axes[0][0].set_ylabel("object_AUROC (GT boxes, per scene)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=6, loc="center right")
    fig.suptitle(f"{report['family']}: oracle volumes, {report['num_test_scenes']} test scenes, "
                 f"{report['views']} views, distance to the others", fontsize=9)
    fig.tight_layout(rect=(0.0, 0.0, 0.87, 1.0))
    save_figure(fig, path, dpi=130)


if __name__ == "__main__":
    main()

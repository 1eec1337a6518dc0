"""Synthetic scene generation speed: CPU seconds per scene per core for 6-object scenes, 20 views, 256 px.

Stages: meshing (procedural shapes and anomalous twins, shading normals, embree scene build),
layout (placement, camera fit, visibility check of the anomalous regions), ray casting (primary and
shadow rays), shading, writing (PNG / EXR / JSON). Times are process CPU time (robust to other jobs
on the machine). The baseline, measured in the same run, casts the same primary rays of one view through
``trimesh.ray.ray_pyembree.RayMeshIntersector.intersects_location`` on the concatenated scene mesh (the
plain trimesh way); ``raycast_speedup`` is its time over ours for the primary rays of one view.

Target (issue 3): <= 3 s per scene per core. Usage: ``python benchmarks/bench_generate.py [--scenes 2]``.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

import oddsparse.data.synth.anomalies as anomalies
import oddsparse.data.synth.shapes as shapes
from oddsparse.data.synth.render import RenderTimings
from oddsparse.data.synth.scene import generate_scene
from oddsparse.data.synth.writer import render_and_write_scene
from oddsparse.geometry.cameras import pixel_rays


def _timed(function, totals: dict, key: str):
    def wrapper(*args, **kwargs):
        start = time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            totals[key] = totals.get(key, 0.0) + time.process_time() - start
    return wrapper


def _baseline_primary_rays(spec) -> tuple[float, float]:
    """(ours, trimesh) CPU seconds for the primary rays of view 0."""
    raycaster = spec.raycaster()
    origins, dirs = pixel_rays(torch.as_tensor(spec.K)[None], torch.as_tensor(spec.world_to_cam[:1]),
                               spec.image_size, spec.image_size)
    origins, dirs = origins[0].numpy(), dirs[0].numpy()
    raycaster.intersect(origins, dirs)  # warm up (embree builds its BVH on the first query)
    start = time.process_time()
    raycaster.intersect(origins, dirs)
    ours = time.process_time() - start
    meshes = [o.model.mesh().apply_transform(o.object_to_world) for o in spec.objects]
    h, (cx, cy) = spec.floor.half_extent, spec.floor.center
    meshes.append(trimesh.Trimesh([[cx - h, cy - h, 0], [cx + h, cy - h, 0], [cx + h, cy + h, 0], [cx - h, cy + h, 0]],
                                  [[0, 1, 2], [0, 2, 3]]))
    from trimesh.ray.ray_pyembree import RayMeshIntersector

    intersector = RayMeshIntersector(trimesh.util.concatenate(meshes))
    intersector.intersects_location(origins[:16], dirs[:16], multiple_hits=False)  # warm up
    start = time.process_time()
    intersector.intersects_location(origins, dirs, multiple_hits=False)
    return ours, time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=2, help="scenes per family (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    totals: dict[str, float] = {}
    shapes.make_shape = _timed(shapes.make_shape, totals, "shapes")
    anomalies.make_anomaly = _timed(anomalies.make_anomaly, totals, "anomalies")
    timings = RenderTimings(clock=time.process_time)
    scene_cpu = 0.0
    layout_cpu = 0.0
    count = 0
    faces = []
    baseline = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in ("parts", "toys"):
            for index in range(args.scenes):
                start = time.process_time()
                meshing_before = totals.get("shapes", 0.0) + totals.get("anomalies", 0.0)
                spec = generate_scene(family, seed=args.seed, index=index, objects=(6, 6), views=20, size=256)
                layout = time.process_time() - start
                layout_cpu += layout - (totals.get("shapes", 0.0) + totals.get("anomalies", 0.0) - meshing_before)
                render_and_write_scene(spec, Path(tmp) / spec.name, timings)
                scene_cpu += time.process_time() - start
                count += 1
                faces.append(sum(o.model.num_faces() for o in spec.objects))
                if index == 0:
                    baseline.append(_baseline_primary_rays(spec))
                print(f"{spec.name}: {len(spec.objects)} objects, {faces[-1]} faces, "
                      f"anomalies {[o.kind for o in spec.objects if o.is_anomalous]}")

    per_scene = scene_cpu / count
    split = {
        "meshing": (totals.get("shapes", 0.0) + totals.get("anomalies", 0.0) + timings.meshing) / count,
        "layout": layout_cpu / count,
        "raycast": timings.raycast / count,
        "shading": timings.shading / count,
        "writing": timings.extra.get("writing", 0.0) / count,
    }
    ours_ray = float(np.mean([b[0] for b in baseline]))
    trimesh_ray = float(np.mean([b[1] for b in baseline]))
    print(f"scenes: {count} (6 objects, 20 views, 256x256), mean faces per scene {np.mean(faces):.0f}")
    for name, seconds in split.items():
        print(f"  {name:8s} {seconds:6.2f} s/scene  ({100 * seconds / per_scene:4.1f} %)")
    print(f"  total    {per_scene:6.2f} s/scene/core  = {1 / per_scene:.3f} scenes/s/core  (target <= 3 s)")
    print(f"primary rays of one view: ours {1000 * ours_ray:.1f} ms, trimesh intersects_location {1000 * trimesh_ray:.1f} ms")
    print(" ".join([f"seconds_per_scene_per_core={per_scene:.3f}", f"scenes_per_second_per_core={1 / per_scene:.3f}",
                    *[f"{name}_s={seconds:.3f}" for name, seconds in split.items()],
                    f"raycast_speedup={trimesh_ray / max(ours_ray, 1e-9):.2f}", f"meets_target={per_scene <= 3.0}"]))


if __name__ == "__main__":
    main()

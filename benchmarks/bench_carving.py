"""Space carving: block culling (the default, ``block=8``) vs testing every voxel (``block=0``).

Masks of generated parts scenes (5 views at 128 px, the default recipe's images) are carved on the
default recipe's grid (128 x 128 x 32 voxels of 2 cm) and on the paper's (96 x 96 x 16 of 4 cm,
2 x 2 x 2 sample points), once at the encoder stride (stride-4 foreground maps, as the scene model
carves) and once at full resolution. Both paths must give the same voxels and agreement (checked
here); variants run interleaved, so that load from other processes hits them alike. The last line
holds ``speedup = voxelwise_s / culled_s`` per case, measured in this run.

Usage: python benchmarks/bench_carving.py [--scenes 3 --rounds 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a source checkout without `pip install -e .`

from oddsparse.data.synth.render import render_views  # noqa: E402
from oddsparse.data.synth.scene import generate_scene  # noqa: E402
from oddsparse.geometry.carving import carve_occupancy  # noqa: E402
from oddsparse.geometry.grid import VoxelGrid  # noqa: E402


def scene_masks(index: int, size: int, views: int = 5):
    spec = generate_scene("parts", seed=7, index=index, views=views, size=size)
    renders = render_views(spec.raycaster(), spec.light, spec.K, spec.world_to_cam, spec.image_size,
                           seed=spec.texture_seed)
    masks = torch.from_numpy(np.stack([render.labels >= 1 for render in renders]))
    K = torch.as_tensor(np.asarray(spec.K), dtype=torch.float32).expand(views, 3, 3).contiguous()
    return masks, K, torch.as_tensor(np.asarray(spec.world_to_cam), dtype=torch.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    grids = {"recipe": (VoxelGrid.centered(shape=(128, 128, 32), voxel_size=0.02), 1),
             "paper": (VoxelGrid.centered(shape=(96, 96, 16), voxel_size=0.04), 2)}
    scenes = [scene_masks(i, 128) for i in range(args.scenes)]
    print(f"{args.scenes} generated parts scenes, 5 views at 128 px; threads={torch.get_num_threads()} "
          f"load_avg={os.getloadavg()[0]:.1f}")
    ratios = {}
    for grid_name, (grid, subdivisions) in grids.items():
        for resolution in ("stride4", "full"):
            times = {0: [], 8: []}
            kept = 0
            for masks, K, world_to_cam in scenes:
                foreground, K_used = masks.float(), K
                if resolution == "stride4":  # as SceneModel.carve: probabilities at the encoder stride, K scaled
                    foreground = F.avg_pool2d(foreground[:, None], 4)[:, 0]
                    K_used = K.clone()
                    K_used[:, :2] /= 4
                results = {}
                for _ in range(args.rounds):
                    for block in (0, 8):
                        start = time.perf_counter()
                        results[block] = carve_occupancy(foreground, K_used, world_to_cam, grid, threshold=0.2,
                                                         min_views=2, subdivisions=subdivisions, block=block)
                        times[block].append(time.perf_counter() - start)
                if not (torch.equal(results[0].coords, results[8].coords)
                        and torch.equal(results[0].feats, results[8].feats)):
                    raise SystemExit(f"block culling changed the result ({grid_name}, {resolution})")
                kept += results[0].num_voxels
            voxelwise, culled = statistics.median(times[0]), statistics.median(times[8])
            key = f"{grid_name}_{resolution}"
            ratios[key] = voxelwise / culled
            print(f"{key:16s} voxelwise {voxelwise * 1e3:8.1f} ms  culled {culled * 1e3:8.1f} ms  "
                  f"speedup {ratios[key]:5.2f}  kept {kept / len(scenes):.0f} voxels/scene (identical)")
    print(" ".join(f"{key}_speedup={value:.2f}" for key, value in ratios.items())
          + f" load_avg={os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

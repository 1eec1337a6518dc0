"""Sparse (spconv) vs dense (nn.Conv3d) 3D U-Net: forward + backward time and peak memory.

Both networks have the same widths and layers (oddsparse.models.backbone); the input is the
default 96 x 96 x 16 grid, occupied where space carving of generated scenes keeps voxels
(GT object masks of ``--views`` rendered views, ``dilation`` 1), with random ``--in-channels``
features standing in for the unprojected image features (values do not change the cost).
With ``--synthetic`` (or when the generator / carving modules are missing) the occupancy is
synthesised instead: object-like blobs covering a few percent of the grid; the output says so.

Method:
- each variant runs in its own subprocess (``--worker``), with ``torch.set_num_threads(--threads)``;
- time: median over ``--repeats`` forward+backward steps after one warm-up step;
- peak memory: the process's peak resident set (VmHWM, reset to the current size just before the
  first step on the real input) minus the resident set at that moment (``benchmarks/_memory.py``).
  Torch's CPU allocations are invisible to tracemalloc; the resident set sees every allocation
  (torch, spconv, allocator slack), and the libraries are initialised on a tiny input first.
- sparse variants: spconv's CPU convolutions are forced single-threaded by the correctness guard
  (oddsparse.ops.spconv_cpu); SparseUNet3d runs its whole forward single-threaded on CPU. The row
  "sparse (1 thread)" runs the whole step with one thread, to show what the guard's thread-count
  switches in the backward pass cost.
- the dense baseline is the plain dense U-Net (``masked=False``: no masking, same convolutions as
  the exact dense twin).

Last line: ``speedup=<dense time / sparse time> memory_ratio=<dense peak / sparse peak> occupancy=<fraction>``
(sparse = the default 2-thread run).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _memory import current_rss_bytes, peak_rss_bytes, reset_peak_rss  # noqa: E402
from oddsparse import SparseVoxels, VoxelGrid  # noqa: E402


def carved_scenes(num_scenes: int, views: int, image_size: int, seed: int, grid: VoxelGrid) -> tuple[SparseVoxels, str]:
    """Occupancy of generated scenes carved from their GT object masks (B = num_scenes)."""
    import numpy as np

    from oddsparse.data.synth.render import render_views
    from oddsparse.data.synth.scene import generate_scene
    from oddsparse.geometry.carving import carve_occupancy

    items = []
    for index in range(num_scenes):
        spec = generate_scene("toys", seed=seed, index=index, views=views, size=image_size)
        renders = render_views(spec.raycaster(), spec.light, spec.K, spec.world_to_cam, spec.image_size,
                               seed=spec.texture_seed)
        masks = torch.from_numpy(np.stack([render.labels >= 1 for render in renders]))  # (V, H, W) objects only
        K = torch.as_tensor(np.asarray(spec.K), dtype=torch.float32).expand(len(renders), 3, 3)
        world_to_cam = torch.as_tensor(np.asarray(spec.world_to_cam), dtype=torch.float32)
        items.append(carve_occupancy(masks, K, world_to_cam, grid, dilation=1))
    return SparseVoxels.cat(items), f"{num_scenes} generated toys scenes (seed {seed}), carved from GT masks of " \
                                    f"{views} views at {image_size} px, dilation 1"


def synthetic_occupancy(num_scenes: int, seed: int, grid: VoxelGrid, objects: int = 8) -> tuple[SparseVoxels, str]:
    """Object-like blobs (ellipsoids resting on the floor) covering a few percent of the grid."""
    gen = torch.Generator().manual_seed(seed)
    index = grid.all_indices().reshape(*grid.shape, 3).float() + 0.5  # (X, Y, Z, 3)
    masks = []
    for _ in range(num_scenes):
        mask = torch.zeros(grid.shape, dtype=torch.bool)
        for _ in range(objects):
            centre = torch.rand(3, generator=gen) * torch.tensor([grid.shape[0] - 16.0, grid.shape[1] - 16.0, 0]) + 8
            radii = torch.rand(3, generator=gen) * torch.tensor([3.0, 3.0, 3.0]) + torch.tensor([3.0, 3.0, 3.0])
            centre[2] = radii[2]
            mask |= (((index - centre) / radii) ** 2).sum(-1) <= 1
        masks.append(mask)
    mask = torch.stack(masks)  # (B, X, Y, Z)
    dense = mask[:, None].float()
    return SparseVoxels.from_dense(dense, grid, mask=mask), f"SYNTHETIC occupancy ({objects} ellipsoid blobs per scene)"


def worker(args) -> None:
    torch.set_num_threads(args.threads)
    from oddsparse.models.backbone import build_backbone

    saved = torch.load(args.input, weights_only=True)
    grid = VoxelGrid(shape=tuple(saved["shape"]))
    coords = saved["coords"]
    gen = torch.Generator().manual_seed(0)
    voxels = SparseVoxels(coords=coords, feats=torch.randn(len(coords), args.in_channels, generator=gen),
                          batch_size=int(saved["batch_size"]), grid=grid)
    kind = "sparse" if args.worker.startswith("sparse") else "dense"
    torch.manual_seed(0)
    net = build_backbone(kind, args.in_channels, channels=tuple(args.channels), masked=False)

    def step(sample: SparseVoxels) -> None:
        net.zero_grad(set_to_none=True)
        feats = sample.feats.clone().requires_grad_(True)
        out = net(sample.replace(feats=feats))
        out.feats.square().mean().backward()

    # Initialise the libraries (thread pools, kernels) on a tiny input before the memory baseline.
    tiny_grid = VoxelGrid(shape=(8, 8, 8))
    tiny_coords = torch.tensor([[0, 1, 1, 1], [0, 1, 2, 1], [0, 6, 6, 6]], dtype=torch.int32)
    step(SparseVoxels(tiny_coords, torch.randn(3, args.in_channels), 1, tiny_grid))
    reset_peak_rss()
    baseline = current_rss_bytes()
    times = []
    for repeat in range(args.repeats + 1):
        start = time.perf_counter()
        step(voxels)
        if repeat > 0:  # the first step is a warm-up
            times.append(time.perf_counter() - start)
    peak = peak_rss_bytes()
    print(json.dumps({"time_s": statistics.median(times), "times_s": times,
                      "peak_mib": (peak - baseline) / 2 ** 20, "threads": args.threads}))


def run_variant(name: str, threads: int, input_path: str, args) -> dict:
    command = [sys.executable, __file__, "--worker", name, "--input", input_path, "--threads", str(threads),
               "--repeats", str(args.repeats), "--in-channels", str(args.in_channels),
               "--channels", *[str(c) for c in args.channels]]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if result.returncode != 0:
        raise RuntimeError(f"worker {name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", type=int, default=2, help="scenes in the batch (B)")
    parser.add_argument("--views", type=int, default=8, help="views carved per generated scene")
    parser.add_argument("--image-size", type=int, default=128, help="rendered view size for carving (pixels)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--synthetic", action="store_true", help="synthesise the occupancy instead of carving scenes")
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per variant (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the dense and default sparse runs")
    parser.add_argument("--in-channels", type=int, default=32)
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--skip-single-thread", action="store_true", help="omit the 'sparse (1 thread)' row")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--input", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    wall = time.perf_counter()
    grid = VoxelGrid()
    source = None
    if not args.synthetic:
        try:
            voxels, source = carved_scenes(args.scenes, args.views, args.image_size, args.seed, grid)
        except ModuleNotFoundError as error:
            print(f"generator or carving unavailable ({error}); falling back to synthetic occupancy")
    if source is None:
        voxels, source = synthetic_occupancy(args.scenes, args.seed, grid)
    occupancy = voxels.occupancy()
    setup_s = time.perf_counter() - wall

    with tempfile.TemporaryDirectory() as folder:
        input_path = str(Path(folder) / "occupancy.pt")
        torch.save({"coords": voxels.coords.contiguous(), "batch_size": voxels.batch_size,
                    "shape": list(grid.shape)}, input_path)
        results = {"dense": run_variant("dense", args.threads, input_path, args),
                   "sparse": run_variant("sparse", args.threads, input_path, args)}
        if not args.skip_single_thread:
            results["sparse (1 thread)"] = run_variant("sparse_1thread", 1, input_path, args)

    print(f"input: {source}")
    print(f"grid {grid.shape} x B={voxels.batch_size}, occupied voxels {voxels.num_voxels} "
          f"(occupancy {occupancy:.4f}), in_channels {args.in_channels}, channels {tuple(args.channels)}")
    print("dense = plain dense U-Net (masked=False); sparse: spconv CPU convolutions forced single-threaded "
          "by the correctness guard")
    print(f"{'variant':<20} {'threads':>7} {'fwd+bwd [s]':>12} {'peak [MiB]':>11}")
    for name, row in results.items():
        print(f"{name:<20} {row['threads']:>7} {row['time_s']:>12.3f} {row['peak_mib']:>11.1f}")
    print(f"setup (generation + carving) {setup_s:.1f} s, total {time.perf_counter() - wall:.1f} s")
    dense, sparse = results["dense"], results["sparse"]
    speedup = dense["time_s"] / sparse["time_s"]
    memory_ratio = dense["peak_mib"] / max(sparse["peak_mib"], 1e-3)
    print(f"speedup={speedup:.2f} memory_ratio={memory_ratio:.2f} occupancy={occupancy:.4f}")


if __name__ == "__main__":
    main()

"""Naive references for the renderer tests: dense grid_sample fields and a per-ray Python loop.

Written for clarity, sharing no code with oddsparse.renderers beyond the coordinate conventions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from oddsparse.geometry.conventions import grid_sample_coords


def sample_dense_reference(dense, grid, points_world, batch_index):
    """grid_sample of a dense (B, C, X, Y, Z) volume at world points (P, 3) of scenes batch_index (P,)."""
    out = []
    for point, scene in zip(points_world, batch_index.tolist()):
        continuous = (point - point.new_tensor(grid.origin)) / grid.voxel_size
        coords = grid_sample_coords(continuous, grid.shape).reshape(1, 1, 1, 1, 3)
        value = F.grid_sample(dense[scene:scene + 1], coords, mode="bilinear", padding_mode="zeros",
                              align_corners=False)
        out.append(value.reshape(-1))
    return torch.stack(out)


def composite_reference(alphas, values, eps=0.0):
    """Front-to-back loop over samples: T starts at 1, w_i = alpha_i T, T *= (1 + eps - alpha_i)."""
    outs, opacities, weights = [], [], []
    for ray_alphas, ray_values in zip(alphas, values):
        transmittance = torch.ones((), dtype=alphas.dtype)
        accumulated = torch.zeros(values.shape[-1], dtype=values.dtype)
        ray_weights = []
        for alpha, value in zip(ray_alphas, ray_values):
            weight = alpha * transmittance
            accumulated = accumulated + weight * value
            ray_weights.append(weight)
            transmittance = transmittance * (1.0 + eps - alpha)
        outs.append(accumulated)
        opacities.append(1.0 - transmittance)
        weights.append(torch.stack(ray_weights) if ray_weights else alphas.new_zeros(0))
    return torch.stack(outs), torch.stack(opacities), torch.stack(weights)


def render_dense_reference(dense, grid, origins, directions, batch_index, num_samples, background=0.0):
    """Render with every sample (no skipping): midpoints of S equal intervals of the ray inside the grid box.

    ``dense`` channels are [density, r, g, b, features...]. Returns rgb (R, 3), opacity (R,),
    features (R, F), depth (R,).
    """
    lo = torch.tensor(grid.origin, dtype=dense.dtype)
    hi = lo + torch.tensor(grid.extent, dtype=dense.dtype)
    rgbs, opacities, feats, depths = [], [], [], []
    for origin, direction, scene in zip(origins, directions, batch_index.tolist()):
        # box entry/exit, one axis at a time
        t_enter, t_exit = 0.0, float("inf")
        for axis in range(3):
            if abs(float(direction[axis])) < 1e-12:
                if not lo[axis] <= origin[axis] <= hi[axis]:
                    t_exit = -1.0
                continue
            ta = float((lo[axis] - origin[axis]) / direction[axis])
            tb = float((hi[axis] - origin[axis]) / direction[axis])
            t_enter, t_exit = max(t_enter, min(ta, tb)), min(t_exit, max(ta, tb))
        channels = dense.shape[1]
        if t_exit <= t_enter:
            rgbs.append(torch.full((3,), float(background), dtype=dense.dtype))
            opacities.append(torch.zeros((), dtype=dense.dtype))
            feats.append(torch.zeros(channels - 4, dtype=dense.dtype))
            depths.append(torch.zeros((), dtype=dense.dtype))
            continue
        step = (t_exit - t_enter) / num_samples
        t = t_enter + step * (torch.arange(num_samples, dtype=dense.dtype) + 0.5)
        points = origin + t[:, None] * direction
        values = sample_dense_reference(dense, grid, points, torch.full((num_samples,), scene))
        alphas = 1.0 - torch.exp(-values[:, 0] * step * direction.norm())
        out, opacity, _ = composite_reference(alphas[None], torch.cat([values[:, 1:], t[:, None]], 1)[None])
        rgbs.append(out[0, :3] + (1.0 - opacity[0]) * background)
        opacities.append(opacity[0])
        feats.append(out[0, 3:-1])
        depths.append(out[0, -1])
    return torch.stack(rgbs), torch.stack(opacities), torch.stack(feats), torch.stack(depths)

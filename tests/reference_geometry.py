"""Naive reference implementations of the geometry ops, written for clarity (Python loops, floats).

They share no code with oddsparse.geometry beyond reading VoxelGrid fields: projection, bilinear
and trilinear interpolation and polygon areas are written out by hand here.
"""
from __future__ import annotations

import math

import numpy as np


def _project(point, K, world_to_cam):
    """Hand projection of one world point: returns (u, v, z_cam)."""
    x, y, z = point
    cam = [world_to_cam[r][0] * x + world_to_cam[r][1] * y + world_to_cam[r][2] * z + world_to_cam[r][3]
           for r in range(3)]
    u = (K[0][0] * cam[0] + K[0][1] * cam[1] + K[0][2] * cam[2]) / cam[2]
    v = (K[1][0] * cam[0] + K[1][1] * cam[1] + K[1][2] * cam[2]) / cam[2]
    return u, v, cam[2]


def _centre(grid, index, offset=(0.0, 0.0, 0.0)):
    return [grid.origin[a] + (index[a] + 0.5 + offset[a]) * grid.voxel_size for a in range(3)]


def _bilinear_border(feature, fx, fy):
    """feature (C, h, w) numpy at continuous cell coords (cell centres at integers), border clamp."""
    _, h, w = feature.shape
    fx = min(max(fx, 0.0), w - 1.0)
    fy = min(max(fy, 0.0), h - 1.0)
    x0, y0 = int(math.floor(fx)), int(math.floor(fy))
    x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
    tx, ty = fx - x0, fy - y0
    return ((1 - tx) * (1 - ty) * feature[:, y0, x0] + tx * (1 - ty) * feature[:, y0, x1]
            + (1 - tx) * ty * feature[:, y1, x0] + tx * ty * feature[:, y1, x1])


def unproject_reference(features, K, world_to_cam, image_size, grid, voxel_indices, near=1e-3):
    """features (V, C, h, w) numpy; voxel_indices list of (ix, iy, iz). Returns (N, C) means, (N,) counts."""
    height, width = image_size
    views, channels, h, w = features.shape
    means, counts = [], []
    for index in voxel_indices:
        point = _centre(grid, index)
        total, count = np.zeros(channels), 0
        for view in range(views):
            u, v, z = _project(point, K[view], world_to_cam[view])
            if z > near and 0 <= u < width and 0 <= v < height:
                # feature cell (c) covers image [c * W / w, (c + 1) * W / w): centre at (c + 0.5) * W / w
                total += _bilinear_border(features[view], u * w / width - 0.5, v * h / height - 0.5)
                count += 1
        means.append(total / max(count, 1))
        counts.append(count)
    return np.array(means), np.array(counts)


def sample_views_reference(features, K, world_to_cam, image_size, points, weights=None, near=1e-3):
    """features (V, C, h, w) numpy at world points (P, 3) list, optional weights (V, P) numpy: (P, C) weighted
    means over the views that see each point, (P,) summed weights (view counts without weights)."""
    height, width = image_size
    views, channels, h, w = features.shape
    means, support = [], []
    for p, point in enumerate(points):
        total, weight_sum = np.zeros(channels), 0.0
        for view in range(views):
            u, v, z = _project(point, K[view], world_to_cam[view])
            if z > near and 0 <= u < width and 0 <= v < height:
                weight = 1.0 if weights is None else float(weights[view][p])
                total += weight * _bilinear_border(features[view], u * w / width - 0.5, v * h / height - 0.5)
                weight_sum += weight
        means.append(total / weight_sum if weight_sum > 0 else np.zeros(channels))
        support.append(weight_sum)
    return np.array(means), np.array(support)


def carve_reference(foreground, K, world_to_cam, grid, threshold=0.5, tolerance=0, min_views=1, subdivisions=2,
                    near=1e-3):
    """foreground (V, H, W) numpy. Returns dict {(ix, iy, iz): agreeing fraction} of surviving voxels."""
    views, height, width = foreground.shape
    steps = [(k + 0.5) / subdivisions - 0.5 for k in range(subdivisions)]
    kept = {}
    for ix in range(grid.shape[0]):
        for iy in range(grid.shape[1]):
            for iz in range(grid.shape[2]):
                seen = agree = 0
                for view in range(views):
                    view_sees = view_hits = False
                    for ox in steps:
                        for oy in steps:
                            for oz in steps:
                                u, v, z = _project(_centre(grid, (ix, iy, iz), (ox, oy, oz)), K[view], world_to_cam[view])
                                if z > near and 0 <= u < width and 0 <= v < height:
                                    view_sees = True
                                    if foreground[view, int(math.floor(v)), int(math.floor(u))] >= threshold:
                                        view_hits = True
                    seen += view_sees
                    agree += view_hits
                allowed = tolerance * seen if isinstance(tolerance, float) and 0 < tolerance < 1 else tolerance
                if seen >= min_views and seen - agree <= allowed:
                    kept[(ix, iy, iz)] = agree / seen
    return kept


def _rect_xy(center, size, yaw):
    c, s = math.cos(yaw), math.sin(yaw)
    return [(center[0] + c * dx - s * dy, center[1] + s * dx + c * dy)
            for dx, dy in [(-size[0] / 2, -size[1] / 2), (size[0] / 2, -size[1] / 2),
                           (size[0] / 2, size[1] / 2), (-size[0] / 2, size[1] / 2)]]


def _inside_rect(x, y, center, size, yaw):
    c, s = math.cos(yaw), math.sin(yaw)
    dx, dy = x - center[0], y - center[1]
    return abs(c * dx + s * dy) <= size[0] / 2 and abs(-s * dx + c * dy) <= size[1] / 2


def iou_reference(box_a, box_b, resolution=400):
    """IoU of two yaw boxes ((center, size, yaw) of floats) by rasterising the xy overlap on a fine grid."""
    corners = _rect_xy(*box_a) + _rect_xy(*box_b)
    xs = [p[0] for p in corners]
    ys = [p[1] for p in corners]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    dx, dy = (x1 - x0) / resolution, (y1 - y0) / resolution
    gx = x0 + (np.arange(resolution) + 0.5) * dx
    gy = y0 + (np.arange(resolution) + 0.5) * dy
    xx, yy = np.meshgrid(gx, gy, indexing="ij")

    def inside(center, size, yaw):
        c, s = math.cos(yaw), math.sin(yaw)
        ux, uy = xx - center[0], yy - center[1]
        return (np.abs(c * ux + s * uy) <= size[0] / 2) & (np.abs(-s * ux + c * uy) <= size[1] / 2)

    area = (inside(*box_a) & inside(*box_b)).sum() * dx * dy
    (ca, sa, _), (cb, sb, _) = box_a, box_b
    z_overlap = max(0.0, min(ca[2] + sa[2] / 2, cb[2] + sb[2] / 2) - max(ca[2] - sa[2] / 2, cb[2] - sb[2] / 2))
    intersection = area * z_overlap
    union = sa[0] * sa[1] * sa[2] + sb[0] * sb[1] * sb[2] - intersection
    return intersection / union


def roi_reference(dense, grid, center, size, yaw, out_size=8, margin=0.0):
    """dense (C, X, Y, Z) numpy of one scene; one box. Returns (C, S, S, S) by per-point trilinear interpolation."""
    channels = dense.shape[0]
    out = np.zeros((channels, out_size, out_size, out_size))
    c, s = math.cos(yaw), math.sin(yaw)
    extent = [size[a] + 2 * margin for a in range(3)]
    for i in range(out_size):
        for j in range(out_size):
            for k in range(out_size):
                local = [((n + 0.5) / out_size - 0.5) * extent[a] for a, n in enumerate((i, j, k))]
                world = [center[0] + c * local[0] - s * local[1], center[1] + s * local[0] + c * local[1],
                         center[2] + local[2]]
                # voxel values live at centres: continuous index with centres at integers
                q = [(world[a] - grid.origin[a]) / grid.voxel_size - 0.5 for a in range(3)]
                base = [int(math.floor(q[a])) for a in range(3)]
                value = np.zeros(channels)
                for bx in (0, 1):
                    for by in (0, 1):
                        for bz in (0, 1):
                            idx = (base[0] + bx, base[1] + by, base[2] + bz)
                            if all(0 <= idx[a] < grid.shape[a] for a in range(3)):
                                weight = 1.0
                                for a, bit in enumerate((bx, by, bz)):
                                    frac = q[a] - base[a]
                                    weight *= frac if bit else 1 - frac
                                value += weight * dense[:, idx[0], idx[1], idx[2]]
                out[:, i, j, k] = value
    return out

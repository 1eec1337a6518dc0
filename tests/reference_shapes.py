"""Naive references for the synthetic object and anomaly tests (trimesh only, no manifold3d).

The generator measures with manifold3d volumes; these measure with surface samples, exact
point-to-triangle distances and ray-parity inside tests, so they cannot share its bugs.
"""
from __future__ import annotations

import numpy as np
import trimesh


def surface_samples(mesh: trimesh.Trimesh, count: int, seed: int = 0) -> np.ndarray:
    """(count, 3) points drawn uniformly on the surface."""
    points, _ = trimesh.sample.sample_surface(mesh, count, seed=seed)
    return np.asarray(points)


def distance_to_surface(points: np.ndarray, mesh: trimesh.Trimesh) -> np.ndarray:
    """(P,) exact unsigned distance of each point to the closest triangle of ``mesh``."""
    _, distance, _ = trimesh.proximity.closest_point(mesh, points)
    return np.asarray(distance)


def hausdorff(mesh_a: trimesh.Trimesh, mesh_b: trimesh.Trimesh, count: int = 1500, seed: int = 0) -> float:
    """Symmetric Hausdorff distance estimated from ``count`` surface samples of each mesh."""
    a = surface_samples(mesh_a, count, seed)
    b = surface_samples(mesh_b, count, seed + 1)
    return float(max(distance_to_surface(a, mesh_b).max(), distance_to_surface(b, mesh_a).max()))


def inside_any(parts: list[trimesh.Trimesh], points: np.ndarray) -> np.ndarray:
    """(P,) whether each point is inside at least one closed part mesh (ray parity per part)."""
    inside = np.zeros(len(points), dtype=bool)
    for part in parts:
        inside |= part.contains(points)
    return inside


def occupied_fraction(parts: list[trimesh.Trimesh], box: np.ndarray, count: int = 20000, seed: int = 0) -> float:
    """Monte Carlo estimate of the fraction of ``box`` (2, 3) inside the union of the parts."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(box[0], box[1], size=(count, 3))
    return float(inside_any(parts, points).mean())

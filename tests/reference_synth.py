"""Naive references for the synthetic scene generator tests (clarity over speed)."""
from __future__ import annotations

import numpy as np
import trimesh
from scipy import ndimage


def inside_convex_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """(P,) bool: points (P, 2) inside (or on) a convex polygon (4, 2) given in either winding."""
    signs = []
    for i in range(len(polygon)):
        a, b = polygon[i], polygon[(i + 1) % len(polygon)]
        signs.append((b[0] - a[0]) * (points[:, 1] - a[1]) - (b[1] - a[1]) * (points[:, 0] - a[0]))
    signs = np.stack(signs, axis=1)
    return (signs >= 0).all(axis=1) | (signs <= 0).all(axis=1)


def overlap_area_reference(a: np.ndarray, b: np.ndarray, samples: int = 300) -> float:
    """Area of the intersection of two convex quadrilaterals, by sampling a grid over ``a``'s box."""
    lo, hi = a.min(axis=0), a.max(axis=0)
    xs = np.linspace(lo[0], hi[0], samples)
    ys = np.linspace(lo[1], hi[1], samples)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    both = inside_convex_polygon(grid, a) & inside_convex_polygon(grid, b)
    return float(both.mean() * np.prod(hi - lo))


def outline_reference(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask (image borders count as outside)."""
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(2, 1), border_value=0)


def first_hits_reference(meshes: list[trimesh.Trimesh], origins: np.ndarray, directions: np.ndarray):
    """Nearest hit of each ray among ``meshes`` with trimesh's pure-numpy ray-triangle code (no embree).

    Returns (distance along the unit ray, +inf on a miss; index of the mesh hit, -1 on a miss).
    """
    from trimesh.ray.ray_triangle import RayMeshIntersector

    unit = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    best = np.full(len(origins), np.inf)
    which = np.full(len(origins), -1)
    for index, mesh in enumerate(meshes):
        locations, ray_index, _ = RayMeshIntersector(mesh).intersects_location(origins, unit, multiple_hits=True)
        if len(ray_index) == 0:
            continue
        dist = np.einsum("ij,ij->i", locations - origins[ray_index], unit[ray_index])
        for r, d in zip(ray_index, dist):
            if 0 < d < best[r]:
                best[r], which[r] = d, index
    return best, which

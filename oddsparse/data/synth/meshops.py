"""Solid-modelling helpers of the synthetic generator: manifold3d primitives and trimesh conversion.

Every primitive is a watertight ``manifold3d.Manifold`` so that booleans (holes, cracks, fractures)
are exact; part meshes handed to the renderer are ``trimesh.Trimesh`` converted with ``to_trimesh``.
"""

from __future__ import annotations

from collections.abc import Sequence

import manifold3d
import numpy as np
import trimesh

Manifold = manifold3d.Manifold

__all__ = [
    "Manifold",
    "to_trimesh",
    "to_manifold",
    "union",
    "box",
    "rounded_box",
    "cylinder",
    "tube",
    "cone",
    "sphere",
    "ellipsoid",
    "capsule",
    "torus",
    "revolve_profile",
    "frame_from_axis",
    "place",
    "volume",
    "part_solids",
    "union_mesh",
]


def to_trimesh(solid: Manifold) -> trimesh.Trimesh:
    """Manifold -> trimesh (float64 vertices, faces as they are; no merging or reordering)."""
    mesh = solid.to_mesh64()
    vertices = np.asarray(mesh.vert_properties, dtype=np.float64)[:, :3]
    faces = np.asarray(mesh.tri_verts, dtype=np.int64)
    return trimesh.Trimesh(vertices=vertices.copy(), faces=faces.copy(), process=False)


def to_manifold(mesh: trimesh.Trimesh, *, what: str = "mesh") -> Manifold:
    """trimesh -> Manifold; raises ValueError naming ``what`` when the mesh is not a closed 2-manifold."""
    vertices = np.ascontiguousarray(mesh.vertices, dtype=np.float64)
    faces = np.ascontiguousarray(mesh.faces, dtype=np.uint64)
    solid = Manifold(manifold3d.Mesh64(vert_properties=vertices, tri_verts=faces))
    if solid.status() != manifold3d.Error.NoError or solid.is_empty():
        # Vertices may be duplicated along seams (OBJ/STL export): merge them and try once more.
        merged = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, process=True)
        merged.merge_vertices()
        trimesh.repair.fix_normals(merged)
        solid = Manifold(
            manifold3d.Mesh64(
                vert_properties=np.ascontiguousarray(merged.vertices, dtype=np.float64),
                tri_verts=np.ascontiguousarray(merged.faces, dtype=np.uint64),
            )
        )
        if solid.status() != manifold3d.Error.NoError or solid.is_empty():
            raise ValueError(f"{what}: not a closed oriented 2-manifold ({solid.status()}), booleans need one")
    return solid


def union(solids: Sequence[Manifold]) -> Manifold:
    return Manifold.batch_boolean(list(solids), manifold3d.OpType.Add)


def part_solids(model) -> list[Manifold]:
    """The parts of an ``ObjectModel`` as Manifold solids, in order; an open part raises ValueError
    naming the shape and the part."""
    return [to_manifold(part.mesh, what=f"{model.shape_name} part {part.name!r}") for part in model.parts]


def union_mesh(model) -> trimesh.Trimesh:
    """Closed trimesh of the union of an ``ObjectModel``'s parts (ray parity and volumes need one
    closed surface; the parts themselves may overlap)."""
    return to_trimesh(union(part_solids(model)))


def volume(solid: Manifold) -> float:
    return float(solid.volume())


def box(size: Sequence[float], center: Sequence[float] = (0.0, 0.0, 0.0)) -> Manifold:
    return Manifold.cube(tuple(float(s) for s in size), True).translate(tuple(float(c) for c in center))


def sphere(radius: float, center: Sequence[float] = (0.0, 0.0, 0.0), segments: int = 24) -> Manifold:
    return Manifold.sphere(float(radius), int(segments)).translate(tuple(float(c) for c in center))


def ellipsoid(radii: Sequence[float], center: Sequence[float] = (0.0, 0.0, 0.0), segments: int = 24) -> Manifold:
    return Manifold.sphere(1.0, int(segments)).scale(tuple(float(r) for r in radii)).translate(
        tuple(float(c) for c in center)
    )


def rounded_box(
    size: Sequence[float], radius: float, center: Sequence[float] = (0.0, 0.0, 0.0), segments: int = 12
) -> Manifold:
    """Box with filleted edges and corners: convex hull of 8 corner spheres."""
    half = np.asarray(size, dtype=np.float64) / 2.0
    radius = float(min(radius, 0.999 * half.min()))
    inner = half - radius
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    ball = Manifold.sphere(radius, int(segments))
    spheres = [ball.translate(tuple(c * inner)) for c in corners]
    return Manifold.batch_hull(spheres).translate(tuple(float(c) for c in center))


def frame_from_axis(axis: Sequence[float]) -> np.ndarray:
    """(3, 3) rotation whose third column is the unit ``axis`` (maps local z onto ``axis``)."""
    z = np.asarray(axis, dtype=np.float64)
    z = z / np.linalg.norm(z)
    helper = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


def place(solid: Manifold, rotation: np.ndarray, translation: Sequence[float]) -> Manifold:
    """Apply x -> rotation @ x + translation."""
    matrix = np.zeros((3, 4), dtype=np.float64)
    matrix[:, :3] = rotation
    matrix[:, 3] = np.asarray(translation, dtype=np.float64)
    return solid.transform(matrix)


def cylinder(
    radius: float,
    height: float,
    center: Sequence[float] = (0.0, 0.0, 0.0),
    axis: Sequence[float] = (0.0, 0.0, 1.0),
    segments: int = 24,
    radius_top: float | None = None,
) -> Manifold:
    """Cylinder (or truncated cone with ``radius_top``) centred on ``center`` along ``axis``."""
    top = float(radius if radius_top is None else radius_top)
    solid = Manifold.cylinder(float(height), float(radius), top, int(segments), True)
    return place(solid, frame_from_axis(axis), center)


def cone(
    radius: float,
    height: float,
    base_center: Sequence[float] = (0.0, 0.0, 0.0),
    axis: Sequence[float] = (0.0, 0.0, 1.0),
    segments: int = 24,
    radius_top: float = 0.0,
) -> Manifold:
    """Cone from ``base_center`` along ``axis`` (apex, or a top of ``radius_top``, at height)."""
    solid = Manifold.cylinder(float(height), float(radius), float(radius_top), int(segments), False)
    return place(solid, frame_from_axis(axis), base_center)


def tube(
    radius_out: float,
    radius_in: float,
    height: float,
    center: Sequence[float] = (0.0, 0.0, 0.0),
    axis: Sequence[float] = (0.0, 0.0, 1.0),
    segments: int = 32,
) -> Manifold:
    outer = Manifold.cylinder(float(height), float(radius_out), float(radius_out), int(segments), True)
    inner = Manifold.cylinder(float(height) * 1.2, float(radius_in), float(radius_in), int(segments), True)
    return place(outer - inner, frame_from_axis(axis), center)


def capsule(p0: Sequence[float], p1: Sequence[float], radius: float, segments: int = 16) -> Manifold:
    ball = Manifold.sphere(float(radius), int(segments))
    return Manifold.batch_hull([ball.translate(tuple(map(float, p0))), ball.translate(tuple(map(float, p1)))])


def torus(
    major: float,
    minor: float,
    center: Sequence[float] = (0.0, 0.0, 0.0),
    axis: Sequence[float] = (0.0, 0.0, 1.0),
    segments: int = 32,
    minor_segments: int = 12,
    degrees: float = 360.0,
) -> Manifold:
    """Torus (or an arc of one, ``degrees`` < 360 starting at local +x) around ``axis``."""
    circle = manifold3d.CrossSection.circle(float(minor), int(minor_segments)).translate((float(major), 0.0))
    solid = Manifold.revolve(circle, int(segments), float(degrees))
    return place(solid, frame_from_axis(axis), center)


def revolve_profile(
    profile: np.ndarray, center: Sequence[float] = (0.0, 0.0, 0.0), axis: Sequence[float] = (0.0, 0.0, 1.0),
    segments: int = 32,
) -> Manifold:
    """Solid of revolution of a closed (P, 2) profile of (radius >= 0, height) points around ``axis``."""
    section = manifold3d.CrossSection([np.asarray(profile, dtype=np.float64)])
    solid = Manifold.revolve(section, int(segments))
    return place(solid, frame_from_axis(axis), center)

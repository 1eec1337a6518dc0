"""Anomalous twins of procedural objects: the nine anomaly types of ToysAD / PartsAD.

``make_anomaly(normal, kind, rng, family=...)`` returns an :class:`Anomaly` whose model keeps the
normal shape's object frame. Each kind draws random parameters, builds the twin with manifold3d
booleans or warps, and runs quality checks like the paper's; a rejected draw is redrawn with new
parameters, up to ``max_tries`` times.

========  ================================================================================
kind      construction and checks
========  ================================================================================
crack     boolean difference with a thin jagged wedge cut into the surface (visible side);
          removes a little volume, does not split the object
frac      boolean difference with a large solid whose face is rough; floating debris is
          dropped; 10-90 % of the volume is removed; the object still rests on the floor
bump      union with a flattened ellipsoid cap on the surface (a local bulge); the added
          volume sits on the outer side of the surface, above the floor
defr      bend (parabolic lean or arch) or twist of the whole refined shape, resting on the
          floor again; the change is a sizeable fraction of the volume
tran      one part (not the largest) slid along its contact; it stays attached (gap below a
          tolerance), is not buried in the rest, stays above the floor
rota      one part (not the largest) tilted about its contact point; same checks as tran
miss      one part (not the largest) removed; the rest stays connected and on the floor
disc      one part gets another base colour or texture; geometry is identical
diff      nearest neighbour, by a D2 + extents descriptor, among a pool of generated shapes of
          the same family and category, scaled to the normal's size, accepted when its Chamfer
          distance to the normal lies between a floor and a cap
========  ================================================================================

``Anomaly.region_points`` (M, 3) are object-frame points on the anomalous region: samples of the
surface of the symmetric difference of the normal and anomalous solids (for ``disc``: of the
recoloured part), for the scene writer's visibility check.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, replace

import manifold3d
import numpy as np
import trimesh
from scipy.spatial import cKDTree

from oddsparse.data.synth import meshops as mo
from oddsparse.data.synth.model import Material, ObjectModel, Part
from oddsparse.data.synth.shapes import FAMILIES, category_of, make_shape

__all__ = [
    "ANOMALY_TYPES",
    "FAMILY_ANOMALY_TYPES",
    "Anomaly",
    "make_anomaly",
    "chamfer_distance",
    "shape_descriptor",
]

ANOMALY_TYPES = ("crack", "frac", "bump", "defr", "tran", "rota", "miss", "disc", "diff")
FAMILY_ANOMALY_TYPES = {
    "toys": ("miss", "disc", "frac", "bump", "rota", "crack", "defr", "tran"),
    "parts": ("bump", "diff", "crack", "frac"),
}
REGION_POINTS = 256  # M, points returned in Anomaly.region_points
_GAP_TOL = 0.004  # attachment tolerance, fraction of the object's longest side
_FLOOR_TOL = 0.003  # resting-on-the-floor tolerance, fraction of the longest side


@dataclass
class Anomaly:
    """An anomalous twin: ``model`` in the normal shape's frame, ``region_points`` (M, 3) on the change."""

    kind: str
    model: ObjectModel
    region_points: np.ndarray


class _Reject(Exception):
    """A draw failed a quality check; make_anomaly draws again."""


# ------------------------------------------------------------------------------------------ helpers
class _Solids:
    """Manifold solids of an object's parts, converted once."""

    def __init__(self, model: ObjectModel):
        self.model = model
        self.parts = mo.part_solids(model)
        self.union = mo.union(self.parts)
        self.volume = float(self.union.volume())
        self.bounds = model.bounds()
        self.size = float((self.bounds[1] - self.bounds[0]).max())
        self.part_volumes = np.array([float(s.volume()) for s in self.parts])
        self._union_mesh = None

    def union_mesh(self) -> trimesh.Trimesh:
        if self._union_mesh is None:
            self._union_mesh = mo.to_trimesh(self.union)
        return self._union_mesh

    def thickness(self, point: np.ndarray, normal: np.ndarray) -> float:
        """Distance from a surface point inwards (along -normal) to the far side of the solid."""
        origin = point - normal * 1e-5 * self.size
        hits, _, _ = self.union_mesh().ray.intersects_location(origin[None], -normal[None], multiple_hits=False)
        if len(hits) == 0:
            return 0.0
        return float(np.linalg.norm(hits[0] - origin))


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def _sample(mesh: trimesh.Trimesh, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(count, 3) surface points and their face indices, deterministic given rng."""
    points, faces = trimesh.sample.sample_surface(mesh, count, seed=_seed(rng))
    return np.asarray(points), np.asarray(faces)


def chamfer_distance(points_a: np.ndarray, points_b: np.ndarray) -> float:
    """Symmetric Chamfer distance: mean nearest-neighbour distance a->b plus b->a, halved."""
    d_ab, _ = cKDTree(points_b).query(points_a)
    d_ba, _ = cKDTree(points_a).query(points_b)
    return float(0.5 * (d_ab.mean() + d_ba.mean()))


def shape_descriptor(model: ObjectModel, rng: np.random.Generator, *, scale: float, pairs: int = 4096) -> np.ndarray:
    """D2 shape distribution (histogram of distances between random surface point pairs, 24 bins up to
    1.8 ``scale``) concatenated with the sorted bounding-box extents divided by ``scale``."""
    points, _ = _sample(model.mesh(), 2 * pairs, rng)
    d = np.linalg.norm(points[:pairs] - points[pairs:], axis=1) / scale
    hist, _ = np.histogram(d, bins=24, range=(0.0, 1.8))
    hist = hist / max(1, hist.sum())
    extents = np.sort(model.extents()) / scale
    return np.concatenate([hist, extents])


def _region(normal: _Solids, anomalous: mo.Manifold, rng: np.random.Generator) -> np.ndarray:
    """(M, 3) samples on the surface of the symmetric difference of two solids.

    Pieces thinner than 0.1 % of the object's size (volume / area), slivers that booleans leave
    along the seams of overlapping parts, are left out.
    """
    meshes = []
    for piece in (normal.union - anomalous, anomalous - normal.union):
        for component in piece.decompose():
            mesh = mo.to_trimesh(component)
            if len(mesh.faces) and mesh.area > 0 and abs(component.volume()) >= 1e-3 * normal.size * mesh.area:
                meshes.append(mesh)
    if not meshes:
        raise _Reject("no geometric change")
    mesh = trimesh.util.concatenate(meshes)
    points, _ = _sample(mesh, REGION_POINTS, rng)
    return points


def _change_volume(normal: _Solids, anomalous: mo.Manifold) -> float:
    """Volume of the symmetric difference, as a fraction of the normal volume."""
    changed = (normal.union - anomalous).volume() + (anomalous - normal.union).volume()
    return float(changed) / normal.volume


def _check_floor(normal: _Solids, solid: mo.Manifold) -> None:
    zmin = solid.bounding_box()[2]
    tol = _FLOOR_TOL * normal.size
    if zmin < normal.bounds[0, 2] - tol:
        raise _Reject("goes below the floor")
    if zmin > normal.bounds[0, 2] + tol:
        raise _Reject("no longer rests on the floor")


def _components(solid: mo.Manifold, min_volume: float) -> list[mo.Manifold]:
    """Connected solid pieces of at least ``min_volume`` (enclosed voids, negative volume, left out)."""
    return [c for c in solid.decompose() if c.volume() >= min_volume]


def _connected(solids: list[mo.Manifold], tol: float) -> bool:
    """Whether parts form one group when parts closer than ``tol`` count as attached."""
    n = len(solids)
    if n <= 1:
        return True
    seen = {0}
    frontier = [0]
    while frontier:
        i = frontier.pop()
        for j in range(n):
            if j not in seen and solids[i].min_gap(solids[j], 2 * tol) <= tol:
                seen.add(j)
                frontier.append(j)
    return len(seen) == n


def _model_from(normal: _Solids, solids: list[mo.Manifold], materials: list[Material] | None = None,
                names: list[str] | None = None) -> ObjectModel:
    """ObjectModel with the normal's name and, by default, its part names and materials.

    A solid that is one of the normal's own part solids keeps that part's mesh as it is (no round trip).
    """
    names = names or [p.name for p in normal.model.parts]
    materials = materials or [p.material for p in normal.model.parts]
    original = {id(s): p.mesh for s, p in zip(normal.parts, normal.model.parts)}
    parts = []
    for name, solid, material in zip(names, solids, materials):
        if id(solid) in original:
            mesh = original[id(solid)].copy()
        elif solid.is_empty():
            continue
        else:
            mesh = mo.to_trimesh(solid)
        if len(mesh.faces) == 0:
            continue
        parts.append(Part(name=name, mesh=mesh, material=replace(material)))
    if not parts:
        raise _Reject("nothing left of the object")
    return ObjectModel(shape_name=normal.model.shape_name, parts=parts)


def _surface_point(normal: _Solids, rng: np.random.Generator, part_index: int | None = None,
                   min_normal_z: float = -0.2) -> tuple[np.ndarray, np.ndarray, int]:
    """A point on a part's outer surface (not on its underside), its unit normal and the part index.

    Parts are drawn with probability proportional to their surface area; a point inside another part
    (hidden) is avoided.
    """
    areas = np.array([p.mesh.area for p in normal.model.parts])
    if part_index is None:
        part_index = int(rng.choice(len(areas), p=areas / areas.sum()))
    mesh = normal.model.parts[part_index].mesh
    points, faces = _sample(mesh, 64, rng)
    normals = mesh.face_normals[faces]
    ok = normals[:, 2] >= min_normal_z
    others = [s for i, s in enumerate(normal.parts) if i != part_index]
    if others and ok.any():
        rest = mo.to_trimesh(mo.union(others))
        inside = rest.contains(points + normals * 1e-4 * normal.size)
        ok &= ~inside
    if not ok.any():
        raise _Reject("no visible surface point on the part")
    k = int(np.flatnonzero(ok)[0])
    return points[k], normals[k] / np.linalg.norm(normals[k]), part_index


def _attached_candidates(normal: _Solids) -> list[int]:
    """Parts that can be moved or removed: not the largest, not tiny (longest side >= 10 % of the object)."""
    largest = int(np.argmax(normal.part_volumes))
    out = []
    for i, part in enumerate(normal.model.parts):
        if i == largest:
            continue
        if float(part.mesh.extents.max()) >= 0.1 * normal.size:
            out.append(i)
    return out


def _contact(normal: _Solids, index: int) -> tuple[np.ndarray, np.ndarray, mo.Manifold]:
    """Contact point of part ``index`` with the rest, the unit direction from it to the part, and the rest."""
    rest = mo.union([s for i, s in enumerate(normal.parts) if i != index])
    part = normal.parts[index]
    part_center = np.asarray(normal.model.parts[index].mesh.bounds.mean(axis=0))
    overlap = part ^ rest
    if not overlap.is_empty() and overlap.volume() > 0:
        bb = np.asarray(overlap.bounding_box())
        contact = (bb[:3] + bb[3:]) / 2
    else:  # touching within tolerance: use the part's vertex closest to the rest's box centre
        rbb = np.asarray(rest.bounding_box())
        verts = normal.model.parts[index].mesh.vertices
        contact = verts[np.argmin(np.linalg.norm(verts - (rbb[:3] + rbb[3:]) / 2, axis=1))]
    away = part_center - contact
    norm = np.linalg.norm(away)
    away = away / norm if norm > 1e-9 else np.array([0.0, 0.0, 1.0])
    return contact, away, rest


def _cut(solid: mo.Manifold, cutter: mo.Manifold) -> mo.Manifold:
    """``solid - cutter``, or ``solid`` itself (same object) when the cutter does not reach it."""
    if (solid ^ cutter).volume() <= 0.0:
        return solid
    return solid - cutter


def _random_unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    return trimesh.transformations.rotation_matrix(angle, axis)[:3, :3]


# --------------------------------------------------------------------------------------- the kinds
def _crack(normal: _Solids, rng: np.random.Generator, family: str) -> tuple[ObjectModel, mo.Manifold]:
    size = normal.size
    point, n, _ = _surface_point(normal, rng)
    length = size * rng.uniform(0.4, 0.7)
    width = size * rng.uniform(0.02, 0.035)
    depth = size * rng.uniform(0.06, 0.15)
    k = 14
    s = np.linspace(0.0, 1.0, k + 1)
    # jagged centre line along local x, lateral random walk, tapered width with jagged edges
    xs = (s - 0.5) * length
    ys = np.cumsum(rng.normal(0.0, length * 0.04, k + 1))
    ys -= ys.mean()
    half = 0.5 * width * np.sin(np.pi * s) ** 0.6 + width * 0.05
    left = half * rng.uniform(0.5, 1.3, k + 1)
    right = half * rng.uniform(0.5, 1.3, k + 1)
    # counter-clockwise: lower edge forwards, upper edge backwards
    outline = np.concatenate([np.stack([xs, ys - right], 1), np.stack([xs, ys + left], 1)[::-1]])
    section = manifold3d.CrossSection([outline])
    above = 0.02 * size
    wedge = mo.Manifold.extrude(section, depth + above, 6, 0.0, (1.0, 0.25))  # narrows with depth
    # local z -> -n (into the object); start 'above' outside the surface
    frame = mo.frame_from_axis(-n)
    spin = _rotation(np.array([0.0, 0.0, 1.0]), rng.uniform(0, 2 * np.pi))
    cutter = mo.place(wedge, frame @ spin, point + n * above)
    solids = [_cut(p, cutter) for p in normal.parts]
    anomalous = mo.union(solids)
    removed = (normal.volume - anomalous.volume()) / normal.volume
    if removed < 2e-4:
        raise _Reject(f"crack removes too little ({removed:.2e})")
    if removed > 0.08:
        raise _Reject(f"crack removes too much ({removed:.3f})")
    before = len(_components(normal.union, 1e-3 * normal.volume))
    if len(_components(anomalous, 1e-3 * normal.volume)) > before:
        raise _Reject("crack splits the object")
    return _model_from(normal, solids), anomalous


def _rough_cutter(normal: _Solids, rng: np.random.Generator, direction: np.ndarray, offset: float) -> mo.Manifold:
    """Solid filling {x : direction . x > offset + h(x)} over the object, h a rough height field."""
    size = normal.size
    frame = mo.frame_from_axis(direction)  # local z = direction
    verts = np.concatenate([p.mesh.vertices for p in normal.model.parts])
    local = verts @ frame  # (V, 3) local coordinates
    half = np.abs(local[:, :2]).max() * 1.1 + 0.05 * size
    k = 44
    g = np.linspace(-half, half, k + 1)
    gx, gy = np.meshgrid(g, g, indexing="ij")  # (k+1, k+1)
    amp = size * rng.uniform(0.02, 0.05)
    height = np.zeros_like(gx)
    for _ in range(7):
        freq = 2 * np.pi / size * rng.uniform(0.7, 3.0)
        theta = rng.uniform(0, 2 * np.pi)
        height += rng.uniform(0.3, 1.0) * np.sin(freq * (np.cos(theta) * gx + np.sin(theta) * gy) + rng.uniform(0, 2 * np.pi))
    height = height / np.abs(height).max() * amp
    height += rng.normal(0.0, amp * 0.08, height.shape)  # small-scale jaggedness
    window = np.minimum(1.0, (half - np.maximum(np.abs(gx), np.abs(gy))) / (0.15 * half))
    height *= np.clip(window, 0.0, 1.0)  # flat border: the side walls are planar
    top = 4.0 * size  # far face, beyond the object
    grid = np.stack([gx, gy, height], -1).reshape(-1, 3)
    far = np.array([[-half, -half, top], [half, -half, top], [half, half, top], [-half, half, top]])
    vertices = np.concatenate([grid, far])
    idx = np.arange((k + 1) ** 2).reshape(k + 1, k + 1)
    f0 = len(grid)
    faces = []
    # rough face, outward normal towards -z
    a, b, c, d = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    faces.append(np.stack([a, c, b], 1))
    faces.append(np.stack([a, d, c], 1))
    faces.append(np.array([[f0 + 0, f0 + 1, f0 + 2], [f0 + 0, f0 + 2, f0 + 3]]))  # far face, +z
    # side walls: fan from a far corner over the boundary chain (borders are flat: height 0)
    sides = [
        (idx[:, 0], f0 + 0, f0 + 1),  # y = -half, x increasing
        (idx[-1, :], f0 + 1, f0 + 2),  # x = +half, y increasing
        (idx[::-1, -1], f0 + 2, f0 + 3),  # y = +half, x decreasing
        (idx[0, ::-1], f0 + 3, f0 + 0),  # x = -half, y decreasing
    ]
    for chain, start, end in sides:
        fan = np.stack([np.full(k, start), chain[:-1], chain[1:]], 1)  # outward normal
        faces.append(fan)
        faces.append(np.array([[start, chain[-1], end]]))
    mesh = trimesh.Trimesh(vertices=vertices, faces=np.concatenate(faces), process=False)
    cutter = mo.to_manifold(mesh, what="fracture cutter")
    return mo.place(cutter, frame, direction * offset)


def _frac(normal: _Solids, rng: np.random.Generator, family: str) -> tuple[ObjectModel, mo.Manifold]:
    direction = _random_unit(rng)
    direction[2] = abs(direction[2]) * 0.8 + 0.1  # break a chunk off the top or a side, never the underside
    direction /= np.linalg.norm(direction)
    verts = np.concatenate([p.mesh.vertices for p in normal.model.parts])
    target = rng.uniform(0.15, 0.5)
    offset = float(np.quantile(verts @ direction, 1.0 - target))
    cutter = _rough_cutter(normal, rng, direction, offset)
    solids = [_cut(p, cutter) for p in normal.parts]
    cut_union = mo.union(solids)
    keep_count = max(1, len(_components(normal.union, 0.01 * normal.volume)))
    pieces = sorted(_components(cut_union, 0.0), key=lambda c: -c.volume())[:keep_count]
    if not pieces:
        raise _Reject("fracture removes everything")
    kept = mo.union(pieces)
    debris = mo.union(_components(cut_union, 0.0)) - kept
    solids = [_cut(s, debris) for s in solids]  # drop floating debris
    anomalous = mo.union(solids)
    removed = 1.0 - anomalous.volume() / normal.volume
    if not 0.1 <= removed <= 0.9:
        raise _Reject(f"fracture removes {removed:.2f} of the volume (needs 0.1-0.9)")
    _check_floor(normal, anomalous)
    return _model_from(normal, solids), anomalous


def _bump(normal: _Solids, rng: np.random.Generator, family: str) -> tuple[ObjectModel, mo.Manifold]:
    size = normal.size
    point, n, index = _surface_point(normal, rng)
    radius = size * rng.uniform(0.09, 0.16)
    height = radius * rng.uniform(0.4, 0.7)
    thickness = normal.thickness(point, n)
    if thickness < 0.005 * size:
        raise _Reject("wall too thin for a bump here")
    # an ellipsoid centred 'embed' below the surface shows 'height' above it; on a thin wall its lower
    # end is trimmed at 60 % of the wall's thickness so that it never pokes out of the far side
    embed = 0.4 * height
    depth = height + embed
    cap = mo.ellipsoid((radius * rng.uniform(0.8, 1.2), radius * rng.uniform(0.8, 1.2), depth), (0, 0, 0), 28)
    cap = cap.trim_by_plane((0.0, 0.0, 1.0), max(-depth, embed - 0.6 * thickness))  # local frame: centre at 0
    spin = _rotation(np.array([0.0, 0.0, 1.0]), rng.uniform(0, 2 * np.pi))
    cap = mo.place(cap, mo.frame_from_axis(n) @ spin, point + n * (height - depth))
    solids = list(normal.parts)
    solids[index] = solids[index] + cap
    anomalous = mo.union(solids)
    added = anomalous - normal.union
    expected = np.pi * radius**2 * height / 2
    if added.volume() < 0.3 * expected:
        raise _Reject("bump hidden inside the object")
    if len(_components(added, 1e-3 * expected)) != 1:
        raise _Reject("bump pokes through the far side of a thin wall")
    _check_floor(normal, anomalous)
    return _model_from(normal, solids), anomalous


def _defr(normal: _Solids, rng: np.random.Generator, family: str) -> tuple[ObjectModel, mo.Manifold]:
    size = normal.size
    low, high = normal.bounds
    extent = high - low
    refined = [s.refine_to_length(size / 18) for s in normal.parts]
    flat = extent[2] < 0.5 * extent[:2].max()  # a twist about z would shear a flat part into a fan
    mode = "bend" if flat else str(rng.choice(["twist", "bend"], p=[0.4, 0.6]))
    if mode == "twist":
        total = np.radians(rng.uniform(20, 40)) * rng.choice([-1, 1])

        def warp(x: np.ndarray) -> np.ndarray:
            t = (x[:, 2] - low[2]) / extent[2]
            c, s = np.cos(total * t), np.sin(total * t)
            return np.stack([c * x[:, 0] - s * x[:, 1], s * x[:, 0] + c * x[:, 1], x[:, 2]], 1)
    elif extent[2] >= extent[:2].max():  # tall: lean the top sideways along a parabola
        heading = rng.uniform(0, 2 * np.pi)
        lateral = np.array([np.cos(heading), np.sin(heading), 0.0])
        curve = rng.uniform(0.1, 0.2) / extent[2]

        def warp(x: np.ndarray) -> np.ndarray:
            return x + np.outer(curve * (x[:, 2] - low[2]) ** 2, lateral)
    else:  # flat or long: arch along the longest horizontal axis
        axis = int(np.argmax(extent[:2]))
        half = extent[axis] / 2
        curve = rng.uniform(0.06, 0.14) * extent[axis] / half**2 * rng.choice([-1, 1])

        def warp(x: np.ndarray) -> np.ndarray:
            out = x.copy()
            out[:, 2] += curve * (x[:, axis] ** 2 - half**2 / 2)
            return out

    solids = [s.warp_batch(warp) for s in refined]
    union = mo.union(solids)
    drop = union.bounding_box()[2] - low[2]
    solids = [s.translate((0.0, 0.0, -drop)) for s in solids]  # rest on the floor again
    anomalous = mo.union(solids)
    change = _change_volume(normal, anomalous)
    if change < 0.08:
        raise _Reject(f"{mode} changes too little ({change:.3f} of the volume)")
    return _model_from(normal, solids), anomalous


def _check_attached(normal: _Solids, moved: mo.Manifold, rest: mo.Manifold, original: mo.Manifold) -> None:
    tol = _GAP_TOL * normal.size
    if moved.min_gap(rest, 2 * tol) > tol:
        raise _Reject("moved part is detached")
    outside_before = (original - rest).volume()
    outside_after = (moved - rest).volume()
    if outside_after < 0.6 * outside_before:
        raise _Reject("moved part is buried in the rest")
    changed = (original - moved).volume() / original.volume()
    if changed < 0.2:
        raise _Reject(f"part barely moved ({changed:.2f} of its volume)")


def _move_part(normal: _Solids, rng: np.random.Generator, rotate: bool) -> tuple[ObjectModel, mo.Manifold]:
    candidates = _attached_candidates(normal)
    if not candidates:
        raise RuntimeError(f"{'rota' if rotate else 'tran'}: {normal.model.shape_name} has no movable part "
                           "(needs a part other than the largest, at least 10 % of the object's size)")
    index = int(rng.choice(candidates))
    part = normal.parts[index]
    contact, away, rest = _contact(normal, index)
    part_size = float(normal.model.parts[index].mesh.extents.max())
    if rotate:
        axis = np.cross(away, _random_unit(rng))  # tilt: axis perpendicular to the contact direction
        axis /= np.linalg.norm(axis)
        angle = np.radians(rng.uniform(25, 60)) * rng.choice([-1, 1])
        rotation = _rotation(axis, angle)
        moved = mo.place(part, rotation, contact - rotation @ contact)
    else:
        tangent = _random_unit(rng)
        tangent -= away * (tangent @ away)  # slide along the contact
        tangent /= np.linalg.norm(tangent)
        distance = rng.uniform(0.2, 0.5) * part_size
        step = tangent * distance - away * 0.05 * distance  # pressed slightly onto the rest
        moved = part.translate(tuple(step))
    _check_attached(normal, moved, rest, part)
    solids = list(normal.parts)
    solids[index] = moved
    anomalous = mo.union(solids)
    _check_floor(normal, anomalous)
    return _model_from(normal, solids), anomalous


def _tran(normal: _Solids, rng: np.random.Generator, family: str):
    return _move_part(normal, rng, rotate=False)


def _rota(normal: _Solids, rng: np.random.Generator, family: str):
    return _move_part(normal, rng, rotate=True)


def _miss(normal: _Solids, rng: np.random.Generator, family: str) -> tuple[ObjectModel, mo.Manifold]:
    candidates = _attached_candidates(normal)
    if not candidates:
        raise RuntimeError(f"miss: {normal.model.shape_name} has no removable part "
                           "(needs a part other than the largest, at least 10 % of the object's size)")
    index = int(rng.choice(candidates))
    solids = [s for i, s in enumerate(normal.parts) if i != index]
    if not _connected(solids, _GAP_TOL * normal.size):
        raise _Reject("the rest falls apart without the part")
    anomalous = mo.union(solids)
    removed = 1.0 - anomalous.volume() / normal.volume
    if removed < 0.005:
        raise _Reject("missing part is hidden inside the rest")
    _check_floor(normal, anomalous)
    names = [p.name for i, p in enumerate(normal.model.parts) if i != index]
    materials = [p.material for i, p in enumerate(normal.model.parts) if i != index]
    return _model_from(normal, solids, materials, names), anomalous


def _other_material(material: Material, rng: np.random.Generator) -> Material:
    """A clearly different material: hue moved by 90-270 degrees (or a saturated colour for greys)."""
    r, g, b = material.base_color
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    for _ in range(32):
        if s < 0.25:
            s_new, h_new = rng.uniform(0.6, 0.9), rng.uniform(0, 1)
        else:
            s_new, h_new = float(np.clip(s + rng.uniform(-0.2, 0.2), 0.4, 1.0)), (h + rng.uniform(0.25, 0.75)) % 1.0
        v_new = float(np.clip(v + rng.uniform(-0.25, 0.25), 0.35, 0.95))
        color = tuple(float(c) for c in colorsys.hsv_to_rgb(h_new, s_new, v_new))
        if np.linalg.norm(np.subtract(color, material.base_color)) >= 0.3:
            break
    texture = material.texture
    if rng.uniform() < 0.3:
        texture = str(rng.choice([t for t in ("none", "stripes", "checker", "noise") if t != material.texture]))
    texture_color = tuple(float(c * 0.5) for c in color)
    return Material(color, float(rng.uniform(0.2, 0.9)), texture, texture_color, material.texture_scale)


def _disc(normal: _Solids, rng: np.random.Generator, family: str) -> tuple[ObjectModel, np.ndarray]:
    areas = np.array([p.mesh.area for p in normal.model.parts])
    big = areas >= 0.05 * areas.sum()
    weights = np.where(big, areas, 0.0)
    index = int(rng.choice(len(areas), p=weights / weights.sum()))
    model = normal.model.copy()
    model.parts[index] = Part(model.parts[index].name, model.parts[index].mesh,
                              _other_material(model.parts[index].material, rng))
    points, _ = _sample(model.parts[index].mesh, REGION_POINTS, rng)
    return model, points


def _diff(normal: _Solids, rng: np.random.Generator, family: str) -> tuple[ObjectModel, mo.Manifold]:
    if family not in FAMILIES:
        raise RuntimeError(f"diff: family must be one of {FAMILIES} to draw similar shapes, got {family!r}")
    category = category_of(normal.model)
    category = category if category else None
    size = normal.size
    target = shape_descriptor(normal.model, rng, scale=size)
    normal_points, _ = _sample(normal.model.mesh(), 2048, rng)
    pool = []
    for _ in range(10):
        try:
            candidate = make_shape(family, rng, category=category)
        except ValueError:  # a user mesh's category is not a generator category: draw any of the family
            candidate = make_shape(family, rng)
        factor = size / float(candidate.extents().max())
        low, high = candidate.bounds()
        shift = -(low + high) / 2 * factor
        shift[2] = normal.bounds[0, 2] - low[2] * factor  # rest on the same floor
        for p in candidate.parts:
            p.mesh.apply_scale(factor)
            p.mesh.apply_translation(shift)
        pool.append((np.abs(shape_descriptor(candidate, rng, scale=size) - target).sum(), candidate))
    pool.sort(key=lambda item: item[0])
    for _, candidate in pool:
        points, _ = _sample(candidate.mesh(), 2048, rng)
        distance = chamfer_distance(points, normal_points)
        if 0.02 * size <= distance <= 0.08 * size:
            by_name = {p.name: p.material for p in normal.model.parts}
            parts = [Part(p.name, p.mesh, replace(by_name.get(p.name, normal.model.parts[i % len(normal.model.parts)].material)))
                     for i, p in enumerate(candidate.parts)]
            model = ObjectModel(shape_name=normal.model.shape_name, parts=parts)
            anomalous = mo.union([mo.to_manifold(p.mesh, what="diff candidate") for p in parts])
            return model, anomalous
    raise _Reject("no pool shape within the Chamfer cap")


_KINDS = {
    "crack": _crack,
    "frac": _frac,
    "bump": _bump,
    "defr": _defr,
    "tran": _tran,
    "rota": _rota,
    "miss": _miss,
    "diff": _diff,
}


def make_anomaly(normal: ObjectModel, kind: str, rng: np.random.Generator, *, family: str,
                 max_tries: int = 20) -> Anomaly:
    """Make an anomalous twin of ``normal`` of type ``kind`` (one of ``ANOMALY_TYPES``).

    Random parameters come from ``rng`` (deterministic given its state); a draw failing a quality
    check is redrawn. Raises RuntimeError naming the kind after ``max_tries`` rejected draws, or at
    once when the object cannot carry the kind (tran/rota/miss need a part other than the largest).

    Example:
        >>> normal = make_shape("toys", np.random.default_rng(0), category="duck")
        >>> anomaly = make_anomaly(normal, "miss", np.random.default_rng(1), family="toys")
        >>> len(anomaly.model.parts) == len(normal.parts) - 1, anomaly.region_points.shape
        (True, (256, 3))
    """
    if kind not in ANOMALY_TYPES:
        raise ValueError(f"make_anomaly: kind must be one of {ANOMALY_TYPES}, got {kind!r}")
    if max_tries < 1:
        raise ValueError(f"make_anomaly: max_tries must be >= 1, got {max_tries}")
    solids = _Solids(normal)
    reasons = []
    for _ in range(max_tries):
        try:
            if kind == "disc":
                model, points = _disc(solids, rng, family)
                return Anomaly(kind=kind, model=model, region_points=points)
            model, anomalous = _KINDS[kind](solids, rng, family)
            points = _region(solids, anomalous, rng)
            return Anomaly(kind=kind, model=model, region_points=points)
        except _Reject as reject:
            reasons.append(str(reject))
    summary = "; ".join(sorted(set(reasons)))
    raise RuntimeError(f"make_anomaly: no valid {kind!r} anomaly of {normal.shape_name} in {max_tries} tries ({summary})")

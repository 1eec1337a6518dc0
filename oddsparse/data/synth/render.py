"""Ray-cast renderer of synthetic scenes (trimesh meshes, embree ray queries through ``embreex``).

One embree scene holds the floor (geometry 0) and every placed object (geometry ``1 + o``, in world
coordinates). A view casts one primary ray per pixel centre; hit pixels are shaded with Lambert +
hemispherical ambient + Blinn-Phong specular (shininess from the part's roughness), with a shadow
ray towards the directional light. Textures are procedural and evaluated in the object frame (so
they stick to the object) or on the floor plane.

Shapes: V views, H/W image size, R rays, O objects, F faces.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import trimesh

from oddsparse.data.synth.model import Material, ObjectModel
from oddsparse.geometry.cameras import pixel_rays

__all__ = [
    "BACKGROUND_DEPTH",
    "FLOOR_DROP",
    "RenderTimings",
    "hash_unit",
    "FloorSpec",
    "EnvironmentSpec",
    "environment_color",
    "LightSpec",
    "Placement",
    "ViewRender",
    "SceneRaycaster",
    "corner_normals",
    "value_noise",
    "render_views",
]

#: z-depth written for pixels that hit nothing (the published value).
BACKGROUND_DEPTH = 1e10
#: The rendered floor plane sits this far (metres) below z = 0, hidden in the depth precision.
FLOOR_DROP = 1e-4


@dataclass
class FloorSpec:
    """Procedural floor: a square of half-size ``half_extent`` metres centred at ``center`` (x, y).

    ``kind`` is one of ``"plain"``, ``"checker"``, ``"planks"``, ``"marble"``; ``tile`` is the
    pattern period in metres; ``noise_seed`` seeds the hash noise; ``angle`` rotates the pattern.
    """

    kind: str
    color_a: tuple[float, float, float]
    color_b: tuple[float, float, float]
    tile: float
    angle: float
    roughness: float
    noise_seed: int
    half_extent: float = 2.5
    center: tuple[float, float] = (0.0, 0.0)


@dataclass
class EnvironmentSpec:
    """A structured horizon behind the floor (trees, buildings: what a real capture shows there), drawn
    instead of the plain sky gradient near the horizon.

    Around the scene a skyline rises to ``height`` radians of elevation at most (its profile is value
    noise over the azimuth); below it the colour mixes ``colors`` by fBm noise at ``detail`` cycles per
    radian, with vertical streaks; above it the sky gradient stays. ``seed`` seeds the noise.
    """

    seed: int
    height: float
    colors: tuple[tuple[float, float, float], ...]
    detail: float


@dataclass
class LightSpec:
    """A directional light (unit ``direction`` pointing *towards* the light) and ambient terms;
    ``environment``: a structured horizon (:class:`EnvironmentSpec`), or None for the sky gradient alone."""

    direction: tuple[float, float, float]
    intensity: float
    ambient: float
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    background_top: tuple[float, float, float] = (0.6, 0.7, 0.85)
    background_bottom: tuple[float, float, float] = (0.9, 0.9, 0.9)
    environment: EnvironmentSpec | None = None


@dataclass
class Placement:
    """An object instance: its model and its (4, 4) object-to-world matrix."""

    model: ObjectModel
    object_to_world: np.ndarray


@dataclass
class ViewRender:
    """Render of one view.

    ``labels`` (H, W) int16: -1 background, 0 floor, ``1 + o`` object ``o``.
    ``depth`` (H, W) float32 metric z-depth, :data:`BACKGROUND_DEPTH` where nothing is hit.
    ``rgb`` (H, W, 3) uint8.
    """

    rgb: np.ndarray
    labels: np.ndarray
    depth: np.ndarray


@dataclass
class RenderTimings:
    """Seconds spent in each stage (accumulated), measured with ``clock`` (wall time by default;
    pass ``time.process_time`` for CPU time)."""

    meshing: float = 0.0
    raycast: float = 0.0
    shading: float = 0.0
    extra: dict = field(default_factory=dict)
    clock: Callable[[], float] = time.perf_counter


# ----------------------------------------------------------------------------------------- noise
_LATTICE = 64  # period of the noise lattice in cells (per axis)
_lattice_cache: dict[tuple[int, int], np.ndarray] = {}


def _lattice(seed: int, dims: int) -> np.ndarray:
    """Flat table of ``_LATTICE ** dims`` random values in [0, 1) for the noise of ``seed``."""
    key = (int(seed), dims)
    if key not in _lattice_cache:
        if len(_lattice_cache) > 64:
            _lattice_cache.clear()
        rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, dims]))
        _lattice_cache[key] = rng.random(_LATTICE**dims, dtype=np.float32)
    return _lattice_cache[key]


def hash_unit(index: np.ndarray, seed: int) -> np.ndarray:
    """A deterministic pseudo-random value in [0, 1) per integer ``index`` (period ``_LATTICE ** 2``)."""
    return _lattice(seed, 2)[np.asarray(index, dtype=np.int64) % (_LATTICE * _LATTICE)]


def value_noise(points: np.ndarray, seed: int, octaves: int = 1) -> np.ndarray:
    """Smooth value noise in [0, 1] at ``points`` (R, D), D = 2 or 3, lattice period 1; fBm over octaves.

    Lattice values come from a random table (periodic every ``_LATTICE`` cells), interpolated with a
    smoothstep; returns (R,) float32.
    """
    points = np.asarray(points, dtype=np.float32)
    dims = points.shape[1]
    table = _lattice(seed, dims)
    strides = _LATTICE ** np.arange(dims)
    total = np.zeros(len(points), dtype=np.float32)
    norm = 0.0
    for octave in range(octaves):
        p = points * np.float32(2.0**octave) + np.float32(17.3 * octave)
        base = np.floor(p)
        frac = p - base
        smooth = frac * frac * (3.0 - 2.0 * frac)
        cell = base.astype(np.int64) % _LATTICE
        acc = np.zeros(len(points), dtype=np.float32)
        for corner in range(2**dims):
            index = np.zeros(len(points), dtype=np.int64)
            weight = np.ones(len(points), dtype=np.float32)
            for d in range(dims):
                if (corner >> d) & 1:
                    index += ((cell[:, d] + 1) % _LATTICE) * strides[d]
                    weight *= smooth[:, d]
                else:
                    index += cell[:, d] * strides[d]
                    weight *= 1.0 - smooth[:, d]
            acc += weight * table[index]
        amp = 0.5**octave
        total += np.float32(amp) * acc
        norm += amp
    return total / np.float32(norm)


# --------------------------------------------------------------------------------------- normals
def corner_normals(mesh: trimesh.Trimesh, crease_deg: float = 35.0) -> np.ndarray:
    """Per-corner shading normals (F, 3, 3): area-weighted average of the face normals around each
    vertex, limited to faces within ``crease_deg`` of the corner's face (sharp edges stay sharp).

    Vertices are matched by position (rounded to 1e-7 m), so unmerged meshes smooth as well.
    """
    triangles = np.asarray(mesh.triangles, dtype=np.float64)  # (F, 3, 3)
    num_faces = len(triangles)
    cross = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    area = np.linalg.norm(cross, axis=1)
    face_normal = cross / np.maximum(area, 1e-20)[:, None]
    keys = np.round(triangles.reshape(-1, 3) * 1e7).astype(np.int64)
    _, corner_vertex = np.unique(keys, axis=0, return_inverse=True)
    corner_vertex = corner_vertex.reshape(-1)
    corner_face = np.repeat(np.arange(num_faces), 3)
    num_vertices = int(corner_vertex.max()) + 1
    order = np.argsort(corner_vertex, kind="stable")
    counts = np.bincount(corner_vertex, minlength=num_vertices)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    repeats = counts[corner_vertex]  # (3F,) faces around each corner's vertex
    pair_corner = np.repeat(np.arange(3 * num_faces), repeats)
    pair_offset = np.arange(len(pair_corner)) - np.repeat(np.cumsum(repeats) - repeats, repeats)
    pair_face = corner_face[order[starts[corner_vertex[pair_corner]] + pair_offset]]
    cosine = np.einsum("ij,ij->i", face_normal[pair_face], face_normal[corner_face[pair_corner]])
    weight = area[pair_face] * (cosine > np.cos(np.radians(crease_deg)))
    normals = np.stack([np.bincount(pair_corner, weights=weight * face_normal[pair_face, k],
                                    minlength=3 * num_faces) for k in range(3)], axis=1)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    fallback = face_normal[corner_face]
    normals = np.where(length > 1e-12, normals / np.maximum(length, 1e-20), fallback)
    return normals.reshape(num_faces, 3, 3)


@dataclass
class _ModelGeometry:
    """Object-frame triangles, shading normals and per-face material parameters of one model."""

    triangles: np.ndarray  # (F, 3, 3) float64
    normals: np.ndarray  # (F, 3, 3) float32 corner normals
    face_normals: np.ndarray  # (F, 3) float32 unit geometric normals
    face_part: np.ndarray  # (F,) int
    materials: list[Material]


def _model_geometry(model: ObjectModel) -> _ModelGeometry:
    triangles, normals, face_part = [], [], []
    for index, part in enumerate(model.parts):
        triangles.append(np.asarray(part.mesh.triangles, dtype=np.float64))
        normals.append(corner_normals(part.mesh))
        face_part.append(np.full(len(part.mesh.faces), index))
    triangles = np.concatenate(triangles)
    cross = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    face_normals = cross / np.maximum(np.linalg.norm(cross, axis=1, keepdims=True), 1e-20)
    return _ModelGeometry(triangles, np.concatenate(normals).astype(np.float32), face_normals.astype(np.float32),
                          np.concatenate(face_part), [p.material for p in model.parts])


# -------------------------------------------------------------------------------------- raycaster
class SceneRaycaster:
    """Embree scene of the floor square (geometry 0) and placed objects (geometry 1 + o).

    Args:
        placements: O placed objects.
        floor: the floor square (its ``center`` and ``half_extent`` are used here).
    """

    def __init__(self, placements: list[Placement], floor: FloorSpec):
        from embreex import rtcore_scene
        from embreex.mesh_construction import TriangleMesh

        self.placements = placements
        self.floor = floor
        self._scene = rtcore_scene.EmbreeScene()
        cx, cy = floor.center
        h = floor.half_extent
        z = -FLOOR_DROP  # a hair below z = 0: object bottoms resting on the floor must not z-fight with it
        corners = np.array([[cx - h, cy - h, z], [cx + h, cy - h, z], [cx + h, cy + h, z], [cx - h, cy + h, z]])
        TriangleMesh(self._scene, corners[[[0, 1, 2], [0, 2, 3]]].astype(np.float32))
        cache: dict[int, _ModelGeometry] = {}
        self.geometry: list[_ModelGeometry] = []
        for placement in placements:
            key = id(placement.model)
            if key not in cache:
                cache[key] = _model_geometry(placement.model)
            geometry = cache[key]
            self.geometry.append(geometry)
            matrix = np.asarray(placement.object_to_world, dtype=np.float64)
            world = geometry.triangles @ matrix[:3, :3].T + matrix[:3, 3]
            TriangleMesh(self._scene, np.ascontiguousarray(world, dtype=np.float32))

    def intersect(self, origins: np.ndarray, directions: np.ndarray):
        """First hits of rays (R, 3): returns ``(t, geom, prim, u, v)``; ``geom`` -1 where missed."""
        out = self._scene.run(np.ascontiguousarray(origins, dtype=np.float32),
                              np.ascontiguousarray(directions, dtype=np.float32), output=1)
        return out["tfar"], out["geomID"], out["primID"], out["u"], out["v"]

    def occluded(self, origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
        """(R,) bool: whether anything is hit along each ray (towards infinity)."""
        if len(origins) == 0:
            return np.zeros(0, dtype=bool)
        out = self._scene.run(np.ascontiguousarray(origins, dtype=np.float32),
                              np.ascontiguousarray(directions, dtype=np.float32), query="OCCLUDED")
        return np.asarray(out) != -1

    def first_hit_t(self, origins: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(t, geom)`` of the first hit (``t`` is +inf where nothing is hit)."""
        t, geom, _, _, _ = self.intersect(origins, directions)
        t = np.where(geom >= 0, t.astype(np.float64), np.inf)
        return t, geom


# ---------------------------------------------------------------------------------------- shading
def _object_albedo(geometry: _ModelGeometry, prim: np.ndarray, points_obj: np.ndarray, seed: int):
    """Albedo (R, 3) and roughness (R,) of object hits; textures in the object frame."""
    part = geometry.face_part[prim]
    base = np.array([m.base_color for m in geometry.materials], dtype=np.float32)[part]
    rough = np.array([m.roughness for m in geometry.materials], dtype=np.float32)[part]
    albedo = base.copy()
    for index, material in enumerate(geometry.materials):
        if material.texture == "none":
            continue
        sel = part == index
        if not sel.any():
            continue
        p = points_obj[sel] / np.float32(material.texture_scale)
        if material.texture == "stripes":
            amount = (np.sin(np.float32(2 * np.pi) * p[:, 2]) > 0.0).astype(np.float32)
        elif material.texture == "checker":
            amount = (np.floor(p).astype(np.int64).sum(axis=1) % 2).astype(np.float32)
        else:  # noise
            amount = np.clip((value_noise(p, seed + 31 * index, octaves=3) - 0.3) * 2.5, 0.0, 1.0)
        tex = np.asarray(material.texture_color, dtype=np.float32)
        albedo[sel] = base[sel] * (1 - amount[:, None]) + tex * amount[:, None]
    return albedo, rough


def _floor_albedo(floor: FloorSpec, xy: np.ndarray, footprint: np.ndarray | None = None) -> np.ndarray:
    """Albedo (R, 3) float32 of floor hits at world ``xy`` (R, 2); ``footprint`` (R,) is the size of a
    pixel on the floor in metres (the pattern fades to its mean colour as it nears the pattern period)."""
    c, s = np.cos(floor.angle), np.sin(floor.angle)
    rotation = (np.array([[c, -s], [s, c]]) / floor.tile).astype(np.float32)
    uv = (xy - np.asarray(floor.center, dtype=np.float32)) @ rotation
    a, b = np.asarray(floor.color_a, dtype=np.float32), np.asarray(floor.color_b, dtype=np.float32)
    if floor.kind == "checker":
        amount = (np.floor(uv).astype(np.int64).sum(axis=1) % 2).astype(np.float32)
        shade = 0.92 + 0.16 * value_noise(uv * 4.0, floor.noise_seed, octaves=2)
    elif floor.kind == "planks":
        plank = np.floor(uv[:, 1]).astype(np.int64)
        offset = hash_unit(plank, floor.noise_seed + 2)
        grain = value_noise(np.stack([uv[:, 0] * 0.6 + offset * 17.0, uv[:, 1] * 9.0], 1), floor.noise_seed + 1, 3)
        amount = np.clip(0.35 * offset + 0.65 * grain, 0.0, 1.0)
        seam = np.abs(uv[:, 1] - np.round(uv[:, 1])) < 0.02
        shade = np.where(seam, np.float32(0.6), np.float32(1.0))
    elif floor.kind == "marble":
        turbulence = value_noise(uv, floor.noise_seed, octaves=4)
        amount = np.abs(np.sin((uv[:, 0] + 4.0 * turbulence) * np.float32(np.pi))) ** 3
        shade = np.ones(len(xy), dtype=np.float32)
    else:  # plain
        amount = value_noise(uv, floor.noise_seed, octaves=3)
        shade = np.ones(len(xy), dtype=np.float32)
    if footprint is not None:
        fade = np.clip((footprint / np.float32(floor.tile) - 0.08) / 0.25, 0.0, 1.0).astype(np.float32)
        amount = amount * (1 - fade) + np.float32(0.5) * fade
        shade = shade * (1 - fade) + fade * np.float32(np.mean(shade) if len(shade) else 1.0)
    return (a * (1 - amount[:, None]) + b * amount[:, None]) * shade[:, None]


def environment_color(env: EnvironmentSpec, dirs: np.ndarray, sky: np.ndarray) -> np.ndarray:
    """Linear colour (R, 3) of background rays with unit directions ``dirs`` (R, 3): the skyline of ``env``
    where a ray passes below it, else ``sky`` (R, 3), the gradient colour of those rays."""
    dirs = np.asarray(dirs, dtype=np.float32)
    azimuth = np.arctan2(dirs[:, 1], dirs[:, 0])
    elevation = np.arcsin(np.clip(dirs[:, 2], -1.0, 1.0))
    ring = np.stack([np.cos(azimuth), np.sin(azimuth)], axis=1)  # seamless over the azimuth
    profile = env.height * (0.2 + 0.8 * value_noise(ring * 3.0, env.seed, octaves=3))  # (R,) skyline elevation
    below = elevation < profile
    cells = np.concatenate([ring * env.detail, elevation[:, None] * env.detail], axis=1)
    mix = value_noise(cells, env.seed + 1, octaves=4) * (len(env.colors) - 1)  # (R,) in [0, colours - 1]
    low = np.clip(np.floor(mix).astype(np.int64), 0, len(env.colors) - 2)
    palette = np.asarray(env.colors, dtype=np.float32)
    frac = (mix - low)[:, None]
    clutter = palette[low] * (1 - frac) + palette[low + 1] * frac
    columns = max(1, round(np.pi * env.detail))  # vertical streaks: whole columns around the circle (seamless)
    column = np.floor((azimuth + np.pi) / (2 * np.pi) * columns).astype(np.int64) % columns
    streaks = hash_unit(column, env.seed + 2)
    clutter = clutter * (0.65 + 0.5 * streaks[:, None]).astype(np.float32)
    return np.where(below[:, None], clutter, sky).astype(np.float32)


def _to_srgb8(linear: np.ndarray) -> np.ndarray:
    return np.round(np.clip(linear, 0.0, 1.0) ** np.float32(1.0 / 2.2) * np.float32(255.0)).astype(np.uint8)


def _normalize(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.sqrt(np.einsum("ij,ij->i", vectors, vectors)), 1e-20)[:, None]


def render_views(raycaster: SceneRaycaster, light: LightSpec, K: np.ndarray, world_to_cam: np.ndarray,
                 image_size: int, *, seed: int = 0, timings: RenderTimings | None = None) -> list[ViewRender]:
    """Render V views of a ray-cast scene.

    Args:
        K: (3, 3) intrinsics shared by all views. world_to_cam: (V, 4, 4) OpenCV extrinsics.
        image_size: H = W in pixels.
        seed: seeds the procedural object textures.
    Returns:
        V :class:`ViewRender`.
    """
    timings = timings if timings is not None else RenderTimings()
    num_views = len(world_to_cam)
    origins_all, dirs_all = pixel_rays(torch.as_tensor(np.broadcast_to(K, (num_views, 3, 3)).copy()),
                                       torch.as_tensor(np.asarray(world_to_cam, dtype=np.float64)),
                                       image_size, image_size)
    origins_all, dirs_all = origins_all.numpy(), dirs_all.numpy()  # (V, R, 3); dirs have z_cam = 1
    to_light = np.asarray(light.direction, dtype=np.float32)
    to_light = to_light / np.linalg.norm(to_light)
    light_color = (np.asarray(light.color) * light.intensity).astype(np.float32)
    top = np.asarray(light.background_top, dtype=np.float32)
    bottom = np.asarray(light.background_bottom, dtype=np.float32)
    floor = raycaster.floor
    views = []
    for view in range(num_views):
        start = timings.clock()
        origins, dirs = origins_all[view], dirs_all[view]
        t, geom, prim, bu, bv = raycaster.intersect(origins, dirs)
        timings.raycast += timings.clock() - start

        start = timings.clock()
        num_rays = len(origins)
        hit = np.flatnonzero(geom >= 0)  # (n,) indices of hit pixels
        depth = np.full(num_rays, BACKGROUND_DEPTH, dtype=np.float32)
        depth[hit] = t[hit]
        labels = np.full(num_rays, -1, dtype=np.int16)
        labels[hit] = geom[hit]
        unit_dirs = _normalize(dirs[hit].astype(np.float32))  # (n, 3)
        points = (origins[hit] + dirs[hit] * t[hit, None]).astype(np.float32)
        g = geom[hit]
        normal = np.zeros((len(hit), 3), dtype=np.float32)
        geo_normal = np.zeros((len(hit), 3), dtype=np.float32)
        albedo = np.empty((len(hit), 3), dtype=np.float32)
        rough = np.empty(len(hit), dtype=np.float32)
        on_floor = g == 0
        normal[on_floor, 2] = 1.0
        geo_normal[on_floor, 2] = 1.0
        # texture fades to its mean where a pixel covers much of a pattern period (cheap anti-aliasing)
        footprint = t[hit[on_floor]] / np.float32(K[0, 0]) / np.maximum(np.abs(unit_dirs[on_floor, 2]), 0.02)
        albedo[on_floor] = _floor_albedo(floor, points[on_floor, :2], footprint)
        rough[on_floor] = floor.roughness
        for index, (placement, geometry) in enumerate(zip(raycaster.placements, raycaster.geometry)):
            sel = np.flatnonzero(g == index + 1)
            if len(sel) == 0:
                continue
            matrix = np.asarray(placement.object_to_world, dtype=np.float64)
            rotation = matrix[:3, :3]
            faces = prim[hit[sel]]
            w1, w2 = bu[hit[sel], None], bv[hit[sel], None]
            corner = geometry.normals[faces]  # (s, 3, 3)
            n = (1 - w1 - w2) * corner[:, 0] + w1 * corner[:, 1] + w2 * corner[:, 2]
            normal[sel] = _normalize(n @ rotation.T)
            geo_normal[sel] = geometry.face_normals[faces] @ rotation.T
            points_obj = (points[sel] - matrix[:3, 3]) @ rotation
            albedo[sel], rough[sel] = _object_albedo(geometry, faces, points_obj, seed)
        # two-sided: flip normals of back faces towards the viewer
        flip = np.einsum("ij,ij->i", geo_normal, unit_dirs) > 0
        geo_normal[flip] *= -1
        normal[flip] *= -1
        bad = np.einsum("ij,ij->i", normal, unit_dirs) > 0  # shading normal must face the viewer too
        normal[bad] = geo_normal[bad]
        timings.shading += timings.clock() - start

        start = timings.clock()
        lit = np.flatnonzero(geo_normal @ to_light > 0)
        shadow_origins = points[lit] + geo_normal[lit] * np.float32(2e-4)
        visible = np.zeros(len(hit), dtype=np.float32)
        visible[lit] = ~raycaster.occluded(shadow_origins, np.broadcast_to(to_light, shadow_origins.shape))
        timings.raycast += timings.clock() - start

        start = timings.clock()
        n_dot_l = np.clip(normal @ to_light, 0.0, 1.0) * visible
        hemi = np.float32(light.ambient) * (0.7 + 0.3 * normal[:, 2])
        halfway = _normalize(to_light[None] - unit_dirs)
        shininess = 4.0 + 120.0 * (1.0 - rough) ** 3
        strength = 0.5 * (1.0 - rough) ** 2
        spec = strength * np.clip(np.einsum("ij,ij->i", normal, halfway), 0.0, 1.0) ** shininess * visible
        shaded = albedo * (hemi[:, None] + n_dot_l[:, None] * light_color) + spec[:, None] * light_color
        # haze: the floor fades into the horizon colour towards its edge, hiding the edge
        radial = np.hypot(points[:, 0] - floor.center[0], points[:, 1] - floor.center[1]) / floor.half_extent
        haze = (np.clip((radial - 0.35) / 0.6, 0.0, 1.0) ** 1.5)[:, None]
        color = np.empty((num_rays, 3), dtype=np.float32)
        color[hit] = shaded * (1 - haze) + bottom * haze
        miss = np.flatnonzero(geom < 0)
        miss_dirs = _normalize(dirs[miss].astype(np.float32))
        sky = np.clip(1.0 - 4.0 * miss_dirs[:, 2:3], 0.0, 1.0)  # 1 at and below the horizon, 0 looking up
        color[miss] = top * (1 - sky) + bottom * sky
        if light.environment is not None:
            color[miss] = environment_color(light.environment, miss_dirs, color[miss])
        rgb = _to_srgb8(color).reshape(image_size, image_size, 3)
        views.append(ViewRender(rgb=rgb, labels=labels.reshape(image_size, image_size),
                                depth=depth.reshape(image_size, image_size)))
        timings.shading += timings.clock() - start
    return views

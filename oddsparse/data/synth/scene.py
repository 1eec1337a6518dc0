"""Scene layout of the synthetic generator: instances, anomalies, floor, light and an orbit of cameras.

A scene holds O instances of one shape, a strict minority of them anomalous (possibly none), each
with a random yaw and position on the floor (oriented footprints never overlap) and resting on it
(z = 0). Cameras orbit the scene as in the published data: V views over one turn (from 4 views on, the
last view nearly repeats the first: the same azimuth, another elevation), elevation 25-32 degrees, looking
at the scene centre, at the smallest radius (times a random factor) that keeps every object inside every view.

Shapes: V views, O objects, M region points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from oddsparse.data.synth.model import ObjectModel
from oddsparse.data.synth.render import EnvironmentSpec, FloorSpec, LightSpec, Placement, SceneRaycaster
from oddsparse.geometry.cameras import default_intrinsics, look_at

__all__ = [
    "SceneObject",
    "SceneSpec",
    "generate_scene",
    "generate_group_scene",
    "anomalies_perceptible",
    "PERCEPTIBLE_LEVELS",
    "scene_name",
    "scene_category",
    "sample_anomaly_count",
    "layout_footprints",
    "footprints_overlap",
    "footprint_corners",
    "orbit_poses",
    "visible_region_views",
    "project_numpy",
]

#: Margin grown around each object footprint (metres): footprints stay >= 10 cm apart, about the gaps
#: of the published scenes, so that 4 cm voxels can separate neighbouring objects.
FOOTPRINT_MARGIN = 0.05


@dataclass
class SceneObject:
    """One placed instance.

    ``name`` is the Blender-style object name (``object``, ``object.001``, ...); ``kind`` is the
    anomaly type or ``None`` for a normal instance; ``variant`` numbers anomalies of one type
    (``<shape>-<kind>-<variant:03d>``); ``region_points`` (M, 3) object-frame points of the
    anomalous region (empty for normal instances).
    """

    name: str
    model: ObjectModel
    object_to_world: np.ndarray  # (4, 4)
    yaw: float
    kind: str | None = None
    variant: int = 0
    region_points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))

    @property
    def is_anomalous(self) -> bool:
        return self.kind is not None

    @property
    def location(self) -> np.ndarray:
        return self.object_to_world[:3, 3].copy()


@dataclass
class SceneSpec:
    """Everything needed to render and write one scene.

    ``normal_extents`` (3,) is the box size of the normal shape (the published ``bbox[1]``);
    ``K`` (3, 3) and ``world_to_cam`` (V, 4, 4) are float64.
    """

    name: str
    family: str
    category: str
    shape_name: str
    objects: list[SceneObject]
    normal_extents: np.ndarray
    floor: FloorSpec
    light: LightSpec
    K: np.ndarray
    world_to_cam: np.ndarray
    image_size: int
    seed: int
    index: int
    texture_seed: int

    def placements(self) -> list[Placement]:
        return [Placement(o.model, o.object_to_world) for o in self.objects]

    def raycaster(self) -> SceneRaycaster:
        return SceneRaycaster(self.placements(), self.floor)


# --------------------------------------------------------------------------------------- naming
def scene_category(family: str, category: str | None) -> str:
    """Word used before the first ``_`` of a scene name: the toy category, or ``parts``."""
    return category if family == "toys" and category else family


def scene_name(family: str, index: int, category: str | None = None) -> str:
    """Folder name of scene ``index``: ``<category>_<nnnn>`` (toys) or ``parts_<nnnn>``."""
    return f"{scene_category(family, category)}_{index:04d}"


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of scene ``index`` of a dataset with ``seed`` (independent of other scenes)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def pick_category(family: str, seed: int, index: int, categories=None) -> str | None:
    """Toy category of scene ``index`` (``None`` for other families); depends only on (seed, index) and the
    categories drawn from (``categories``: see :func:`~oddsparse.data.synth.shapes.toy_categories`; None: the
    default ``TOY_CATEGORIES``)."""
    if family != "toys":
        return None
    from oddsparse.data.synth.shapes import TOY_CATEGORIES, toy_categories

    names = toy_categories(categories) or TOY_CATEGORIES
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 1]))
    return str(names[int(rng.integers(len(names)))])


# ------------------------------------------------------------------------------------ anomalies
def sample_anomaly_count(num_objects: int, rng: np.random.Generator, p_none: float = 0.1) -> int:
    """Number of anomalous instances: 0 with probability ``p_none``, else uniform in
    [1, (O - 1) // 2], always strictly fewer than half of ``num_objects``."""
    most = (num_objects - 1) // 2
    if most < 1 or rng.random() < p_none:
        return 0
    return int(rng.integers(1, most + 1))


# --------------------------------------------------------------------------------------- layout
def footprint_corners(rect: np.ndarray, x: float, y: float, yaw: float) -> np.ndarray:
    """World corners (4, 2) of the object-frame rectangle ``rect`` = [[xmin, ymin], [xmax, ymax]]."""
    (x0, y0), (x1, y1) = rect
    local = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)
    c, s = math.cos(yaw), math.sin(yaw)
    return local @ np.array([[c, s], [-s, c]]) + np.array([x, y])


def footprints_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two convex quadrilaterals (4, 2) overlap (separating-axis test)."""
    for poly in (a, b):
        edges = np.roll(poly, -1, axis=0) - poly
        for edge in edges:
            axis = np.array([-edge[1], edge[0]])
            pa, pb = a @ axis, b @ axis
            if pa.max() <= pb.min() or pb.max() <= pa.min():
                return False
    return True


def layout_footprints(rects: list[np.ndarray], rng: np.random.Generator, *, margin: float = FOOTPRINT_MARGIN,
                      tries_per_object: int = 200) -> list[tuple[float, float, float]]:
    """Random non-overlapping poses ``(x, y, yaw)`` for O footprints, centred around the origin.

    Args:
        rects: O object-frame rectangles (2, 2) ``[[xmin, ymin], [xmax, ymax]]``.
    Returns:
        O poses; footprints grown by ``margin`` do not overlap.
    """
    grown = [np.asarray(r, dtype=np.float64) + np.array([[-margin, -margin], [margin, margin]]) for r in rects]
    diag = max(float(np.linalg.norm(r[1] - r[0])) for r in grown)
    radius = diag * math.sqrt(0.8 * len(rects) / math.pi) + 0.1 * diag
    while True:
        poses, corners = [], []
        for rect in grown:
            for _ in range(tries_per_object):
                r = radius * math.sqrt(rng.random())
                angle = 2 * math.pi * rng.random()
                x, y, yaw = r * math.cos(angle), r * math.sin(angle), float(rng.uniform(-math.pi, math.pi))
                candidate = footprint_corners(rect, x, y, yaw)
                if not any(footprints_overlap(candidate, other) for other in corners):
                    poses.append((x, y, yaw))
                    corners.append(candidate)
                    break
            else:
                break
        if len(poses) == len(grown):
            return poses
        radius *= 1.15


def yaw_matrix(x: float, y: float, z: float, yaw: float) -> np.ndarray:
    """(4, 4) object-to-world matrix: rotation ``yaw`` about z, then translation."""
    c, s = math.cos(yaw), math.sin(yaw)
    matrix = np.eye(4)
    matrix[:2, :2] = [[c, -s], [s, c]]
    matrix[:3, 3] = (x, y, z)
    return matrix


# -------------------------------------------------------------------------------------- cameras
def orbit_poses(num_views: int, radius: float, target: np.ndarray, *, start_azimuth: float,
                elevation_mid_deg: float, elevation_amp_deg: float, elevation_phase: float) -> np.ndarray:
    """world_to_cam (V, 4, 4) on one turn of an orbit with an elevation oscillating around ``elevation_mid_deg``,
    one period over the V views. From 4 views on, view V-1 is back at the start azimuth, as in the published data
    (whose view 19 nearly repeats view 0), at another elevation; 2 or 3 views are spread evenly over the turn.
    (Generator version 2 and earlier tied the elevation to the azimuth, so view V-1 repeated view 0 exactly.)"""
    steps = num_views - 1 if num_views >= 4 else num_views
    index = np.arange(num_views)
    azimuth = start_azimuth + 2 * math.pi * index / steps
    elevation = np.radians(elevation_mid_deg + elevation_amp_deg * np.sin(2 * math.pi * index / num_views
                                                                          + elevation_phase))
    eye = np.stack([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)], 1)
    eye = eye * radius + target
    world_to_cam = look_at(torch.as_tensor(eye), torch.as_tensor(np.broadcast_to(target, eye.shape).copy()))
    return world_to_cam.numpy()


def _corners_world(objects: list[SceneObject]) -> np.ndarray:
    """(O*8, 3) world corners of every object's bounding box."""
    out = []
    for obj in objects:
        lo, hi = obj.model.bounds()
        box = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        out.append(box @ obj.object_to_world[:3, :3].T + obj.object_to_world[:3, 3])
    return np.concatenate(out)


def project_numpy(points: np.ndarray, K: np.ndarray, world_to_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NumPy twin of :func:`oddsparse.geometry.cameras.project_points` for the small projections of the
    layout loop (torch's per-call overhead dominates there): points (P, 3), K (3, 3), world_to_cam
    (V, 4, 4) -> uv (V, P, 2), z-depth (V, P)."""
    points_cam = np.einsum("vij,pj->vpi", world_to_cam[:, :3, :3], points) + world_to_cam[:, None, :3, 3]
    depth = points_cam[..., 2]
    uvw = points_cam @ K.T
    safe = np.where(np.abs(depth) < 1e-8, 1e-8, depth)
    return uvw[..., :2] / safe[..., None], depth


def _fits(points: np.ndarray, K: np.ndarray, world_to_cam: np.ndarray, size: int, margin: float) -> bool:
    uv, depth = project_numpy(points, K, world_to_cam)
    lo, hi = margin * size, (1 - margin) * size
    return bool((depth > 0.05).all() and (uv >= lo).all() and (uv <= hi).all())


def _fit_radius(points: np.ndarray, K: np.ndarray, size: int, margin: float, **orbit) -> float:
    """Smallest orbit radius (bisection) such that all ``points`` project inside every view."""
    lo, hi = 0.05, 0.5
    while not _fits(points, K, orbit_poses(radius=hi, **orbit), size, margin):
        lo, hi = hi, hi * 2
        if hi > 1e3:
            raise RuntimeError("cannot fit the scene's objects in the camera orbit")
    for _ in range(20):
        mid = 0.5 * (lo + hi)
        if _fits(points, K, orbit_poses(radius=mid, **orbit), size, margin):
            hi = mid
        else:
            lo = mid
    return hi


# ----------------------------------------------------------------------------------- visibility
def visible_region_views(raycaster: SceneRaycaster, obj: SceneObject, K: np.ndarray, world_to_cam: np.ndarray,
                         size: int, *, tolerance: float = 3e-3) -> np.ndarray:
    """(V,) number of ``obj.region_points`` seen in each view.

    A point is seen when it projects inside the image and the first hit along the ray from the
    camera is not nearer than the point (minus ``tolerance`` metres). This covers points on the
    surface (the hit is the point) and points of removed material (the ray passes through).
    """
    points = obj.region_points @ obj.object_to_world[:3, :3].T + obj.object_to_world[:3, 3]
    counts = np.zeros(len(world_to_cam), dtype=np.int64)
    if len(points) == 0:
        return counts
    uv, depth = project_numpy(points, K, world_to_cam)  # (V, M, 2), (V, M)
    for view in range(len(world_to_cam)):
        inside = (depth[view] > 0) & (uv[view] >= 0).all(1) & (uv[view] < size).all(1)
        if not inside.any():
            continue
        rotation = world_to_cam[view, :3, :3]
        center = -rotation.T @ world_to_cam[view, :3, 3]
        offsets = points[inside] - center
        dirs = offsets / depth[view, inside, None]  # camera-z component 1: t is z-depth
        t, _ = raycaster.first_hit_t(np.broadcast_to(center, dirs.shape), dirs)
        counts[view] = int((t >= depth[view, inside] - tolerance).sum())
    return counts


# ---------------------------------------------------------------------------------------- scene
def _random_color(rng: np.random.Generator, lo: float, hi: float) -> tuple[float, float, float]:
    hue = rng.random()
    sat = rng.uniform(0.05, 0.45)
    val = rng.uniform(lo, hi)
    rgb = np.clip(np.abs((hue * 6 + np.array([0, 4, 2])) % 6 - 3) - 1, 0, 1)
    return tuple(float(c) for c in val * (1 - sat + sat * rgb))


def _random_floor(rng: np.random.Generator, extent: float) -> FloorSpec:
    kind = str(rng.choice(["plain", "checker", "planks", "marble"]))
    a = _random_color(rng, 0.25, 0.75)
    b = tuple(float(np.clip(c * rng.uniform(0.55, 0.85), 0, 1)) for c in a)
    if kind == "marble":
        b = tuple(float(np.clip(c * 0.7, 0, 1)) for c in a)
    tile = {"plain": 0.6, "checker": 0.15, "planks": 0.12, "marble": 0.5}[kind] * rng.uniform(0.7, 1.5)
    return FloorSpec(kind=kind, color_a=a, color_b=b, tile=float(tile), angle=float(rng.uniform(0, math.pi)),
                     roughness=float(rng.uniform(0.5, 0.95)), noise_seed=int(rng.integers(2**31)),
                     half_extent=float(extent))


def _random_light(rng: np.random.Generator) -> LightSpec:
    elevation = math.radians(rng.uniform(35.0, 75.0))
    azimuth = rng.uniform(0, 2 * math.pi)
    direction = (math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth), math.sin(elevation))
    warm = rng.uniform(-0.08, 0.08)
    top = _random_color(rng, 0.45, 0.9)
    bottom = tuple(float(np.clip(0.5 * c + 0.45, 0, 1)) for c in top)
    return LightSpec(direction=tuple(float(d) for d in direction), intensity=float(rng.uniform(0.75, 1.05)),
                     ambient=float(rng.uniform(0.22, 0.38)), color=(1.0 + warm, 1.0, 1.0 - warm),
                     background_top=top, background_bottom=bottom)


#: Backgrounds the generator draws behind the floor: the plain sky gradient, or a structured horizon.
BACKGROUNDS = ("gradient", "environment")


def random_environment(seed: int, index: int) -> EnvironmentSpec:
    """The structured horizon of scene ``index`` of a dataset of ``seed``, from its own random stream (the
    scene's layout, shapes and anomalies are those of the gradient background)."""
    rng = np.random.default_rng([int(seed), int(index), 0xE4F])
    colors = tuple(_random_color(rng, 0.08, 0.7) for _ in range(3))
    return EnvironmentSpec(seed=int(rng.integers(2**31)), height=math.radians(float(rng.uniform(4.0, 20.0))),
                           colors=colors, detail=float(rng.uniform(8.0, 30.0)))


def _object_name(index: int) -> str:
    return "object" if index == 0 else f"object.{index:03d}"


def _lay_out(models: list[ObjectModel], anomalies: dict, variant_of: dict[int, int], rng: np.random.Generator, *,
             normal: ObjectModel, name: str, family: str, category: str, K: np.ndarray, views: int, size: int,
             seed: int, index: int, max_layouts: int, min_anomaly_pixels: int = 0) -> SceneSpec | None:
    """Place ``models`` (O) on the floor, fit the camera orbit, draw floor and light; the scene spec of
    the first of ``max_layouts`` layouts in which every anomalous region is seen (and, with
    ``min_anomaly_pixels``, every anomaly perceptible: :func:`anomalies_perceptible`), else ``None``.

    ``anomalies`` maps object slots to objects with ``kind`` and ``region_points`` (M, 3) (an
    :class:`~oddsparse.data.synth.anomalies.Anomaly`); ``variant_of`` maps the same slots to their
    variant numbers; ``normal`` is the shape whose name and extents the scene's metadata carries.
    """
    extents = normal.extents()
    rects = []
    for model in models:
        lo, hi = model.bounds()
        nlo, nhi = normal.bounds()
        rects.append(np.array([np.minimum(lo, nlo)[:2], np.maximum(hi, nhi)[:2]]))
    for _layout in range(max_layouts):
        poses = layout_footprints(rects, rng)
        scene_objects = []
        for i, ((x, y, yaw), model) in enumerate(zip(poses, models)):
            z = -float(model.bounds()[0, 2])  # rest on the floor
            anomaly = anomalies.get(i)
            scene_objects.append(SceneObject(
                name=_object_name(i), model=model, object_to_world=yaw_matrix(x, y, z, yaw), yaw=yaw,
                kind=anomaly.kind if anomaly else None, variant=variant_of.get(i, 0),
                region_points=np.asarray(anomaly.region_points, dtype=np.float64) if anomaly else np.zeros((0, 3))))
        corners = _corners_world(scene_objects)
        center = np.array([0.5 * (corners[:, 0].min() + corners[:, 0].max()),
                           0.5 * (corners[:, 1].min() + corners[:, 1].max()), 0.0])
        orbit = dict(num_views=views, target=center, start_azimuth=float(rng.uniform(-math.pi, math.pi)),
                     elevation_mid_deg=float(rng.uniform(27.5, 29.5)), elevation_amp_deg=float(rng.uniform(1.5, 2.5)),
                     elevation_phase=float(rng.uniform(0, 2 * math.pi)))
        radius = _fit_radius(corners, K, size, 0.04, **orbit) * float(rng.uniform(1.0, 1.12))
        world_to_cam = orbit_poses(radius=radius, **orbit)
        floor = _random_floor(rng, extent=max(5.0, 5.0 * radius))
        floor.center = (float(center[0]), float(center[1]))
        spec = SceneSpec(
            name=name, family=family, category=category, shape_name=normal.shape_name, objects=scene_objects,
            normal_extents=extents, floor=floor, light=_random_light(rng), K=K, world_to_cam=world_to_cam,
            image_size=size, seed=int(seed), index=int(index), texture_seed=int(rng.integers(2**31)))
        if not anomalies:
            return spec
        raycaster = spec.raycaster()
        needed = [min(3, len(o.region_points)) for o in scene_objects if o.is_anomalous]
        seen = [visible_region_views(raycaster, o, K, world_to_cam, size).max()
                for o in scene_objects if o.is_anomalous]
        if all(s >= n and n > 0 for s, n in zip(seen, needed)) and (
                min_anomaly_pixels <= 0 or anomalies_perceptible(spec, min_anomaly_pixels)):
            return spec
    return None


#: Colour difference (8-bit levels, one channel) from which a pixel counts as changed by an anomaly.
PERCEPTIBLE_LEVELS = 32


def anomalies_perceptible(spec: SceneSpec, min_pixels: int) -> bool:
    """Whether every anomalous instance of ``spec`` changes at least ``min_pixels`` pixels by
    :data:`PERCEPTIBLE_LEVELS` or more, summed over all its views at its image size, against the normal
    shape at the same pose (:func:`~oddsparse.data.synth.perceptibility.anomaly_pixel_changes`)."""
    from oddsparse.data.synth.perceptibility import anomaly_pixel_changes

    counts = anomaly_pixel_changes(spec, range(len(spec.world_to_cam)), spec.image_size,
                                   thresholds=(PERCEPTIBLE_LEVELS,))[:, :, 0].sum(1)  # (O,)
    return all(int(count) >= min_pixels for count, obj in zip(counts, spec.objects) if obj.is_anomalous)


def generate_scene(family: str, *, seed: int, index: int = 0, objects: tuple[int, int] = (3, 12), views: int = 20,
                   size: int = 256, anomaly_types: tuple[str, ...] | None = None,
                   max_layouts: int = 6, max_anomaly_draws: int | None = None, min_anomaly_pixels: int = 0,
                   background: str = "gradient", categories=None) -> SceneSpec:
    """Lay out scene ``index`` of a dataset (deterministic in ``(seed, index)``).

    Args:
        family: ``"parts"`` or ``"toys"``.
        objects: inclusive range of the number of instances O.
        views: V cameras. size: image height = width in pixels.
        anomaly_types: types to draw from (default: the family's published types).
        max_layouts: layouts tried before the anomalies are redrawn when a region is not visible.
        max_anomaly_draws: draws of the scene's anomalies (default 4; 16 with ``min_anomaly_pixels``,
            which rejects most cracks at 128 px).
        min_anomaly_pixels: a layout is also kept only when every anomaly changes at least this many
            pixels of its views (:func:`anomalies_perceptible`; 0: not checked, the default, which
            generates the same scenes as before the option). Anomalies too small to show at the image
            size are then redrawn, so the mix of anomaly types shifts away from the subtle ones.
        background: ``"gradient"`` (the sky gradient, the default) or ``"environment"``: a structured horizon
            behind the floor (:func:`random_environment`), drawn from a stream of its own, so the scene is
            otherwise the same.
        categories: toys only, the categories the scene's is drawn from
            (:func:`~oddsparse.data.synth.shapes.toy_categories`: None, the default ten; ``"+banana,turtle,skateboard"``
            adds the flat ones). A scene whose category is the same under two lists is the same scene.
    Raises:
        RuntimeError: when no layout shows every anomalous region in some view.
    """
    from oddsparse.data.synth.anomalies import FAMILY_ANOMALY_TYPES, make_anomaly
    from oddsparse.data.synth.shapes import make_shape, toy_categories

    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}, got {background!r}")
    low, high = int(objects[0]), int(objects[1])
    if not 1 <= low <= high:
        raise ValueError(f"objects must be a range (low, high) with 1 <= low <= high, got {objects!r}")
    if views < 1 or size < 8:
        raise ValueError(f"views must be >= 1 and size >= 8, got views={views}, size={size}")
    categories = toy_categories(categories, family=family)
    category = pick_category(family, seed, index, categories)
    rng = scene_rng(seed, index)
    normal = make_shape(family, rng, category=category)
    types = tuple(anomaly_types) if anomaly_types is not None else tuple(FAMILY_ANOMALY_TYPES[family])
    num_objects = int(rng.integers(low, high + 1))
    num_anomalous = sample_anomaly_count(num_objects, rng)
    K = default_intrinsics(size, dtype=torch.float64).numpy()
    if max_anomaly_draws is None:
        max_anomaly_draws = 16 if min_anomaly_pixels > 0 else 4
    for _ in range(max_anomaly_draws):
        anomalous_slots = sorted(rng.choice(num_objects, size=num_anomalous, replace=False).tolist())
        anomalies = {}
        variant_of: dict[int, int] = {}
        variants: dict[str, int] = {}
        for slot in anomalous_slots:
            for _attempt in range(len(types) * 2):
                kind = str(rng.choice(types))
                try:
                    anomalies[slot] = make_anomaly(normal, kind, rng, family=family)
                    break
                except RuntimeError:
                    continue
            else:
                raise RuntimeError(f"scene {index}: no anomaly of types {types} could be made for {normal.shape_name}")
            variants[anomalies[slot].kind] = variants.get(anomalies[slot].kind, 0) + 1
            variant_of[slot] = variants[anomalies[slot].kind]  # numbering per type within the scene

        models = [anomalies[i].model if i in anomalies else normal for i in range(num_objects)]
        spec = _lay_out(models, anomalies, variant_of, rng, normal=normal, name=scene_name(family, index, category),
                        family=family, category=scene_category(family, category), K=K, views=views, size=size,
                        seed=seed, index=index, max_layouts=max_layouts, min_anomaly_pixels=min_anomaly_pixels)
        if spec is not None:
            if background == "environment":
                spec.light.environment = random_environment(seed, index)
            return spec
    perceptible = f" or changing {min_anomaly_pixels} pixels" if min_anomaly_pixels > 0 else ""
    raise RuntimeError(f"scene {index} of family {family!r}: anomalous regions not visible{perceptible} after "
                       f"{max_anomaly_draws} anomaly draws x {max_layouts} layouts")


def generate_group_scene(family: str, *, seed: int, index: int = 0, counts: tuple[int, int] = (3, 3),
                         views: int = 20, size: int = 256, category: str | None = None, max_layouts: int = 12,
                         max_pair_draws: int = 4) -> SceneSpec:
    """A scene of two groups of look-alike shapes, for the majority-vote experiment (paper Fig. 6).

    Shape A is a generated shape; shape B is its ``diff`` look-alike (:func:`make_anomaly` with kind
    ``"diff"``: the nearest of a pool of shapes of the same family and category, scaled to A's size).
    The pair depends only on ``(seed, index)``, so the scenes of one index with different counts show
    the same two shapes; the layout, cameras, floor and light also depend on ``counts``. Every copy
    of a group uses the same model.

    Objects ``0 .. n_A - 1`` are A and the others B (placed at random). The minority group is marked
    anomalous (kind ``"diff"``, variant 1: its blend path reads ``<shape>-diff-001``); on a tie
    (``n_A == n_B``) B is. The scene's normal shape (name, extents) is the unmarked group. The name
    is ``<category>_<index>_a<n_A>b<n_B>``.

    Args:
        counts: ``(n_A, n_B)``, each at least 1.
        category: toy category (default: the one :func:`pick_category` draws for ``(seed, index)``).
    Raises:
        RuntimeError: when no pair or no layout showing the marked group's differences is found.

    Example:
        >>> spec = generate_group_scene("parts", seed=0, index=0, counts=(2, 4), views=4, size=64)  # doctest: +SKIP
        >>> [o.is_anomalous for o in spec.objects]  # doctest: +SKIP
        [True, True, False, False, False, False]
    """
    from oddsparse.data.synth.anomalies import make_anomaly
    from oddsparse.data.synth.shapes import make_shape

    n_a, n_b = (int(c) for c in counts)
    if n_a < 1 or n_b < 1:
        raise ValueError(f"counts must be (n_A, n_B) with both >= 1, got {counts!r}")
    if views < 1 or size < 8:
        raise ValueError(f"views must be >= 1 and size >= 8, got views={views}, size={size}")
    category = category if category is not None else pick_category(family, seed, index)
    pair_rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 0x6A7E]))
    for _ in range(max_pair_draws):
        shape_a = make_shape(family, pair_rng, category=category)
        try:
            look_alike = make_anomaly(shape_a, "diff", pair_rng, family=family)
            break
        except RuntimeError:
            continue
    else:
        raise RuntimeError(f"group scene {index} of family {family!r}: no 'diff' look-alike found in "
                           f"{max_pair_draws} shape draws")
    shape_b = look_alike.model
    models = [shape_a] * n_a + [shape_b] * n_b
    a_marked = n_a < n_b
    marked = range(n_a) if a_marked else range(n_a, n_a + n_b)
    # _lay_out reads kind ("diff") and region_points (on the symmetric difference of A and B: right for either group)
    anomalies = {slot: look_alike for slot in marked}
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 0x6A7E, n_a, n_b]))
    K = default_intrinsics(size, dtype=torch.float64).numpy()
    spec = _lay_out(models, anomalies, {slot: 1 for slot in marked}, rng, normal=shape_b if a_marked else shape_a,
                    name=f"{scene_name(family, index, category)}_a{n_a}b{n_b}",
                    family=family, category=scene_category(family, category), K=K, views=views, size=size,
                    seed=seed, index=index, max_layouts=max_layouts)
    if spec is None:
        raise RuntimeError(f"group scene {index} of family {family!r} (counts {n_a}, {n_b}): the differences "
                           f"of the marked group are not visible in {max_layouts} layouts")
    return spec
